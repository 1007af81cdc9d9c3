"""The diffusion ELBO in its three decompositions, a plain Monte-Carlo estimate, the single-t
bound (``vlb_term_at``, ``vlb_term``, ``vlb_estimate``) and L_simple (``l_simple``, ``eps_mse``).

SPEC §2. Notation: x_0 data of shape (B, *event); t = 1..T. A network's parameters are closed
over by the model functions.

**The t convention.** Every function here that calls a model — ``reverse_fn(x_t, t) -> (mean,
var)`` (the reverse kernel p_θ(x_{t−1} | x_t); t = 1 gives the decoder p_θ(x_0 | x_1)) and
``eps_fn(x_t, t) -> ε̂`` — passes t as an int32 array of shape (B,) that indexes x_t's leading
axis, also inside the vmap over timesteps (there every entry holds the same t). Look schedule
tables up with ``diffusion_jax.schedules.at(table, t, x_t)`` (shape (B, 1, ..., 1)), so they
broadcast against (B, *event). A returned ``var`` is a scalar or has x_t's rank.

All T terms are evaluated with ``vmap`` over t in chunks (``lax.map(..., batch_size=chunk)``),
one compilation and bounded memory, never a Python loop over t.

Checks sit at the public entry points (``diffusion_elbo``, ``vlb_*``, ``l_simple``, the public
per-t term functions); the per-t work inside the vmap does not re-check. Faults known only at run
time — a traced t out of range, NaN data, a reverse_fn returning a variance <= 0, data off the
level grid under jit — are reported by the checked mode: ``jax.jit(diffusion_jax.checked(fn))``
returns ``(error, out)`` (``diffusion_jax.checked``); plain code runs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_num_levels,
    check_on_level_grid,
    check_same_shape,
    check_timestep,
    is_concrete,
    runtime_check,
)
from diffusion_jax.forward import _bridge, _marginal, _posterior, _sample, q_chain
from diffusion_jax.gaussians import (
    Gaussian,
    discretized_gaussian_log_prob,
    expected_gaussian_log_prob,
    gaussian_log_prob,
)
from diffusion_jax.schedules import Schedule, at

ReverseFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (x_t, t (B,))

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
    """Σ over events of KL(N(mean1, var1) ‖ N(mean2, var2)) per example: (B,). No checks.

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


def _batch_t(t, batch: int):
    """An int scalar (a tracer under the vmap over t) or (B,) t -> int32 (B,): the model's t."""
    return jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch,))


def _check_kernel(mean, var, x_t, t, *, who: str = "reverse_fn returned") -> Gaussian:
    """Shape checks (static) on p_θ(x_{t−1} | x_t) = N(mean, var), and var > 0 (checked mode)."""
    if jnp.shape(mean) != jnp.shape(x_t):
        raise ValueError(
            f"{who} a mean of shape {jnp.shape(mean)}; expected x_t's shape {jnp.shape(x_t)}."
        )
    if jnp.ndim(var) not in (0, jnp.ndim(x_t)):
        raise ValueError(
            f"{who} a var of shape {jnp.shape(var)} for x_t of shape {jnp.shape(x_t)}: a var is "
            f"a scalar or has x_t's rank. t has shape (B,); look tables up with "
            f"diffusion_jax.schedules.at(table, t, x_t), which gives shape (B, 1, ..., 1)."
        )
    try:
        jnp.broadcast_shapes(jnp.shape(var), jnp.shape(x_t))
    except ValueError:
        raise ValueError(
            f"{who} a var of shape {jnp.shape(var)} that does not broadcast against x_t's shape "
            f"{jnp.shape(x_t)}."
        ) from None
    runtime_check(jnp.all(jnp.asarray(var) > 0.0),
                  who + " a variance that is not positive (min {v}) at t in {lo}..{hi}.",
                  v=jnp.min(jnp.asarray(var)), lo=jnp.min(t), hi=jnp.max(t))
    return Gaussian(mean, var)


