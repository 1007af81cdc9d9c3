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

__all__ = [
    "AttnBlock",
    "AutoEncoder",
    "Decoder",
    "Encoder",
    "ResBlock",
    "UNet",
    "VAE",
    "check_autoencoder_image_shape",
    "group_count",
    "num_params",
    "timestep_embedding",
    "unet_benchmark",
    "unet_ddpm_cifar10",
    "unet_digits",
    "vae_fns",
]
