"""The diffusion ELBO in its three decompositions, a plain Monte-Carlo estimate, and L_simple.

SPEC §2. Notation: x_0 data of shape (B, *event); t = 1..T; ``reverse_fn(x_t, t) -> (mean, var)``
is the learned reverse kernel p_θ(x_{t−1} | x_t) for an integer scalar t (a tracer under vmap),
where t = 1 gives the decoder p_θ(x_0 | x_1). A network's parameters are closed over by it.

All T terms are evaluated with ``vmap`` over t in chunks (``lax.map(..., batch_size=chunk)``),
one compilation and bounded memory, never a Python loop over t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_choice, check_floating
from diffusion_jax.forward import q_bridge, q_chain, q_marginal, q_posterior, q_sample
from diffusion_jax.gaussians import (
    Gaussian,
    discretized_gaussian_log_prob,
    expected_gaussian_log_prob,
    gaussian_log_prob,
)
from diffusion_jax.schedules import Schedule

ReverseFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

FORMS = ("ddpm", "consistency", "consistency_as_printed", "monte_carlo")
DECODERS = ("gaussian", "discretized")
DEFAULT_CHUNK_SIZE = 32


def sum_over_events(x):
    """(B, *event) -> (B,): sums every axis but the leading batch axis."""
    return jnp.sum(x, axis=tuple(range(1, jnp.ndim(x))))


def flatten_events(like, *arrays):
    """Broadcasts each array to ``like``'s shape (B, *event) and flattens it to (B, D).

    Elementwise terms are computed on (B, D): XLA on CPU runs elementwise work on a trailing
    axis of size 1 (grey-scale images (…, H, W, 1)) several times slower.
    """
    shape = jnp.shape(like)
    return tuple(jnp.broadcast_to(a, shape).reshape(shape[0], -1) for a in arrays)


def summed_gaussian_kl(like, mean1, var1, mean2, var2):
    """Σ over events of KL(N(mean1, var1) ‖ N(mean2, var2)) per example: (B,).

    The same sum as ``gaussian_kl(...)`` summed over ``like``'s event axes (arguments broadcast
    against ``like``, shape (B, *event)), but the variance-only part ½[log(var2/var1) + var1/var2
    − 1] is evaluated on the variances' own shapes before broadcasting: with per-timestep scalar
    variances (the usual DDPM case) that saves two logs per element.
    """
    var1, var2 = jnp.asarray(var1), jnp.asarray(var2)
    var_part = 0.5 * (jnp.log(var2) - jnp.log(var1) + var1 / var2 - 1.0)
    (var_part,) = flatten_events(like, var_part)
    m1, m2, v2 = flatten_events(like, mean1, mean2, var2)
    return var_part.sum(-1) + 0.5 * (jnp.square(m1 - m2) / v2).sum(-1)


def bits_per_dim(elbo_nats, num_dims: int):
    """bpd = −ELBO / (D · ln 2), with D the number of dimensions of one example."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got {num_dims!r}.")
    return -jnp.asarray(elbo_nats) / (num_dims * math.log(2.0))


def map_over_timesteps(term_fn, ts, chunk_size: int | None = None):
    """Stacks ``term_fn(t)`` for each t in the 1-D integer array ``ts``: vmap in chunks.

    Returns an array of shape (len(ts), *term shape). ``chunk_size`` bounds memory: at most that
    many timesteps are evaluated at once (``lax.map`` with ``batch_size``).
    """
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    return jax.lax.map(term_fn, ts, batch_size=min(chunk, ts.shape[0]))


def _reverse(reverse_fn: ReverseFn, x_t, t) -> Gaussian:
    """Calls reverse_fn and checks that it returned (mean, var) matching x_t's shape."""
    out = reverse_fn(x_t, t)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"reverse_fn must return a (mean, var) pair, got {type(out).__name__}.")
    mean, var = out
    if jnp.shape(mean) != jnp.shape(x_t):
        raise ValueError(
            f"reverse_fn returned a mean of shape {jnp.shape(mean)}; expected x_t's shape "
            f"{jnp.shape(x_t)}."
        )
    try:
        jnp.broadcast_shapes(jnp.shape(var), jnp.shape(x_t))
    except ValueError:
        raise ValueError(
            f"reverse_fn returned a var of shape {jnp.shape(var)} that does not broadcast "
            f"against x_t's shape {jnp.shape(x_t)}."
        ) from None
    return Gaussian(mean, var)


