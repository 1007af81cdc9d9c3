"""``train_and_evaluate(config, workdir)``: the training loop every experiment runs.

Progress bar (loss, steps/s, ETA), ``metrics.jsonl``, periodic test evaluation and sample grids,
orbax checkpoints (resumed automatically), a loss-curve PNG and a final evaluation with standard
errors. SIGINT/SIGTERM save a checkpoint and exit cleanly.
"""

from __future__ import annotations

import contextlib
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
from types import ModuleType
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax.data import pipeline as data_pipeline
from diffusion_jax.models import num_params
from diffusion_jax.training import kinds, plots
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.config import get_key, load_config_json, validate_config
from diffusion_jax.training.distributed import use_cpu_devices
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step
from diffusion_jax.training.workdir import MetricsLog, RunLock, write_json_atomic

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training ended early (too many skipped updates, or a signal); the message says where."""


class ConfigMismatch(ValueError):
    """The config does not match the run that wrote a workdir's checkpoints."""


def fingerprint_values(config) -> dict:
    """The config values that shape the parameters or their meaning (the kind's
    ``FINGERPRINT_KEYS``); a workdir's checkpoints are only used with the same values."""
    values = {"model_kind": config.model_kind}
    for key in kinds.get(config.model_kind).FINGERPRINT_KEYS:
        value = get_key(config, key)
        values[key] = value.to_dict() if hasattr(value, "to_dict") else value
    if isinstance(values.get("model"), dict):
        values["model"].pop("dtype", None)  # compute dtype only: the parameters stay float32
    return json.loads(json.dumps(values, default=str))  # tuples -> lists, as in config.json


