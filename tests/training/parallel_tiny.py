"""A tiny U-Net DDPM trained through ``ParallelStep``: shared by the parallel and multi-host tests.

Also a worker script for the multi-host test: each process of a ``jax.distributed`` job runs

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=P JAX_PROCESS_ID=i \
        python tests/training/parallel_tiny.py OUT_DIR NUM_STEPS GLOBAL_BATCH

and writes its final state to OUT_DIR/state_{i}.npz.
"""

from __future__ import annotations

import functools
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data import pipeline
from diffusion_jax.models import UNet
from diffusion_jax.training.config import base_config
from diffusion_jax.training.kinds import ddpm
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step

T = 50
SEED = 0


def tiny_unet(dropout: float = 0.0, dtype=jnp.float32) -> UNet:
    # One resolution level (10k parameters): every U-Net layer kind but few of them, because
    # compiling the train step dominates these tests (~15 s for this, ~40 s with ch_mult=(1, 2)
    # on the shared 2-core machine).
    return UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), mid_attention=False,
                num_groups=4, dropout=dropout, dtype=dtype)


def optim_config(lr: float = 1e-3):
    # Constant lr from step 1 (warm-up of one step) and AdamW: the usual update rule, so small
    # gradient differences would show up in the parameters rather than hide under a tiny lr.
    return types.SimpleNamespace(optimizer="adamw", lr=lr, b1=0.9, b2=0.999, eps=1e-8,
                                 weight_decay=0.0, warmup_steps=0, decay="constant", grad_clip=1.0)


def build(global_batch: int, num_steps: int, *, dropout: float = 0.0, dtype=jnp.float32):
    """(model, loss_fn, optimizer, step factory) of the tiny DDPM; compiles nothing."""
    model = tiny_unet(dropout, dtype)
    config = base_config("ddpm")
    config.diffusion.T = T
    loss_fn = ddpm.make_loss(model, config, num_levels=pipeline.DIGITS_SPEC.num_levels)
    optimizer = make_optimizer(optim_config(), num_steps)
    factory = functools.partial(make_train_step, loss_fn, optimizer, ema_decay=0.9,
                                global_batch=global_batch)
    return model, loss_fn, optimizer, factory


def _init(model, optimizer, key):
    x = jnp.zeros((1, 8, 8, 1), jnp.float32)
    init_key, train_key = jax.random.split(key)
    params = model.init(init_key, x, jnp.ones((1,), jnp.int32), train=False)["params"]
    return create_train_state(params, optimizer, train_key)


@functools.cache
def initial_state(num_steps: int):
    """The host TrainState every run starts from (compiled once per process)."""
    model, _, optimizer, _ = build(16, num_steps)
    return jax.device_get(jax.jit(functools.partial(_init, model, optimizer))(
        jax.random.key(SEED)))


def state_structure(num_steps: int):
    """The TrainState's tree of shapes, without compiling (for loading saved leaves)."""
    model, _, optimizer, _ = build(16, num_steps)
    return jax.eval_shape(functools.partial(_init, model, optimizer), jax.random.key(SEED))


def batches(global_batch: int, num_steps: int, shard_index: int = 0, shard_count: int = 1):
    """This process's batches of steps 0..num_steps-1 (numpy), from the real pipeline."""
    ds = pipeline.make_dataset("digits", "train", batch_size=global_batch, seed=SEED,
                               shard_index=shard_index, shard_count=shard_count, prefetch=0)
    return [ds.batch_at(s) for s in range(num_steps)]


