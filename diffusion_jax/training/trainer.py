"""``train_and_evaluate(config, workdir)``: the training loop every experiment runs.

Progress bar (loss, steps/s, ETA), ``metrics.jsonl``, periodic test evaluation and sample grids,
orbax checkpoints (resumed automatically), a loss-curve PNG and a final evaluation with standard
errors. SIGINT/SIGTERM save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax.data import pipeline as data_pipeline
from diffusion_jax.models import num_params
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training import plots
from diffusion_jax.training.builders import build_model, build_schedule
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.losses import make_loss
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step

log = logging.getLogger(__name__)

# Config sections whose values shape the parameters or their meaning: a workdir's checkpoints
# must have been written with the same ones.
FINGERPRINT_KEYS = ("model_kind", "model", "diffusion.T", "diffusion.schedule", "data.name")


class TrainingStopped(RuntimeError):
    """Training ended early (too many skipped updates, or a signal); the message says where."""


def config_fingerprint(config) -> str:
    parts = {}
    for key in FINGERPRINT_KEYS:
        value = config
        for part in key.split("."):
            value = value[part]
        parts[key] = value.to_dict() if hasattr(value, "to_dict") else value
    parts["model"].pop("dtype", None)  # compute dtype only: the parameters are float32 either way
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_info(config) -> dict:
    """Versions, git commit and devices: written next to every run's metrics."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
                "grain", "chex", "numpy", "diffusion_jax"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": commit,
        "versions": versions,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "config_fingerprint": config_fingerprint(config),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so it can save and exit cleanly."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _jsonable(metrics) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in metrics.items()}


