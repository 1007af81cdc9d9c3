"""The VDM network (Kingma et al. 2021): Fourier features of the input, then the DDPM U-Net.

``VDMNet(z, t_cond, train=)``: z (B, H, W, C) float, t_cond float (B,) (the caller's time
conditioning, e.g. 1000 · the normalised γ(t)); returns (B, H, W, C) float32 (the U-Net's
``out_channels`` is the image's C whatever the Fourier channels). No losses live here.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import linen as nn

from diffusion_jax.models.unet import UNet


def fourier_features(z, k_min: int, k_max: int):
    """VDM's Fourier features: sin and cos of 2^k · 2π · z for k = k_min..k_max (inclusive).

    z (..., C) -> (..., 2 (k_max − k_min + 1) C): all sines (channel-major per frequency) then
    all cosines. They expose the fine scale of z (the spacing of the data levels) to the
    network's first layer, which a conv on z alone resolves badly.
    """
    if k_max < k_min:
        raise ValueError(f"k_max ({k_max}) must be >= k_min ({k_min}).")
    z = jnp.asarray(z)
    freqs = 2.0 * math.pi * 2.0 ** jnp.arange(k_min, k_max + 1, dtype=z.dtype)
    h = (z[..., None] * freqs).reshape(*z.shape[:-1], -1)  # (..., C · K)
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


class VDMNet(nn.Module):
    """Fourier features (optional) concatenated to z, then ``unet`` (whose ``out_channels``
    must be the image's channel count: ``vdm_unet`` below sets it).

    Fields: ``unet`` (a ``UNet``), ``fourier`` (whether to add the features), ``fourier_min``,
    ``fourier_max`` (the range of k, inclusive).
    """

    unet: UNet
    fourier: bool = True
    fourier_min: int = 6
    fourier_max: int = 7

    @nn.compact
    def __call__(self, z, t_cond, *, train: bool):
        z = jnp.asarray(z, jnp.float32)
        h = z
        if self.fourier:
            h = jnp.concatenate([z, fourier_features(z, self.fourier_min, self.fourier_max)], -1)
        out = self.unet(h, t_cond, train=train)
        if out.shape != z.shape:
            raise ValueError(f"the U-Net returned shape {out.shape}; expected z's {z.shape} (set "
                             f"UNet.out_channels to the image's channel count).")
        return out


def vdm_unet(channels: int, **unet_fields) -> UNet:
    """A ``UNet`` for ``VDMNet`` on images with ``channels`` channels."""
    return UNet(out_channels=int(channels), **unet_fields)