def decoder_log_prob(x0, mean, var, *, decoder: str = "gaussian", num_levels: int = 256):
    """Elementwise log p_θ(x_0 | x_1): a Gaussian density, or DDPM's discretized L_0."""
    check_choice("decoder", decoder, DECODERS)
    if decoder == "gaussian":
        return gaussian_log_prob(x0, mean, var)
    return discretized_gaussian_log_prob(x0, mean, var, num_levels)


def reconstruction_term(reverse_fn: ReverseFn, sched: Schedule, x0, key, *, decoder, num_levels):
    """E_{q(x_1|x_0)}[log p_θ(x_0 | x_1)], one sample, summed over events: (B,)."""
    x1 = q_sample(sched, x0, 1, jax.random.normal(key, x0.shape, x0.dtype))
    p = _reverse(reverse_fn, x1, 1)
    return sum_over_events(decoder_log_prob(x0, p.mean, p.var, decoder=decoder,
                                            num_levels=num_levels))


def prior_kl(sched: Schedule, x0):
    """KL(q(x_T | x_0) ‖ N(0, I)), summed over events: (B,) — the DDPM form's prior matching."""
    q = q_marginal(sched, x0, sched.T)
    return summed_gaussian_kl(x0, q.mean, q.var, 0.0, 1.0)


