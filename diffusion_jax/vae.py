"""Autoencoder and VAE objectives (SPEC §2): AE loss, ELBO, IWAE bound, active units.

Pure functions: no Flax, no optax. A model enters as two closures over its parameters,

    encode_fn(x_batch) -> (mean, var)   of q_φ(z|x) = N(μ_φ(x), diag σ²_φ(x)), each (B, latent)
    decode_fn(z_batch) -> decoder parameters of p_θ(x|z):
        decoder="gaussian":  (mean, var), mean with x's shape, var broadcastable to it
        decoder="bernoulli": logits with x's shape (x in {0, 1} or [0, 1])

and x has shape (B, *event_shape). Every term is summed over the event dimensions (and over
the latent dimensions for z terms) and returned per example, shape (B,), in nats. The prior is
p(z) = N(0, I). Per-example terms are written for one example and lifted with ``jax.vmap``.

Key semantics (shared by ``vae_elbo`` and ``iwae_bound``): sample k = 0, 1, ... uses
ε_k = jax.random.normal(jax.random.fold_in(key, k), (B, latent)) and z_k = μ + σ ⊙ ε_k
(σ = √var, the std). Sample k is therefore the same whatever the number of samples or the
chunking, so the IWAE bound is identical for every ``chunk_size`` and its first samples are
those of ``vae_elbo`` with the same key.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import check_choice, check_floating, check_same_shape, is_concrete
from diffusion_jax.gaussians import LOG_2PI, bernoulli_log_prob, gaussian_kl, gaussian_log_prob

DECODERS = ("gaussian", "bernoulli")
AE_REDUCTIONS = ("sum", "mean")
DEFAULT_IWAE_CHUNK = 128  # samples per chunk when chunk_size=None: memory O(128 · B · D)


# ----------------------------------------------------------------------------------------------
# Autoencoder


def ae_loss(x, x_hat, *, reduction: str = "sum"):
    """Per-example autoencoder loss ‖x̂ − x‖², shape (B,).

    x, x_hat: (B, *event_shape), floating. ``reduction="sum"`` gives the squared error summed
    over the event dimensions (SPEC §2); ``"mean"`` divides by D = prod(event_shape), i.e. the
    mean squared error per dimension (the usual ``mse``).
    """
    check_floating("x", x)
    check_floating("x_hat", x_hat)
    check_same_shape(x=x, x_hat=x_hat)
    check_choice("reduction", reduction, AE_REDUCTIONS)
    _check_batched("x", x)
    reduce = jnp.sum if reduction == "sum" else jnp.mean

    def one(xi, xi_hat):
        return reduce(jnp.square(xi_hat - xi))

    return jax.vmap(one)(x, x_hat)


# ----------------------------------------------------------------------------------------------
# VAE


def vae_elbo(
    encode_fn: Callable,
    decode_fn: Callable,
    x,
    key,
    *,
    decoder: str = "gaussian",
    num_samples: int = 1,
    kl_weight=1.0,
    free_bits=0.0,
) -> dict[str, jax.Array]:
    """ELBO(x) = E_{q_φ(z|x)}[log p_θ(x|z)] − KL(q_φ(z|x) ‖ p(z)) per example, and a loss.

    The expectation is a Monte-Carlo average over ``num_samples`` reparameterized samples
    z_k = μ + σ ⊙ ε_k (keys as in the module docstring); the KL to p(z) = N(0, I) is analytic.

    Args:
      encode_fn, decode_fn: closures over the parameters (module docstring).
      x: (B, *event_shape) floating data.
      key: a PRNG key (explicit; never defaulted).
      decoder: "gaussian" or "bernoulli".
      num_samples: S ≥ 1 samples of z per example for the reconstruction term.
      kl_weight: β multiplying the KL in "loss" only (KL warm-up / β-VAE); may be traced.
      free_bits: λ ≥ 0 nats, a per-latent-dimension KL floor used in "loss" only ("free bits",
        Kingma et al. 2016): loss = −reconstruction + β Σ_u max(KL_u, λ). It is applied per
        example; the paper floors the minibatch average of KL_u instead. A unit whose KL is
        below λ gets no gradient from the KL term.

    Returns:
      dict of arrays of shape (B,) unless noted:
        "reconstruction": (1/S) Σ_k log p_θ(x|z_k),
        "kl": KL(q_φ(z|x) ‖ p(z)) = Σ_u kl_per_dim,
        "kl_per_dim": (B, latent) analytic KL per latent unit (for active-unit analysis),
        "elbo": reconstruction − kl (always with weight 1: the true ELBO),
        "loss": −reconstruction + kl_weight · Σ_u max(kl_per_dim, free_bits); equals −elbo
          with the defaults.
    """
    x = _check_vae_inputs(x, decoder)
    num_samples = _check_num_samples("num_samples", num_samples)
    _check_nonnegative("kl_weight", kl_weight)
    _check_nonnegative("free_bits", free_bits)

    mean, var = _encode(encode_fn, x)
    eps = _normal_samples(key, jnp.arange(num_samples), mean.shape, mean.dtype)  # (S, B, L)
    z = mean + jnp.sqrt(var) * eps
    reconstruction = jnp.mean(_decoder_log_prob(decode_fn, decoder, x, z), axis=0)

    kl_per_dim = gaussian_kl(mean, var, 0.0, 1.0)
    kl = jax.vmap(jnp.sum)(kl_per_dim)
    floored = jax.vmap(lambda k: jnp.sum(jnp.maximum(k, free_bits)))(kl_per_dim)
    return {
        "reconstruction": reconstruction,
        "kl": kl,
        "kl_per_dim": kl_per_dim,
        "elbo": reconstruction - kl,
        "loss": -reconstruction + kl_weight * floored,
    }


def iwae_bound(
    encode_fn: Callable,
    decode_fn: Callable,
    x,
    key,
    *,
    num_samples: int,
    decoder: str = "gaussian",
    chunk_size: int | None = None,
):
    """Importance-weighted bound L_K(x) = log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k|x), z_k ~ q_φ(z|x).

    ELBO = E[L_1] ≤ E[L_K] ≤ E[L_{K+1}] ≤ log p_θ(x), and L_K → log p_θ(x) as K → ∞
    (Burda et al. 2016). Log weights are
    log w_k = log p_θ(x|z_k) + log N(z_k; 0, I) − log N(z_k; μ, σ²), summed over dimensions.

    The K samples are evaluated ``chunk_size`` at a time inside ``lax.scan`` with an online
    log-sum-exp, so memory is O(chunk_size · B · D) and K in the thousands is cheap. Sample k
    uses the key ``fold_in(key, k)`` (module docstring), so the result does not depend on
    ``chunk_size`` and L_1 with a key is the one-sample ELBO estimate
    log p(x|z_0) − [log q(z_0|x) − log p(z_0)] using the same z_0 as ``vae_elbo`` (which
    instead uses the analytic KL).

    Args:
      encode_fn, decode_fn, x, key, decoder: as in ``vae_elbo``.
      num_samples: K ≥ 1 (a Python int).
      chunk_size: samples per chunk; None means min(K, 128).

    Returns:
      (B,) array L_K(x) in nats.
    """
    x = _check_vae_inputs(x, decoder)
    K = _check_num_samples("num_samples", num_samples)
    chunk = min(K, DEFAULT_IWAE_CHUNK if chunk_size is None else chunk_size)
    chunk = _check_num_samples("chunk_size", chunk)
    num_chunks = -(-K // chunk)

    mean, var = _encode(encode_fn, x)
    std = jnp.sqrt(var)

    def chunk_logsumexp(c):
        idx = c * chunk + jnp.arange(chunk)
        eps = _normal_samples(key, idx, mean.shape, mean.dtype)  # (C, B, L)
        z = mean + std * eps
        log_lik = _decoder_log_prob(decode_fn, decoder, x, z)  # (C, B)
        log_ratio = jax.vmap(jax.vmap(_log_prior_minus_log_q), in_axes=(0, 0, None))(z, eps, var)
        # The last chunk is padded past K: mask those samples out of the sum.
        valid = (idx < K)[:, None]
        return jax.nn.logsumexp(log_lik + log_ratio, axis=0, where=valid)

    def step(acc, c):
        return jnp.logaddexp(acc, chunk_logsumexp(c)), None

    init = jnp.full(mean.shape[:1], -jnp.inf, dtype=mean.dtype)
    total, _ = jax.lax.scan(step, init, jnp.arange(num_chunks))
    return total - math.log(K)


class ActiveUnits(NamedTuple):
    """Result of ``active_units``: the number of active units and Cov_x(E_q[z_u]) per unit."""

    count: jax.Array
    variances: jax.Array


def active_units(means, threshold=1e-2) -> ActiveUnits:
    """Active units of a VAE (Burda et al. 2016): unit u is active if A_u > ``threshold``.

    A_u = Cov_x(E_{q(z|x)}[z_u]) = Var over the data set of the encoder mean μ_u(x).

    Args:
      means: (N, latent) encoder means μ_φ(x_n) over a data set (not samples of z).
      threshold: 0.01 in the paper.

    Returns:
      ActiveUnits(count, variances): count an int scalar array, variances (latent,) with the
      population variance (ddof = 0) of each unit's mean.
    """
    check_floating("means", means)
    if jnp.ndim(means) != 2:
        raise ValueError(
            f"means must have shape (num_examples, latent), got shape {jnp.shape(means)}."
        )
    variances = jnp.var(means, axis=0)
    return ActiveUnits(jnp.sum(variances > threshold), variances)


# ----------------------------------------------------------------------------------------------
# Per-example terms (one example; lifted with vmap)


def _gaussian_log_lik(x, mean, var):
    """log N(x; mean, var I) summed over the event dims of one example."""
    return jnp.sum(gaussian_log_prob(x, mean, var))


def _bernoulli_log_lik(x, logits):
    """log Bernoulli(x; sigmoid(logits)) summed over the event dims of one example."""
    return jnp.sum(bernoulli_log_prob(x, logits))


def _log_prior_minus_log_q(z, eps, var):
    """log N(z; 0, I) − log N(z; μ, σ²) for one example, with z = μ + σ ε.

    (z − μ)²/σ² is written as ε² so it is exact rather than a difference of rounded numbers.
    """
    log_prior = -0.5 * jnp.sum(LOG_2PI + jnp.square(z))
    log_q = -0.5 * jnp.sum(LOG_2PI + jnp.log(var) + jnp.square(eps))
    return log_prior - log_q


# ----------------------------------------------------------------------------------------------
# Helpers


def _normal_samples(key, indices, shape, dtype):
    """ε_k = normal(fold_in(key, k), shape) for each k in ``indices``: (len(indices), *shape)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k), shape, dtype))(indices)


