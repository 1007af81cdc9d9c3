"""Builds a model, schedule and dataset from a config (ml_collections.ConfigDict)."""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax._checks import check_choice
from diffusion_jax.models import VAE, AutoEncoder, UNet
from diffusion_jax.schedules import cosine_schedule, linear_schedule

MODEL_KINDS = ("ddpm", "vae", "ae")
SCHEDULES = ("linear", "cosine")


def build_schedule(diff_cfg):
    check_choice("diffusion.schedule", diff_cfg.schedule, SCHEDULES)
    if diff_cfg.schedule == "linear":
        return linear_schedule(int(diff_cfg.T), beta_1=diff_cfg.beta_1, beta_T=diff_cfg.beta_T)
    return cosine_schedule(int(diff_cfg.T))


def build_model(config, image_shape):
    """The Flax module of ``config.model_kind`` for images of ``image_shape`` (H, W, C)."""
    check_choice("model_kind", config.model_kind, MODEL_KINDS)
    m = config.model
    if config.model_kind == "ddpm":
        unet = UNet(
            ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
            attn_resolutions=tuple(m.attn_resolutions), mid_attention=m.mid_attention,
            num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups,
            prediction=m.prediction, learned_variance=m.learned_variance,
            dtype=jnp.dtype(m.get("dtype", "float32")),
        )
        unet.check_image_shape(image_shape[0], image_shape[1])
        return unet
    if config.model_kind == "vae":
        return VAE(image_shape=tuple(image_shape), latent_dim=m.latent_dim, kind=m.kind,
                   hidden=tuple(m.hidden) if m.hidden else None, decoder=m.decoder)
    return AutoEncoder(image_shape=tuple(image_shape), latent_dim=m.latent_dim, kind=m.kind,
                       hidden=tuple(m.hidden) if m.hidden else None)
