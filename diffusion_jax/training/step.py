"""The train state and the optax train step: single device, ``jax.pmap``, or ``jax.jit`` over a Mesh.

One pure step function serves all three. Per-example PRNG keys are derived from the global
example position (``split(fold_in(key, step), global_batch)``), so the same seed and global batch
give the same update whatever the device count.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion_jax._checks import check_choice

PARALLEL_MODES = ("none", "sharding", "pmap")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: a plain pytree (orbax saves it as is)."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array  # raw uint32 key data (2,): the run's base key


def create_train_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
    rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        rng=jnp.asarray(rng, jnp.uint32),
    )


def example_keys(rng, step, global_batch: int, start=0, count=None):
    """Keys of examples [start, start + count) of the global batch at ``step``: typed (count,)."""
    keys = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(rng), step), global_batch)
    if count is None:
        return keys
    return jax.lax.dynamic_slice_in_dim(keys, start, count)


def make_train_step(loss_fn, optimizer, *, ema_decay: float, global_batch: int,
                    axis_name: str | None = None, loss_takes_step: bool = False):
    """Returns ``train_step(state, batch) -> (state, metrics)``, pure and not yet compiled.

    ``axis_name``: set under ``jax.pmap``; gradients and metrics are averaged with ``lax.pmean``.
    Non-finite gradients are skipped by the optimizer (``optax.apply_if_finite``); the EMA is
    then left unchanged too, and ``metrics["skipped"]`` is 1.
    """

    def train_step(state: TrainState, batch):
        local = batch["image"].shape[0]
        start = jax.lax.axis_index(axis_name) * local if axis_name else 0
        keys = example_keys(state.rng, state.step, global_batch, start, local)

        def objective(params):
            if loss_takes_step:
                return loss_fn(params, batch, keys, True, step=state.step)
            return loss_fn(params, batch, keys, True)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        if axis_name:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite
        ema_params = jax.tree.map(
            lambda e, p: jnp.where(finite, ema_decay * e + (1.0 - ema_decay) * p, e),
            state.ema_params, params)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                       skipped=1 - finite.astype(jnp.int32),
                       consecutive_skips=opt_state.notfinite_count)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params)
        return new_state, metrics

    return train_step


class ParallelStep:
    """Places state and batches for a parallel mode and runs the compiled step.

    mode "none": ``jax.jit`` on one device; "sharding": ``jax.jit`` over a 1-D Mesh with the
    batch sharded on axis "data" and the state replicated (the multi-host path); "pmap":
    ``jax.pmap`` with a replicated state and gradients averaged over the "batch" axis.
    """

    def __init__(self, train_step_factory, *, mode: str, global_batch: int, devices=None):
        check_choice("train.parallel", mode, PARALLEL_MODES)
        self.mode = mode
        self.devices = list(devices if devices is not None else jax.devices())
        if mode == "none":
            self.devices = self.devices[:1]
        n = len(self.devices)
        if global_batch % n:
            raise ValueError(
                f"data.batch_size={global_batch} (the global batch) must be divisible by the "
                f"device count {n}; choose a multiple of {n}."
            )
        self.num_devices = n
        if mode == "pmap":
            self._step = jax.pmap(train_step_factory(axis_name="batch"), axis_name="batch",
                                  devices=self.devices, donate_argnums=0)
        else:
            self.mesh = Mesh(np.array(self.devices), ("data",))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
            self._step = jax.jit(train_step_factory(axis_name=None), donate_argnums=0,
                                 out_shardings=(self.replicated, self.replicated))

    def put_state(self, state: TrainState) -> TrainState:
        """Host (or any) state -> device layout of this mode."""
        if self.mode == "pmap":
            stacked = jax.tree.map(
                lambda x: np.broadcast_to(np.asarray(x), (self.num_devices,) + np.shape(x)), state)
            return jax.pmap(lambda x: x, devices=self.devices)(stacked)
        return jax.device_put(state, self.replicated)

    def put_batch(self, batch):
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.reshape(x, (self.num_devices, -1) + x.shape[1:]), batch)
        return jax.device_put(batch, self.batch_sharding)

    def host_state(self, state: TrainState) -> TrainState:
        """Device state -> one numpy copy (what checkpoints and evaluation use)."""
        if self.mode == "pmap":
            state = jax.tree.map(lambda x: x[0], state)
        return jax.device_get(state)

    def __call__(self, state, batch):
        state, metrics = self._step(state, self.put_batch(batch))
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return state, metrics


def assert_synced(state) -> None:
    """Raises AssertionError unless every replica of a pmap-replicated pytree is identical."""
    for leaf in jax.tree.leaves(jax.device_get(state)):
        leaf = np.asarray(leaf)
        if leaf.ndim and not all(np.array_equal(leaf[0], leaf[i]) for i in range(1, leaf.shape[0])):
            raise AssertionError("replicas diverged: a replicated leaf differs across devices")