def _encode(encode_fn, x):
    """Calls encode_fn on the batch and checks it returns (mean, var), each (B, latent)."""
    out = encode_fn(x)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise TypeError(
            f"encode_fn(x) must return a pair (mean, var) of q(z|x), got {type(out).__name__}."
        )
    mean, var = jnp.asarray(out[0]), jnp.asarray(out[1])
    check_floating("encoder mean", mean)
    batch = x.shape[0]
    if mean.ndim != 2 or mean.shape[0] != batch:
        raise ValueError(
            f"encode_fn(x) mean must have shape (batch, latent) with batch = {batch} for x of "
            f"shape {x.shape}, got shape {mean.shape}."
        )
    try:
        var = jnp.broadcast_to(var, mean.shape).astype(mean.dtype)
    except ValueError:
        raise ValueError(
            f"encode_fn(x) var of shape {var.shape} does not broadcast to the mean's shape "
            f"{mean.shape}."
        ) from None
    return mean, var


def _decoder_log_prob(decode_fn, decoder, x, z):
    """log p_θ(x|z_k) per sample and example: z (S, B, latent) -> (S, B).

    The S·B latents are decoded as one flat batch, so decode_fn sees an ordinary batch.
    """
    num, batch = z.shape[:2]
    flat = num * batch
    event = x.shape[1:]
    params = decode_fn(z.reshape(flat, z.shape[-1]))
    expected = (flat, *event)

    def fit(name, a, *, broadcast=False):
        a = jnp.asarray(a)
        if broadcast:
            try:
                a = jnp.broadcast_to(a, expected)
            except ValueError:
                raise ValueError(
                    f"decoder {name} of shape {a.shape} does not broadcast to x's shape {x.shape} "
                    f"(decode_fn was called on {flat} latents, so expected a shape "
                    f"broadcastable to {expected})."
                ) from None
        elif a.shape != expected:
            raise ValueError(
                f"decoder {name} has shape {a.shape} but x has shape {x.shape} (decode_fn was "
                f"called on {flat} latents = num_samples {num} × batch {batch}, so expected "
                f"shape {expected})."
            )
        return a.reshape(num, batch, *event)

    if decoder == "gaussian":
        if not (isinstance(params, tuple | list) and len(params) == 2):
            raise TypeError(
                "decode_fn(z) must return a pair (mean, var) for decoder='gaussian', got "
                f"{type(params).__name__}."
            )
        mean = fit("mean", params[0])
        var = fit("var", params[1], broadcast=True)
        per_sample = jax.vmap(_gaussian_log_lik)  # over the batch
        return jax.vmap(per_sample, in_axes=(None, 0, 0))(x, mean, var)
    if isinstance(params, tuple | list):
        raise TypeError(
            "decode_fn(z) must return one array of logits for decoder='bernoulli', got a "
            f"{type(params).__name__} of length {len(params)}."
        )
    logits = fit("logits", params)
    return jax.vmap(jax.vmap(_bernoulli_log_lik), in_axes=(None, 0))(x, logits)


def _check_batched(name, x):
    if jnp.ndim(x) < 1:
        raise ValueError(f"{name} must have shape (batch, *event_shape), got a scalar.")


def _check_vae_inputs(x, decoder):
    check_choice("decoder", decoder, DECODERS)
    check_floating("x", x)
    _check_batched("x", x)
    return jnp.asarray(x)


def _check_num_samples(name, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive Python int, got {value!r}.")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive Python int, got {value!r}.") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    return value


def _check_nonnegative(name, value):
    """Range check when the value is concrete (a traced warm-up weight cannot be checked)."""
    if is_concrete(value) and np.any(np.asarray(value) < 0):
        raise ValueError(f"{name} must be non-negative, got {value}.")
