"""Measurements that run inside one worker process of ``bench/run.py``.

``run.py`` sets ``XLA_FLAGS`` before this module is imported (flags are read once, when the JAX
backend starts). Every task returns a JSON-serialisable dict; times are wall-clock seconds from
``time.perf_counter`` around calls that end in ``jax.block_until_ready``. Compile time is always
measured apart, with an explicit ``jit(f).lower(...).compile()`` whose executable the later
calls reuse (the jit cache is shared with the AOT path).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from diffusion_jax.elbo import (
    denoising_matching_term,
    diffusion_elbo,
    prior_kl,
    reconstruction_term,
)
from diffusion_jax.models import UNet, num_params, timestep_embedding, unet_benchmark, unet_digits
from diffusion_jax.samplers import ddpm_denoise, ddpm_sample, make_ddpm_step
from diffusion_jax.schedules import linear_schedule
from diffusion_jax.training import kinds
from diffusion_jax.training.config import base_config
from diffusion_jax.training.kinds import ddpm as ddpm_kind
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step

NUM_LEVELS = 256  # the discretized decoder of 8-bit images
ROOT = Path(__file__).resolve().parents[1]  # the repository: configs are named relative to it


class TinyEpsMLP(nn.Module):
    """A small ε-network for the "small network" ELBO target: x (B, H, W, C), t (B,) → (B, H, W, C).

    ε̂ = W_3 SiLU(W_2 SiLU(W_1 [flatten(x), sinusoidal(t, 32)])). It carries the two fields that
    ``ddpm_kind.reverse_fn`` reads from a U-Net (``prediction``, ``learned_variance``).
    """

    hidden: int = 128
    prediction: str = "eps"
    learned_variance: bool = False

    @nn.compact
    def __call__(self, x, t, *, train: bool):
        del train  # no dropout
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (batch,))
        h = jnp.concatenate([x.reshape(batch, -1), timestep_embedding(t, 32)], axis=-1)
        h = nn.silu(nn.Dense(self.hidden)(h))
        h = nn.silu(nn.Dense(self.hidden)(h))
        return nn.Dense(math.prod(x.shape[1:]))(h).reshape(x.shape)


def build_net(name: str, *, dtype=jnp.float32, remat: bool = False):
    """The bench's networks: "benchmark" (28×28×1, 1.54 M params), "digits", "tiny", "mlp", "mlp32"."""
    if name == "benchmark":
        return unet_benchmark(dtype=dtype, remat=remat)
    if name == "digits":
        return unet_digits(dropout=0.0, dtype=dtype, remat=remat)
    if name == "tiny":  # a U-Net small enough for the smoke test
        return UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), mid_attention=True,
                    num_heads=1, dropout=0.0, num_groups=2, dtype=dtype, remat=remat)
    if name == "mlp":
        return TinyEpsMLP()
    if name == "mlp32":  # the same MLP with 32 hidden units: per-t work far below one dispatch
        return TinyEpsMLP(hidden=32)
    raise ValueError(f"net must be one of benchmark, digits, tiny, mlp, mlp32; got {name!r}.")


# --------------------------------------------------------------------------- helpers


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """User + system CPU seconds of this process (all threads)."""
    t = os.times()
    return t.user + t.system


def _block(x):
    return jax.block_until_ready(x)


def _time_reps(fn, reps: int, warmup: int = 0):
    """Runs ``fn()`` ``warmup`` times untimed, then ``reps`` times timed, blocking on each
    result; returns (times, last result). Millisecond-scale calls need the warm-up: the first
    calls of a fresh executable pay for buffer allocation and page faults."""
    for _ in range(warmup):
        _block(fn())
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = _block(fn())
        times.append(time.perf_counter() - start)
    return times, out