def train(mode: str, devices, *, global_batch: int = 16, num_steps: int = 20,
          steps_per_call: int = 1, shard_index: int = 0, shard_count: int = 1,
          check_sync: bool = False, state=None):
    """Trains the tiny DDPM from ``state`` (default :func:`initial_state`).

    Returns (host TrainState, per-step losses (num_steps,)).
    """
    from diffusion_jax.training.step import assert_synced

    factory = build(global_batch, num_steps)[3]
    state = initial_state(num_steps) if state is None else state
    step_fn = ParallelStep(lambda axis_name: factory(axis_name=axis_name), mode=mode,
                           global_batch=global_batch, devices=devices,
                           steps_per_call=steps_per_call)
    data = batches(global_batch, num_steps, shard_index, shard_count)
    if steps_per_call > 1:
        data = [jax.tree.map(lambda *xs: np.stack(xs), *data[i:i + steps_per_call])
                for i in range(0, num_steps, steps_per_call)]
    state = step_fn.put_state(state)
    losses = []
    for batch in data:
        state, metrics = step_fn(state, batch)
        losses.append(np.atleast_1d(np.asarray(metrics["loss"])))
    if check_sync:
        assert_synced(state)
    return step_fn.host_state(state), np.concatenate(losses)


@functools.cache
def train_cached(mode: str, num_devices: int, num_steps: int = 20, steps_per_call: int = 1):
    """:func:`train` on ``jax.devices()[:num_devices]``, once per process (tests share runs)."""
    return train(mode, jax.devices()[:num_devices], num_steps=num_steps,
                 steps_per_call=steps_per_call, check_sync=mode != "none")


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(tree)}


def _float_pairs(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys(), set(fa) ^ set(fb)
    for k in fb:
        assert fa[k].shape == fb[k].shape, k
        if np.issubdtype(fb[k].dtype, np.floating):
            yield k, fa[k].astype(np.float64), fb[k].astype(np.float64)
        else:  # step counters, keys, flags: must match exactly
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def max_rel_diff(a, b) -> float:
    """max |a − b| / max |b| over all float leaves: the error relative to the parameter scale.

    Non-float leaves (step, key, counters) must be equal.
    """
    pairs = list(_float_pairs(a, b))
    err = max(float(np.max(np.abs(x - y), initial=0)) for _, x, y in pairs)
    scale = max(float(np.max(np.abs(y), initial=0)) for _, _, y in pairs)
    return err / scale


def max_leaf_rel_diff(a, b) -> float:
    """max over float leaves of max|a − b| / max|b|: each leaf's error relative to its own scale.

    Stricter than :func:`max_rel_diff` for leaves that start at zero (the U-Net's zero-initialized
    output convolutions), whose whole value is a few Adam updates.
    """
    worst = 0.0
    for _, x, y in _float_pairs(a, b):
        scale = float(np.max(np.abs(y), initial=0))
        if scale > 0:
            worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def save_state(path, state, losses=None) -> None:
    extra = {} if losses is None else {"__losses__": np.asarray(losses)}
    np.savez(path, **flat(state), **extra)


def load_state(path, num_steps: int):
    """A TrainState saved by :func:`save_state` (the structure from :func:`state_structure`)."""
    with np.load(path) as f:
        leaves = {k: f[k] for k in f.files}
    paths, treedef = jax.tree.flatten_with_path(state_structure(num_steps))
    return jax.tree.unflatten(treedef, [leaves[jax.tree_util.keystr(p)] for p, _ in paths])


def _worker(out_dir: str, num_steps: int, global_batch: int) -> None:
    from diffusion_jax.training.distributed import maybe_initialize

    assert maybe_initialize(), "the worker expects a multi-process environment"
    index, count = jax.process_index(), jax.process_count()
    info = {"process_index": index, "process_count": count, "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count()}
    # check_sync: the replicas on this process's devices and across processes agree.
    # The initial state comes from the test process (saves compiling the init here).
    state = load_state(f"{out_dir}/initial_state.npz", num_steps)
    state, losses = train("sharding", jax.devices(), global_batch=global_batch,
                          num_steps=num_steps, shard_index=index, shard_count=count,
                          check_sync=True, state=state)
    # Each process read only its rows of the global batch:
    info["local_batch"] = int(batches(global_batch, 1, index, count)[0]["image"].shape[0])
    save_state(f"{out_dir}/state_{index}.npz", state, losses)
    with open(f"{out_dir}/info_{index}.json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