def _reverse(reverse_fn: ReverseFn, x_t, t) -> Gaussian:
    """Calls ``reverse_fn(x_t, t)`` with t of shape (B,) and checks the (mean, var) it returns.

    This check is not redundant inside the vmap: it is the only look at the model's output.
    """
    t = _batch_t(t, x_t.shape[0])
    out = reverse_fn(x_t, t)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"reverse_fn must return a (mean, var) pair, got {type(out).__name__}.")
    return _check_kernel(*out, x_t, t)


def _check_data(x0) -> None:
    """x0 of shape (B, *event), floating and finite (finiteness under ``checked`` when traced)."""
    check_floating("x0", x0)
    if jnp.ndim(x0) < 2:
        raise ValueError(
            f"x0 must have shape (batch, *event_shape) with at least one event dim, got "
            f"shape {jnp.shape(x0)}; add a trailing axis for scalar data."
        )
    check_finite("x0", x0)


def _check_decoder(x0, decoder: str, num_levels):
    """decoder in DECODERS; the discretized decoder needs an int num_levels >= 2 and x0 on the
    num_levels grid in [−1, 1]. Returns num_levels (an int, or None for "gaussian")."""
    check_choice("decoder", decoder, DECODERS)
    if decoder != "discretized":
        return num_levels
    num_levels = check_num_levels(num_levels)
    check_on_level_grid("x0", x0, num_levels)
    return num_levels


def decoder_log_prob(x0, mean, var, *, decoder: str = "gaussian", num_levels: int | None = None):
    """Elementwise log p_θ(x_0 | x_1): a Gaussian density, or DDPM's discretized L_0.

    ``decoder="discretized"`` needs ``num_levels`` (no default) and x0 on its level grid.
    """
    num_levels = _check_decoder(x0, decoder, num_levels)
    return _decoder_log_prob(x0, mean, var, decoder, num_levels)


def _decoder_log_prob(x0, mean, var, decoder: str, num_levels):
    if decoder == "gaussian":
        return gaussian_log_prob(x0, mean, var)
    return discretized_gaussian_log_prob(x0, mean, var, num_levels)


def _decoder_nll(x0, p: Gaussian, decoder: str, num_levels):
    """−Σ_events log p_θ(x_0 | x_1): (B,)."""
    return -sum_over_events(_decoder_log_prob(x0, p.mean, p.var, decoder, num_levels))


def _denoising_kl(sched: Schedule, x0, x_t, t, p: Gaussian):
    """Σ_events KL(q(x_{t−1} | x_t, x_0) ‖ p) for t >= 2: (B,)."""
    q = _posterior(sched, x0, x_t, t)
    return summed_gaussian_kl(x0, q.mean, q.var, p.mean, p.var)


# ----------------------------------------------------------------------------------------------
# The per-t terms. Public versions check their arguments; the underscored versions are what
# diffusion_elbo maps over t (its own checks cover them). t: an int scalar or (B,).


def reconstruction_term(reverse_fn: ReverseFn, sched: Schedule, x0, key, *, decoder: str,
                        num_levels: int | None = None):
    """E_{q(x_1|x_0)}[log p_θ(x_0 | x_1)], one sample, summed over events: (B,).

    ``reverse_fn`` is called once, at t = 1 (shape (B,)); ``decoder="discretized"`` needs
    ``num_levels``.
    """
    _check_data(x0)
    num_levels = _check_decoder(x0, decoder, num_levels)
    return _reconstruction_term(reverse_fn, sched, x0, key, decoder, num_levels)


def _reconstruction_term(reverse_fn, sched, x0, key, decoder, num_levels):
    x1 = _sample(sched, x0, 1, jax.random.normal(key, x0.shape, x0.dtype))
    return -_decoder_nll(x0, _reverse(reverse_fn, x1, 1), decoder, num_levels)


def prior_kl(sched: Schedule, x0):
    """KL(q(x_T | x_0) ‖ N(0, I)), summed over events: (B,) — the DDPM form's prior matching."""
    q = _marginal(sched, x0, sched.T)
    return summed_gaussian_kl(x0, q.mean, q.var, 0.0, 1.0)