def _compile(jitted, *args):
    """Traces, lowers and compiles ``jitted`` for ``args``; returns (compiled, seconds)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX returned one dict per device
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def _memory(compiled) -> dict | None:
    """XLA's static buffer assignment of one executable (per device), in MiB."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend/executable type implements it
        return None
    if stats is None:
        return None
    mib = lambda b: float(b) / 2**20
    return {
        "temp_mib": mib(stats.temp_size_in_bytes),
        "argument_mib": mib(stats.argument_size_in_bytes),
        "output_mib": mib(stats.output_size_in_bytes),
        "alias_mib": mib(stats.alias_size_in_bytes),
    }


def _images(shape, seed: int = 0) -> np.ndarray:
    """Images on the 256 levels of [−1, 1] (what the discretized decoder expects)."""
    levels = np.random.default_rng(seed).integers(0, NUM_LEVELS, shape)
    return (levels / (NUM_LEVELS - 1) * 2.0 - 1.0).astype(np.float32)


def _pace(pace, moment: str) -> None:
    """``pace.before()`` / ``pace.after()`` around a timed repetition, if a pace is given."""
    if pace is not None:
        getattr(pace, moment)()


def _init(model, image_shape):
    """Initial parameters; jitted, since op-by-op initialisation of a U-Net is slow on CPU."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    init = jax.jit(lambda k: model.init(k, x, jnp.ones((1,), jnp.int32), train=False)["params"])
    return init(jax.random.key(0))


def _apply_fn(model, params):
    return lambda x, t: model.apply({"params": params}, x, t, train=False)


# --------------------------------------------------------------------------- tasks


def train_task(*, net: str, image_shape, batch: int, steps: int, warmup: int, devices: int,
               mode: str, dtype: str, remat: bool, reps: int = 1, pace=None) -> dict:
    """Images/s of the library's DDPM train step (L_simple, AdamW, linear T = 1000).

    The step is ``make_train_step(kinds.ddpm.make_loss(...), make_optimizer(...))`` jitted with the
    state donated by ``ParallelStep`` in ``mode``; each timed step includes putting the host
    batch on the device(s), as the trainer does. ``reps`` repetitions of ``steps`` steps, each
    step timed on its own; ``rep_step_s`` is each repetition's median. ``pace`` (see
    ``run.StdinPace``): ``pace.before()`` / ``pace.after()`` around each repetition, so that the
    orchestrator can alternate repetitions between worker processes.
    """
    if jax.device_count() < devices:
        raise RuntimeError(f"asked for {devices} devices, JAX sees {jax.device_count()}: "
                           "XLA_FLAGS was not applied before JAX started.")
    model = build_net(net, dtype=jnp.dtype(dtype), remat=remat)
    cfg = base_config("ddpm")
    cfg.optim.optimizer, cfg.optim.lr, cfg.diffusion.loss = "adamw", 2e-4, "l_simple"
    loss_fn = ddpm_kind.make_loss(model, cfg, num_levels=NUM_LEVELS)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    images = _images((batch, *image_shape))
    params = _init(model, image_shape)
    # Jitted: op-by-op optimizer initialisation compiles one tiny program per leaf shape.
    state = jax.jit(lambda p, k: create_train_state(p, optimizer, k))(params, jax.random.key(1))

    def factory(axis_name):
        return make_train_step(loss_fn, optimizer, ema_decay=cfg.optim.ema_decay,
                               global_batch=batch, axis_name=axis_name)

    runner = ParallelStep(factory, mode=mode, global_batch=batch, devices=jax.devices()[:devices])
    state = runner.put_state(state)
    host_batch = {"image": images}
    # ParallelStep keeps its jitted/pmapped step in ``_step``: lowering it here compiles the very
    # executable that ``runner(...)`` then finds in the jit cache.
    compiled, compile_s = _compile(runner._step, state, runner.put_batch(host_batch))

    start = time.perf_counter()
    state, metrics = _block(runner(state, host_batch))
    first_call_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = _block(runner(state, host_batch))
    times, rep_times, cpu_start = [], [], _cpu_s()
    for _ in range(reps):
        _pace(pace, "before")
        rep = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = _block(runner(state, host_batch))
            rep.append(time.perf_counter() - start)
        _pace(pace, "after")
        times += rep
        rep_times.append(rep)
    cores_busy = (_cpu_s() - cpu_start) / sum(times)
    loss = float(metrics["loss"])
    step_s = statistics.median(times)
    return {
        "net": net, "params": num_params(params), "batch": batch, "image_shape": list(image_shape),
        "mode": mode, "devices": devices, "dtype": dtype, "remat": remat,
        "compile_s": compile_s, "first_call_s": first_call_s,
        "step_s_median": step_s, "step_s_all": times, "images_per_s": batch / step_s,
        "steps_per_s": 1.0 / step_s, "cores_busy": cores_busy, "reps": reps,
        "rep_step_s": [statistics.median(rep) for rep in rep_times], "rep_step_s_all": rep_times,
        "xla_flops_per_step": _cost_flops(compiled), "xla_memory": _memory(compiled),
        "loss_finite": math.isfinite(loss),
    }


def train_main_task(*, config: str, steps: int, reps: int, warmup: int,
                    model_overrides: dict | None = None, distinct_batches: int = 8,
                    pace=None) -> dict:
    """Steps/s of the exact train step ``make train`` runs, built from ``config`` as the
    trainer builds it (``diffusion_jax.training.trainer._train``).

    ``cli.load_config(config)``; ``kind = kinds.get(cfg.model_kind)``; the data set, network,
    ``kind.make_loss`` (the data set's levels), ``make_optimizer(cfg.optim, cfg.train.num_steps)``,
    ``make_train_step(..., ema_decay=cfg.optim.ema_decay, global_batch=cfg.data.batch_size,
    update_loss_state=...)`` and ``ParallelStep(mode=cfg.train.parallel, steps_per_call=k)`` with
    k = ``cfg.train.steps_per_call`` (1 when the config has no such key); with k > 1 every call
    gets k real batches stacked to (k, B, ...) and counts k steps. The batches are the trainer's
    first ``distinct_batches`` × k (``batch_at``), read beforehand and cycled, so data loading is
    not timed. After compilation, a first call and ``warmup`` untimed steps, ``reps``
    repetitions of ``steps`` steps (rounded up to whole calls) are each timed as a whole, as the
    trainer runs them (dispatched back to back, one wait at the end), and divided by the step
    count. ``model_overrides`` (the smoke test only) replace ``config.model`` keys. ``pace``:
    as in ``train_task``, around each repetition.
    """
    from diffusion_jax.cli import load_config
    from diffusion_jax.data import pipeline

    cfg = load_config(str(ROOT / config))  # an absolute path stays as it is
    if model_overrides:
        cfg.model.update(model_overrides)
    kind = kinds.get(cfg.model_kind)
    train_ds = pipeline.make_dataset(
        cfg.data.name, cfg.data.train_split, batch_size=cfg.data.batch_size, seed=cfg.seed,
        data_dir=cfg.data.data_dir or None, binarize=cfg.data.binarize,
        dequantize=cfg.data.dequantize)
    image_shape, num_levels = tuple(train_ds.image_shape), int(train_ds.num_levels)
    model = kind.build(cfg, image_shape)
    loss_fn = kind.make_loss(model, cfg, num_levels=num_levels)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    train_key = jax.random.split(jax.random.key(cfg.seed), 3)[0]  # the trainer's split
    params = kind.init_params(model, image_shape, jax.random.key(cfg.seed, impl="rbg"))
    # The trainer's initial state, computed in one jitted call (op by op, the optimizer's
    # initialisation compiles one tiny program per leaf shape).
    state = jax.jit(lambda p, k: create_train_state(p, optimizer, k, kind.init_loss_state(cfg)))(
        params, train_key)
    k = int(cfg.train.get("steps_per_call", 1))
    factory = functools.partial(make_train_step, loss_fn, optimizer,
                                ema_decay=cfg.optim.ema_decay, global_batch=cfg.data.batch_size,
                                update_loss_state=kind.loss_state_update(cfg))
    runner = ParallelStep(lambda axis_name: factory(axis_name=axis_name),
                          mode=cfg.train.parallel, global_batch=cfg.data.batch_size,
                          steps_per_call=k)
    state = runner.put_state(state)

    def call_batch(i):  # the host batch of one call: k consecutive trainer batches if k > 1
        if k == 1:
            return train_ds.batch_at(i)
        parts = [train_ds.batch_at(i * k + j) for j in range(k)]
        return {key: np.stack([p[key] for p in parts]) for key in parts[0]}

    host = [call_batch(i) for i in range(distinct_batches)]
    compiled, compile_s = _compile(runner._step, state, runner.put_batch(host[0]))
    calls = 0

    def run(n_calls):
        nonlocal state, calls
        metrics = None
        for _ in range(n_calls):
            state, metrics = runner(state, host[calls % len(host)])
            calls += 1
        return _block((state, metrics))[1]

    start = time.perf_counter()
    run(1)
    first_call_s = time.perf_counter() - start
    run(max(1, -(-warmup // k)))
    calls_per_rep = max(1, -(-steps // k))
    steps_per_rep = calls_per_rep * k
    times, cpu_start = [], _cpu_s()
    for _ in range(reps):
        _pace(pace, "before")
        start = time.perf_counter()
        metrics = run(calls_per_rep)
        times.append((time.perf_counter() - start) / steps_per_rep)
        _pace(pace, "after")
    cores_busy = (_cpu_s() - cpu_start) / (sum(times) * steps_per_rep)
    loss = np.asarray(metrics["loss"])
    step_s = statistics.median(times)
    batch = int(cfg.data.batch_size)
    # Cost analysis counts a loop body once: the FLOPs per step are known for k = 1 only.
    flops = _cost_flops(compiled) if k == 1 else None
    return {
        "net": "digits_main", "config": str(config), "model_kind": cfg.model_kind,
        "params": num_params(params), "batch": batch, "image_shape": list(image_shape),
        "mode": cfg.train.parallel, "devices": runner.num_devices, "steps_per_call": k,
        "dtype": cfg.model.get("dtype", "float32"), "remat": False,
        "model_overrides": model_overrides or None,
        "steps_per_rep": steps_per_rep, "reps": reps, "warmup": warmup,
        "compile_s": compile_s, "first_call_s": first_call_s,
        "step_s_median": step_s, "step_s_all": times, "images_per_s": batch / step_s,
        "steps_per_s": 1.0 / step_s, "cores_busy": cores_busy,
        "rep_step_s": times, "rep_step_s_all": [[t] for t in times],
        "xla_flops_per_step": flops, "xla_memory": _memory(compiled),
        "loss_finite": bool(np.all(np.isfinite(loss))),
    }


def sample_task(*, net: str, image_shape, batch: int, T: int, steps: int, reps: int) -> dict:
    """Ancestral sampling: the ``lax.scan`` sampler against a Python loop over the same step.

    With ``steps == T`` the scan side is ``ddpm_sample`` itself; otherwise both sides run the
    first ``steps`` steps t = T..T−steps+1 (``ddpm_denoise``, the same scan) and the time is
    scaled by T / steps (every step costs one network evaluation of the same size).
    """
    model = build_net(net)
    sched = linear_schedule(T)
    shape = (batch, *image_shape)
    params = _init(model, image_shape)
    key = jax.random.key(0)
    prior_key, steps_key = jax.random.split(key)  # as ddpm_sample splits its key
    x_T = jax.random.normal(prior_key, shape, jnp.float32)

    # Parameters enter as arguments (not closed-over constants), as the samplers' docstring says.
    if steps == T:
        scan = jax.jit(lambda p, k: ddpm_sample(_apply_fn(model, p), sched, k, shape))
        scan_args = (params, key)
    else:
        scan = jax.jit(lambda p, x, k: ddpm_denoise(_apply_fn(model, p), sched, k, x, T,
                                                    t_end=T - steps))
        scan_args = (params, x_T, steps_key)
    scan_compiled, scan_compile_s = _compile(scan, *scan_args)
    scan_times, scan_out = _time_reps(lambda: scan_compiled(*scan_args), reps)

    # The loop of ``ddpm_sample_loop``: one jitted ancestral step per t, driven from Python.
    step = jax.jit(lambda p, x, t, k: make_ddpm_step(_apply_fn(model, p), sched)(x, t, k))
    step_compiled, step_compile_s = _compile(step, params, x_T, T, steps_key)

    def loop():
        x = x_T
        for t in range(T, T - steps, -1):  # deliberate host loop: the baseline
            x = step(params, x, t, steps_key)  # a Python int t, as in ddpm_sample_loop
        return x

    loop_times, loop_out = _time_reps(loop, reps)
    scale = T / steps
    scan_s, loop_s = statistics.median(scan_times) * scale, statistics.median(loop_times) * scale
    return {
        "net": net, "batch": batch, "image_shape": list(image_shape), "T": T,
        "steps_timed": steps, "reps": reps, "extrapolated": steps != T, "scale": scale,
        "scan": {"compile_s": scan_compile_s, "times_s": scan_times, "s_per_run": scan_s,
                 "s_per_image": scan_s / batch, "xla_memory": _memory(scan_compiled)},
        "loop": {"compile_s": step_compile_s, "times_s": loop_times, "s_per_run": loop_s,
                 "s_per_image": loop_s / batch, "xla_memory": _memory(step_compiled)},
        "loop_over_scan": loop_s / scan_s,
        "max_abs_diff_scan_vs_loop": float(jnp.max(jnp.abs(scan_out - loop_out))),
        # One ancestral step = one network call on the batch (+ a few elementwise ops).
        "xla_flops_per_step": _cost_flops(step_compiled),
    }


def elbo_task(*, net: str, image_shape, batch: int, T: int, T_timed: int, chunks, reps: int,
              loop_reps: int, floor_parts: bool = False) -> dict:
    """The full-T ELBO: ``diffusion_elbo`` (chunked vmap over t) against a Python loop over t.

    The loop jits ``denoising_matching_term`` once with t as a traced argument and calls it for
    t = 2..T, plus the decoder (reconstruction) term and the prior KL, with the keys
    ``diffusion_elbo`` uses, so both give the same ELBO. With T_timed < T, both are timed on a
    linear schedule of T_timed steps (T_timed network evaluations instead of T, each of the same
    size) and scaled by T / T_timed. ``floor_parts`` also times the network alone on all
    (T − 1)·B inputs in one call (the cost no ELBO evaluation can skip), for the small networks.
    """
    model = build_net(net)
    sched = linear_schedule(T_timed)
    params = _init(model, image_shape)
    x0 = jnp.asarray(_images((batch, *image_shape), seed=1))
    key = jax.random.key(2)
    scale = T / T_timed
    warmup = 2 if T_timed == T else 0  # the small networks' ELBO takes milliseconds

    def reverse(p):
        return ddpm_kind.reverse_fn(model, p, sched, variance="beta")  # t of shape (B,)

    chunked, totals = {}, {}
    for chunk in chunks:
        fn = jax.jit(lambda p, x, k, c=chunk: diffusion_elbo(
            reverse(p), sched, x, k, decoder="discretized", num_levels=NUM_LEVELS,
            chunk_size=c)["total"])
        compiled, compile_s = _compile(fn, params, x0, key)
        times, totals[chunk] = _time_reps(lambda c=compiled: c(params, x0, key), reps, warmup)
        s = statistics.median(times) * scale
        chunked[str(chunk)] = {"compile_s": compile_s, "times_s": times, "s_per_elbo": s,
                               "s_per_image": s / batch, "xla_memory": _memory(compiled)}
    best = min(chunked, key=lambda c: chunked[c]["s_per_elbo"])

    # The Python-loop baseline: the same terms, one jitted call per t.
    term = jax.jit(lambda p, x, t, k: denoising_matching_term(reverse(p), sched, x, t,
                                                              jax.random.fold_in(k, t)))
    rec = jax.jit(lambda p, x, k: reconstruction_term(reverse(p), sched, x, k,
                                                      decoder="discretized",
                                                      num_levels=NUM_LEVELS))
    prior = jax.jit(lambda x: prior_kl(sched, x))
    key_rec, _, key_terms = jax.random.split(key, 3)  # diffusion_elbo's split
    term_c, term_compile_s = _compile(term, params, x0, 2, key_terms)
    _, rec_compile_s = _compile(rec, params, x0, key_rec)
    _, prior_compile_s = _compile(prior, x0)

    def loop():  # the jitted functions find the executables compiled above in their cache
        total = rec(params, x0, key_rec) - prior(x0)
        for t in range(2, T_timed + 1):  # deliberate host loop: the baseline
            total = total - term(params, x0, t, key_terms)
        return total

    loop_times, loop_total = _time_reps(loop, loop_reps, warmup)
    loop_s = statistics.median(loop_times) * scale
    best_total = totals[int(best)]
    floor = _elbo_floor(model, params, x0, T_timed, reps) if floor_parts else None
    return {
        "net": net, "params": num_params(params), "batch": batch, "image_shape": list(image_shape),
        "T": T, "T_timed": T_timed, "extrapolated": T_timed != T, "scale": scale,
        "reps": reps, "loop_reps": loop_reps,
        "chunked": chunked, "best_chunk": int(best),
        "loop": {"compile_s": term_compile_s + rec_compile_s + prior_compile_s,
                 "times_s": loop_times, "s_per_elbo": loop_s, "s_per_image": loop_s / batch,
                 "xla_memory": _memory(term_c)},
        "loop_over_best_chunked": loop_s / chunked[best]["s_per_elbo"],
        "max_abs_diff_chunked_vs_loop_nats": float(jnp.max(jnp.abs(best_total - loop_total))),
        "elbo_nats_mean": float(jnp.mean(best_total)),
        "term_xla_flops": _cost_flops(term_c),
        "floor": floor,
    }


def _elbo_floor(model, params, x0, T: int, reps: int) -> dict:
    """The one cost no ELBO evaluation can skip, timed in one call: the network on all (T − 1)·B
    noisy inputs at once. (The normal draws are not timed apart: inside the ELBO XLA fuses them
    into their consumers, so drawn on their own they cost more than they do there.)"""
    ts = jnp.arange(2, T + 1)
    n = ts.shape[0] * x0.shape[0]
    x_all = jnp.broadcast_to(x0, (ts.shape[0], *x0.shape)).reshape(n, *x0.shape[1:])
    t_all = jnp.repeat(ts, x0.shape[0]).astype(jnp.int32)
    net = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False))
    net_c, _ = _compile(net, params, x_all, t_all)
    net_times, _ = _time_reps(lambda: net_c(params, x_all, t_all), reps, warmup=2)
    return {"network_s": statistics.median(net_times), "network_xla_flops": _cost_flops(net_c)}


def peak_task(*, n: int, reps: int) -> dict:
    """float32 matmul throughput under the current XLA flags: 2n³ / time of an (n, n) jnp.dot."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    compiled, compile_s = _compile(jax.jit(jnp.dot), a, b)
    times, _ = _time_reps(lambda: compiled(a, b), reps, warmup=1)  # first touch of the buffers
    flops = 2.0 * n**3
    # A 3×3 convolution as the U-Net uses them (64 → 64 channels, 28×28, batch 64, NHWC/HWIO).
    x = jax.random.normal(jax.random.key(2), (64, 28, 28, 64), jnp.float32)
    w = jax.random.normal(jax.random.key(3), (3, 3, 64, 64), jnp.float32)
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    conv_c, _ = _compile(conv, x, w)
    conv_times, _ = _time_reps(lambda: conv_c(x, w), reps, warmup=1)
    conv_flops = 2.0 * 64 * 28 * 28 * 9 * 64 * 64
    return {"n": n, "reps": reps, "compile_s": compile_s, "times_s": times,
            "gflops_median": flops / statistics.median(times) / 1e9,
            "gflops_best": flops / min(times) / 1e9,
            "conv3x3_gflops_median": conv_flops / statistics.median(conv_times) / 1e9}
