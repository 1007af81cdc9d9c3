"""The default config of every run and its validation: clear errors before anything compiles."""

from __future__ import annotations

import difflib

import ml_collections

from diffusion_jax._checks import check_choice


def base_config(model_kind: str = "ddpm") -> ml_collections.ConfigDict:
    """Every key a run reads, with defaults; experiment configs override what they change."""
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
    if model_kind == "ddpm":
        c.model.ch = 32
        c.model.ch_mult = (1, 2)
        c.model.num_res_blocks = 2
        c.model.attn_resolutions = (4,)
        c.model.mid_attention = True
        c.model.num_heads = 1
        c.model.dropout = 0.0
        c.model.num_groups = 8
        c.model.prediction = "eps"
        c.model.learned_variance = False
        c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 params and optimizer
    else:
        c.model.kind = "mlp"
        c.model.latent_dim = 2
        c.model.hidden = (256, 128)
        c.model.decoder = "gaussian"  # VAE only

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.T = 1000
    c.diffusion.schedule = "linear"
    c.diffusion.beta_1 = 1e-4
    c.diffusion.beta_T = 0.02
    c.diffusion.loss = "l_simple"
    c.diffusion.variance = "beta"  # σ_t² of the reverse process: beta, beta_tilde or learned
    c.diffusion.hybrid_weight = 0.001

    c.vae = ml_collections.ConfigDict()
    c.vae.kl_warmup_steps = 0
    c.vae.free_bits = 0.0

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
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.max_consecutive_skips = 20
    c.train.parallel = "none"  # none, sharding (jit over a Mesh) or pmap
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
    c.eval.elbo_chunk_size = 50
    c.eval.iwae_k = 1000
    c.eval.num_samples = 64
    c.eval.sampler = "ddpm"
    c.eval.ddim_steps = 100
    return c


_POSITIVE_INTS = ("data.batch_size", "train.num_steps", "train.log_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.max_consecutive_skips", "eval.batch_size",
                  "eval.num_samples", "eval.periodic_examples", "eval.elbo_chunk_size",
                  "eval.iwae_k", "eval.ddim_steps", "diffusion.T")
_NONNEGATIVE = ("optim.weight_decay", "optim.warmup_steps", "optim.grad_clip", "vae.free_bits",
                "vae.kl_warmup_steps", "train.eval_every", "eval.max_examples")


def _get(config, dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate_config(config) -> None:
    """Raises ValueError/TypeError naming the key, the value and what was expected."""
    check_unknown_keys(config, base_config(config.model_kind))
    check_choice("model_kind", config.model_kind, ("ddpm", "vae", "ae"))
    for key in _POSITIVE_INTS:
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{key} must be a positive int, got {value!r}.")
    for key in _NONNEGATIVE:
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"config.{key} must be a non-negative number, got {value!r}.")
    lr = config.optim.lr
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"config.optim.lr must be a positive number, got {lr!r}.")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ValueError(f"config.optim.ema_decay must lie in [0, 1), got {config.optim.ema_decay!r}.")
    if config.diffusion.T < 2:
        raise ValueError(f"config.diffusion.T must be at least 2, got {config.diffusion.T}.")
    check_choice("config.train.parallel", config.train.parallel, ("none", "sharding", "pmap"))
    check_choice("config.eval.sampler", config.eval.sampler, ("ddpm", "ddim"))
    if config.model_kind == "ddpm":
        check_choice("config.diffusion.loss", config.diffusion.loss, ("l_simple", "vlb", "hybrid"))
        check_choice("config.diffusion.variance", config.diffusion.variance,
                     ("beta", "beta_tilde", "learned"))
        check_choice("config.model.prediction", config.model.prediction, ("eps", "x0", "v"))
        check_choice("config.model.dtype", config.model.dtype, ("float32", "bfloat16"))
        if not 0.0 <= config.model.dropout < 1.0:
            raise ValueError(f"config.model.dropout must lie in [0, 1), got {config.model.dropout!r}.")
        if config.eval.sampler == "ddim" and config.eval.ddim_steps > config.diffusion.T:
            raise ValueError(f"config.eval.ddim_steps ({config.eval.ddim_steps}) must not exceed "
                             f"config.diffusion.T ({config.diffusion.T}).")
    else:
        check_choice("config.model.kind", config.model.kind, ("mlp", "conv"))
        if config.model_kind == "vae":
            check_choice("config.model.decoder", config.model.decoder, ("gaussian", "bernoulli"))
            if config.model.decoder == "bernoulli" and not config.data.binarize:
                raise ValueError("config.model.decoder='bernoulli' needs binary data: set "
                                 "config.data.binarize=True (or use a binarized dataset).")
        if config.model.latent_dim < 1:
            raise ValueError(f"config.model.latent_dim must be positive, got {config.model.latent_dim}.")


def check_unknown_keys(config, reference, prefix: str = "") -> None:
    """Every key of ``config`` must exist in ``reference``; suggests the nearest valid key."""
    for key in config.keys():
        if key not in reference:
            hint = difflib.get_close_matches(key, list(reference.keys()), n=1)
            extra = f" Did you mean {prefix}{hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown config key {prefix}{key!r}.{extra}")
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(
                reference[key], ml_collections.ConfigDict):
            check_unknown_keys(config[key], reference[key], prefix=f"{prefix}{key}.")