def config_fingerprint(config) -> str:
    blob = json.dumps(fingerprint_values(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_matches_workdir(config, workdir) -> None:
    """Raises ConfigMismatch naming each differing key when ``workdir/config.json`` (written only
    by runs that passed every check) was a run of other fingerprinted values."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    try:
        recorded = load_config_json(path)
        theirs = fingerprint_values(recorded)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        log.warning("cannot read %s (%s); relying on the checkpoint metadata", path, e)
        return
    ours = fingerprint_values(config)
    if theirs["model_kind"] != ours["model_kind"]:
        raise ConfigMismatch(
            f"the config does not match the run in {workdir}: it is a {ours['model_kind']!r} "
            f"model, the run a {theirs['model_kind']!r} one. Pass the run's own config "
            f"(--config {path}), or use another --workdir.")
    diffs = _differences(theirs, ours)
    if diffs:
        listed = "; ".join(f"{k}: workdir {a!r}, given {b!r}" for k, a, b in diffs[:6])
        raise ConfigMismatch(
            f"the config does not match the run in {workdir} ({listed}). Pass the run's own "
            f"config (--config {path}), use another --workdir, or (to continue training the same "
            f"architecture with other settings) pass --config.train.allow_config_change=True.")


def _differences(a, b, prefix=""):
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


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


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates the result.

    Order: validate the config, lock the workdir (a second trainer is refused), check the config
    against the run already there, restore the newest readable checkpoint, and only then write
    ``config.json`` / ``run_info.json`` (atomically) and open ``metrics.jsonl`` (rows after the
    restored step are dropped: each step is recorded once). Returns a summary dict (also
    written to ``workdir/summary.json``).
    """
    validate_config(config)
    cfg = config
    use_cpu_devices(cfg.train.cpu_devices)  # before anything below starts the backend
    kind = kinds.get(cfg.model_kind)
    workdir = _prepare_workdir(workdir)
    main_process = jax.process_index() == 0  # only it writes logs and figures; all checkpoint
    with RunLock(workdir) if main_process else contextlib.nullcontext():
        if not cfg.train.allow_config_change:
            check_matches_workdir(cfg, workdir)
        return _train(cfg, kind, workdir, main_process, progress)


def _prepare_workdir(workdir) -> Path:
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a directory; pass a directory.")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create --workdir {workdir}: {e.strerror or e}.") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise PermissionError(f"--workdir {workdir} is not writable; choose another directory.")
    return workdir


def _train(cfg, kind, workdir: Path, main_process: bool, progress: bool) -> dict:
    process_index, process_count = jax.process_index(), jax.process_count()
    train_ds = data_pipeline.make_dataset(
        cfg.data.name, cfg.data.train_split, batch_size=cfg.data.batch_size, seed=cfg.seed,
        data_dir=cfg.data.data_dir or None, binarize=cfg.data.binarize,
        dequantize=cfg.data.dequantize, shard_index=process_index, shard_count=process_count)
    test_images = data_pipeline.full_split(cfg.data.name, cfg.data.test_split,
                                           data_dir=cfg.data.data_dir or None,
                                           binarize=cfg.data.binarize)
    image_shape, num_levels = tuple(train_ds.image_shape), int(train_ds.num_levels)
    model = kind.build(cfg, image_shape)
    loss_fn = kind.make_loss(model, cfg, num_levels=num_levels)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)

    root = jax.random.key(cfg.seed)
    train_key, eval_key, sample_key = jax.random.split(root, 3)
    # An rbg key for initialisation: threefry's unrolled hash makes the init jit compile 4-5x
    # slower on CPU (17-22 s vs 4-8 s) for the many random tensors an initialiser draws.
    params = kind.init_params(model, image_shape, jax.random.key(cfg.seed, impl="rbg"))
    state = create_train_state(params, optimizer, train_key, kind.init_loss_state(cfg))
    param_count = num_params(params)

    had_checkpoint_dir = (workdir / "checkpoints").is_dir()
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints)
    info = run_info(cfg)
    fingerprint = info["config_fingerprint"]
    data_state = None
    try:
        restored = ckpt.restore_latest(jax.device_get(state)) if ckpt.all_steps() else None
        if restored is not None:
            step0, host_state, data_state, meta = restored
            if meta.get("config_fingerprint") != fingerprint and not cfg.train.allow_config_change:
                raise ConfigMismatch(
                    f"workdir {workdir} holds checkpoints of a different model or config "
                    f"(fingerprint {meta.get('config_fingerprint')} != {fingerprint}, over "
                    f"model_kind and {kind.FINGERPRINT_KEYS}). Use a new --workdir, or pass "
                    f"--config.train.allow_config_change=True to reuse it.")
            _check_same_shapes(state, host_state, ckpt.directory)
            state = host_state
            log.info("resumed from checkpoint %d in %s", step0, ckpt.directory)
        elif main_process:
            _check_no_orphan_records(workdir, had_checkpoint_dir)
        start_step = int(jax.device_get(state.step))
        if start_step > cfg.train.num_steps:
            raise ValueError(f"config.train.num_steps ({cfg.train.num_steps}) is below the step of "
                             f"the restored checkpoint ({start_step}) in {ckpt.directory}; raise "
                             f"it, or use another --workdir.")
        factory = functools.partial(make_train_step, loss_fn, optimizer,
                                    ema_decay=cfg.optim.ema_decay, global_batch=cfg.data.batch_size,
                                    update_loss_state=kind.loss_state_update(cfg))
        step_fn = ParallelStep(lambda axis_name: factory(axis_name=axis_name),
                               mode=cfg.train.parallel, global_batch=cfg.data.batch_size)
        batches = train_ds.iterator(data_state)  # checks the data order (seed, batch) too
    except BaseException:
        ckpt.close()
        raise
    if main_process:  # every check passed: now the run's records may be written
        write_json_atomic(workdir / "config.json", cfg.to_dict(), default=str)
        write_json_atomic(workdir / "run_info.json", info)
    state = step_fn.put_state(state)
    samples_dir = workdir / "samples"
    num_steps = int(cfg.train.num_steps)
    t_start = time.time()

    def host_state():
        return step_fn.host_state(state)

    periodic_eval = _make_periodic_eval(cfg, loss_fn)  # one compilation for every evaluation

    def save(step):
        hs = host_state()
        if int(hs.opt_state.notfinite_count) > 0:
            # The parameters of a run that is skipping non-finite updates are no "last good"
            # state to resume from: keep the previous checkpoint.
            log.warning("not checkpointing step %d: %d non-finite updates in a row were just "
                        "skipped", step, int(hs.opt_state.notfinite_count))
            return
        ckpt.save(step, hs, batches.get_state(),
                  {"config_fingerprint": fingerprint, "model_kind": cfg.model_kind, "step": step})

    def evaluate_and_sample(step, final=False):
        hs = host_state()
        record = {"step": step, **periodic_eval(hs.ema_params, test_images, eval_key)}
        if kind.CAN_SAMPLE:
            # Grids during training are progress only: the kind's (cheaper) progress sampler.
            sampler = None if final else kind.progress_sampler(cfg)
            grid = kind.sample(cfg, model, hs.ema_params, sample_key, sampler=sampler,
                               num_samples=cfg.eval.num_samples, image_shape=image_shape,
                               progress=progress and final)
            record["sample_grid"] = str(plots.save_image_grid(
                grid, samples_dir / f"samples_{step:07d}.png"))
            if sampler is not None:
                record["progress_sampler"] = sampler
        return record

    stopped = None
    last_metrics = {}
    periodic_seconds = checkpoint_seconds = 0.0  # parts of the training phase, reported apart
    metrics_path = workdir / "metrics.jsonl"
    with _SignalFlag() as signals, MetricsLog(
        metrics_path, resume_step=start_step, tensorboard_dir=workdir / "tensorboard",
        enabled=main_process,
    ) as metrics_log, tqdm(
        total=num_steps, initial=start_step, desc=f"train {cfg.model_kind}", unit="step",
        disable=not (progress and main_process), dynamic_ncols=True,
    ) as bar:
        step = start_step
        while step < num_steps:
            batch = next(batches)
            state, metrics = step_fn(state, batch)
            step += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == num_steps:
                m = _jsonable(jax.device_get(metrics))
                last_metrics = m
                bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
                metrics_log.write({"step": step, "time": time.time() - t_start,
                                   **{f"train/{k}": v for k, v in m.items()}})
                if m["consecutive_skips"] >= cfg.train.max_consecutive_skips:
                    good = ckpt.latest_step()
                    raise TrainingStopped(
                        f"{int(m['consecutive_skips'])} consecutive non-finite updates were skipped "
                        f"at step {step}; stopping. The last checkpoint saved without skipped "
                        f"updates is {'none' if good is None else f'step {good}'} in "
                        f"{ckpt.directory}. Lower optim.lr or raise optim.grad_clip.")
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < num_steps:
                tick = time.time()
                metrics_log.write(evaluate_and_sample(step))
                periodic_seconds += time.time() - tick
            if step % cfg.train.checkpoint_every == 0 or step == num_steps:
                tick = time.time()
                save(step)
                checkpoint_seconds += time.time() - tick
            if _any_process(signals.received):
                if ckpt.latest_step() != step:  # this step may have been saved just above
                    save(step)
                stopped = signals.received or "a signal on another process"
                break

    train_time = time.time() - t_start
    if main_process:
        plots.plot_loss_curve(metrics_path, workdir / "loss_curve.png",
                              keys=("loss", "vlb_bpd", "bpd"))
    if stopped:
        ckpt.close()
        log.warning("received %s: saved checkpoint %d and stopped", stopped, step)
        return {"stopped": stopped, "step": step}

    summary = {"step": step, "train_seconds": train_time,
               "periodic_eval_seconds": periodic_seconds, "checkpoint_seconds": checkpoint_seconds,
               "num_params": param_count,
               "model_kind": cfg.model_kind, "final_train_metrics": last_metrics,
               "workdir": str(workdir)}
    final_params = host_state().ema_params
    summary["eval"] = evaluate_test_split(cfg, kind, model, final_params, test_images, eval_key,
                                          num_levels=num_levels, workdir=workdir, step=step,
                                          progress=progress)
    record = evaluate_and_sample(step, final=True)
    summary["sample_grid"] = record.get("sample_grid")
    if summary["sample_grid"] and main_process:
        final_grid = workdir / "samples.png"
        final_grid.write_bytes(Path(summary["sample_grid"]).read_bytes())
        summary["sample_grid"] = str(final_grid)
    summary["loss_curve"] = str(workdir / "loss_curve.png")
    if main_process:
        write_json_atomic(workdir / "summary.json", summary)
    ckpt.close()
    return summary


