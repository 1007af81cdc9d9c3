"""DDPM U-Net: parameter counts of the presets, time embedding, dropout, gradients, errors."""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import (
    UNet,
    group_count,
    num_params,
    timestep_embedding,
    unet_benchmark,
    unet_ddpm_cifar10,
    unet_digits,
)

# rbg keys compile ~5x faster than threefry on CPU; the tests do not depend on the values.
INIT_KEY = jax.random.key(0, impl="rbg")


def abstract_init(model, shape):
    """Parameter shapes without allocating or computing anything (jax.eval_shape)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    t = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
    return jax.eval_shape(functools.partial(model.init, train=False), INIT_KEY, x, t)


# ---------------------------------------------------------------------------------------------
# Parameter counts


def test_ddpm_cifar10_has_35_7_million_parameters():
    count = num_params(abstract_init(unet_ddpm_cifar10(), (1, 32, 32, 3)))
    assert count == 35_746_307  # Ho et al. (2020) report 35.7 M for this network
    assert abs(count - 35.7e6) / 35.7e6 < 0.01


def _diffusers_unet2d_count(in_ch, out_ch, block_out_channels, layers_per_block):
    """Parameter count of diffusers' UNet2DModel with Down/UpBlock2D and a single-head attention
    mid block, transcribed from its constructor (independent of our module's wiring)."""
    b, lpb = block_out_channels, layers_per_block
    temb = 4 * b[0]

    def resnet(i, o):  # ResnetBlock2D: norm1, conv1, time_emb_proj, norm2, conv2, shortcut
        n = 2 * i + (9 * i * o + o) + (temb * o + o) + 2 * o + (9 * o * o + o)
        return n + (i * o + o if i != o else 0)

    n = 9 * in_ch * b[0] + b[0] + (b[0] * temb + temb) + (temb * temb + temb)  # conv_in, time
    out = b[0]
    for i, c in enumerate(b):  # down blocks
        inp, out = out, c
        n += sum(resnet(inp if j == 0 else out, out) for j in range(lpb))
        n += 9 * out * out + out if i != len(b) - 1 else 0  # Downsample2D conv
    n += 2 * resnet(b[-1], b[-1]) + 2 * b[-1] + 4 * (b[-1] ** 2 + b[-1])  # mid: res, attn, res
    rb = b[::-1]
    out = rb[0]
    for i in range(len(b)):  # up blocks: layers_per_block + 1 resnets on concatenated skips
        prev, out, inp = out, rb[i], rb[min(i + 1, len(b) - 1)]
        for j in range(lpb + 1):
            skip = inp if j == lpb else out
            n += resnet((prev if j == 0 else out) + skip, out)
        n += 9 * out * out + out if i != len(b) - 1 else 0  # Upsample2D conv
    return n + 2 * b[0] + 9 * b[0] * out_ch + out_ch  # norm_out, conv_out


def test_benchmark_matches_diffusers_unet2d_count():
    count = num_params(abstract_init(unet_benchmark(), (1, 28, 28, 1)))
    assert count == 1_539_329
    # The reference PyTorch diffusers UNet2DModel(block_out_channels=(32, 64, 64),
    # layers_per_block=2, norm_num_groups=8, 3x DownBlock2D / UpBlock2D) has ≈1.54 M parameters.
    assert count == _diffusers_unet2d_count(1, 1, (32, 64, 64), 2)
    assert abs(count - 1.54e6) / 1.54e6 < 0.01


def test_digits_preset_count_and_attention_placement():
    params = abstract_init(unet_digits(), (1, 8, 8, 1))["params"]
    assert num_params(params) == 1_001_729
    attn = sorted(k for k in params if "attn" in k)
    # 8x8 → 4x4: attention after every ResBlock at 4x4 (level 1) and in the middle block.
    assert attn == ["down1_attn0", "down1_attn1", "mid_attn", "up1_attn0", "up1_attn1",
                    "up1_attn2"]


def test_benchmark_has_attention_only_in_the_middle_and_8_groups():
    model = unet_benchmark()
    params = abstract_init(model, (1, 28, 28, 1))["params"]
    assert [k for k in params if "attn" in k] == ["mid_attn"]
    assert group_count(32, model.num_groups) == 8 and group_count(64, model.num_groups) == 8


def test_group_count_clips_to_a_divisor():
    assert group_count(128, 32) == 32
    assert group_count(16, 32) == 16
    assert group_count(96, 32) == 32
    assert group_count(40, 32) == 20
    assert group_count(7, 32) == 7


# ---------------------------------------------------------------------------------------------
# Time embedding


def test_timestep_embedding_golden_values():
    emb = np.asarray(timestep_embedding(jnp.array([0, 1, 7]), 6))
    # h = 3, ω = 10000^(−i/2) = (1, 0.01, 1e-4): emb = [sin tω_0..2, cos tω_0..2].
    expected = np.array([[0, 0, 0, 1, 1, 1],
                         [math.sin(1), math.sin(0.01), math.sin(1e-4),
                          math.cos(1), math.cos(0.01), math.cos(1e-4)],
                         [math.sin(7), math.sin(0.07), math.sin(7e-4),
                          math.cos(7), math.cos(0.07), math.cos(7e-4)]])
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    odd = np.asarray(timestep_embedding(jnp.array(1000), 7))
    assert odd.shape == (7,) and odd[-1] == 0.0
    np.testing.assert_allclose(odd[:6], np.asarray(timestep_embedding(1000, 6)), atol=1e-6)
    # DDPM's frequencies with dim 128: ω_63 = 1e-4 exactly, so t = 1000 gives sin(0.1).
    np.testing.assert_allclose(timestep_embedding(1000, 128)[63], math.sin(0.1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes and errors (abstract evaluation: no compile)


def _abstract_apply(model, shape, t_shape=None, dtype=jnp.float32):
    x = jax.ShapeDtypeStruct(shape, dtype)
    t = jax.ShapeDtypeStruct(shape[:1] if t_shape is None else t_shape, jnp.int32)
    params = jax.eval_shape(functools.partial(model.init, train=False), INIT_KEY, x, t)
    return params, jax.eval_shape(functools.partial(model.apply, train=False), params, x, t)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_output_channels(prediction):
    model = unet_digits(prediction=prediction)
    assert model.prediction == prediction
    _, out = _abstract_apply(model, (3, 8, 8, 2))
    assert out.shape == (3, 8, 8, 2)
    _, out = _abstract_apply(unet_digits(prediction=prediction, learned_variance=True),
                             (3, 8, 8, 2))
    assert out.shape == (3, 8, 8, 4)
    _, out = _abstract_apply(model, (3, 8, 8, 2), t_shape=())  # scalar t broadcasts
    assert out.shape == (3, 8, 8, 2)


def test_bfloat16_compute_keeps_float32_params_and_output():
    params, out = _abstract_apply(unet_digits(dtype=jnp.bfloat16), (2, 8, 8, 1))
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert out.dtype == jnp.float32


def test_remat_changes_nothing_in_the_parameters():
    plain = abstract_init(unet_digits(), (1, 8, 8, 1))
    remat = abstract_init(unet_digits(remat=True), (1, 8, 8, 1))
    assert jax.tree.map(lambda a: a.shape, plain) == jax.tree.map(lambda a: a.shape, remat)


@pytest.mark.parametrize(
    "model,shape",
    [(unet_ddpm_cifar10(), (1, 30, 30, 3)),  # 30 → 15 → 7.5
     (unet_ddpm_cifar10(), (1, 28, 28, 1)),  # 28 → 14 → 7 → 3.5
     (unet_benchmark(), (1, 28, 30, 1)),
     (unet_digits(), (1, 7, 7, 1))],
)
def test_image_size_that_cannot_be_halved_raises(model, shape):
    with pytest.raises(ValueError, match="cannot be downsampled"):
        abstract_init(model, shape)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="prediction"):
        UNet(prediction="score")
    with pytest.raises(ValueError, match="ch_mult"):
        UNet(ch_mult=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.0)
    with pytest.raises(ValueError, match="t must be"):
        _abstract_apply(unet_digits(), (3, 8, 8, 1), t_shape=(2,))
    with pytest.raises(ValueError, match="x must have shape"):
        _abstract_apply(unet_digits(), (8, 8, 1), t_shape=())
    with pytest.raises(ValueError, match="num_heads"):
        abstract_init(unet_digits(num_heads=3), (1, 8, 8, 1))


# ---------------------------------------------------------------------------------------------
# Numbers from a real (tiny) network


@pytest.fixture(scope="module")
def tiny():
    model = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4,
                 dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2))
    t = jnp.array([1, 900])
    params = jax.jit(functools.partial(model.init, train=False))(INIT_KEY, x, t)
    return model, params, x, t


