"""Run configs: the defaults of every key, loading, and validation before anything compiles.

``base_config(model_kind)`` holds the sections every run has (seed, data, optim, train, eval,
distributed) plus the sections of its model kind (added by the kind module, e.g. ``model`` and
``diffusion`` for "ddpm"), so a key that a kind does not read does not exist for it: setting it
is an "unknown key" error, never silently ignored. ``validate_config`` checks every value and
names the key, the value and what was expected.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import ml_collections

from diffusion_jax._checks import check_choice

OPTIMIZERS = ("adamw", "adam")
# jax.random.key(seed) keeps only the low 32 bits (key(2**32) == key(0)) and the data pipeline
# takes no negative seed: seeds are 0..2**32 - 1.
MAX_SEED = 2**32 - 1
DECAYS = ("constant", "cosine")
PARALLEL_MODES = ("none", "sharding", "pmap")


def base_config(model_kind: str = "ddpm") -> ml_collections.ConfigDict:
    """Every key a run of ``model_kind`` reads, with defaults; experiment configs override."""
    from diffusion_jax.training import kinds

    kind = kinds.get(model_kind)
    c = ml_collections.ConfigDict()
    c.model_kind = model_kind
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = ""  # tfds data_dir ("" = tfds default); unused by "digits"
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.batch_size = 64  # the GLOBAL batch
    c.data.binarize = False
    c.data.dequantize = False

    c.model = ml_collections.ConfigDict()

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adamw"
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.warmup_steps = 100
    c.optim.decay = "constant"
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.999

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.log_every = 25
    c.train.eval_every = 500  # 0 = no periodic evaluation
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.max_consecutive_skips = 20
    c.train.parallel = "none"  # none, sharding (jit over a Mesh) or pmap
    # Host devices when JAX runs on the CPU (0: JAX's default, one). With N = the cores and
    # parallel="sharding", each core trains its share of the batch (bench/README.md).
    c.train.cpu_devices = 0
    c.train.allow_config_change = False

    # Multi-host: "" / 0 / -1 mean "read JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID".
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 100
    c.eval.max_examples = 0  # 0 = the whole test split
    c.eval.periodic_examples = 256
    c.eval.num_samples = 64
    kind.add_config(c)
    return c


def load_config_json(path) -> ml_collections.ConfigDict:
    """A run's ``config.json`` (as the trainer writes it) -> a config with the same values.

    Lists become tuples (configs hold tuples), everything else is taken as written; the result
    is checked against ``base_config`` of its model kind like any other config.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "model_kind" not in data:
        raise ValueError(f"{path} is not a run config (no 'model_kind' key).")

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    base = base_config(data["model_kind"])
    check_keys_of_kind(ml_collections.ConfigDict(tuples(data)), base)
    base.update(tuples(data))
    return base


# --------------------------------------------------------------------------- checks


