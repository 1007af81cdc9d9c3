"""The command line: ``python -m diffusion_jax {train,evaluate,sample,prepare}``.

    python -m diffusion_jax train --config experiments/configs/ddpm_digits.py --workdir runs/x \
        --config.train.num_steps=500
    python -m diffusion_jax evaluate --config runs/x/config.json --workdir runs/x
    python -m diffusion_jax sample --config runs/x/config.json --workdir runs/x --num_samples 64 \
        --sampler ddim --batch_size 256
    python -m diffusion_jax sample --config runs/x/config.json --workdir runs/x --sampler heun --nfe 35
    python -m diffusion_jax prepare --dataset mnist --data_dir ~/tensorflow_datasets

``--config`` takes an experiment config (``.py`` with ``get_config()``; ``file.py:arg`` passes
``arg`` to it) or a run's ``<workdir>/config.json``; ``--config.<key>=<value>`` overrides any key
of either. ``evaluate`` prints the test report of the newest checkpoint; ``sample`` draws
``--num_samples`` images in batches of ``--batch_size`` (default ``config.eval.batch_size``;
batch ``b`` uses the key ``fold_in(key(seed), b)``), writes them as they come to
``<workdir>/samples/sample_step{step}_seed{seed}_{sampler}_n{num}_b{batch}.npy`` (float32, [-1, 1]) and a grid of the
first 64 to the ``.png`` next to it; ``{sampler}`` carries the network evaluations of the NFE
samplers (e.g. ``heun_nfe35``, ``dpm_solver++_nfe20``). ``--nfe`` sets ``config.eval.nfe``, the
network evaluations of the ODE solvers and of the stochastic SDE-DPM-Solver++(2M)
((sde_)dpm_solver++: 1..T; heun: odd, 1..2T-1); a value the sampler cannot take exactly is an
error, never adjusted.

Every mistake ends with one short ``error: ...`` message on stderr naming the key, flag or path
and what to do; exit code 2 for usage and config mistakes, 1 for run-time failures, 130 / 143
when SIGINT / SIGTERM stopped training (a checkpoint is saved: run the same command to resume).
``--verbose`` (or ``DIFFUSION_JAX_VERBOSE=1``) prints the full traceback as well.
"""

from __future__ import annotations

import ast
import difflib
import errno
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

COMMANDS = ("train", "evaluate", "sample", "prepare")
GRID_SIZE = 64  # sample: the PNG grid shows the first GRID_SIZE images
HINT = "(rerun with --verbose or DIFFUSION_JAX_VERBOSE=1 for the traceback)"

# name -> (type, default, commands that take it, help)
_RUN = ("train", "evaluate", "sample")
FLAG_SPECS = {
    "config": (str, None, _RUN, "an experiment config (.py, or file.py:arg) or a run's config.json"),
    "workdir": (str, None, _RUN, "the run directory: checkpoints, metrics, figures"),
    "num_samples": (int, 64, ("sample",), "how many images to draw"),
    "batch_size": (int, None, ("sample",), "images per sampling batch (default config.eval.batch_size)"),
    "sampler": (str, None, ("sample",), "the sampler, e.g. ddpm, ddim, dpm_solver++, heun or "
                "sde_dpm_solver++ (default: the config's)"),
    "nfe": (int, None, ("sample",), "network evaluations of an NFE sampler ((sde_)dpm_solver++: "
            "1..T; heun: odd, 1..2T-1); sets config.eval.nfe"),
    "seed": (int, 0, ("evaluate", "sample"), "PRNG seed"),
    "dataset": (str, None, ("prepare",), "a tfds data set name, e.g. mnist"),
    "data_dir": (str, None, ("prepare",), "the tfds data_dir (default: tfds's own)"),
    "progress": (bool, True, COMMANDS, "show progress bars (--noprogress or --progress=false: off)"),
    "verbose": (bool, False, COMMANDS, "print the full traceback of an error"),
}


class UsageError(Exception):
    """A mistake on the command line or in the config: exit code 2."""


class _Terminated(BaseException):
    """SIGTERM outside the training loop (which handles it itself)."""


def _set_cpu_flags() -> None:
    """XLA CPU: send convolutions to the multi-threaded Eigen path, not a 1-thread YNN fusion.

    Measured on a 2-core CPU (PLATFORM.md): 1.5–1.8 s -> ~1.0 s per U-Net step, identical loss.
    Must be set before JAX starts; an explicit XLA_FLAGS entry of the user wins.
    """
    flag = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
    current = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" not in current:
        os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


