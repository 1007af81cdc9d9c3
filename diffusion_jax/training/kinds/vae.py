"""Model kind "vae": a VAE (MLP or conv) with a Gaussian or Bernoulli decoder.

Loss: −ELBO per dimension from ``diffusion_jax.vae.vae_elbo`` (KL warm-up, free bits);
evaluation: −ELBO and the IWAE-K bound; samples: decoder means at z ~ N(0, I).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import vae as vae_lib
from diffusion_jax.models import VAE
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training.config import check_choice_key, check_positive_int, check_positive_number
from diffusion_jax.training.kinds import ae
from diffusion_jax.training.kinds.common import (  # noqa: F401
    init_loss_state,
    loss_state_update,
    progress_sampler,
)

DECODERS = ("gaussian", "bernoulli")
FINGERPRINT_KEYS = ("model", "data.name", "data.binarize")
CAN_SAMPLE = True


def add_config(c) -> None:
    ae.add_config(c)
    c.model.decoder = "gaussian"
    c.vae = type(c)()
    c.vae.kl_warmup_steps = 0
    c.vae.free_bits = 0.0
    c.eval.iwae_k = 1000


def validate(config) -> None:
    ae.validate(config)
    check_choice_key(config, "model.decoder", DECODERS)
    check_positive_int(config, "eval.iwae_k")
    check_positive_number(config, "vae.free_bits", allow_zero=True)
    check_positive_number(config, "vae.kl_warmup_steps", allow_zero=True)
    if config.model.decoder == "bernoulli" and config.data.dequantize:
        raise ValueError("config.data.dequantize=True moves pixels off {0, 1}, but the Bernoulli "
                         "decoder needs binary pixels; set config.data.dequantize=False.")
    if config.model.decoder == "bernoulli" and not config.data.binarize:
        raise ValueError("config.model.decoder='bernoulli' needs binary data: set "
                         "config.data.binarize=True (or use a binarized dataset).")


def build(config, image_shape):
    m = config.model
    return VAE(image_shape=tuple(image_shape), latent_dim=m.latent_dim, kind=m.kind,
               hidden=None if m.hidden is None else tuple(m.hidden), decoder=m.decoder)


init_params = ae.init_params


def _to_decoder_space(model, x):
    return (x + 1.0) / 2.0 if model.decoder == "bernoulli" else x  # {−1, 1} -> {0, 1}


def make_loss(model, config, *, num_levels: int):
    """Negative ELBO per dimension, with KL warm-up (``step`` None: full KL) and free bits."""
    del num_levels
    warmup = int(config.vae.kl_warmup_steps)
    free_bits = config.vae.free_bits

    def loss_fn(params, batch, keys, *, train: bool, step=None):
        del train
        x = _to_decoder_space(model, batch["image"])
        encode_fn = lambda xb: model.apply({"params": params}, xb, method=type(model).encode)
        decode_fn = lambda z: model.apply({"params": params}, z, method=type(model).decode)
        kl_weight = 1.0 if step is None or warmup == 0 else jnp.minimum(1.0, (step + 1) / warmup)
        # One key per example: vmap the per-example ELBO over the batch.
        out = jax.vmap(lambda xi, ki: jax.tree.map(lambda a: a[0], vae_lib.vae_elbo(
            encode_fn, decode_fn, xi[None], ki, decoder=model.decoder, kl_weight=kl_weight,
            free_bits=free_bits)))(x, keys)
        dims = x[0].size
        loss = out["loss"].mean() / dims
        return loss, {"loss": loss, "neg_elbo_nats": -out["elbo"].mean(),
                      "kl_nats": out["kl"].mean(),
                      "elbo_bpd": elbo_lib.bits_per_dim(out["elbo"].mean(), dims)}

    return loss_fn


def evaluate(config, model, params, images, key, *, num_levels: int, cache_dir=None,
             cache_tag=None, progress: bool = True, iwae_chunk: int = 128) -> dict:
    """Negative ELBO and the IWAE-K NLL bound in nats (± standard error) over ``images``."""
    del num_levels, cache_dir, cache_tag
    iwae_k = int(config.eval.iwae_k)
    x_all = _to_decoder_space(model, np.asarray(images, np.float32))
    variables = {"params": params}
    enc = lambda x: model.apply(variables, x, method=type(model).encode)
    dec = lambda z: model.apply(variables, z, method=type(model).decode)

    @jax.jit
    def batch_metrics(x, k):
        k1, k2 = jax.random.split(k)
        elbo = vae_lib.vae_elbo(enc, dec, x, k1, decoder=model.decoder)["elbo"]
        iwae = vae_lib.iwae_bound(enc, dec, x, k2, num_samples=iwae_k, decoder=model.decoder,
                                  chunk_size=min(iwae_chunk, iwae_k))
        return elbo, iwae

    elbos, iwaes = [], []
    batch_size = config.eval.batch_size
    starts = range(0, x_all.shape[0], batch_size)
    for i, s in enumerate(tqdm(starts, desc=f"IWAE-{iwae_k}", disable=not progress)):
        e, w = batch_metrics(x_all[s:s + batch_size], jax.random.fold_in(key, i))
        elbos.append(np.asarray(e))
        iwaes.append(np.asarray(w))
    dims = int(np.prod(x_all.shape[1:]))
    elbo, iwae = np.concatenate(elbos), np.concatenate(iwaes)
    out = {"num_examples": int(elbo.size), "iwae_k": iwae_k}
    out["neg_elbo_nats"], out["neg_elbo_nats_se"] = eval_lib.mean_and_stderr(-elbo)
    out["iwae_nll_nats"], out["iwae_nll_nats_se"] = eval_lib.mean_and_stderr(-iwae)
    out["bpd"], out["bpd_se"] = eval_lib.mean_and_stderr(np.asarray(elbo_lib.bits_per_dim(elbo, dims)))
    return out


def summary_lines(ev: dict) -> list[str]:
    return [f"test −ELBO: {ev['neg_elbo_nats']:.2f} ± {ev['neg_elbo_nats_se']:.2f} nats; "
            f"IWAE-{ev['iwae_k']} NLL: {ev['iwae_nll_nats']:.2f} ± {ev['iwae_nll_nats_se']:.2f} nats"]


def sample(config, model, params, key, *, num_samples: int, image_shape, sampler=None,
           progress: bool = True) -> np.ndarray:
    """Decoder means at z ~ N(0, I), mapped to [−1, 1]."""
    del config, image_shape, progress
    if sampler is not None:
        raise ValueError(f"a VAE has one sampler (decode z ~ N(0, I)); got sampler={sampler!r}.")
    z = jax.random.normal(key, (int(num_samples), model.latent_dim))
    out = model.apply({"params": params}, z, method=type(model).decode)
    if model.decoder == "bernoulli":
        return np.asarray(jax.nn.sigmoid(out)) * 2 - 1
    return np.clip(np.asarray(out[0]), -1, 1)
