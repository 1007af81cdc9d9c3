"""Model kind "ae": a deterministic autoencoder trained on ‖x̂ − x‖² (``vae.ae_loss``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import vae as vae_lib
from diffusion_jax.models import AutoEncoder
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training.config import check_choice_key, check_positive_int
from diffusion_jax.training.kinds.common import (  # noqa: F401
    init_loss_state,
    loss_state_update,
    progress_sampler,
)

ARCHITECTURES = ("mlp", "conv")
FINGERPRINT_KEYS = ("model", "data.name", "data.binarize")
CAN_SAMPLE = False  # no prior over the latent space


def add_config(c) -> None:
    c.model.kind = "mlp"
    c.model.latent_dim = 2
    c.model.hidden = (256, 128)


def validate(config) -> None:
    check_choice_key(config, "model.kind", ARCHITECTURES)
    check_positive_int(config, "model.latent_dim")
    hidden = config.model.hidden
    if hidden is not None and any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                  for h in hidden):
        raise ValueError(f"config.model.hidden must be a tuple of positive ints, got {hidden!r}.")


def build(config, image_shape):
    m = config.model
    return AutoEncoder(image_shape=tuple(image_shape), latent_dim=m.latent_dim, kind=m.kind,
                       hidden=None if m.hidden is None else tuple(m.hidden))


def init_params(model, image_shape, key):
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.jit(lambda k: model.init(k, dummy))(key)["params"]


def make_loss(model, config, *, num_levels: int):
    """Mean squared reconstruction error ‖x̂ − x‖² per dimension."""
    del config, num_levels

    def loss_fn(params, batch, keys, *, train: bool, step=None):
        del keys, train, step
        x = batch["image"]
        per_example = vae_lib.ae_loss(x, model.apply({"params": params}, x))
        loss = per_example.mean() / x[0].size
        return loss, {"loss": loss, "sq_error": per_example.mean()}

    return loss_fn


def evaluate(config, model, params, images, key, *, num_levels: int, cache_dir=None,
             cache_tag=None, progress: bool = True) -> dict:
    """Reconstruction error ‖x̂ − x‖² per example (± standard error) over ``images``."""
    del key, num_levels, cache_dir, cache_tag, progress
    images = np.asarray(images, np.float32)
    recon = jax.jit(lambda x: vae_lib.ae_loss(x, model.apply({"params": params}, x)))
    bs = config.eval.batch_size
    errors = np.concatenate([np.asarray(recon(images[s:s + bs]))
                             for s in range(0, images.shape[0], bs)])
    out = {"num_examples": int(errors.size)}
    out["sq_error"], out["sq_error_se"] = eval_lib.mean_and_stderr(errors)
    out["mse_per_dim"] = out["sq_error"] / int(np.prod(images.shape[1:]))
    return out


def summary_lines(ev: dict) -> list[str]:
    return [f"test reconstruction error: {ev['sq_error']:.3f} ± {ev['sq_error_se']:.3f} "
            f"(sum of squares per example; {ev['mse_per_dim']:.4f} per dim)"]


def sample(config, model, params, key, *, num_samples, image_shape, sampler=None, progress=True):
    from diffusion_jax.training.kinds.common import SamplingUnsupported

    raise SamplingUnsupported("an autoencoder has no prior to sample from; train a VAE "
                              "(model_kind='vae') or a DDPM to draw samples.")