def run(argv=None) -> None:
    """The console entry point: ``argv`` without the program name (default ``sys.argv[1:]``).

    Returns on success; raises ``SystemExit`` with the exit code otherwise.
    """
    code = main(sys.argv[1:] if argv is None else list(argv))
    if code:
        raise SystemExit(code)


def main(argv) -> int:
    """Runs one command; returns the exit code (0, 1 run-time failure, 2 usage/config mistake,
    130/143 stopped by SIGINT/SIGTERM)."""
    argv = [str(a) for a in argv]
    verbose = _verbose_requested(argv)
    handler = _install_log_handler()
    previous_term = _install_sigterm_handler()
    try:
        return _main(argv)
    except UsageError as e:
        return _fail(str(e), 2, verbose, hint=False)
    except KeyboardInterrupt:
        return _fail(_interrupted_message("SIGINT", argv), 130, verbose, hint=False)
    except _Terminated:
        return _fail(_interrupted_message("SIGTERM", argv), 143, verbose, hint=False)
    except Exception as e:  # noqa: BLE001 - every failure becomes one short message
        code = 2 if _is_config_mistake(e) else 1
        return _fail(_describe(e), code, verbose, hint=code == 1)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        logging.getLogger().removeHandler(handler)


# --------------------------------------------------------------------------- errors


