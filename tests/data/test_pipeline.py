"""Scaling, and the deterministic / resumable / shardable pipeline on the embedded digits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.data import digits, pipeline
from diffusion_jax.data.pipeline import (
    binarize,
    dequantize,
    from_model_range,
    full_split,
    make_dataset,
    to_model_range,
)

# ------------------------------------------------------------------------------ scaling


@pytest.mark.parametrize("num_levels", [2, 17, 256])
def test_to_model_range_maps_levels_to_minus_one_one(num_levels):
    k = np.arange(num_levels, dtype=np.uint8 if num_levels <= 256 else np.int32)
    x = to_model_range(k, num_levels)
    assert x.dtype == np.float32
    assert x[0] == -1.0 and x[-1] == 1.0  # exactly
    np.testing.assert_allclose(np.diff(x), 2.0 / (num_levels - 1), rtol=1e-5)
    np.testing.assert_allclose(x, 2.0 * k / (num_levels - 1) - 1.0, atol=1e-7)
    np.testing.assert_array_equal(x, -x[::-1])  # symmetric: k and L-1-k
    np.testing.assert_array_equal(from_model_range(x, num_levels), k)


def test_8bit_golden_values():
    x = to_model_range(np.array([0, 1, 127, 128, 255], np.uint8), 256)
    np.testing.assert_allclose(x, [-1.0, -253 / 255, -1 / 255, 1 / 255, 1.0], atol=1e-7)


def test_from_model_range_rounds_and_clips():
    x = np.array([-1.7, -1.0, -0.51, -0.49, 0.0, 0.49, 0.99, 1.3], np.float32)
    # L = 3: levels -1, 0, 1.
    np.testing.assert_array_equal(from_model_range(x, 3), [0, 0, 0, 1, 1, 1, 2, 2])
    assert from_model_range(x, 3).dtype == np.uint8
    assert from_model_range(x, 1024).dtype == np.int32


def test_scaling_works_on_jax_arrays_under_jit():
    k = jnp.arange(17, dtype=jnp.uint8)
    x = jax.jit(to_model_range, static_argnums=1)(k, 17)
    np.testing.assert_allclose(np.asarray(x), np.arange(17) / 8.0 - 1.0, atol=1e-7)
    back = jax.jit(from_model_range, static_argnums=1)(x, 17)
    np.testing.assert_array_equal(np.asarray(back), np.arange(17))


def test_scaling_rejects_bad_input():
    with pytest.raises(TypeError, match="integer levels"):
        to_model_range(np.zeros(3, np.float32), 17)
    with pytest.raises(ValueError, match=r"0\.\.16.*0\.\.17"):
        to_model_range(np.array([0, 17], np.uint8), 17)
    with pytest.raises(ValueError, match="num_levels must be >= 2"):
        to_model_range(np.zeros(3, np.uint8), 1)
    with pytest.raises(TypeError, match="floating"):
        from_model_range(np.zeros(3, np.int32), 17)


def test_binarize_threshold():
    k = np.arange(17, dtype=np.uint8)
    np.testing.assert_array_equal(binarize(k, 17), (k >= 8).astype(np.uint8))
    np.testing.assert_array_equal(binarize(np.arange(256, dtype=np.uint8), 256)[127:129], [0, 1])
    np.testing.assert_array_equal(to_model_range(binarize(k, 17), 2), np.where(k >= 8, 1.0, -1.0))


@pytest.mark.parametrize("make_rng", [np.random.default_rng, jax.random.key])
def test_binarize_stochastic_is_bernoulli_k_over_l_minus_1(make_rng):
    n = 20000
    k = np.repeat(np.array([0, 4, 8, 12, 16], np.uint8)[:, None], n, axis=1)
    b = np.asarray(binarize(k, 17, rng=make_rng(0)))
    assert b.dtype == np.uint8 and set(np.unique(b)) <= {0, 1}
    p = np.array([0, 0.25, 0.5, 0.75, 1.0])
    # 5 standard errors of a Bernoulli mean.
    np.testing.assert_allclose(b.mean(axis=1), p, atol=5 * 0.5 / np.sqrt(n))
    np.testing.assert_array_equal(b, np.asarray(binarize(k, 17, rng=make_rng(0))))


@pytest.mark.parametrize("make_rng", [np.random.default_rng, jax.random.key])
def test_dequantize_is_uniform_over_the_bin(make_rng):
    num_levels, n = 17, 200000
    x = to_model_range(np.full((n,), 5, np.uint8), num_levels)
    y = np.asarray(dequantize(x, num_levels, make_rng(1)))
    width = 2 / 16
    assert y.dtype == np.float32
    assert np.all(np.abs(y - x) <= width / 2 + 1e-6)
    # Mean 0 and variance width^2/12 of U(-width/2, width/2), to ~5 standard errors.
    assert abs((y - x).mean()) < 5 * width / np.sqrt(12 * n)
    np.testing.assert_allclose((y - x).var(), width**2 / 12, rtol=0.02)
    np.testing.assert_array_equal(from_model_range(y, num_levels), 5)


def test_dequantize_needs_an_explicit_rng():
    with pytest.raises(TypeError, match="explicit rng"):
        dequantize(np.zeros(3, np.float32), 17, None)
    with pytest.raises(TypeError, match="numpy Generator.*JAX PRNG key"):
        dequantize(np.zeros(3, np.float32), 17, 0)


# ------------------------------------------------------------------------------ pipeline


def test_digits_batches_are_scaled_data():
    ds = make_dataset("digits", "train", batch_size=64, seed=3, data_dir=None)
    assert ds.image_shape == (8, 8, 1) and ds.num_levels == 17
    assert ds.num_examples == 1497 and ds.steps_per_epoch == 1497 // 64 == 23
    images, labels = digits.load_digits("train")
    for step in (0, 5, 23, 50):
        batch = ds.batch_at(step)
        assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
        idx = ds.indices_at(step)
        np.testing.assert_array_equal(batch["image"], images[idx] / np.float32(8) - 1)
        np.testing.assert_array_equal(batch["label"], labels[idx])


def test_order_is_the_documented_permutation_per_epoch():
    ds = make_dataset("digits", "train", batch_size=100, seed=7)
    spe = ds.steps_per_epoch  # 14
    for epoch in (0, 1, 5):
        perm = np.random.default_rng([7, epoch]).permutation(1497)
        for b in (0, spe - 1):
            np.testing.assert_array_equal(
                ds.indices_at(epoch * spe + b), perm[b * 100 : (b + 1) * 100]
            )
    epoch0 = np.concatenate([ds.indices_at(s) for s in range(spe)])
    epoch1 = np.concatenate([ds.indices_at(spe + s) for s in range(spe)])
    assert len(np.unique(epoch0)) == spe * 100  # no repeats within an epoch
    assert not np.array_equal(epoch0, epoch1)  # reshuffled


def test_iteration_is_infinite_and_matches_batch_at():
    ds = make_dataset("digits", "test", batch_size=128, seed=0)  # 2 steps per epoch
    assert ds.num_steps is None
    with ds.iterator() as it:
        batches = [next(it) for _ in range(7)]  # rolls over three epochs
        assert it.step == 7
    for step, batch in enumerate(batches):
        np.testing.assert_array_equal(batch["image"], ds.batch_at(step)["image"])


def _take(ds, n):
    with ds.iterator() as it:
        return [next(it) for _ in range(n)]


def test_same_seed_same_batches_other_seed_other_batches():
    a = make_dataset("digits", "train", batch_size=32, seed=1, prefetch=0)
    b = make_dataset("digits", "train", batch_size=32, seed=1, prefetch=3)
    c = make_dataset("digits", "train", batch_size=32, seed=2)
    for x, y in zip(_take(a, 5), _take(b, 5), strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a.batch_at(0)["image"], c.batch_at(0)["image"])


@pytest.mark.parametrize("options", [{}, {"binarize": "stochastic", "dequantize": True}])
def test_state_save_restore_resumes_exactly(options):
    ds = make_dataset("digits", "train", batch_size=64, seed=0, **options)
    it = ds.iterator()
    for _ in range(30):  # past the end of epoch 0 (23 steps)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # plain JSON, as a checkpointer saves it
    assert state == {"step": 30, "seed": 0, "global_batch_size": 64, "num_examples": 1497}
    expected = [next(it) for _ in range(4)]
    it.close()
    fresh = make_dataset("digits", "train", batch_size=64, seed=0, **options)
    resumed = fresh.iterator(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert resumed.get_state()["step"] == 34
    resumed.set_state({"step": 2})  # rewinding works too
    np.testing.assert_array_equal(next(resumed)["image"], fresh.batch_at(2)["image"])
    resumed.close()


def test_restore_refuses_a_different_order():
    it = make_dataset("digits", "train", batch_size=64, seed=0).iterator()
    with pytest.raises(ValueError, match="seed=1"):
        it.set_state({"step": 3, "seed": 1, "global_batch_size": 64, "num_examples": 1497})
    with pytest.raises(ValueError, match="global_batch_size"):
        it.set_state({"step": 3, "seed": 0, "global_batch_size": 32})
    with pytest.raises(ValueError, match="'step'"):
        it.set_state({"seed": 0})


@pytest.mark.parametrize("options", [{}, {"binarize": "stochastic", "dequantize": True}])
@pytest.mark.parametrize("shard_count", [2, 4])
def test_shards_concatenate_to_the_global_batch(shard_count, options):
    full = make_dataset("digits", "train", batch_size=64, seed=5, **options)
    shards = [
        make_dataset(
            "digits",
            "train",
            batch_size=64,
            seed=5,
            shard_index=i,
            shard_count=shard_count,
            **options,
        )
        for i in range(shard_count)
    ]
    assert all(s.batch_size == 64 // shard_count for s in shards)
    for step in (0, 1, 22, 23, 40):
        want = full.batch_at(step)
        got = [s.batch_at(step) for s in shards]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


def test_finite_epochs_and_remainder_cover_every_example_once():
    ds = make_dataset(
        "digits", "test", batch_size=64, seed=0, shuffle=False, drop_remainder=False, num_epochs=1
    )
    batches = list(ds)
    assert [len(b["label"]) for b in batches] == [64, 64, 64, 64, 44]
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images, full_split("digits", "test"))
    with pytest.raises(ValueError, match="num_steps = 5"):
        ds.batch_at(5)
    two = make_dataset("digits", "test", batch_size=64, seed=0, num_epochs=2)
    assert len(list(two)) == 2 * 4


def test_binarize_option():
    ds = make_dataset("digits", "train", batch_size=64, seed=0, binarize=True)
    assert ds.num_levels == 2
    images, _ = digits.load_digits("train")
    batch = ds.batch_at(3)
    np.testing.assert_array_equal(
        batch["image"], np.where(images[ds.indices_at(3)] >= 8, 1.0, -1.0)
    )
    sto = make_dataset("digits", "train", batch_size=64, seed=0, binarize="stochastic")
    x = sto.batch_at(3)["image"]
    assert set(np.unique(x)) == {-1.0, 1.0}
    np.testing.assert_array_equal(x, sto.batch_at(3)["image"])
    # Each epoch draws fresh bits for the same examples (unshuffled: same indices per epoch).
    fixed = make_dataset(
        "digits", "train", batch_size=64, seed=0, binarize="stochastic", shuffle=False
    )
    spe = fixed.steps_per_epoch
    np.testing.assert_array_equal(fixed.indices_at(0), fixed.indices_at(spe))
    assert not np.array_equal(fixed.batch_at(0)["image"], fixed.batch_at(spe)["image"])


def test_dequantize_option_stays_within_half_a_bin():
    plain = make_dataset("digits", "train", batch_size=64, seed=0)
    noisy = make_dataset("digits", "train", batch_size=64, seed=0, dequantize=True)
    x, y = plain.batch_at(4)["image"], noisy.batch_at(4)["image"]
    assert noisy.num_levels == 17
    assert np.all(np.abs(y - x) <= 1 / 16 + 1e-6) and np.abs(y - x).max() > 1 / 32
    np.testing.assert_array_equal(from_model_range(y, 17), from_model_range(x, 17))


def test_full_split_digits():
    x = full_split("digits", "test")
    assert x.shape == (300, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x, to_model_range(digits.load_digits("test")[0], 17))
    np.testing.assert_array_equal(np.unique(full_split("digits", "test", binarize=True)), [-1, 1])


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="name must be one of.*'digits'.*Did you mean 'mnist'"):
        make_dataset("mnsit", "train", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="split of 'digits'"):
        make_dataset("digits", "validation", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="divisible by shard_count"):
        make_dataset("digits", "train", batch_size=10, seed=0, shard_count=3)
    with pytest.raises(ValueError, match="shard_index must be in 0..1"):
        make_dataset("digits", "train", batch_size=8, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        make_dataset("digits", "train", batch_size=8, seed=-1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_dataset("digits", "test", batch_size=512, seed=0)
    with pytest.raises(ValueError, match="binarize must be one of"):
        make_dataset("digits", "train", batch_size=8, seed=0, binarize="soft")
    with pytest.raises(TypeError, match="batch_size must be an int"):
        make_dataset("digits", "train", batch_size=8.0, seed=0)


def test_dataset_spec():
    spec = pipeline.dataset_spec("cifar10")
    assert spec.image_shape == (32, 32, 3) and spec.num_levels == 256
    assert pipeline.dataset_spec("binarized_mnist").num_levels == 2
    assert pipeline.dataset_spec("digits").num_levels == 17
