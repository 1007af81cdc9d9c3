"""Tiny configs for end-to-end tests: real code paths, seconds of compute."""

from diffusion_jax.training.config import base_config


def tiny_config(model_kind: str = "ddpm", **overrides):
    c = base_config(model_kind)
    c.data.batch_size = 8
    if model_kind in ("ddpm", "vdm"):  # the smallest U-Net (one level, no attention): compiles ~3× faster
        c.model.ch = 8
        c.model.ch_mult = (1,)
        c.model.num_res_blocks = 1
        c.model.attn_resolutions = ()
        c.model.mid_attention = False
        c.model.num_groups = 4
    if model_kind == "ddpm":
        c.diffusion.T = 20
    elif model_kind == "vdm":
        c.model.fourier_min, c.model.fourier_max = 2, 3
        c.diffusion.gamma_hidden = 16
        c.eval.vdm_draws = 3
        c.eval.sample_steps = 12
    else:
        c.model.hidden = (32,)
        c.model.latent_dim = 2
    c.optim.warmup_steps = 1
    c.train.num_steps = 3
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.eval.batch_size = 8
    c.eval.max_examples = 16
    c.eval.periodic_examples = 8
    c.eval.num_samples = 4
    if "elbo_chunk_size" in c.eval:  # keys of one model kind only
        c.eval.elbo_chunk_size = 10
        c.eval.ddim_steps = 10
    if "iwae_k" in c.eval:
        c.eval.iwae_k = 8
    for dotted, value in overrides.items():
        node = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c