def _verbose_requested(argv) -> bool:
    if os.environ.get("DIFFUSION_JAX_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    for arg in argv:
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "verbose" and (not eq or _parse_bool(value) is True):
            return True
    return False


def _fail(message: str, code: int, verbose: bool, *, hint: bool) -> int:
    if verbose and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    if hint and not verbose:
        print(HINT, file=sys.stderr)
    sys.stderr.flush()
    return code


def _library_errors(*names) -> tuple:
    """The library's exception classes ``module:Class`` that are already imported (an error
    raised by one implies its module was), without importing anything while failing."""
    out = []
    for name in names:
        module, _, cls = name.partition(":")
        found = getattr(sys.modules.get(f"diffusion_jax.training.{module}"), cls, None)
        if found is not None:
            out.append(found)
    return tuple(out)


def _is_config_mistake(e: BaseException) -> bool:
    return isinstance(e, _library_errors("trainer:ConfigMismatch"))


def _known_errors() -> tuple:
    return (ValueError, TypeError, OSError) + _library_errors(
        "checkpoint:CheckpointError", "trainer:TrainingStopped", "workdir:WorkdirLocked")


def _describe(e: BaseException) -> str:
    """The library's own message for its errors (a few lines at most: e.g. the commands that
    prepare a data set); the first line of anything else."""
    text = str(e).strip()
    lines = text.splitlines()
    if isinstance(e, _known_errors()) and text and len(lines) <= 6:
        return text
    first = lines[0] if lines else ""
    if len(first) > 300:
        first = first[:300] + " ..."
    message = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        message += (" -- the accelerator ran out of memory; lower --batch_size (sample), "
                    "config.eval.batch_size or config.data.batch_size.")
    return message


def _interrupted_message(name: str, argv) -> str:
    command = argv[0] if argv else ""
    if command == "train":
        return (f"interrupted by {name} outside the training loop; the newest checkpoint is kept. "
                "Run the same command again to resume.")
    return f"interrupted by {name}."


def _install_sigterm_handler():
    """SIGTERM -> ``_Terminated`` (a clean message and exit 143) while the CLI runs; the trainer's
    loop replaces it with its own save-and-stop handler. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handle(signum, frame):
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, handle)
    except ValueError:
        return None


class _OneLineFormatter(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _DropStopNotice(logging.Filter):
    """The trainer logs its stop as a warning; the CLI prints the same as its final line."""

    def filter(self, record):
        return not (record.name.endswith("training.trainer") and str(record.msg).startswith("received"))


def _install_log_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_OneLineFormatter())
    handler.addFilter(_DropStopNotice())
    logging.getLogger().addHandler(handler)
    return handler


# --------------------------------------------------------------------------- argv


def _usage(command: str | None = None) -> str:
    commands = [command] if command else list(COMMANDS)
    lines = [f"usage: python -m diffusion_jax {{{','.join(COMMANDS)}}} [flags]"]
    for cmd in commands:
        names = [n for n, spec in FLAG_SPECS.items() if cmd in spec[2]]
        lines.append(f"\n{cmd}:")
        for n in names:
            typ, default, _, text = FLAG_SPECS[n]
            shown = f" (default {default})" if default is not None else ""
            lines.append(f"  --{n}: {text}{shown}")
        if cmd in _RUN:
            lines.append("  --config.<key>=<value>: override one key of the config")
    return "\n".join(lines)


def _parse_bool(value: str):
    lowered = value.strip().lower()
    if lowered in ("true", "t", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "f", "0", "no", "n", "off"):
        return False
    return None


def _parse_argv(argv):
    """-> (command, flag values, config overrides [(key, raw value or None, as written)]), or
    ``(None, {"help": command}, [])`` for --help."""
    if not argv or argv[0] in ("-h", "--help", "-help", "help"):
        if argv:
            return None, {"help": None}, []
        raise UsageError(f"a command is missing.\n{_usage().splitlines()[0]}")
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = difflib.get_close_matches(command, COMMANDS, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f"; choose one of {', '.join(COMMANDS)}."
        raise UsageError(f"unknown command {command!r}{extra}")
    values = {n: spec[1] for n, spec in FLAG_SPECS.items()}
    overrides = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"unexpected argument {arg!r}; every input is a flag, "
                             f"e.g. --workdir DIR (python -m diffusion_jax {command} --help).")
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            return None, {"help": command}, []
        if name.startswith(("config.", "noconfig.")):
            if command not in _RUN:
                raise UsageError(f"{arg}: {command} takes no config.")
            negated = name.startswith("no")
            key = name.split(".", 1)[1]
            if negated:
                raw = "false"
            elif eq:
                raw = value
            elif i < len(rest) and not rest[i].startswith("--"):
                raw = rest[i]
                i += 1
            else:
                raw = None
            overrides.append((key, raw, arg if eq or raw is None else f"{arg} {raw}"))
            continue
        negated = name.startswith("no") and name[2:] in FLAG_SPECS and FLAG_SPECS[name[2:]][0] is bool
        flag = name[2:] if negated else name
        if flag not in FLAG_SPECS:
            names = [n for n, spec in FLAG_SPECS.items() if command in spec[2]]
            hint = difflib.get_close_matches(flag, names, n=1)
            extra = f"; did you mean --{hint[0]}?" if hint else ""
            raise UsageError(f"unknown flag --{flag} for {command}{extra} "
                             f"(python -m diffusion_jax {command} --help lists them)")
        typ, _, commands, _ = FLAG_SPECS[flag]
        if command not in commands:
            raise UsageError(f"--{flag} is a flag of {', '.join(commands)}; not of {command}.")
        if typ is bool:
            if negated or not eq:
                values[flag] = not negated
                continue
            parsed = _parse_bool(value)
            if parsed is None:
                raise UsageError(f"--{flag}={value}: expected true or false.")
            values[flag] = parsed
            continue
        if not eq:
            if i >= len(rest):
                raise UsageError(f"--{flag} needs a value, e.g. --{flag}=VALUE.")
            value = rest[i]
            i += 1
        if typ is int:
            try:
                values[flag] = int(value)
            except ValueError:
                raise UsageError(f"--{flag} expects an int, got {value!r}.") from None
        else:
            values[flag] = value
    return command, values, overrides


# --------------------------------------------------------------------------- config


def load_config(arg: str):
    """``--config``: a .py experiment config (``get_config()``; ``path.py:arg`` passes ``arg``)
    or a run's ``config.json``. Raises UsageError naming the path and what was expected."""
    import ml_collections

    path, call_arg = Path(arg), None
    if not path.exists() and ":" in arg:
        head, _, tail = arg.partition(":")
        if Path(head).exists():
            path, call_arg = Path(head), tail
    if not path.exists():
        siblings = [str(p) for p in path.parent.glob("*") if p.suffix in (".py", ".json")] \
            if path.parent.is_dir() else []
        hint = difflib.get_close_matches(str(path), siblings, n=1)
        extra = f" Did you mean {hint[0]}?" if hint else ""
        raise UsageError(f"config file {arg} not found (--config).{extra} Pass an experiment config "
                         f"such as experiments/configs/ddpm_digits.py, or a run's <workdir>/config.json.")
    if path.is_dir():
        extra = (f" For the run in it, pass --config {path / 'config.json'}."
                 if (path / "config.json").is_file() else "")
        raise UsageError(f"--config {arg} is a directory, not a config file.{extra}")
    if path.suffix == ".json":
        if call_arg is not None:
            raise UsageError(f"--config {arg}: a .json config takes no ':argument'.")
        from diffusion_jax.training.config import load_config_json

        try:
            return load_config_json(path)
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {path} is not valid JSON ({e}).") from e
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise UsageError(f"--config {path}: {e}") from e
    if path.suffix != ".py":
        raise UsageError(f"--config {arg}: expected a .py experiment config or a run's config.json, "
                         f"got a {path.suffix or 'suffix-less'} file.")
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location(f"diffusion_jax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a broken config file: name it and the cause
        raise UsageError(f"cannot load config file {path}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"config file {path} defines no get_config(); it must define "
                         f"get_config() returning an ml_collections.ConfigDict.")
    try:
        config = module.get_config(*([call_arg] if call_arg is not None else []))
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{path}: get_config({call_arg or ''}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"{path}: get_config() returned {type(config).__name__}, "
                         f"expected an ml_collections.ConfigDict.")
    return config


def _leaf_keys(config, prefix=""):
    import ml_collections

    out = []
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            out += _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _parse_value(old, raw: str, key: str, token: str):
    """``raw`` (from the command line) as the type of the config's current value ``old``."""
    def bad(expected):
        return UsageError(f"{token}: config key {key} expects {expected} (now {old!r}), got {raw!r}.")

    if isinstance(old, bool):
        if raw is None:
            return True
        parsed = _parse_bool(raw)
        if parsed is None:
            raise bad("true or false")
        return parsed
    if raw is None:
        raise UsageError(f"{token} needs a value, e.g. --config.{key}={old!r}.")
    if isinstance(old, int):
        try:
            return int(raw)
        except ValueError:
            raise bad("an int") from None
    if isinstance(old, float):
        try:
            return float(raw)
        except ValueError:
            raise bad("a number") from None
    if isinstance(old, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (SyntaxError, ValueError):
        if isinstance(old, tuple | list):
            raise bad("a tuple such as (1, 2) or ()") from None
        return raw
    if isinstance(old, tuple | list):
        if isinstance(value, tuple | list):
            return tuple(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value,)
        raise bad("a tuple such as (1, 2) or ()")
    return value


def apply_overrides(config, overrides) -> None:
    """``--config.a.b=value`` for each override; an unknown key names the nearest valid one."""
    import ml_collections

    for key, raw, token in overrides:
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                leaves = _leaf_keys(config)
                hint = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
                extra = f"; did you mean {hint[0]}?" if hint else "."
                section = ".".join(parts[:depth])
                if isinstance(node, ml_collections.ConfigDict):
                    keys = ", ".join(sorted(node.keys()))
                    extra += f" Keys of {section or 'the config'}: {keys}."
                raise UsageError(f"unknown config key {key} ({token}){extra}")
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        old = node[leaf]
        if isinstance(old, ml_collections.ConfigDict):
            example = next(iter(old.keys()), "key")
            raise UsageError(f"{token}: config.{key} is a section, not a value; set one of its "
                             f"keys, e.g. --config.{key}.{example}=...")
        value = _parse_value(old, raw, key, token)
        try:
            node[leaf] = value  # an existing key: allowed on a locked ConfigDict too
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise UsageError(f"{token}: cannot set config.{key} to {value!r}: {e}") from None


def _validate(config, config_arg: str) -> None:
    from diffusion_jax.training.config import validate_config

    try:
        validate_config(config)
    except (ValueError, TypeError, KeyError) as e:
        message = str(e).strip("'\"")
        if "--config." not in message:
            import re

            named = re.search(r"config\.([A-Za-z_][\w.]*[A-Za-z0-9_])", message)
            if named:
                message = (f"{message.rstrip('.')}; set it with --config.{named.group(1)}=... "
                           f"or in {config_arg}.")
        raise UsageError(message) from e


# --------------------------------------------------------------------------- commands


def _main(argv) -> int:
    command, opts, overrides = _parse_argv(argv)
    if command is None:
        print(_usage(opts["help"]))
        return 0
    _set_cpu_flags()
    if command == "prepare":
        return _prepare(opts)
    if opts["config"] is None:
        raise UsageError(f"{command} needs --config experiments/configs/<name>.py "
                         f"(or a run's <workdir>/config.json).")
    if not opts["workdir"]:
        raise UsageError(f"{command} needs --workdir <dir>.")
    if command != "train" and not 0 <= opts["seed"] < 2**32:
        raise UsageError(f"--seed must lie in 0..2**32-1 (a PRNG seed), got {opts['seed']}.")
    config = load_config(opts["config"])
    apply_overrides(config, overrides)
    from diffusion_jax.training import kinds

    _validate(config, opts["config"])
    kind = kinds.get(config.model_kind)
    if command == "sample":
        _check_sample_flags(config, kind, opts)
        changed = False
        if opts["sampler"] is not None and "sampler" in config.eval:
            config.eval.sampler, changed = opts["sampler"], True
        if opts["nfe"] is not None:  # _check_sample_flags: the kind has config.eval.nfe
            config.eval.nfe, changed = opts["nfe"], True
        if changed:  # e.g. eval.ddim_steps > diffusion.T with ddim, an even NFE with heun
            _validate(config, opts["config"])
    return {"train": _train, "evaluate": _evaluate, "sample": _sample}[command](config, opts)


def _prepare(opts) -> int:
    from diffusion_jax.data import tfds_data

    if not opts["dataset"]:
        raise UsageError("prepare needs --dataset (e.g. --dataset mnist).")
    try:
        tfds_data.check_tfds_name(opts["dataset"])
    except ValueError as e:
        raise UsageError(f"--dataset: {e}") from e
    tfds_data.prepare_dataset(opts["dataset"], opts["data_dir"])
    print(f"prepared {opts['dataset']} in {opts['data_dir'] or 'the tfds default data_dir'}")
    return 0


def _quiet_loggers() -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'"


def _train(config, opts) -> int:
    _quiet_loggers()
    from diffusion_jax.training import trainer
    from diffusion_jax.training.distributed import maybe_initialize_from_config, use_cpu_devices

    use_cpu_devices(config.train.cpu_devices)
    maybe_initialize_from_config(config)
    summary = trainer.train_and_evaluate(config, opts["workdir"], progress=opts["progress"])
    if summary.get("stopped"):
        stopped = summary["stopped"]
        print(f"stopped by {stopped} at step {summary['step']}; checkpoint saved in "
              f"{Path(opts['workdir']) / 'checkpoints'}. Run the same command again to resume.",
              file=sys.stderr)
        try:
            return 128 + int(signal.Signals[stopped])
        except (KeyError, ValueError):
            return 1
    print(trainer.format_summary(summary))
    return 0


def _evaluate(config, opts) -> int:
    _quiet_loggers()
    import jax
    import numpy as np

    from diffusion_jax.data import pipeline
    from diffusion_jax.training import trainer

    workdir = Path(opts["workdir"])
    trained = trainer.load_trained(config, workdir)
    images = pipeline.full_split(config.data.name, config.data.test_split,
                                 data_dir=config.data.data_dir or None, binarize=config.data.binarize)
    report = trainer.evaluate_test_split(
        config, trained.kind, trained.model, trained.params, np.asarray(images),
        jax.random.key(opts["seed"]), num_levels=trained.num_levels, workdir=workdir,
        step=trained.step, progress=opts["progress"])
    print(f"checkpoint step {trained.step} of {workdir}")
    for line in trained.kind.summary_lines(report):
        print(line)
    print(json.dumps({k: v for k, v in report.items() if k != "per_t_bpd"}, indent=2, default=str))
    return 0


def _check_sample_flags(config, kind, opts) -> None:
    from diffusion_jax.training import kinds

    if not kind.CAN_SAMPLE:
        able = ", ".join(name for name, module in kinds.KINDS.items() if module.CAN_SAMPLE)
        raise UsageError(f"model_kind {config.model_kind!r} cannot draw samples (no prior); "
                         f"sample needs a kind that can: {able}.")
    if opts["num_samples"] < 1:
        raise UsageError(f"--num_samples must be a positive int, got {opts['num_samples']}.")
    if opts["batch_size"] is not None and opts["batch_size"] < 1:
        raise UsageError(f"--batch_size must be a positive int, got {opts['batch_size']}.")
    sampler = opts["sampler"]
    if opts["nfe"] is not None:
        _check_nfe_flag(config, kind, opts["nfe"], sampler)
    if sampler is None:
        return
    choices = tuple(getattr(kind, "SAMPLERS", ()))
    if not choices:
        raise UsageError(f"--sampler {sampler}: model_kind {config.model_kind!r} has a single "
                         f"sampler; drop --sampler.")
    if sampler not in choices:
        hint = difflib.get_close_matches(sampler, choices, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UsageError(f"--sampler {sampler!r} is not a sampler of model_kind "
                         f"{config.model_kind!r}; choose one of {', '.join(choices)}.{extra}")


def _check_nfe_flag(config, kind, nfe: int, sampler) -> None:
    """--nfe: a positive int, for a sampler that takes network evaluations (its range is the
    kind's check of config.eval.nfe, run after the value is set)."""
    if nfe < 1:
        raise UsageError(f"--nfe must be a positive int (network evaluations), got {nfe}.")
    takes = tuple(getattr(kind, "NFE_SAMPLERS", ()))
    if not takes or "nfe" not in config.get("eval", {}):
        raise UsageError(f"--nfe: model_kind {config.model_kind!r} has no sampler that takes a "
                         f"number of network evaluations; drop --nfe.")
    chosen = sampler if sampler is not None else config.eval.get("sampler")
    if chosen in getattr(kind, "SAMPLERS", ()) and chosen not in takes:
        extra = " (DDIM's steps are config.eval.ddim_steps)" if chosen == "ddim" else ""
        raise UsageError(f"--nfe {nfe} sets the network evaluations of the samplers "
                         f"{', '.join(takes)}, but the sampler is {chosen!r}{extra}; pass "
                         f"--sampler {takes[0]} (or {', '.join(takes[1:])}), or drop --nfe.")


def _reserve(path: Path, nbytes: int) -> None:
    """Allocates the whole file now, so a full disk is one clear error before sampling (a write
    to a memory map of a sparse file on a full disk kills the process with SIGBUS)."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"not enough disk space for {path.name} ({nbytes / 2**20:.1f} MiB); "
                                   f"free space in {path.parent} or lower --num_samples") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _sample(config, opts) -> int:
    _quiet_loggers()
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from diffusion_jax.training import plots, trainer

    workdir = Path(opts["workdir"])
    trained = trainer.load_trained(config, workdir)
    num = int(opts["num_samples"])
    batch = min(num, int(opts["batch_size"] or config.eval.batch_size))
    num_batches = math.ceil(num / batch)
    key = jax.random.key(opts["seed"])
    out_dir = workdir / "samples"
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file; sample writes into that directory. Move "
                                 f"the file aside.")
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = opts["sampler"] or getattr(config.eval, "sampler", None)
    tag = getattr(trained.kind, "sample_tag", None)
    sampler = tag(config, sampler) if sampler and tag else sampler  # e.g. heun_nfe35
    stem = f"sample_step{trained.step}_seed{opts['seed']}_{sampler or 'prior'}_n{num}_b{batch}"
    npy, png = out_dir / f"{stem}.npy", out_dir / f"{stem}.png"
    partial = out_dir / f".{stem}.npy.partial"
    shape = (num, *trained.image_shape)
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    try:
        _reserve(partial, int(out.offset) + int(np.prod(shape)) * 4)
        grid_n, grid, non_finite = min(GRID_SIZE, num), None, 0
        progress = opts["progress"]
        for b in tqdm(range(num_batches), desc="sampling", unit="batch",
                      disable=not progress or num_batches == 1, dynamic_ncols=True):
            # Every batch draws `batch` images (the last one too: one compilation, and batch b
            # does not depend on --num_samples); the last keeps what is needed.
            x = trained.kind.sample(config, trained.model, trained.params, jax.random.fold_in(key, b),
                                    num_samples=batch, image_shape=trained.image_shape,
                                    sampler=opts["sampler"], progress=progress and num_batches == 1)
            lo, hi = b * batch, min((b + 1) * batch, num)
            x = np.asarray(x, np.float32)[: hi - lo]
            non_finite += int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
            out[lo:hi] = x
            if grid is None and hi >= grid_n:
                grid = plots.save_image_grid(np.asarray(out[:grid_n]), png)
        out.flush()
    except BaseException:
        del out
        partial.unlink(missing_ok=True)
        raise
    del out
    os.replace(partial, npy)
    if non_finite:
        print(f"warning: {non_finite} of {num} samples hold NaN or Inf values.", file=sys.stderr)
    print(f"wrote {num} samples of checkpoint step {trained.step} to {npy} "
          f"(float32 {shape}, in [-1, 1]; {num_batches} batch(es) of {batch})")
    print(f"wrote a grid of the first {grid_n} to {grid}")
    return 0
