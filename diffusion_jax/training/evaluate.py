"""Test-set likelihoods with standard errors, and sampling from trained models.

DDPM: the full T-term ELBO (``diffusion_elbo``, vmapped over t in chunks, one compilation) in
nats and bits/dim per term; resumable through a partial-results file. VAE: negative ELBO and the
IWAE-K bound. AE: reconstruction error. Each mean comes with its standard error over examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import samplers
from diffusion_jax import vae as vae_lib
from diffusion_jax.training.losses import model_output_to_reverse


def mean_and_stderr(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean()), float(se)


def ddpm_model_fn(model, params):
    """(x_t, t (B,)) -> the network output in the form the samplers expect."""

    def model_fn(x_t, t):
        out = model.apply({"params": params}, x_t, t, train=False).astype(jnp.float32)
        return tuple(jnp.split(out, 2, axis=-1)) if model.learned_variance else out

    return model_fn


def ddpm_reverse_fn(model, params, sched, *, variance: str):
    """reverse_fn(x_t, t scalar) -> (mean, var) of p_θ(x_{t−1}|x_t), for ``diffusion_elbo``."""

    def reverse_fn(x_t, t):
        t_batch = jnp.full((x_t.shape[0],), t, jnp.int32)
        out = model.apply({"params": params}, x_t, t_batch, train=False).astype(jnp.float32)
        p = model_output_to_reverse(out, sched, x_t, t, prediction=model.prediction,
                                    variance=variance, learned=model.learned_variance)
        return p.mean, p.var

    return reverse_fn


def ddpm_test_elbo(model, params, sched, images, key, *, batch_size: int, variance: str,
                   num_levels: int, chunk_size: int | None = None, form: str = "ddpm",
                   partial_path=None, progress: bool = True) -> dict:
    """The full-T ELBO over ``images`` (N, H, W, C): per-term means, bits/dim ± standard error.

    Batches already recorded in ``partial_path`` (an .npz) are not recomputed, so an interrupted
    evaluation resumes where it stopped. Trailing examples that do not fill a batch are evaluated
    in one smaller batch (one more compilation).
    """
    images = np.asarray(images, np.float32)
    n, dims = images.shape[0], int(np.prod(images.shape[1:]))

    @jax.jit
    def evaluate_batch(params, x0, batch_key):
        rfn = ddpm_reverse_fn(model, params, sched, variance=variance)
        return elbo_lib.diffusion_elbo(rfn, sched, x0, batch_key, form=form, decoder="discretized",
                                       num_levels=num_levels, chunk_size=chunk_size,
                                       return_per_t=(form == "ddpm"))

    starts = list(range(0, n, batch_size))
    done: dict[str, list] = {}
    num_done = 0
    fingerprint = _fingerprint(images, key, sched.T, variance, form, batch_size)
    if partial_path is not None and Path(partial_path).exists():
        saved = dict(np.load(partial_path, allow_pickle=False))
        if str(saved.pop("fingerprint")) == fingerprint:
            num_done = int(saved.pop("batches")[0])
            done = {k: [v] for k, v in saved.items()}
    bar = tqdm(starts, desc="full ELBO", unit="batch", disable=not progress)
    for i, start in enumerate(bar):
        if i < num_done:
            continue
        out = jax.device_get(evaluate_batch(params, images[start:start + batch_size],
                                            jax.random.fold_in(key, i)))
        for k, v in out.items():
            done.setdefault(k, []).append(np.asarray(v))
        if partial_path is not None:
            _save_partial(partial_path, fingerprint, done, i + 1)
    results = {k: np.concatenate([np.asarray(a) for a in v]) for k, v in done.items()}
    report = {"num_examples": n, "T": sched.T, "form": form}
    for k, v in results.items():
        if k == "per_t":
            # per_t holds loss terms (nats lost at each t): their bits/dim are those of −term.
            report["per_t_bpd"] = np.asarray(elbo_lib.bits_per_dim(-v.mean(0), dims)).tolist()
            continue
        report[f"{k}_nats"], report[f"{k}_nats_se"] = mean_and_stderr(v)
    bpd = np.asarray(elbo_lib.bits_per_dim(results["total"], dims))
    report["bpd"], report["bpd_se"] = mean_and_stderr(bpd)
    return report


def _save_partial(path, fingerprint, done, num_batches: int) -> None:
    arrays = {k: np.concatenate([np.asarray(a) for a in v]) for k, v in done.items()}
    counts = np.array([num_batches])
    tmp = Path(str(path) + ".tmp.npz")
    np.savez(tmp, fingerprint=fingerprint, batches=counts, **arrays)
    tmp.replace(path)


def _fingerprint(images, key, T, variance, form, batch_size) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(json.dumps([np.asarray(jax.random.key_data(key)).tolist(), T, variance, form,
                         batch_size]).encode())
    return h.hexdigest()[:16]


def vae_test_metrics(model, params, images, key, *, batch_size: int, iwae_k: int,
                     iwae_chunk: int = 128, progress: bool = True) -> dict:
    """Negative ELBO and the IWAE-K NLL bound in nats (± standard error) over ``images``."""
    images = np.asarray(images, np.float32)
    if model.decoder == "bernoulli":
        images = (images + 1.0) / 2.0
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
    starts = range(0, images.shape[0], batch_size)
    for i, s in enumerate(tqdm(starts, desc=f"IWAE-{iwae_k}", disable=not progress)):
        e, w = batch_metrics(images[s:s + batch_size], jax.random.fold_in(key, i))
        elbos.append(np.asarray(e))
        iwaes.append(np.asarray(w))
    dims = int(np.prod(images.shape[1:]))
    elbo, iwae = np.concatenate(elbos), np.concatenate(iwaes)
    out = {"num_examples": int(elbo.size), "iwae_k": iwae_k}
    out["neg_elbo_nats"], out["neg_elbo_nats_se"] = mean_and_stderr(-elbo)
    out["iwae_nll_nats"], out["iwae_nll_nats_se"] = mean_and_stderr(-iwae)
    out["bpd"], out["bpd_se"] = mean_and_stderr(np.asarray(elbo_lib.bits_per_dim(elbo, dims)))
    return out


def ae_test_metrics(model, params, images, *, batch_size: int) -> dict:
    images = np.asarray(images, np.float32)
    recon = jax.jit(lambda x: vae_lib.ae_loss(x, model.apply({"params": params}, x)))
    errors = np.concatenate([np.asarray(recon(images[s:s + batch_size]))
                             for s in range(0, images.shape[0], batch_size)])
    out = {"num_examples": int(errors.size)}
    out["sq_error"], out["sq_error_se"] = mean_and_stderr(errors)
    out["mse_per_dim"] = out["sq_error"] / int(np.prod(images.shape[1:]))
    return out


def sample_ddpm(model, params, sched, key, *, num_samples: int, image_shape, sampler: str = "ddpm",
                variance: str = "beta", ddim_steps: int = 100, clip_x0: bool = True,
                progress: bool = True, chunk: int = 100) -> np.ndarray:
    """Samples (num_samples, H, W, C) with ancestral DDPM (chunks of compiled scans) or DDIM."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples}.")
    model_fn = ddpm_model_fn(model, params)
    shape = (num_samples, *image_shape)
    var = "learned" if model.learned_variance else variance
    if sampler == "ddim":
        return np.asarray(samplers.ddim_sample(model_fn, sched, key, shape, num_steps=ddim_steps,
                                               prediction=model.prediction, clip_x0=clip_x0,
                                               variance_output=model.learned_variance))
    x = None
    chunks = samplers.ddpm_sample_chunks(model_fn, sched, key, shape, variance=var,
                                         prediction=model.prediction, clip_x0=clip_x0, chunk=chunk)
    with tqdm(total=sched.T, desc="sampling", unit="step", disable=not progress) as bar:
        last = sched.T
        for t, x_t in chunks:
            x_t.block_until_ready()  # dispatch is async: the bar must follow the real work
            bar.update(last - t)
            last, x = t, x_t
    return np.asarray(x)
