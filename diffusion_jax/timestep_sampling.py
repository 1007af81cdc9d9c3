"""Importance sampling of the timestep t for the single-t bound (Nichol & Dhariwal 2021, §3.3).

improved-diffusion's ``LossSecondMomentResampler``: keep the last K = 10 values of the loss term
L_t for every t; sample t uniformly until every t holds K values; from then on sample
p_t ∝ √E[L_t²] (the mean over the K values), mixed with a uniform probability
(p ← (1 − u) p + u / T, u = 0.001) so that no t is starved. The estimate w_t · L_t with
w_t = 1/p_t is unbiased for Σ_t L_t for any such p, and p ∝ √E[L_t²] minimizes its variance.

Weights: ``sample`` returns ABSOLUTE weights w_t = 1/p_t (uniform t gives w = T), the weights
``elbo.vlb_estimate(..., t=t, weights=w)`` takes. improved-diffusion's relative weights are
1/(T p_t) = w / T.

Pure functions on a pytree state (``init``, ``update``, ``probabilities``, ``sample``), all
jit-able with no Python side effects: a trainer carries the state in its train state. Under
``pmap`` / a sharded batch, ``update`` with the global batch (all-gather t and the losses first)
so that every device holds the same state.

Also: ``single_t_variance`` (the variance that sampling t adds, from per-t terms) and
``monte_carlo_moments`` (an estimator's per-example mean and variance over repeated draws), to
measure what a sampler gains on a trained model.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_timestep, is_int

HISTORY_SIZE = 10
UNIFORM_PROB = 1e-3


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["history", "count", "position"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LossHistory:
    """The last K loss terms of every t (a pytree; T and K are the static shapes).

    Attributes:
      history: (T, K) float32; row t−1 holds up to K recent values of L_t (a ring buffer).
      count: (T,) int32, how many values row t−1 holds (at most K).
      position: (T,) int32, the slot of row t−1 the next value goes to.
    """

    history: jax.Array
    count: jax.Array
    position: jax.Array

    @property
    def T(self) -> int:
        return self.history.shape[0]

    @property
    def K(self) -> int:
        return self.history.shape[1]


def init(T: int, history_size: int = HISTORY_SIZE) -> LossHistory:
    """An empty history for t = 1..T (sampling is uniform until it fills)."""
    for name, value, low in (("T", T, 1), ("history_size", history_size, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return LossHistory(history=jnp.zeros((T, history_size), jnp.float32),
                       count=jnp.zeros((T,), jnp.int32), position=jnp.zeros((T,), jnp.int32))


def update(state: LossHistory, t, losses) -> LossHistory:
    """Records the loss terms ``losses`` (B,) observed at timesteps ``t`` (int, (B,), in 1..T).

    Equal to recording the pairs one after another in batch order (a t repeated within a batch
    keeps its last K values), but vectorized. Pass the unweighted term L_t (``vlb_estimate``'s
    "term"); gradients do not flow into the state.
    """
    T, K = state.T, state.K
    t = check_timestep(t, T)
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    if t.ndim != 1 or losses.shape != t.shape:
        raise ValueError(f"t and losses must both have shape (B,), got {t.shape} and "
                         f"{losses.shape}.")
    row = t - 1
    same = row[:, None] == row[None, :]  # (B, B)
    earlier = jnp.tril(same, k=-1)  # j < i with the same t
    rank = earlier.sum(1)  # order of entry i among the batch's entries at its t
    seen = jnp.zeros((T,), jnp.int32).at[row].add(1)  # entries per t in this batch
    keep = rank >= seen[row] - K  # the last K of each t survive sequential overwriting
    slot = (state.position[row] + rank) % K
    history = state.history.at[jnp.where(keep, row, T), slot].set(losses, mode="drop")
    return LossHistory(history=history,
                       count=jnp.minimum(state.count + seen, K),
                       position=(state.position + seen) % K)


def is_warm(state: LossHistory) -> jax.Array:
    """True once every t holds K values (until then sampling is uniform)."""
    return jnp.all(state.count == state.K)


def probabilities(state: LossHistory, uniform_prob: float = UNIFORM_PROB) -> jax.Array:
    """p_t for t = 1..T (index t−1): uniform until warm, then (1 − u) · √E[L_t²]/Σ + u/T."""
    T = state.T
    rms = jnp.sqrt(jnp.mean(jnp.square(state.history), axis=1))
    total = rms.sum()
    uniform = jnp.full((T,), 1.0 / T, jnp.float32)
    p = (1.0 - uniform_prob) * rms / jnp.where(total > 0, total, 1.0) + uniform_prob / T
    return jnp.where(is_warm(state) & (total > 0), p, uniform)


def sample(state: LossHistory, key, batch_size: int, uniform_prob: float = UNIFORM_PROB):
    """Draws t ~ p (int32, shape (batch_size,), values 1..T) and the absolute weights 1/p_t.

    Returns ``(t, weights)``: feed both to ``vlb_estimate(..., t=t, weights=weights)``; the
    weighted estimate is unbiased for the full bound. Relative weights (improved-diffusion's)
    are ``weights / T``.
    """
    p = probabilities(state, uniform_prob)
    t = jax.random.categorical(key, jnp.log(p), shape=(batch_size,)).astype(jnp.int32) + 1
    return t, 1.0 / p[t - 1]


def single_t_variance(per_t, p=None):
    """The variance over t of the single-t estimate w_t L_t (w_t = 1/p_t), per example: (B,).

    ``per_t``: (B, T) loss terms, e.g. ``diffusion_elbo(..., return_per_t=True)["per_t"]``;
    ``p``: (T,) probabilities (default uniform). Var_t = Σ_t L_t²/p_t − (Σ_t L_t)²: the part of
    the estimator's variance that sampling t adds (the noise within each L_t comes on top).
    """
    per_t = jnp.asarray(per_t)
    T = per_t.shape[-1]
    p = jnp.full((T,), 1.0 / T) if p is None else jnp.asarray(p)
    return jnp.sum(jnp.square(per_t) / p, axis=-1) - jnp.square(per_t.sum(-1))


def monte_carlo_moments(estimate_fn, keys):
    """Per-example mean and variance of a random estimator over independent draws.

    ``estimate_fn(key) -> (B,)`` (e.g. ``lambda k: vlb_estimate(rfn, sched, x0, k,
    decoder=...)["neg_elbo"]``); ``keys``: (R,) keys, R >= 2, evaluated one after another
    (``lax.map``). Returns {"mean": (B,), "var": (B,) (unbiased, over the R draws),
    "mean_se": (B,) √(var / R)}.
    """
    draws = jax.lax.map(estimate_fn, keys)  # (R, B)
    R = draws.shape[0]
    if R < 2:
        raise ValueError(f"need at least 2 keys to measure a variance, got {R}.")
    var = draws.var(axis=0, ddof=1)
    return {"mean": draws.mean(0), "var": var, "mean_se": jnp.sqrt(var / R)}