def _init_params(model, config, image_shape, key):
    """Initial parameters. ``key`` should be an rbg key: initialisers draw many random tensors, and
    threefry's unrolled hash makes this one jit compile 4-5x slower on CPU (17-22 s vs 4-8 s)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    if config.model_kind == "ddpm":
        init = jax.jit(lambda k: model.init(k, dummy, jnp.ones((1,), jnp.int32), train=False))
    else:
        init = jax.jit(lambda k: model.init(k, dummy))
    return init(key)["params"]


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates the result.

    Returns a summary dict (also written to ``workdir/summary.json``).
    """
    from diffusion_jax.config_validation import validate_config

    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config
    main_process = jax.process_index() == 0  # only it writes logs and figures; all checkpoint
    info = run_info(cfg)
    if main_process:
        (workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        (workdir / "run_info.json").write_text(json.dumps(info, indent=2))

    process_index, process_count = jax.process_index(), jax.process_count()
    train_ds = data_pipeline.make_dataset(
        cfg.data.name, cfg.data.train_split, batch_size=cfg.data.batch_size, seed=cfg.seed,
        data_dir=cfg.data.data_dir or None, binarize=cfg.data.binarize,
        dequantize=cfg.data.dequantize, shard_index=process_index, shard_count=process_count)
    test_images = data_pipeline.full_split(cfg.data.name, cfg.data.test_split,
                                           data_dir=cfg.data.data_dir or None,
                                           binarize=cfg.data.binarize)
    image_shape, num_levels = tuple(train_ds.image_shape), int(train_ds.num_levels)
    model = build_model(cfg, image_shape)
    sched = build_schedule(cfg.diffusion) if cfg.model_kind == "ddpm" else None
    loss_fn = make_loss(model, cfg, sched, num_levels=num_levels)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)

    root = jax.random.key(cfg.seed)
    train_key, eval_key, sample_key = jax.random.split(root, 3)
    params = _init_params(model, cfg, image_shape, jax.random.key(cfg.seed, impl="rbg"))
    state = create_train_state(params, optimizer, train_key)
    param_count = num_params(params)

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints)
    fingerprint = info["config_fingerprint"]
    data_state = None
    restored = ckpt.restore_latest(jax.device_get(state)) if ckpt.all_steps() else None
    if restored is not None:
        step0, host_state, data_state, meta = restored
        if meta.get("config_fingerprint") != fingerprint and not cfg.train.allow_config_change:
            raise ValueError(
                f"workdir {workdir} holds checkpoints of a different model or config (fingerprint "
                f"{meta.get('config_fingerprint')} != {fingerprint}, over {FINGERPRINT_KEYS}). "
                f"Use a new --workdir, or pass --config.train.allow_config_change=True to reuse it."
            )
        state = host_state
        log.info("resumed from checkpoint %d in %s", step0, ckpt.directory)

    loss_takes_step = cfg.model_kind == "vae"
    factory = functools.partial(make_train_step, loss_fn, optimizer, ema_decay=cfg.optim.ema_decay,
                                global_batch=cfg.data.batch_size, loss_takes_step=loss_takes_step)
    step_fn = ParallelStep(lambda axis_name: factory(axis_name=axis_name), mode=cfg.train.parallel,
                           global_batch=cfg.data.batch_size)
    state = step_fn.put_state(state)
    batches = train_ds.iterator(data_state)

    metrics_path = workdir / "metrics.jsonl"
    samples_dir = workdir / "samples"
    start_step = int(jax.device_get(step_fn.host_state(state).step)) if restored else 0
    num_steps = int(cfg.train.num_steps)
    t_start = time.time()

    def host_state():
        return step_fn.host_state(state)

    periodic_eval = _make_periodic_eval(cfg, loss_fn)  # one compilation for every evaluation

    def save(step):
        ckpt.save(step, host_state(), batches.get_state(),
                  {"config_fingerprint": fingerprint, "model_kind": cfg.model_kind, "step": step})

    def evaluate_and_sample(step, final=False):
        hs = host_state()
        record = {"step": step}
        record.update(periodic_eval(hs.ema_params, test_images, eval_key))
        if cfg.model_kind in ("ddpm", "vae"):
            grid = _sample_grid(cfg, model, sched, hs.ema_params, sample_key, image_shape,
                                progress=progress and final)
            path = plots.save_image_grid(grid, samples_dir / f"samples_{step:07d}.png")
            record["sample_grid"] = str(path)
        return record

    stopped = None
    last_metrics = {}
    metrics_target = metrics_path if main_process else os.devnull
    with _SignalFlag() as signals, open(metrics_target, "a") as metrics_file, tqdm(
        total=num_steps, initial=start_step, desc=f"train {cfg.model_kind}", unit="step",
        disable=not (progress and main_process), dynamic_ncols=True,
    ) as bar:
        step = start_step
        while step < num_steps:
            batch = next(batches)
            _check_batch(batch, step)
            state, metrics = step_fn(state, batch)
            step += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == num_steps:
                m = _jsonable(jax.device_get(metrics))
                last_metrics = m
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                record = {"step": step, "time": time.time() - t_start,
                          **{f"train/{k}": v for k, v in m.items()}}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if m["consecutive_skips"] >= cfg.train.max_consecutive_skips:
                    save_step = ckpt.latest_step()
                    raise TrainingStopped(
                        f"{int(m['consecutive_skips'])} consecutive non-finite updates were skipped "
                        f"at step {step}; stopping. The last good checkpoint is step {save_step} in "
                        f"{ckpt.directory}. Lower optim.lr or raise optim.grad_clip.")
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < num_steps:
                record = evaluate_and_sample(step)
                metrics_file.write(json.dumps({k: v for k, v in record.items()}) + "\n")
                metrics_file.flush()
            if step % cfg.train.checkpoint_every == 0 or step == num_steps:
                save(step)
            if _any_process(signals.received):
                if ckpt.latest_step() != step:  # this step may have been saved just above
                    save(step)
                stopped = signals.received or "a signal on another process"
                break

    train_time = time.time() - t_start
    plots.plot_loss_curve(metrics_path, workdir / "loss_curve.png",
                          keys=("loss", "vlb_bpd", "bpd"))
    if stopped:
        ckpt.close()
        log.warning("received %s: saved checkpoint %d and stopped", stopped, step)
        return {"stopped": stopped, "step": step}

    summary = {"step": step, "train_seconds": train_time, "num_params": param_count,
               "final_train_metrics": last_metrics, "workdir": str(workdir)}
    final = evaluate_test_split(cfg, model, sched, host_state().ema_params, test_images, eval_key,
                                num_levels, workdir, progress)
    summary["eval"] = final
    record = evaluate_and_sample(step, final=True)
    summary["sample_grid"] = record.get("sample_grid")
    if summary["sample_grid"]:
        final_grid = workdir / "samples.png"
        final_grid.write_bytes(Path(summary["sample_grid"]).read_bytes())
        summary["sample_grid"] = str(final_grid)
    summary["loss_curve"] = str(workdir / "loss_curve.png")
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    ckpt.close()
    return summary


