"""Data parallel training: 1, 2 and 8 devices, pmap and sharding, give the same parameters.

The tiny U-Net DDPM of ``parallel_tiny`` trains 20 steps on global batches of 16 digits through
``ParallelStep`` (tests/conftest.py forces 8 host CPU devices). Differences between device
counts come only from the order of float32 reductions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

import diffusion_jax as dj
from diffusion_jax.training.step import (
    ParallelStep,
    assert_synced,
    example_keys,
    make_multi_step,
)
from tests.training import parallel_tiny as tiny

NUM_STEPS = 20


def _reference():
    return tiny.train_cached("none", 1, NUM_STEPS)


def test_eight_devices_are_available():
    assert jax.device_count() >= 8, "tests/conftest.py should force 8 host devices"


# Both modes and both device counts, each once (every pair costs a compile of the train step).
@pytest.mark.parametrize("mode,n", [("sharding", 8), ("pmap", 2)])
def test_same_seed_and_global_batch_give_the_same_parameters(mode, n):
    ref_state, ref_losses = _reference()
    state, losses = tiny.train_cached(mode, n, NUM_STEPS)  # also asserts replicas stay synced
    assert int(state.step) == int(ref_state.step) == NUM_STEPS
    # Same per-example noise and timesteps: the losses agree to float32 rounding at every step.
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-6, atol=0)
    # Measured: <= 3e-7 relative to the parameter scale; the worst single leaf (a zero-initialized
    # output conv, whose whole value is 20 Adam updates) <= 9e-6 of its own scale.
    for name in ("params", "ema_params", "opt_state"):
        a, b = getattr(state, name), getattr(ref_state, name)
        assert tiny.max_rel_diff(a, b) <= 1e-5, name
        assert tiny.max_leaf_rel_diff(a, b) <= 1e-4, name


def test_pmap_and_sharding_agree_on_eight_devices():
    pmap_state, pmap_losses = tiny.train_cached("pmap", 8, NUM_STEPS)
    shard_state, shard_losses = tiny.train_cached("sharding", 8, NUM_STEPS)
    np.testing.assert_allclose(pmap_losses, shard_losses, rtol=2e-6, atol=0)
    assert tiny.max_rel_diff(pmap_state.params, shard_state.params) <= 1e-5
    # Training moved the parameters far more than the device count does.
    init = tiny.initial_state(NUM_STEPS)
    assert tiny.max_rel_diff(shard_state.params, init.params) > 1e-2


@pytest.mark.parametrize("mode", ["sharding", "pmap"])
def test_indivisible_global_batch_is_a_config_error_before_compiling(mode):
    built = []
    with pytest.raises(ValueError, match=r"data.batch_size=12 .*divisible by the device count 8"):
        ParallelStep(built.append, mode=mode, global_batch=12, devices=jax.devices()[:8])
    assert built == []  # the step factory was never called: nothing traced or compiled


def _toy_factory(global_batch):
    """A step that checks which global rows each device sees: state counts calls."""

    def factory(axis_name):
        def step(state, batch):
            x = batch["image"][:, 0]
            local = x.shape[0]
            start = lax.axis_index(axis_name) * local if axis_name else 0
            expected = state * global_batch + start + jnp.arange(local, dtype=jnp.float32)
            err, seen = jnp.max(jnp.abs(x - expected)), jnp.sum(x)
            if axis_name:
                err, seen = lax.pmax(err, axis_name), lax.psum(seen, axis_name)
            return state + 1.0, {"err": err, "seen": seen}
        return step

    return factory


@pytest.mark.parametrize("mode,k", [("sharding", 1), ("sharding", 4), ("pmap", 1), ("pmap", 4)])
def test_every_device_gets_its_rows_of_the_global_batch(mode, k):
    B = 16
    step_fn = ParallelStep(_toy_factory(B), mode=mode, global_batch=B,
                           devices=jax.devices()[:8], steps_per_call=k)
    state = step_fn.put_state(np.float32(0))
    rows = np.arange(2 * k * B, dtype=np.float32).reshape(2 * k, B, 1)  # row value = position
    for call in range(2):
        chunk = rows[call * k:(call + 1) * k]
        state, metrics = step_fn(state, {"image": chunk if k > 1 else chunk[0]})
        np.testing.assert_array_equal(metrics["err"], np.zeros(k if k > 1 else ()))
        np.testing.assert_array_equal(metrics["seen"], chunk.sum(axis=(1, 2)) if k > 1
                                      else chunk.sum())
    assert float(step_fn.host_state(state)) == 2 * k
    with pytest.raises(ValueError, match="expected"):
        step_fn.put_batch({"image": rows[:k, :12] if k > 1 else rows[0, :12]})


def test_example_keys_depend_only_on_the_global_position():
    rng = jax.random.key_data(jax.random.key(3))
    full = jax.random.key_data(example_keys(rng, 7, 16))
    assert len({tuple(k) for k in np.asarray(full)}) == 16  # all distinct
    np.testing.assert_array_equal(jax.random.key_data(example_keys(rng, 7, 16, 4, 4)), full[4:8])
    # Under pmap each device derives its own slice from its axis index:
    per_device = jax.pmap(
        lambda _: jax.random.key_data(example_keys(rng, 7, 16, lax.axis_index("b") * 2, 2)),
        axis_name="b", devices=jax.devices()[:8])(jnp.zeros(8))
    np.testing.assert_array_equal(np.reshape(per_device, (16, 2)), full)
    # A different step gives different keys.
    assert not np.array_equal(jax.random.key_data(example_keys(rng, 8, 16)), full)


def test_assert_synced_detects_diverged_replicas():
    devices = jax.devices()[:8]
    pstep = ParallelStep(_toy_factory(8), mode="pmap", global_batch=8, devices=devices)
    state = pstep.put_state({"w": np.arange(3.0)})
    assert_synced(state)
    diverged = jax.pmap(lambda s, i: jax.tree.map(lambda x: x + (i == 5), s),
                        devices=devices)(state, jnp.arange(8))
    with pytest.raises(AssertionError, match=r"\['w'\]"):
        assert_synced(diverged)

    sstep = ParallelStep(_toy_factory(8), mode="sharding", global_batch=8, devices=devices)
    state = sstep.put_state({"w": np.arange(3.0)})
    assert_synced(state)
    copies = [jax.device_put(np.arange(3.0) + (i == 5), d) for i, d in enumerate(devices)]
    bad = jax.make_array_from_single_device_arrays((3,), sstep.replicated, copies)
    with pytest.raises(AssertionError, match=r"\['w'\]"):
        assert_synced({"w": bad})


def test_make_multi_step_equals_single_steps_for_the_unet():
    single_state, single_losses = tiny.train_cached("sharding", 8, NUM_STEPS)
    multi_state, multi_losses = tiny.train_cached("sharding", 8, NUM_STEPS, steps_per_call=4)
    assert multi_losses.shape == (NUM_STEPS,)
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-6, atol=0)
    assert int(multi_state.step) == NUM_STEPS
    assert tiny.max_rel_diff(multi_state, single_state) <= 1e-6


def test_make_multi_step_is_a_scan_of_the_step():
    def step(state, batch):
        return state * 0.5 + batch["image"].sum(), {"loss": state}

    batches = {"image": np.arange(12.0).reshape(3, 4)}
    state, metrics = jax.jit(make_multi_step(step, 3))(1.0, batches)
    expect, losses = 1.0, []
    for j in range(3):
        losses.append(expect)
        expect = expect * 0.5 + batches["image"][j].sum()
    np.testing.assert_allclose(state, expect)
    np.testing.assert_allclose(metrics["loss"], losses)
    with pytest.raises(ValueError, match="leading axis of 2 micro-batches"):
        make_multi_step(step, 2)(1.0, batches)
    with pytest.raises(ValueError, match="positive int"):
        make_multi_step(step, 0)


def test_bf16_compute_keeps_float32_state_and_close_losses():
    """U-Net in bfloat16 (``UNet(dtype=jnp.bfloat16)``), parameters and Adam moments float32."""
    num_steps = 5
    _, _, _, factory = tiny.build(16, NUM_STEPS, dtype=jnp.bfloat16)
    step_fn = ParallelStep(lambda axis_name: factory(axis_name=axis_name), mode="none",
                           global_batch=16)
    state = step_fn.put_state(tiny.initial_state(NUM_STEPS))
    losses = []
    for batch in tiny.batches(16, num_steps):
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    state = step_fn.host_state(state)
    ref_losses = _reference()[1][:num_steps]
    assert np.all(np.isfinite(losses))
    # Measured ~1e-4: the zero-initialized output layer keeps early predictions small.
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-2)
    assert not np.array_equal(np.float32(losses), ref_losses)  # bf16 really was used
    for leaf in jax.tree.leaves((state.params, state.ema_params)):
        assert leaf.dtype == np.float32
    float_moments = [x for x in jax.tree.leaves(state.opt_state)
                     if np.issubdtype(x.dtype, np.floating)]
    assert float_moments and all(x.dtype == np.float32 for x in float_moments)


# --- the pure loss composes with the user's own shard_map / pmap -------------------------------


def _eps_model(params, x_t, t):
    """A tiny ε-network: (B, 8, 8, 1), (B,) -> (B, 8, 8, 1)."""
    h = x_t.reshape(x_t.shape[0], -1)
    temb = jnp.sin(t[:, None].astype(jnp.float32) * params["freq"])
    h = jnp.tanh(h @ params["w1"] + temb + params["b1"])
    return (h @ params["w2"]).reshape(x_t.shape)


def test_shard_map_and_pmap_of_l_simple_give_the_single_device_gradient():
    n, B = 8, 16
    sched = dj.linear_schedule(tiny.T)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w1": 0.1 * jax.random.normal(k1, (64, 32)), "b1": jnp.zeros(32),
              "freq": jax.random.uniform(k2, (32,)), "w2": 0.1 * jax.random.normal(k3, (32, 64))}
    x0 = jnp.asarray(tiny.batches(B, 1)[0]["image"])
    keys = jax.random.split(k4, B)  # one key per example of the global batch

    def loss(params, x0, keys):
        return dj.l_simple(functools.partial(_eps_model, params), sched, x0, keys).mean()

    reference = jax.jit(jax.grad(loss))(params, x0, keys)
    mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
    P = PartitionSpec

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                       out_specs=P())
    def sharded_grad(params, x0, keys):
        # pmean inside the differentiated function: the gradient of the global-batch mean.
        return jax.grad(lambda p: lax.pmean(loss(p, x0, keys), "data"))(params)

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                       out_specs=P())
    def summed_grad(params, x0, keys):
        # The trap: with check_vma=True the gradient of a replicated parameter is already
        # summed over "data", so this is n times the global gradient.
        return jax.grad(loss)(params, x0, keys)

    pmap_grad = jax.pmap(lambda p, x, k: lax.pmean(jax.grad(loss)(p, x, k), "data"),
                         axis_name="data", in_axes=(None, 0, 0), devices=jax.devices()[:n])

    # The batch and its keys are placed on the mesh, split over "data" (shard_map under jit
    # wants its inputs laid out as in_specs says).
    x0_sharded, keys_sharded = jax.device_put((x0, keys), NamedSharding(mesh, P("data")))
    got = sharded_grad(params, x0_sharded, keys_sharded)
    summed = summed_grad(params, x0_sharded, keys_sharded)
    from_pmap = jax.tree.map(lambda g: g[0], pmap_grad(
        params, x0.reshape(n, B // n, 8, 8, 1), keys.reshape(n, B // n)))
    assert tiny.max_rel_diff(got, reference) <= 1e-6
    assert tiny.max_rel_diff(from_pmap, reference) <= 1e-6
    assert tiny.max_rel_diff(summed, jax.tree.map(lambda g: n * g, reference)) <= 1e-6


def test_cpu_devices_setting_is_checked_against_the_running_backend():
    """train.cpu_devices: JAX's CPU backend here already runs 8 forced devices, so 8 is fine,
    another count is an error naming the key and how to set it, and 0 leaves JAX alone."""
    from diffusion_jax.training.config import validate_config
    from diffusion_jax.training.distributed import use_cpu_devices
    from tests.training.tiny import tiny_config

    assert len(jax.devices("cpu")) == 8
    use_cpu_devices(0)
    use_cpu_devices(8)
    with pytest.raises(ValueError, match=r"config\.train\.cpu_devices=2.*already started with 8 "
                                         r"devices.*jax_num_cpu_devices"):
        use_cpu_devices(2)
    with pytest.raises(ValueError, match=r"config\.train\.cpu_devices must be"):
        validate_config(tiny_config("ddpm", train__cpu_devices=-1))


def test_cpu_devices_gives_the_cli_run_that_many_devices(tmp_path):
    """`train --config.train.cpu_devices=2` in a fresh process (no XLA_FLAGS device count)
    trains on 2 CPU devices with parallel='sharding'."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "diffusion_jax", "train", "--config",
            str(repo / "experiments/configs/ddpm_digits.py"), "--workdir", str(tmp_path / "w"),
            "--progress=false", "--config.train.cpu_devices=2", "--config.train.parallel=sharding",
            "--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.model.num_groups=4",
            "--config.model.mid_attention=False", "--config.diffusion.T=20",
            "--config.train.num_steps=2", "--config.train.eval_every=0",
            "--config.eval.max_examples=8", "--config.eval.num_samples=2",
            "--config.eval.fd_samples=0", "--config.eval.ode_examples=0",
            "--config.eval.elbo_chunk_size=10", "--config.eval.progress_sampler=ddpm"]
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "w" / "run_info.json").read_text())
    assert info["device_count"] == 2 and info["backend"] == "cpu"
