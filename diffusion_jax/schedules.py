"""Noise schedules: beta_t, alpha_t and alpha_bar_t as tables of length T+1 indexed by t (SPEC §1).

Index 0 means "no noise": beta_0 = 0, alpha_0 = 1, alpha_bar_0 = 1, so ``alpha_bars[t]`` is ᾱ_t
exactly as written in the mathematics. Tables are built in float64 numpy, then cast to float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import is_int


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
    """Builds a Schedule from β_1..β_T (length T, each in (0, 1)); tables computed in float64."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1:
        raise ValueError(f"betas must be one-dimensional (β_1..β_T), got shape {betas.shape}.")
    T = betas.shape[0]
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}.")
    if not np.all(np.isfinite(betas)) or np.any(betas <= 0.0) or np.any(betas >= 1.0):
        raise ValueError(
            f"every beta_t must lie in the open interval (0, 1); got min {betas.min()!r}, "
            f"max {betas.max()!r}."
        )
    full = np.concatenate([[0.0], betas])
    alphas = 1.0 - full
    log_alpha_bars = np.cumsum(np.log1p(-full))
    cast = lambda a: jnp.asarray(a, dtype=dtype)
    return Schedule(
        T=T,
        betas=cast(full),
        alphas=cast(alphas),
        alpha_bars=cast(np.exp(log_alpha_bars)),
        one_minus_alpha_bars=cast(-np.expm1(log_alpha_bars)),
    )


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
    """
    values = table[t]
    if jnp.ndim(t) == 1:
        if jnp.ndim(x) < 1 or x.shape[0] != t.shape[0]:
            raise ValueError(
                f"t of shape {t.shape} indexes the batch axis, but x has shape {jnp.shape(x)}."
            )
        values = values.reshape(values.shape + (1,) * (jnp.ndim(x) - 1))
    return values
