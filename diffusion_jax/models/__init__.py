"""Flax Linen models: autoencoders, VAEs and the DDPM U-Net (no losses live here)."""

from diffusion_jax.models.autoencoders import (
    VAE,
    AutoEncoder,
    Decoder,
    Encoder,
    check_autoencoder_image_shape,
    vae_fns,
)
from diffusion_jax.models.unet import (
    AttnBlock,
    ResBlock,
    UNet,
    group_count,
    num_params,
    timestep_embedding,
    unet_benchmark,
    unet_ddpm_cifar10,
    unet_digits,
)
from diffusion_jax.models.vdm_net import VDMNet, fourier_features, vdm_unet

__all__ = [
    "AttnBlock",
    "AutoEncoder",
    "Decoder",
    "Encoder",
    "ResBlock",
    "UNet",
    "VAE",
    "VDMNet",
    "check_autoencoder_image_shape",
    "fourier_features",
    "group_count",
    "num_params",
    "timestep_embedding",
    "unet_benchmark",
    "unet_ddpm_cifar10",
    "unet_digits",
    "vae_fns",
    "vdm_unet",
]