def denoising_matching_term(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """E_{q(x_t|x_0)}[KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))] for t in 2..T, one sample: (B,)."""
    x_t = q_sample(sched, x0, t, jax.random.normal(key, x0.shape, x0.dtype))
    q = q_posterior(sched, x0, x_t, t)
    p = _reverse(reverse_fn, x_t, t)
    return summed_gaussian_kl(x0, q.mean, q.var, p.mean, p.var)


def _sample_triple_ends(sched: Schedule, x0, t, key):
    """x_{t−1} ~ q(x_{t−1} | x_0) and x_{t+1} ~ q(x_{t+1} | x_{t−1}) = N(√(α_t α_{t+1}) x_{t−1}, 1 − α_t α_{t+1})."""
    key_prev, key_next = jax.random.split(key)
    x_prev = q_sample(sched, x0, t - 1, jax.random.normal(key_prev, x0.shape, x0.dtype))
    two_step = sched.alphas[t] * sched.alphas[t + 1]
    two_step_var = sched.betas[t] + sched.betas[t + 1] - sched.betas[t] * sched.betas[t + 1]
    x_next = jnp.sqrt(two_step) * x_prev + jnp.sqrt(two_step_var) * jax.random.normal(
        key_next, x0.shape, x0.dtype
    )
    return x_prev, x_next


def consistency_term(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """The seed's consistency term for t in 1..T−1, with x_t integrated out exactly: (B,).

    E_{q(x_{t−1}, x_{t+1}|x_0)} E_{q(x_t|x_{t−1}, x_{t+1})}[log q(x_t|x_{t−1}) − log p_θ(x_t|x_{t+1})],
    where the inner expectation over the Gaussian bridge q(x_t | x_{t−1}, x_{t+1}) is closed form.
    """
    x_prev, x_next = _sample_triple_ends(sched, x0, t, key)
    bridge = q_bridge(sched, x_prev, x_next, t)
    p = _reverse(reverse_fn, x_next, t + 1)
    b_mean, b_var, q_mean, p_mean, p_var = flatten_events(
        x0, bridge.mean, bridge.var, jnp.sqrt(sched.alphas[t]) * x_prev, p.mean, p.var)
    log_q = expected_gaussian_log_prob(b_mean, b_var, q_mean, sched.betas[t])
    log_p = expected_gaussian_log_prob(b_mean, b_var, p_mean, p_var)
    return (log_q - log_p).sum(-1)


def consistency_term_as_printed(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """The seed's consistency term as printed: E_{q(x_{t−1}, x_{t+1}|x_0)}[KL(q(x_t|x_{t−1}) ‖ p_θ(x_t|x_{t+1}))].

    Wrong as an ELBO term (it treats x_t as independent of x_{t+1}); kept for comparison only.
    """
    x_prev, x_next = _sample_triple_ends(sched, x0, t, key)
    p = _reverse(reverse_fn, x_next, t + 1)
    return summed_gaussian_kl(x0, jnp.sqrt(sched.alphas[t]) * x_prev, sched.betas[t], p.mean, p.var)


def consistency_prior_term(sched: Schedule, x0, key):
    """E_{q(x_{T−1}|x_0)}[KL(q(x_T | x_{T−1}) ‖ N(0, I))], one sample: (B,)."""
    T = sched.T
    x_prev = q_sample(sched, x0, T - 1, jax.random.normal(key, x0.shape, x0.dtype))
    mean = jnp.sqrt(sched.alphas[T]) * x_prev
    return summed_gaussian_kl(x0, mean, sched.betas[T], 0.0, 1.0)


def monte_carlo_elbo(reverse_fn: ReverseFn, sched: Schedule, x0, key, *, decoder: str,
                     num_levels: int, chunk_size: int | None = None):
    """log p_θ(x_{0:T}) − log q(x_{1:T} | x_0) on one trajectory sampled from q: (B,) terms.

    The trajectory comes from the iterated chain (``q_chain``, a ``lax.scan``); the T reverse
    log-densities are vmapped over t in chunks.
    """
    T = sched.T
    traj = q_chain(sched, x0, key)  # (T, B, ...): row t−1 holds x_t
    prev = jnp.concatenate([x0[None], traj[:-1]], axis=0)  # row t−1 holds x_{t−1}

    def log_q_step(t):
        mean = jnp.sqrt(sched.alphas[t]) * prev[t - 1]
        return sum_over_events(gaussian_log_prob(traj[t - 1], mean, sched.betas[t]))

    def log_p_reverse(t):
        p = _reverse(reverse_fn, traj[t - 1], t)
        return gaussian_log_prob(*flatten_events(x0, prev[t - 1], p.mean, p.var)).sum(-1)

    ts = jnp.arange(1, T + 1)
    log_q = map_over_timesteps(log_q_step, ts, chunk_size).sum(0)
    log_p_steps = map_over_timesteps(log_p_reverse, ts[1:], chunk_size).sum(0)
    p1 = _reverse(reverse_fn, traj[0], 1)
    reconstruction = sum_over_events(
        decoder_log_prob(x0, p1.mean, p1.var, decoder=decoder, num_levels=num_levels)
    )
    log_prior = sum_over_events(gaussian_log_prob(traj[-1], 0.0, 1.0))
    return {
        "reconstruction": reconstruction,
        "log_prior": log_prior,
        "total": reconstruction + log_p_steps + log_prior - log_q,
    }


def diffusion_elbo(
    reverse_fn: ReverseFn,
    sched: Schedule,
    x0,
    key,
    form: str = "ddpm",
    decoder: str = "gaussian",
    num_levels: int = 256,
    *,
    chunk_size: int | None = None,
    return_per_t: bool = False,
) -> dict[str, jax.Array]:
    """The ELBO of a diffusion model, per example, in nats (SPEC §2, §3).

    Args:
      reverse_fn: (x_t, t) -> (mean, var) of p_θ(x_{t−1} | x_t); x_t has x0's shape, t is an
        integer scalar in 1..T; t = 1 is the decoder p_θ(x_0 | x_1).
      sched: the noise schedule.
      x0: data, shape (B, *event_shape), floating.
      key: a PRNG key (explicit; each term draws from its own ``fold_in`` of it).
      form: "ddpm" (reconstruction, prior matching, denoising matching), "consistency" (the
        seed's form with the corrected expectation), "consistency_as_printed" (the seed's form as
        printed — not an ELBO, for comparison only) or "monte_carlo" (one sampled trajectory).
      decoder: "gaussian" (a density, continuous data) or "discretized" (DDPM's L_0 for data on
        ``num_levels`` levels in [−1, 1]).
      chunk_size: how many timesteps are vmapped at once (memory bound).
      return_per_t: also return "per_t", shape (B, T): column t−1 holds the loss term at t
        (t = 1: −reconstruction; ddpm: the denoising KL at t ≥ 2; consistency forms: the
        consistency term at t ≤ T−1 and the prior-matching term at t = T).

    Returns:
      A dict of (B,) arrays: "reconstruction", "prior_matching" (≥ 0), "denoising_matching"
      (form ddpm) or "consistency" (consistency forms), and "total" = reconstruction − the
      others, the ELBO in nats. Form "monte_carlo" returns "total", "reconstruction", "log_prior".
    """
    check_choice("form", form, FORMS)
    check_choice("decoder", decoder, DECODERS)
    check_floating("x0", x0)
    if jnp.ndim(x0) < 2:
        raise ValueError(
            f"x0 must have shape (batch, *event_shape) with at least one event dim, got "
            f"shape {jnp.shape(x0)}; add a trailing axis for scalar data."
        )
    if form == "monte_carlo":
        return monte_carlo_elbo(reverse_fn, sched, x0, key, decoder=decoder,
                                num_levels=num_levels, chunk_size=chunk_size)

    T = sched.T
    key_rec, key_prior, key_terms = jax.random.split(key, 3)
    reconstruction = reconstruction_term(reverse_fn, sched, x0, key_rec, decoder=decoder,
                                         num_levels=num_levels)
    if form == "ddpm":
        prior = prior_kl(sched, x0)
        ts = jnp.arange(2, T + 1)
        term = lambda t: denoising_matching_term(
            reverse_fn, sched, x0, t, jax.random.fold_in(key_terms, t))
        name = "denoising_matching"
    else:
        prior = consistency_prior_term(sched, x0, key_prior)
        ts = jnp.arange(1, T)
        fn = consistency_term if form == "consistency" else consistency_term_as_printed
        term = lambda t: fn(reverse_fn, sched, x0, t, jax.random.fold_in(key_terms, t))
        name = "consistency"
    per_t = map_over_timesteps(term, ts, chunk_size)  # (len(ts), B)
    summed = per_t.sum(0)
    out = {
        "reconstruction": reconstruction,
        "prior_matching": prior,
        name: summed,
        "total": reconstruction - prior - summed,
    }
    if return_per_t:
        if form == "ddpm":
            columns = [-reconstruction[None], per_t]
        else:
            columns = [per_t, prior[None]]
            columns[0] = columns[0].at[0].add(-reconstruction)
        out["per_t"] = jnp.concatenate(columns, axis=0).T
    return out


def sample_timesteps(key, batch_size: int, T: int):
    """Uniform t in 1..T, shape (batch_size,), int32."""
    return jax.random.randint(key, (batch_size,), 1, T + 1, dtype=jnp.int32)


def l_simple(eps_fn, sched: Schedule, x0, key, *, t=None, reduce: str = "mean"):
    """DDPM's simplified loss E_{t, ε}‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖², per example: (B,).

    ``eps_fn(x_t, t)`` receives t of shape (B,). ``key`` is one key, or one key per example
    (shape (B,)) so that per-example randomness does not depend on how a batch is split across
    devices. ``t`` (shape (B,)) overrides the uniform draw. ``reduce``: "mean" or "sum" over
    event dims.
    """
    check_floating("x0", x0)
    check_choice("reduce", reduce, ("mean", "sum"))
    batch = x0.shape[0]
    t_draw, noise = per_example_noise(key, x0, sched.T)
    t = t_draw if t is None else jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch,))
    x_t = q_sample(sched, x0, t, noise)
    sq = jnp.square(noise - eps_fn(x_t, t))
    per_example = sum_over_events(sq)
    return per_example / (sq[0].size if reduce == "mean" else 1)


def per_example_noise(key, x0, T: int):
    """Draws (t, ε) for a batch: t uniform in 1..T of shape (B,), ε ~ N(0, I) of x0's shape.

    With one key per example (shape (B,)), example i's draw depends only on key i.
    """
    batch = x0.shape[0]
    if is_key_batch(key, batch):
        def one(k, x):
            k_t, k_eps = jax.random.split(k)
            return (jax.random.randint(k_t, (), 1, T + 1, dtype=jnp.int32),
                    jax.random.normal(k_eps, x.shape, x.dtype))
        return jax.vmap(one)(key, x0)
    k_t, k_eps = jax.random.split(key)
    return sample_timesteps(k_t, batch, T), jax.random.normal(k_eps, x0.shape, x0.dtype)


def is_key_batch(key, batch: int) -> bool:
    """True when ``key`` holds one PRNG key per example (typed (B,) or raw uint32 (B, 2))."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    rank = key.ndim if typed else key.ndim - 1
    if rank == 0:
        return False
    if rank == 1 and key.shape[0] == batch:
        return True
    raise ValueError(
        f"key must be a single PRNG key or one key per example (batch {batch}); got key of "
        f"shape {key.shape} and dtype {key.dtype}."
    )