def get_key(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive_int(config, key: str) -> None:
    value = get_key(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{key} must be a positive int, got {value!r}.")


def check_nonnegative_int(config, key: str) -> None:
    value = get_key(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config.{key} must be a non-negative int, got {value!r}.")


def check_positive_number(config, key: str, *, allow_zero: bool = False) -> None:
    """A finite number > 0 (≥ 0 with ``allow_zero``); inf and NaN are errors."""
    value = get_key(config, key)
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"config.{key} must be {expected}, got {value!r}.")


def check_fraction(config, key: str) -> None:
    """A number in [0, 1)."""
    value = get_key(config, key)
    if not (_is_number(value) and 0.0 <= value < 1.0):
        raise ValueError(f"config.{key} must lie in [0, 1), got {value!r}.")


def check_choice_key(config, key: str, choices) -> None:
    check_choice(f"config.{key}", get_key(config, key), choices)


def validate_config(config) -> None:
    """Raises ValueError/TypeError naming the key, the value and what was expected."""
    from diffusion_jax.training import kinds

    kind = kinds.get(config.get("model_kind"))
    base = base_config(config.model_kind)
    check_keys_of_kind(config, base)
    check_missing_keys(config, base, model_kind=config.model_kind)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f"config.seed must be an int, got {config.seed!r}.")
    if not 0 <= config.seed <= MAX_SEED:
        raise ValueError(f"config.seed must lie in 0..{MAX_SEED}, got {config.seed} (JAX keys hold "
                         f"32 bits: seed 2**32 would repeat seed 0; the data order needs seed >= 0).")
    for key in ("data.batch_size", "train.num_steps", "train.log_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.max_consecutive_skips", "eval.batch_size",
                "eval.num_samples", "eval.periodic_examples"):
        check_positive_int(config, key)
    for key in ("optim.warmup_steps", "train.eval_every", "eval.max_examples",
                "train.cpu_devices"):
        check_nonnegative_int(config, key)
    check_positive_number(config, "optim.lr")
    check_positive_number(config, "optim.eps")
    check_positive_number(config, "optim.weight_decay", allow_zero=True)
    check_positive_number(config, "optim.grad_clip", allow_zero=True)
    for key in ("optim.b1", "optim.b2", "optim.ema_decay"):
        check_fraction(config, key)
    from diffusion_jax.data.pipeline import DATASETS

    check_choice_key(config, "data.name", DATASETS)
    check_choice_key(config, "optim.optimizer", OPTIMIZERS)
    check_choice_key(config, "optim.decay", DECAYS)
    check_choice_key(config, "train.parallel", PARALLEL_MODES)
    kind.validate(config)


def check_keys_of_kind(config, reference) -> None:
    """``check_unknown_keys``, and when the keys are exactly those of another model kind
    (model_kind changed, the rest not), says so instead of naming only the first stray key."""
    from diffusion_jax.training import kinds

    stray = _first_unknown_key(config, reference)
    if stray is None:
        return
    given = reference.get("model_kind")
    fits = [name for name in kinds.KINDS if name != given
            and _first_unknown_key(config, other := base_config(name)) is None
            and _first_unknown_key(other, config) is None]  # a whole config of that kind
    if fits:
        raise ValueError(f"config.model_kind is {given!r}, but the other keys are those of model_kind "
                         f"{fits[0]!r} (e.g. '{stray}'); start from base_config({given!r}) or a "
                         f"{given} experiment config instead of changing model_kind alone.")
    check_unknown_keys(config, reference)


def _first_unknown_key(config, reference, prefix: str = ""):
    for key in config.keys():
        if key not in reference:
            return f"{prefix}{key}"
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(
                reference[key], ml_collections.ConfigDict):
            found = _first_unknown_key(config[key], reference[key], f"{prefix}{key}.")
            if found:
                return found
    return None


def check_unknown_keys(config, reference, prefix: str = "") -> None:
    """Every key of ``config`` must exist in ``reference``; suggests the nearest valid key."""
    for key in config.keys():
        if key not in reference:
            hint = difflib.get_close_matches(key, list(reference.keys()), n=1)
            extra = f" Did you mean '{prefix}{hint[0]}'?" if hint else ""
            valid = ", ".join(sorted(reference.keys()))
            raise ValueError(f"unknown config key '{prefix}{key}'.{extra} Valid keys here: {valid}.")
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(
                reference[key], ml_collections.ConfigDict):
            check_unknown_keys(config[key], reference[key], prefix=f"{prefix}{key}.")


def check_missing_keys(config, reference, prefix: str = "", *, model_kind=None) -> None:
    """Every key of ``reference`` must exist in ``config`` (a config built by hand may lack one)."""
    model_kind = reference.get("model_kind") if model_kind is None else model_kind
    for key in reference.keys():
        if key not in config:
            raise ValueError(f"config key '{prefix}{key}' is missing; start from "
                             f"diffusion_jax.training.config.base_config({model_kind!r}).")
        if isinstance(reference[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ValueError(f"config.{prefix}{key} must be a section (a ConfigDict of "
                                 f"{', '.join(sorted(reference[key].keys()))}), got "
                                 f"{config[key]!r}.")
            check_missing_keys(config[key], reference[key], prefix=f"{prefix}{key}.",
                               model_kind=model_kind)