def _check_same_shapes(fresh, restored, directory) -> None:
    """Restored leaves must have the shapes of the config's model (orbax returns what it saved,
    whatever the target): a changed architecture under allow_config_change is an error."""
    fresh_shapes = jax.tree.map(np.shape, jax.device_get(fresh))
    restored_shapes = jax.tree.map(np.shape, restored)
    if fresh_shapes != restored_shapes:
        raise ConfigMismatch(f"the checkpoints in {directory} hold parameters of other shapes than "
                             f"this config's model (train.allow_config_change allows other "
                             f"settings, not another architecture); use another --workdir.")


def _check_no_orphan_records(workdir: Path, had_checkpoint_dir: bool) -> None:
    """A finished run, or one whose checkpoints/ was removed, has records but nothing to resume
    from: starting afresh would overwrite them. (A run killed before its first checkpoint has an
    empty checkpoints/ and simply starts again.)"""
    metrics = workdir / "metrics.jsonl"
    has_records = metrics.exists() and metrics.stat().st_size > 0
    if has_records and (not had_checkpoint_dir or (workdir / "summary.json").exists()):
        raise FileExistsError(
            f"{workdir} holds the records of a run (metrics.jsonl) but no checkpoint to resume "
            f"from (was {workdir / 'checkpoints'} deleted?); starting afresh would overwrite them. "
            f"Move the workdir aside or use another --workdir.")


