"""Small helpers shared by the model-kind modules."""

from __future__ import annotations

import jax

from diffusion_jax.training.config import check_choice_key, check_fraction, check_positive_int

UNET_DTYPES = ("float32", "bfloat16")


def add_unet_config(m) -> None:
    """The U-Net keys of ``config.model`` shared by the diffusion kinds (ddpm, vdm)."""
    m.ch = 32
    m.ch_mult = (1, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (4,)  # image heights (spatial sizes) of the levels with attention
    m.mid_attention = True
    m.num_heads = 1
    m.dropout = 0.0
    m.num_groups = 8


def validate_unet(config) -> None:
    """Checks the keys of ``add_unet_config`` and ``model.dtype``, naming each key."""
    m = config.model
    for key in ("model.ch", "model.num_res_blocks", "model.num_heads", "model.num_groups"):
        check_positive_int(config, key)
    check_choice_key(config, "model.dtype", UNET_DTYPES)
    check_fraction(config, "model.dropout")
    channels = [m.ch * k for k in m.ch_mult]
    for ch in [m.ch, *channels]:
        if ch % m.num_groups:
            raise ValueError(f"config.model.num_groups={m.num_groups} must divide every channel "
                             f"count of the U-Net {sorted(set([m.ch, *channels]))}; {ch} is not "
                             f"divisible by it.")


def check_attention_levels(m, image_shape) -> None:
    """``model.attn_resolutions`` must name levels the U-Net has for images of ``image_shape``."""
    levels = [image_shape[0] // 2**i for i in range(len(m.ch_mult))]
    unknown = [r for r in m.attn_resolutions if r not in levels]
    if unknown:
        raise ValueError(f"config.model.attn_resolutions={tuple(m.attn_resolutions)}: {unknown} "
                         f"match no level of this U-Net; its levels have spatial sizes {levels} "
                         f"(image {image_shape[0]}x{image_shape[1]}, ch_mult={tuple(m.ch_mult)}).")


def split_keys(keys, n: int):
    """(B,) keys -> n arrays of (B,) keys, each derived per example."""
    split = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [split[:, i] for i in range(n)]


def init_loss_state(config):
    """No state beyond the parameters (the default of a model kind)."""
    del config


def loss_state_update(config):
    del config


def progress_sampler(config) -> None:
    """None: the grids drawn during training use the kind's final sampler (the default)."""
    del config


class SamplingUnsupported(ValueError):
    """The model kind cannot draw samples (e.g. a plain autoencoder has no prior)."""