def denoising_matching_term(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """E_{q(x_t|x_0)}[KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t))] for t in 2..T, one sample: (B,).

    t = 1 is not a KL (β̃_1 = 0, x_0 is known given x_1): use ``reconstruction_term`` or
    ``vlb_term``. A concrete t = 1 raises; a traced one is reported under ``checked``.
    """
    _check_data(x0)
    if is_concrete(t) and jnp.issubdtype(jnp.asarray(t).dtype, jnp.integer) \
            and bool(jnp.any(jnp.asarray(t) == 1)):
        raise ValueError(
            "denoising_matching_term needs t in 2..T: at t = 1 the KL to q(x_0 | x_1, x_0) (a point "
            "mass, variance β̃_1 = 0) is infinite; the t = 1 term is the decoder "
            "(reconstruction_term, or vlb_term for any t)."
        )
    t = check_timestep(t, sched.T, lowest=2)
    return _denoising_matching_term(reverse_fn, sched, x0, t, key)


def _denoising_matching_term(reverse_fn, sched, x0, t, key):
    x_t = _sample(sched, x0, t, jax.random.normal(key, x0.shape, x0.dtype))
    return _denoising_kl(sched, x0, x_t, t, _reverse(reverse_fn, x_t, t))


def _sample_triple_ends(sched: Schedule, x0, t, key):
    """x_{t−1} ~ q(x_{t−1} | x_0) and x_{t+1} ~ q(x_{t+1} | x_{t−1}) = N(√(α_t α_{t+1}) x_{t−1}, 1 − α_t α_{t+1})."""
    key_prev, key_next = jax.random.split(key)
    x_prev = _sample(sched, x0, t - 1, jax.random.normal(key_prev, x0.shape, x0.dtype))
    alpha, alpha_next = at(sched.alphas, t, x0), at(sched.alphas, t + 1, x0)
    beta, beta_next = at(sched.betas, t, x0), at(sched.betas, t + 1, x0)
    two_step_var = beta + beta_next - beta * beta_next
    x_next = jnp.sqrt(alpha * alpha_next) * x_prev + jnp.sqrt(two_step_var) * jax.random.normal(
        key_next, x0.shape, x0.dtype
    )
    return x_prev, x_next


def consistency_term(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """The seed's consistency term for t in 1..T−1, with x_t integrated out exactly: (B,).

    E_{q(x_{t−1}, x_{t+1}|x_0)} E_{q(x_t|x_{t−1}, x_{t+1})}[log q(x_t|x_{t−1}) − log p_θ(x_t|x_{t+1})],
    where the inner expectation over the Gaussian bridge q(x_t | x_{t−1}, x_{t+1}) is closed form.
    ``reverse_fn`` is called at t + 1 (shape (B,)).
    """
    _check_data(x0)
    return _consistency_term(reverse_fn, sched, x0, check_timestep(t, sched.T - 1), key)


def _consistency_term(reverse_fn, sched, x0, t, key):
    x_prev, x_next = _sample_triple_ends(sched, x0, t, key)
    bridge = _bridge(sched, x_prev, x_next, t)
    p = _reverse(reverse_fn, x_next, t + 1)
    b_mean, b_var, q_mean, p_mean, p_var, beta = flatten_events(
        x0, bridge.mean, bridge.var, jnp.sqrt(at(sched.alphas, t, x0)) * x_prev, p.mean, p.var,
        at(sched.betas, t, x0))
    log_q = expected_gaussian_log_prob(b_mean, b_var, q_mean, beta)
    log_p = expected_gaussian_log_prob(b_mean, b_var, p_mean, p_var)
    return (log_q - log_p).sum(-1)


def consistency_term_as_printed(reverse_fn: ReverseFn, sched: Schedule, x0, t, key):
    """The seed's consistency term as printed: E_{q(x_{t−1}, x_{t+1}|x_0)}[KL(q(x_t|x_{t−1}) ‖ p_θ(x_t|x_{t+1}))].

    Wrong as an ELBO term (it treats x_t as independent of x_{t+1}); kept for comparison only.
    """
    _check_data(x0)
    t = check_timestep(t, sched.T - 1)
    return _consistency_term_as_printed(reverse_fn, sched, x0, t, key)


def _consistency_term_as_printed(reverse_fn, sched, x0, t, key):
    x_prev, x_next = _sample_triple_ends(sched, x0, t, key)
    p = _reverse(reverse_fn, x_next, t + 1)
    return summed_gaussian_kl(x0, jnp.sqrt(at(sched.alphas, t, x0)) * x_prev,
                              at(sched.betas, t, x0), p.mean, p.var)


def consistency_prior_term(sched: Schedule, x0, key):
    """E_{q(x_{T−1}|x_0)}[KL(q(x_T | x_{T−1}) ‖ N(0, I))], one sample: (B,)."""
    T = sched.T
    x_prev = _sample(sched, x0, T - 1, jax.random.normal(key, x0.shape, x0.dtype))
    mean = jnp.sqrt(sched.alphas[T]) * x_prev
    return summed_gaussian_kl(x0, mean, sched.betas[T], 0.0, 1.0)


def monte_carlo_elbo(reverse_fn: ReverseFn, sched: Schedule, x0, key, *, decoder: str,
                     num_levels: int | None = None, chunk_size: int | None = None):
    """log p_θ(x_{0:T}) − log q(x_{1:T} | x_0) on one trajectory sampled from q: (B,) terms.

    The trajectory comes from the iterated chain (``q_chain``, a ``lax.scan``); the T reverse
    log-densities are vmapped over t in chunks (``reverse_fn`` gets t of shape (B,)). The inner
    helper of ``diffusion_elbo(form="monte_carlo")``, which checks the arguments.
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
    reconstruction = -_decoder_nll(x0, _reverse(reverse_fn, traj[0], 1), decoder, num_levels)
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
    num_levels: int | None = None,
    *,
    chunk_size: int | None = None,
    return_per_t: bool = False,
) -> dict[str, jax.Array]:
    """The ELBO of a diffusion model, per example, in nats (SPEC §2, §3).

    Args:
      reverse_fn: (x_t, t) -> (mean, var) of p_θ(x_{t−1} | x_t); x_t has x0's shape, t is an
        int32 array of shape (B,) (every entry equal; see the module docstring); t = 1 is the
        decoder p_θ(x_0 | x_1). ``var`` is a scalar or has x_t's rank, and must be > 0.
      sched: the noise schedule.
      x0: data, shape (B, *event_shape), floating, finite.
      key: a PRNG key (explicit; each term draws from its own ``fold_in`` of it).
      form: "ddpm" (reconstruction, prior matching, denoising matching), "consistency" (the
        seed's form with the corrected expectation), "consistency_as_printed" (the seed's form as
        printed — not an ELBO, for comparison only) or "monte_carlo" (one sampled trajectory).
      decoder: "gaussian" (a density, continuous data) or "discretized" (DDPM's L_0 for data on
        ``num_levels`` levels in [−1, 1]).
      num_levels: L, required with ``decoder="discretized"`` (an int >= 2; no default); x0 must
        then lie on the grid 2k/(L−1) − 1 (checked when x0 is concrete, and under ``checked``).
      chunk_size: how many timesteps are vmapped at once (memory bound).
      return_per_t: also return "per_t", shape (B, T): column t−1 holds the loss term at t
        (t = 1: −reconstruction; ddpm: the denoising KL at t ≥ 2; consistency forms: the
        consistency term at t ≤ T−1 and the prior-matching term at t = T).

    Returns:
      A dict of (B,) arrays: "reconstruction", "prior_matching" (≥ 0), "denoising_matching"
      (form ddpm) or "consistency" (consistency forms), and "total" = reconstruction − the
      others, the ELBO in nats. Form "monte_carlo" returns "total", "reconstruction", "log_prior".

    Run-time faults (NaN in a traced x0, a variance <= 0 from reverse_fn) are reported by
    ``jax.jit(diffusion_jax.checked(fn))``; unchecked code runs unchanged.
    """
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a diffusion_jax Schedule (e.g. dj.linear_schedule(T)), got "
                        f"{type(sched).__name__}.")
    check_choice("form", form, FORMS)
    _check_data(x0)
    num_levels = _check_decoder(x0, decoder, num_levels)
    if form == "monte_carlo":
        return monte_carlo_elbo(reverse_fn, sched, x0, key, decoder=decoder,
                                num_levels=num_levels, chunk_size=chunk_size)

    T = sched.T
    key_rec, key_prior, key_terms = jax.random.split(key, 3)
    reconstruction = _reconstruction_term(reverse_fn, sched, x0, key_rec, decoder, num_levels)
    if form == "ddpm":
        prior = prior_kl(sched, x0)
        ts = jnp.arange(2, T + 1)
        term = lambda t: _denoising_matching_term(
            reverse_fn, sched, x0, t, jax.random.fold_in(key_terms, t))
        name = "denoising_matching"
    else:
        prior = consistency_prior_term(sched, x0, key_prior)
        ts = jnp.arange(1, T)
        fn = _consistency_term if form == "consistency" else _consistency_term_as_printed
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


# ----------------------------------------------------------------------------------------------
# The single-t bound: one network call per example, an unbiased estimate of −ELBO.


def vlb_term_at(sched: Schedule, x0, x_t, t, p_mean, p_var, *, decoder: str,
                num_levels: int | None = None):
    """The loss term L at the sampled t, given p_θ(x_{t−1} | x_t) = N(p_mean, p_var) at x_t: (B,).

    t = 1: the decoder NLL −Σ_events log p_θ(x_0 | x_1); t >= 2: Σ_events KL(q(x_{t−1} | x_t, x_0)
    ‖ p_θ(x_{t−1} | x_t)). Pure math, no network call: a training loss evaluates its network once
    at (x_t, t) and passes the kernel here. ``x_t`` has x0's shape (B, *event); t is int (B,) (or
    a scalar); ``p_var`` is a scalar or has x_t's rank. These are the columns of
    ``diffusion_elbo(..., return_per_t=True)["per_t"]`` (form ddpm).
    """
    _check_data(x0)
    check_floating("x_t", x_t)
    check_same_shape(x0=x0, x_t=x_t)
    num_levels = _check_decoder(x0, decoder, num_levels)
    t = _batch_t(check_timestep(t, sched.T), x0.shape[0])
    p = _check_kernel(p_mean, p_var, x_t, t, who="vlb_term_at got")
    return _vlb_term_at(sched, x0, x_t, t, p, decoder, num_levels)


def _vlb_term_at(sched, x0, x_t, t, p: Gaussian, decoder, num_levels):
    kl = _denoising_kl(sched, x0, x_t, jnp.maximum(t, 2), p)  # t = 1 is the decoder, never a KL
    return jnp.where(t == 1, _decoder_nll(x0, p, decoder, num_levels), kl)


def vlb_term(reverse_fn: ReverseFn, sched: Schedule, x0, t, key, *, decoder: str,
             num_levels: int | None = None):
    """The loss term at t (``vlb_term_at``) on x_t ~ q(x_t | x_0) drawn with ``key``: (B,).

    Calls ``reverse_fn(x_t, t)`` once with t of shape (B,). ``key``: one key, or one key per
    example (shape (B,)); the noise is the ε of ``per_example_noise(key, x0, T)`` (as in
    ``l_simple`` and ``vlb_estimate``).
    """
    _check_data(x0)
    num_levels = _check_decoder(x0, decoder, num_levels)
    t = _batch_t(check_timestep(t, sched.T), x0.shape[0])
    _, noise = per_example_noise(key, x0, sched.T)
    return _vlb_term(reverse_fn, sched, x0, t, noise, decoder, num_levels)


def _vlb_term(reverse_fn, sched, x0, t, noise, decoder, num_levels):
    x_t = _sample(sched, x0, t, noise)
    return _vlb_term_at(sched, x0, x_t, t, _reverse(reverse_fn, x_t, t), decoder, num_levels)


def vlb_estimate(reverse_fn: ReverseFn, sched: Schedule, x0, key, *, decoder: str,
                 num_levels: int | None = None, t=None, weights=None) -> dict[str, jax.Array]:
    """An unbiased single-sample estimate of −ELBO per example (nats): prior_kl + w_t · L_t.

    E_t[w_t L_t] = Σ_{t=1..T} L_t whenever w_t = 1/p_t for the distribution p that t was drawn
    from. By default t ~ U{1..T} from ``key`` (the t of ``per_example_noise``, as in
    ``l_simple``) and w = T. With importance sampling (``timestep_sampling.sample``) pass ``t``
    (int, shape (B,)) and ``weights`` = 1/p_t (absolute, shape (B,)); a given ``t`` needs its
    ``weights`` (no silent uniform assumption). One ``reverse_fn`` call, t of shape (B,).

    Returns a dict of (B,) arrays: "neg_elbo" (the estimate of −ELBO), "term" (L_t, unweighted:
    what ``timestep_sampling.update`` records), "t", "weights", "prior_matching".
    """
    _check_data(x0)
    num_levels = _check_decoder(x0, decoder, num_levels)
    batch, T = x0.shape[0], sched.T
    t_draw, noise = per_example_noise(key, x0, T)
    if t is None:
        if weights is not None:
            raise ValueError("weights without t: pass the t they belong to (weights = 1/p_t).")
        t, weights = t_draw, jnp.full((batch,), float(T), x0.dtype)
    else:
        if weights is None:
            raise ValueError(
                "vlb_estimate got t but no weights: pass weights = 1/p_t for the distribution t "
                f"was drawn from (T = {T} for uniform t; timestep_sampling.sample returns both)."
            )
        t = _batch_t(check_timestep(t, T), batch)
        check_floating("weights", weights)
        weights = jnp.broadcast_to(jnp.asarray(weights, x0.dtype), (batch,))
    term = _vlb_term(reverse_fn, sched, x0, t, noise, decoder, num_levels)
    prior = prior_kl(sched, x0)
    return {"neg_elbo": prior + weights * term, "term": term, "t": t, "weights": weights,
            "prior_matching": prior}


def sample_timesteps(key, batch_size: int, T: int):
    """Uniform t in 1..T, shape (batch_size,), int32."""
    return jax.random.randint(key, (batch_size,), 1, T + 1, dtype=jnp.int32)


def eps_mse(noise, eps_hat, *, reduce: str = "mean"):
    """‖ε − ε̂‖² per example, the mean ("mean") or sum ("sum") over event dims: (B,).

    The per-example error of L_simple. ``eps_hat`` must have ``noise``'s shape exactly (a
    (B, H, W) prediction against (B, H, W, 1) noise would broadcast to (B, H, W, W) silently).
    """
    check_choice("reduce", reduce, ("mean", "sum"))
    if jnp.shape(eps_hat) != jnp.shape(noise):
        raise ValueError(f"eps_hat must have the noise's shape {jnp.shape(noise)} exactly, got "
                         f"{jnp.shape(eps_hat)}.")
    per_example = sum_over_events(jnp.square(noise - eps_hat))
    return per_example / (math.prod(jnp.shape(noise)[1:]) if reduce == "mean" else 1)


def l_simple(eps_fn, sched: Schedule, x0, key, *, t=None, reduce: str = "mean"):
    """DDPM's simplified loss E_{t, ε}‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖², per example: (B,).

    ``eps_fn(x_t, t)`` receives t of shape (B,) and must return x0's shape exactly. ``key`` is
    one key, or one key per example (shape (B,)) so that per-example randomness does not depend
    on how a batch is split across devices. ``t`` (an int in 1..T, scalar or shape (B,))
    overrides the uniform draw; a float t is a TypeError, a concrete t outside 1..T a ValueError
    (a traced one is reported under ``diffusion_jax.checked``). ``reduce``: "mean" or "sum" over
    event dims (``eps_mse``).
    """
    _check_data(x0)
    check_choice("reduce", reduce, ("mean", "sum"))
    batch = x0.shape[0]
    t_draw, noise = per_example_noise(key, x0, sched.T)
    t = t_draw if t is None else _batch_t(check_timestep(t, sched.T), batch)
    eps_hat = eps_fn(_sample(sched, x0, t, noise), t)
    if jnp.shape(eps_hat) != jnp.shape(x0):
        raise ValueError(f"eps_fn returned shape {jnp.shape(eps_hat)}; expected x0's shape "
                         f"{jnp.shape(x0)} exactly (no broadcasting).")
    return eps_mse(noise, eps_hat, reduce=reduce)


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