def _any_process(flag) -> bool:
    """True if ``flag`` is set on any process (a signal may reach only some of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _make_periodic_eval(cfg, loss_fn):
    """(params, test_images, key) -> a cheap test-split estimate: the training loss and its
    metrics on ≤ eval.periodic_examples (full KL weight: step=None). Jitted once, here."""
    fn = jax.jit(lambda p, x, k: loss_fn(p, {"image": x}, k, train=False, step=None)[1])

    def periodic_eval(params, test_images, key) -> dict:
        images = np.asarray(test_images[: cfg.eval.periodic_examples], np.float32)
        keys = jax.random.split(key, images.shape[0])
        m = _jsonable(jax.device_get(fn(params, images, keys)))
        return {f"eval/{k}": v for k, v in m.items()}

    return periodic_eval


def evaluate_test_split(cfg, kind, model, params, test_images, key, *, num_levels: int, workdir,
                        step: int, progress: bool = True) -> dict:
    """The end-of-run evaluation of the kind on ``test_images`` (the first
    ``cfg.eval.max_examples`` if set): the full-T ELBO for a DDPM (resumable through
    ``workdir/eval_partial.npz`` keyed by the checkpoint step and the parameters, with the
    per-t plot), −ELBO and IWAE for a VAE, reconstruction error for an AE."""
    images = np.asarray(test_images, np.float32)
    if cfg.eval.max_examples:
        images = images[: cfg.eval.max_examples]
    report = kind.evaluate(cfg, model, params, images, key, num_levels=num_levels,
                           cache_dir=workdir, cache_tag={"checkpoint_step": int(step)},
                           progress=progress)
    report["checkpoint_step"] = int(step)
    if "per_t_bpd" in report and jax.process_index() == 0:
        plots.plot_per_t(report["per_t_bpd"], Path(workdir) / "elbo_per_t.png")
    return report


def format_summary(summary) -> str:
    lines = [f"trained {summary['step']} steps in {summary['train_seconds']:.0f} s "
             f"({summary['num_params']:,} parameters)"]
    if "periodic_eval_seconds" in summary:
        train_s = max(summary["train_seconds"], 1e-9)
        lines.append(f"  of which periodic evaluation {summary['periodic_eval_seconds']:.0f} s "
                     f"({100 * summary['periodic_eval_seconds'] / train_s:.0f} %), checkpoints "
                     f"{summary['checkpoint_seconds']:.0f} s "
                     f"({100 * summary['checkpoint_seconds'] / train_s:.0f} %)")
    lines += kinds.get(summary["model_kind"]).summary_lines(summary.get("eval", {}))
    if summary.get("sample_grid"):
        lines.append(f"samples: {summary['sample_grid']}")
    lines.append(f"loss curve: {summary['loss_curve']}")
    return "\n".join(lines)


class Trained(NamedTuple):
    """A trained model restored from a workdir (EMA parameters)."""

    kind: ModuleType
    model: object
    params: object
    image_shape: tuple
    num_levels: int
    step: int


def load_trained(config, workdir) -> Trained:
    """The EMA parameters of the newest readable checkpoint in ``workdir``, with what they need.

    The config must match the run (``config.json`` of the workdir and the checkpoint's
    fingerprint); a mismatch names the differing keys.
    """
    validate_config(config)
    kind = kinds.get(config.model_kind)
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}; train first with "
                                f"`python -m diffusion_jax train --config ... --workdir {workdir}`.")
    check_matches_workdir(config, workdir)
    spec = data_pipeline.dataset_spec(config.data.name)
    image_shape = tuple(spec.image_shape)
    num_levels = 2 if config.data.binarize else int(spec.num_levels)
    model = kind.build(config, image_shape)
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    params = jax.eval_shape(lambda: kind.init_params(model, image_shape, jax.random.key(0)))
    abstract = jax.eval_shape(lambda: create_train_state(
        jax.tree.map(jnp.zeros_like, params), optimizer, jax.random.key(0),
        kind.init_loss_state(config)))
    ckpt = Checkpointer(ckpt_dir)
    try:
        step, state, _, meta = ckpt.restore_latest(abstract, quarantine=False)
    finally:
        ckpt.close()
    if meta.get("config_fingerprint") != config_fingerprint(config):
        raise ConfigMismatch(f"the checkpoints in {ckpt_dir} were written with a different model "
                             f"or config than the one given; pass the run's own config "
                             f"(--config {workdir}/config.json).")
    return Trained(kind, model, state.ema_params, image_shape, num_levels, int(step))
