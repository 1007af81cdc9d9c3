"""The train state and the optax train step: one device, ``jax.pmap``, or ``jax.jit`` over a Mesh.

One pure step function serves all three. Per-example PRNG keys are derived from the global
example position (``split(fold_in(key, step), global_batch)[i]`` for example i of the global
batch), so the same seed and global batch give the same update whatever the device count or
process count. Exception: the U-Net's dropout draws one mask per call from the key of the
first example it sees, so under ``pmap`` (one call per device) dropout > 0 differs with the
device count; with "none" and "sharding" the whole global batch is one call and it does not.

Multi-host (``jax.process_count() > 1``): only mode "sharding" is supported. Each process
passes its own slice of the global batch (``make_dataset(..., shard_index=process_index,
shard_count=process_count)``); :class:`ParallelStep` assembles the global array with
``jax.make_array_from_process_local_data`` over a Mesh whose devices are ordered by process,
so process i's slice is rows [i·B/P, (i+1)·B/P) of the global batch, as in the pipeline.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion_jax._checks import check_choice, is_int

PARALLEL_MODES = ("none", "sharding", "pmap")


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: a plain pytree (orbax saves it as is)."""

    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array  # raw uint32 key data (2,): the run's base key
    # State of the objective itself (e.g. the loss history of importance-sampled t); an empty
    # dict when the objective has none.
    loss_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(params, optimizer: optax.GradientTransformation, rng,
                       loss_state=None) -> TrainState:
    rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        rng=jnp.asarray(rng, jnp.uint32),
        loss_state={} if loss_state is None else loss_state,
    )


def example_keys(rng, step, global_batch: int, start=0, count=None):
    """Keys of examples [start, start + count) of the global batch at ``step``: typed (count,).

    Key of global example i at step s: ``split(fold_in(rng, s), global_batch)[i]``. It depends
    only on (rng, s, global_batch, i), never on the device or process that holds example i.
    """
    keys = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(rng), step), global_batch)
    if count is None:
        return keys
    return jax.lax.dynamic_slice_in_dim(keys, start, count)


def make_train_step(loss_fn, optimizer, *, ema_decay: float, global_batch: int,
                    axis_name: str | None = None, update_loss_state=None):
    """Returns ``train_step(state, batch) -> (state, metrics)``, pure and not yet compiled.

    ``loss_fn(params, batch, keys, *, train, step) -> (loss, metrics)``: keys holds one PRNG key
    per local example (shape (B,)), step is the state's step counter (e.g. for KL warm-up).
    With ``update_loss_state(loss_state, per_example) -> loss_state`` the loss_fn also takes
    ``loss_state=`` and returns per-example statistics under ``metrics["per_example"]``; they
    are gathered over the global batch (under pmap) before the update, so every device keeps
    the same state.

    ``axis_name``: set under ``jax.pmap``; gradients and metrics are averaged with ``lax.pmean``.
    Non-finite gradients are skipped by the optimizer (``optax.apply_if_finite``); the EMA is
    then left unchanged too, and ``metrics["skipped"]`` is 1.
    """

    def train_step(state: TrainState, batch):
        local = batch["image"].shape[0]
        start = jax.lax.axis_index(axis_name) * local if axis_name else 0
        keys = example_keys(state.rng, state.step, global_batch, start, local)

        def objective(params):
            if update_loss_state is None:
                return loss_fn(params, batch, keys, train=True, step=state.step)
            return loss_fn(params, batch, keys, train=True, step=state.step,
                           loss_state=state.loss_state)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        per_example = metrics.pop("per_example", None)
        if axis_name:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        loss_state = state.loss_state
        if update_loss_state is not None:
            if axis_name:
                per_example = jax.lax.all_gather(per_example, axis_name, tiled=True)
            loss_state = update_loss_state(loss_state, per_example)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite
        averaged = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)  # Polyak
        ema_params = jax.tree.map(lambda a, e: jnp.where(finite, a, e), averaged, state.ema_params)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                       skipped=1 - finite.astype(jnp.int32),
                       consecutive_skips=opt_state.notfinite_count)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params, loss_state=loss_state)
        return new_state, metrics

    return train_step