def _any_process(flag) -> bool:
    """True if ``flag`` is set on any process (a signal may reach only some of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _check_batch(batch, step) -> None:
    image = batch["image"]
    if not np.all(np.isfinite(image)):
        raise ValueError(f"the batch at step {step} holds NaN or Inf pixel values; check the data.")


def _make_periodic_eval(cfg, loss_fn):
    """(params, test_images, key) -> a cheap test-split estimate: the training loss and its
    bits/dim on ≤ eval.periodic_examples. The metrics function is jitted once, here."""
    if cfg.model_kind == "vae":
        fn = jax.jit(lambda p, x, k: loss_fn(p, {"image": x}, k, False, step=10**9)[1])
    else:
        fn = jax.jit(lambda p, x, k: loss_fn(p, {"image": x}, k, False)[1])

    def periodic_eval(params, test_images, key) -> dict:
        images = np.asarray(test_images[: cfg.eval.periodic_examples], np.float32)
        keys = jax.random.split(key, images.shape[0])
        m = _jsonable(jax.device_get(fn(params, images, keys)))
        return {f"eval/{k}": v for k, v in m.items()}

    return periodic_eval


def _sample_grid(cfg, model, sched, params, key, image_shape, *, progress):
    n = int(cfg.eval.num_samples)
    if cfg.model_kind == "vae":
        z = jax.random.normal(key, (n, model.latent_dim))
        out = model.apply({"params": params}, z, method=type(model).decode)
        if model.decoder == "bernoulli":
            return np.asarray(jax.nn.sigmoid(out)) * 2 - 1
        return np.clip(np.asarray(out[0]), -1, 1)
    return eval_lib.sample_ddpm(model, params, sched, key, num_samples=n, image_shape=image_shape,
                                sampler=cfg.eval.sampler, variance=cfg.diffusion.variance,
                                ddim_steps=cfg.eval.ddim_steps, clip_x0=True, progress=progress)


def evaluate_test_split(cfg, model, sched, params, test_images, key, num_levels, workdir,
                        progress):
    """The end-of-run evaluation of ``cfg.model_kind`` on ``test_images`` (the first
    ``cfg.eval.max_examples`` if set): the full-T ELBO for a DDPM (resumable through
    ``workdir/eval_partial.npz``, with the per-t plot), −ELBO and IWAE for a VAE, reconstruction
    error for an AE. Returns the metrics dict."""
    images = np.asarray(test_images, np.float32)
    if cfg.eval.max_examples:
        images = images[: cfg.eval.max_examples]
    if cfg.model_kind == "ddpm":
        report = eval_lib.ddpm_test_elbo(
            model, params, sched, images, key, batch_size=cfg.eval.batch_size,
            variance=cfg.diffusion.variance, num_levels=num_levels,
            chunk_size=cfg.eval.elbo_chunk_size, partial_path=workdir / "eval_partial.npz",
            progress=progress)
        if "per_t_bpd" in report:
            plots.plot_per_t(report["per_t_bpd"], workdir / "elbo_per_t.png")
        return report
    if cfg.model_kind == "vae":
        return eval_lib.vae_test_metrics(model, params, images, key, batch_size=cfg.eval.batch_size,
                                         iwae_k=cfg.eval.iwae_k, progress=progress)
    return eval_lib.ae_test_metrics(model, params, images, batch_size=cfg.eval.batch_size)


def format_summary(summary) -> str:
    ev = summary.get("eval", {})
    lines = [f"trained {summary['step']} steps in {summary['train_seconds']:.0f} s "
             f"({summary['num_params']:,} parameters)"]
    if "bpd" in ev and "iwae_nll_nats" not in ev:
        lines.append(f"test ELBO: {ev['bpd']:.4f} ± {ev['bpd_se']:.4f} bits/dim "
                     f"({-ev['total_nats']:.2f} ± {ev['total_nats_se']:.2f} nats NLL bound per "
                     f"example, {ev['num_examples']} test examples, T = {ev['T']})")
    if "iwae_nll_nats" in ev:
        lines.append(f"test −ELBO: {ev['neg_elbo_nats']:.2f} ± {ev['neg_elbo_nats_se']:.2f} nats; "
                     f"IWAE-{ev['iwae_k']} NLL: {ev['iwae_nll_nats']:.2f} ± "
                     f"{ev['iwae_nll_nats_se']:.2f} nats")
    if "sq_error" in ev:
        lines.append(f"test reconstruction error: {ev['sq_error']:.3f} ± {ev['sq_error_se']:.3f} "
                     f"(sum of squares per example; {ev['mse_per_dim']:.4f} per dim)")
    if summary.get("sample_grid"):
        lines.append(f"samples: {summary['sample_grid']}")
    lines.append(f"loss curve: {summary['loss_curve']}")
    return "\n".join(lines)




def load_trained(config, workdir):
    """(model, schedule, EMA params, image_shape, num_levels, step) from a workdir's checkpoint."""
    from diffusion_jax.config_validation import validate_config

    validate_config(config)
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train first with "
                                f"`python -m diffusion_jax train --config ... --workdir {workdir}`.")
    spec = data_pipeline.dataset_spec(config.data.name)
    image_shape = tuple(spec.image_shape)
    num_levels = 2 if config.data.binarize else int(spec.num_levels)
    model = build_model(config, image_shape)
    sched = build_schedule(config.diffusion) if config.model_kind == "ddpm" else None
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    params = jax.eval_shape(lambda: _init_params(model, config, image_shape, jax.random.key(0)))
    abstract = jax.eval_shape(lambda: create_train_state(
        jax.tree.map(jnp.zeros_like, params), optimizer, jax.random.key(0)))
    ckpt = Checkpointer(ckpt_dir)
    restored = ckpt.restore_latest(abstract)
    ckpt.close()
    step, state, _, meta = restored
    if meta.get("config_fingerprint") != config_fingerprint(config):
        raise ValueError(f"the checkpoints in {ckpt_dir} were written with a different model or "
                         f"config than the one given; pass the run's own config ({workdir}/config.json).")
    return model, sched, state.ema_params, image_shape, num_levels, step