def test_init_follows_ddpm(tiny):
    _, params, _, _ = tiny
    p = params["params"]
    # variance_scaling(1, fan_avg, uniform): bound √(3 / fan_avg), fan_avg = 9 (8 + 8) / 2.
    kernel = np.asarray(p["down0_block0"]["conv1"]["kernel"])
    bound = math.sqrt(3.0 / (9 * (8 + 8) / 2))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound
    # DDPM's init_scale=0 layers start at ~1e-5 scale, not exactly zero.
    for w in (p["conv_out"]["kernel"], p["mid_attn"]["proj_out"]["kernel"],
              p["mid_block1"]["conv2"]["kernel"]):
        assert 0 < np.abs(np.asarray(w)).max() < 1e-4
    biases = [v for k, v in flax.traverse_util.flatten_dict(p).items() if k[-1] == "bias"]
    assert all(np.all(np.asarray(b) == 0) for b in biases)


def test_dropout_off_in_eval_on_in_train(tiny):
    model, params, x, t = tiny
    apply = jax.jit(model.apply, static_argnames="train")
    # Scale up the near-zero output layers so that dropout changes the output visibly.
    params = jax.tree.map(lambda a: a * 1e5 if 0 < np.abs(a).max() < 1e-4 else a, params)
    eval1 = apply(params, x, t, train=False)
    eval2 = apply(params, x, t, train=False, rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(eval1, eval2)  # dropout rng ignored in eval

    train_a = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(1)})
    train_a2 = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = apply(params, x, t, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(train_a, train_a2)
    assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
    assert float(jnp.max(jnp.abs(train_a - eval1))) > 1e-3


def test_output_depends_on_t(tiny):
    model, params, x, _ = tiny
    params = jax.tree.map(lambda a: a * 1e5 if 0 < np.abs(a).max() < 1e-4 else a, params)
    apply = jax.jit(functools.partial(model.apply, train=False))
    same_x = jnp.broadcast_to(x[:1], x.shape)
    out = apply(params, same_x, jnp.array([1, 900]))
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3
    np.testing.assert_allclose(apply(params, same_x, jnp.array(1))[1], out[0], rtol=1e-5,
                               atol=1e-5)


def test_grad_of_a_scalar_loss_is_finite_and_nonzero_for_every_param(tiny):
    model, params, x, t = tiny
    target = jax.random.normal(jax.random.key(9), x.shape)

    @jax.jit
    def loss(p):
        out = model.apply(p, x, t, train=True, rngs={"dropout": jax.random.key(0)})
        return jnp.mean(jnp.square(out - target))

    grads = flax.traverse_util.flatten_dict(jax.grad(loss)(params)["params"])
    for name, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        assert np.abs(g).max() > 0, name
