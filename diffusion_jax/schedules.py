"""Noise schedules: beta_t, alpha_t and alpha_bar_t as tables of length T+1 indexed by t (SPEC §1).

Index 0 means "no noise": beta_0 = 0, alpha_0 = 1, alpha_bar_0 = 1, so ``alpha_bars[t]`` is ᾱ_t
exactly as written in the mathematics. Tables are built in float64 numpy, then cast to float32.

Schedules also trace: ``schedule_from_betas`` and ``schedule_from_log_snr`` given a traced input
(under ``jax.jit``, ``jax.grad``) compute the same tables with jnp in the input's dtype, so a
learned schedule's parameters can be differentiated through the whole ELBO. Value checks then
run only under ``diffusion_jax.checked``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import is_concrete, is_int, runtime_check


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["betas", "alphas", "alpha_bars", "one_minus_alpha_bars"],
    meta_fields=["T"],
)
@dataclasses.dataclass(frozen=True)
class Schedule:
    """An immutable pytree of schedule tables; ``T`` is static, so it can be a ``jit`` argument.

    Attributes:
      T: number of diffusion steps (static).
      betas: (T+1,) β_t, with β_0 = 0.
      alphas: (T+1,) α_t = 1 − β_t, with α_0 = 1.
      alpha_bars: (T+1,) ᾱ_t = ∏_{s=1..t} α_s, with ᾱ_0 = 1.
      one_minus_alpha_bars: (T+1,) 1 − ᾱ_t computed in float64 before the cast (at small t,
        1 − float32(ᾱ_t) loses most of its digits).
    """

    T: int
    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    one_minus_alpha_bars: jax.Array

    @property
    def posterior_variances(self) -> jax.Array:
        """(T+1,) β̃_t = (1 − ᾱ_{t−1}) β_t / (1 − ᾱ_t) for t ≥ 1; β̃_0 = 0 (unused)."""
        one_minus = self.one_minus_alpha_bars
        prev = jnp.concatenate([jnp.zeros((1,), one_minus.dtype), one_minus[:-1]])
        return prev * self.betas / jnp.where(one_minus > 0.0, one_minus, 1.0)

    @property
    def log_snr(self) -> jax.Array:
        """(T+1,) log SNR_t = log(ᾱ_t / (1 − ᾱ_t)); +inf at t = 0."""
        return jnp.log(self.alpha_bars) - jnp.log(self.one_minus_alpha_bars)


def schedule_from_betas(betas, *, dtype=jnp.float32) -> Schedule:
    """Builds a Schedule from β_1..β_T (length T, each in (0, 1)).

    Concrete ``betas``: tables computed in float64 numpy (log ᾱ_t = Σ log1p(−β_s)), values
    checked, then cast to ``dtype``. Traced ``betas`` (inside ``jit`` / ``grad``): the same
    formulas in jnp in the input's floating dtype, cast to ``dtype``; the range check runs only
    under ``diffusion_jax.checked``.
    """
    _check_table_shape("betas", "β_1..β_T", np.shape(betas))
    if not is_concrete(betas):
        betas = jnp.asarray(betas)
        betas = betas.astype(jnp.result_type(betas.dtype, jnp.float32))
        runtime_check(jnp.all((betas > 0.0) & (betas < 1.0)),
                      "every beta_t must lie in the open interval (0, 1); got min {lo}, max {hi}.",
                      lo=jnp.min(betas), hi=jnp.max(betas))
        full = jnp.concatenate([jnp.zeros((1,), betas.dtype), betas])
        log_alpha_bars = jnp.cumsum(jnp.log1p(-full))
        return _cast(full.shape[0] - 1, full, 1.0 - full, jnp.exp(log_alpha_bars),
                     -jnp.expm1(log_alpha_bars), dtype)
    betas = np.asarray(betas, dtype=np.float64)
    if not np.all(np.isfinite(betas)) or np.any(betas <= 0.0) or np.any(betas >= 1.0):
        raise ValueError(
            f"every beta_t must lie in the open interval (0, 1); got min {betas.min()!r}, "
            f"max {betas.max()!r}."
        )
    full = np.concatenate([[0.0], betas])
    log_alpha_bars = np.cumsum(np.log1p(-full))
    return _cast(betas.shape[0], full, 1.0 - full, np.exp(log_alpha_bars),
                 -np.expm1(log_alpha_bars), dtype)


def schedule_from_log_snr(log_snr, *, dtype=jnp.float32) -> Schedule:
    """Builds a Schedule from log SNR_t = log(ᾱ_t / (1 − ᾱ_t)) for t = 1..T (shape (T,)).

    ``log_snr`` must be finite and strictly decreasing in t. Then ᾱ_t = sigmoid(log SNR_t),
    1 − ᾱ_t = sigmoid(−log SNR_t) (each without cancellation), and with log ᾱ_t = log_sigmoid:
    α_t = exp(log ᾱ_t − log ᾱ_{t−1}), β_t = −expm1(log ᾱ_t − log ᾱ_{t−1}) (ᾱ_0 = 1).
    Concrete input: float64 numpy with value checks, then cast to ``dtype``; traced input (a
    learned schedule under ``jit`` / ``grad``): jnp in the input's dtype, value checks only under
    ``diffusion_jax.checked``. The inverse of ``Schedule.log_snr[1:]``.
    """
    _check_table_shape("log_snr", "log SNR_1..log SNR_T", np.shape(log_snr))
    if not is_concrete(log_snr):
        log_snr = jnp.asarray(log_snr)
        log_snr = log_snr.astype(jnp.result_type(log_snr.dtype, jnp.float32))
        runtime_check(jnp.all(jnp.isfinite(log_snr)) & jnp.all(jnp.diff(log_snr) < 0.0),
                      "log_snr must be finite and strictly decreasing in t.")
        log_ab = jnp.concatenate([jnp.zeros((1,), log_snr.dtype), jax.nn.log_sigmoid(log_snr)])
        one_minus = jnp.concatenate([jnp.zeros((1,), log_snr.dtype), jax.nn.sigmoid(-log_snr)])
        log_alphas = jnp.diff(log_ab, prepend=0.0)
        return _cast(log_snr.shape[0], -jnp.expm1(log_alphas), jnp.exp(log_alphas),
                     jnp.exp(log_ab), one_minus, dtype)
    log_snr = np.asarray(log_snr, dtype=np.float64)
    if not np.all(np.isfinite(log_snr)) or np.any(np.diff(log_snr) >= 0.0):
        raise ValueError(
            "log_snr must be finite and strictly decreasing in t (log SNR_1 > ... > log SNR_T); "
            f"got {log_snr!r}."
        )
    log_ab = np.concatenate([[0.0], -np.logaddexp(0.0, -log_snr)])  # log sigmoid(log SNR)
    one_minus = np.concatenate([[0.0], np.exp(-np.logaddexp(0.0, log_snr))])  # sigmoid(−·)
    log_alphas = np.diff(log_ab, prepend=0.0)
    return _cast(log_snr.shape[0], -np.expm1(log_alphas), np.exp(log_alphas), np.exp(log_ab),
                 one_minus, dtype)


def _check_table_shape(name: str, what: str, shape) -> None:
    if len(shape) != 1:
        raise ValueError(f"{name} must be one-dimensional ({what}), got shape {shape}.")
    if shape[0] < 2:
        raise ValueError(f"T must be at least 2, got {shape[0]}.")


def _cast(T: int, betas, alphas, alpha_bars, one_minus_alpha_bars, dtype) -> Schedule:
    cast = lambda a: jnp.asarray(a, dtype=dtype)
    return Schedule(T=T, betas=cast(betas), alphas=cast(alphas), alpha_bars=cast(alpha_bars),
                    one_minus_alpha_bars=cast(one_minus_alpha_bars))


def linear_schedule(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:
    """DDPM's linear schedule: β_t evenly spaced from β_1 to β_T for t = 1..T."""
    _check_T(T)
    for name, value in (("beta_1", beta_1), ("beta_T", beta_T)):
        if not (0.0 < value < 1.0):
            raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}.")
    if beta_1 > beta_T:
        raise ValueError(f"beta_1 must not exceed beta_T, got beta_1={beta_1!r} > beta_T={beta_T!r}.")
    return schedule_from_betas(np.linspace(beta_1, beta_T, T, dtype=np.float64))


def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule.

    f(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = min(1 − f(t)/f(t−1), max_beta).
    """
    _check_T(T)
    if not s >= 0.0:
        raise ValueError(f"s must be non-negative, got {s!r}.")
    if not (0.0 < max_beta < 1.0):
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}.")
    steps = np.arange(T + 1, dtype=np.float64)
    f = np.cos((steps / T + s) / (1.0 + s) * math.pi / 2.0) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return schedule_from_betas(betas)


def _check_T(T) -> None:
    if not is_int(T):
        raise TypeError(f"T must be an int, got {type(T).__name__}.")
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}.")


def at(table: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """Looks up ``table[t]`` and shapes it to broadcast against ``x``.

    t: integer scalar -> a scalar; integer (B,) indexing x's leading axis -> (B, 1, ..., 1).
    An inner helper: the shape check below is static (trace time, free); t's range is checked
    by the public caller, not here.
    """
    values = table[t]
    if jnp.ndim(t) == 1:
        if jnp.ndim(x) < 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                f"t of shape {t.shape} indexes the batch axis, but x has shape {jnp.shape(x)}."
            )
        values = values.reshape(values.shape + (1,) * (jnp.ndim(x) - 1))
    return values