def make_multi_step(train_step, num_steps: int):
    """``num_steps`` train steps in one compiled call, as a ``lax.scan`` over micro-batches.

    Returns ``multi_step(state, batches) -> (state, metrics)``: every leaf of ``batches`` has a
    leading axis of length k = ``num_steps`` (batch j is ``tree.map(lambda x: x[j], batches)``)
    and every metric comes back stacked, shape (k,). Equal to k calls of ``train_step`` (the
    scan carries the state, so the step counter and per-example keys advance as usual); it
    saves k − 1 host round trips and dispatches.
    """
    if not is_int(num_steps) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    num_steps = int(num_steps)

    def multi_step(state, batches):
        for path, leaf in jax.tree.leaves_with_path(batches):
            if np.ndim(leaf) < 1 or np.shape(leaf)[0] != num_steps:
                raise ValueError(
                    f"make_multi_step({num_steps}): batch leaf {jax.tree_util.keystr(path)} has "
                    f"shape {np.shape(leaf)}; expected a leading axis of {num_steps} "
                    f"micro-batches.")
        return jax.lax.scan(train_step, state, batches)

    return multi_step


def _process_ordered(devices) -> list:
    """Devices sorted by (process, id): process i's devices form one contiguous block."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))


class ParallelStep:
    """Places state and batches for a parallel mode and runs the compiled step.

    mode "none": ``jax.jit`` on one device; "sharding": ``jax.jit`` over a 1-D Mesh with the
    batch sharded on axis "data" and the state replicated (also multi-host); "pmap":
    ``jax.pmap`` with a replicated state and gradients averaged over the "batch" axis.

    Args:
      train_step_factory: ``factory(axis_name) -> train_step`` (axis_name is "batch" for pmap,
        else None), e.g. ``functools.partial(make_train_step, loss_fn, optimizer, ...)``.
      mode: one of ``PARALLEL_MODES``.
      global_batch: B, examples per step over all devices and processes (``data.batch_size``);
        must be divisible by the device count (checked here, before anything compiles).
      devices: the devices to use (default: all, ``jax.devices()``); "none" uses the first.
      steps_per_call: k > 1 runs k steps per call (:func:`make_multi_step`); batches then have a
        leading axis k, (k, b, ...), and metrics come back stacked, shape (k,).

    Batches passed to ``__call__`` hold this process's examples: the whole global batch in a
    single process, rows [i·B/P, (i+1)·B/P) of it in process i of P.
    """

    def __init__(self, train_step_factory, *, mode: str, global_batch: int, devices=None,
                 steps_per_call: int = 1):
        check_choice("train.parallel", mode, PARALLEL_MODES)
        if not is_int(global_batch) or global_batch < 1:
            raise ValueError(f"global_batch must be a positive int, got {global_batch!r}.")
        if not is_int(steps_per_call) or steps_per_call < 1:
            raise ValueError(f"steps_per_call must be a positive int, got {steps_per_call!r}.")
        self.mode = mode
        self.global_batch = int(global_batch)
        self.steps_per_call = int(steps_per_call)
        self.process_count = jax.process_count()
        devices = list(devices if devices is not None else jax.devices())
        if not devices:
            raise ValueError("devices must not be empty.")
        if self.process_count > 1:
            if mode != "sharding":
                raise ValueError(
                    f"train.parallel={mode!r} runs on one process, but this job has "
                    f"{self.process_count} processes; use train.parallel='sharding' (jit over a "
                    f"Mesh of all processes' devices) for multi-host training.")
            devices = _process_ordered(devices)
            per_process = {}
            for d in devices:
                per_process[d.process_index] = per_process.get(d.process_index, 0) + 1
            if len(per_process) != self.process_count or len(set(per_process.values())) != 1:
                raise ValueError(
                    f"multi-host sharding needs the same number of devices from every one of the "
                    f"{self.process_count} processes; got {per_process} devices per process.")
        if mode == "none":
            devices = devices[:1]
        self.devices = devices
        n = len(devices)
        if self.global_batch % n:
            raise ValueError(
                f"data.batch_size={self.global_batch} (the global batch) must be divisible by the "
                f"device count {n}; choose a multiple of {n}."
            )
        self.num_devices = n
        self.local_batch = self.global_batch // self.process_count

        def build(axis_name):
            step = train_step_factory(axis_name=axis_name)
            return make_multi_step(step, self.steps_per_call) if self.steps_per_call > 1 else step

        if mode == "pmap":
            self._step = jax.pmap(build("batch"), axis_name="batch", devices=self.devices,
                                  donate_argnums=0)
        else:
            self.mesh = Mesh(np.array(self.devices), ("data",))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            # With k steps per call the batch axis is axis 1: (k, B, ...).
            if self.steps_per_call == 1:
                spec = PartitionSpec("data")
            else:
                spec = PartitionSpec(None, "data")
            self.batch_sharding = NamedSharding(self.mesh, spec)
            self._step = jax.jit(build(None), donate_argnums=0,
                                 out_shardings=(self.replicated, self.replicated))

    def put_state(self, state: TrainState) -> TrainState:
        """Host (or any single-copy) state -> device layout of this mode.

        Every process must pass the same values (they are the replicas of the state).
        """
        host = jax.tree.map(np.asarray, state)
        if self.mode == "pmap":
            stacked = jax.tree.map(
                lambda x: np.broadcast_to(x, (self.num_devices,) + x.shape), host)
            return jax.pmap(lambda x: x, devices=self.devices)(stacked)
        # make_array_from_callback also builds arrays that span other processes' devices.
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx]),
            host)

    def _check_batch(self, batch) -> None:
        axis = 0 if self.steps_per_call == 1 else 1
        for path, leaf in jax.tree.leaves_with_path(batch):
            shape = np.shape(leaf)
            ok = len(shape) > axis and shape[axis] == self.local_batch and (
                axis == 0 or shape[0] == self.steps_per_call)
            if not ok:
                where = (f"this process's share of the global batch {self.global_batch} over "
                         f"{self.process_count} processes" if self.process_count > 1
                         else "the global batch")
                lead = f"({self.steps_per_call}, {self.local_batch}, ...)" if axis else (
                    f"({self.local_batch}, ...)")
                raise ValueError(
                    f"batch leaf {jax.tree_util.keystr(path)} has shape {shape}; expected {lead}: "
                    f"{where}.")

    def put_batch(self, batch):
        """This process's batch (numpy) -> the device layout of this mode."""
        self._check_batch(batch)
        if self.mode == "pmap":
            n, k = self.num_devices, self.steps_per_call
            if k == 1:
                return jax.tree.map(lambda x: np.reshape(x, (n, -1) + x.shape[1:]), batch)
            # (k, B, ...) -> (n, k, B/n, ...): device d gets rows [d·B/n, (d+1)·B/n) of each.
            return jax.tree.map(
                lambda x: np.swapaxes(np.reshape(x, (k, n, -1) + x.shape[2:]), 0, 1), batch)
        axis = 0 if self.steps_per_call == 1 else 1

        def assemble(x):
            x = np.asarray(x)
            shape = list(x.shape)
            shape[axis] = self.global_batch
            return jax.make_array_from_process_local_data(self.batch_sharding, x, tuple(shape))

        return jax.tree.map(assemble, batch)

    def host_state(self, state: TrainState) -> TrainState:
        """Device state -> one numpy copy (what checkpoints and evaluation use)."""
        if self.mode == "pmap":
            return jax.device_get(jax.tree.map(lambda x: x[0], state))
        return jax.tree.map(_fetch, state)

    def __call__(self, state, batch):
        state, metrics = self._step(state, self.put_batch(batch))
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return state, metrics


def _fetch(x) -> np.ndarray:
    """One host copy of an array, also when it spans other processes' devices."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_shards[0].data)
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def assert_synced(state) -> None:
    """Raises AssertionError unless every replica of a replicated pytree is identical.

    Leaves that are replicated ``jax.Array``s ("sharding" mode): every addressable copy is
    compared, and with several processes the copies of all processes too. Other leaves
    (pmap outputs, or numpy arrays stacked per replica): the slices along the leading axis.
    """
    multi = jax.process_count() > 1
    for path, leaf in jax.tree.leaves_with_path(state):
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
            copies = [np.asarray(s.data) for s in leaf.addressable_shards]
            if not all(np.array_equal(copies[0], c) for c in copies[1:]):
                raise AssertionError(f"replicas diverged: the copies of {name} differ across "
                                     f"this process's devices")
            if multi:
                from jax.experimental import multihost_utils

                multihost_utils.assert_equal(
                    copies[0], fail_message=f"replicas diverged: {name} differs across processes")
            continue
        arr = np.asarray(jax.device_get(leaf))
        if arr.ndim and not all(np.array_equal(arr[0], arr[i]) for i in range(1, arr.shape[0])):
            raise AssertionError(f"replicas diverged: {name} differs across devices")
