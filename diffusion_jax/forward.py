"""The fixed forward (noising) process q of a diffusion model (SPEC §2).

Every function takes the schedule, arrays and integer timesteps; ``t`` is an integer scalar or
an integer array of shape (B,) indexing the leading axis of x. All are pure and jit/vmap/grad-able.

The public functions check their arguments (a traced ``t`` is range-checked under
``diffusion_jax.checked``); the underscored twins (``_marginal``, ``_sample``, ``_posterior``,
``_bridge``, ``_step``) are the same equations without checks, for callers inside the package
that already validated their inputs (the ELBO's per-t terms under ``vmap``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_floating, check_same_shape, check_timestep
from diffusion_jax.gaussians import Gaussian
from diffusion_jax.schedules import Schedule, at


def q_step(sched: Schedule, x_prev, t) -> Gaussian:
    """q(x_t | x_{t−1}) = N(√α_t x_{t−1}, (1 − α_t) I) for t in 1..T."""
    check_floating("x_prev", x_prev)
    return _step(sched, x_prev, check_timestep(t, sched.T))


def _step(sched: Schedule, x_prev, t) -> Gaussian:
    alpha, beta = at(sched.alphas, t, x_prev), at(sched.betas, t, x_prev)
    return Gaussian(jnp.sqrt(alpha) * x_prev, beta)


def q_marginal(sched: Schedule, x0, t) -> Gaussian:
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) for t in 0..T (t = 0 gives a point mass)."""
    check_floating("x0", x0)
    return _marginal(sched, x0, check_timestep(t, sched.T, lowest=0))


def _marginal(sched: Schedule, x0, t) -> Gaussian:
    alpha_bar = at(sched.alpha_bars, t, x0)
    return Gaussian(jnp.sqrt(alpha_bar) * x0, at(sched.one_minus_alpha_bars, t, x0))


def q_sample(sched: Schedule, x0, t, noise):
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a reparameterized sample of q(x_t | x_0)."""
    check_same_shape(x0=x0, noise=noise)
    check_floating("x0", x0)
    return _sample(sched, x0, check_timestep(t, sched.T, lowest=0), noise)


def _sample(sched: Schedule, x0, t, noise):
    mean, var = _marginal(sched, x0, t)
    return mean + jnp.sqrt(var) * noise


def q_posterior(sched: Schedule, x0, x_t, t) -> Gaussian:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) for t in 1..T.

    μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t,
    β̃_t = (1−ᾱ_{t−1}) β_t / (1−ᾱ_t)   (β̃_1 = 0: x_0 is then known exactly).
    """
    check_floating("x0", x0)
    check_floating("x_t", x_t)
    check_same_shape(x0=x0, x_t=x_t)
    return _posterior(sched, x0, x_t, check_timestep(t, sched.T))


def _posterior(sched: Schedule, x0, x_t, t) -> Gaussian:
    beta = at(sched.betas, t, x_t)
    alpha = at(sched.alphas, t, x_t)
    alpha_bar_prev = at(sched.alpha_bars, t - 1, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    one_minus_ab_prev = at(sched.one_minus_alpha_bars, t - 1, x_t)
    coef_x0 = jnp.sqrt(alpha_bar_prev) * beta / one_minus_ab
    coef_xt = jnp.sqrt(alpha) * one_minus_ab_prev / one_minus_ab
    var = one_minus_ab_prev * beta / one_minus_ab
    return Gaussian(coef_x0 * x0 + coef_xt * x_t, var)


def q_bridge(sched: Schedule, x_prev, x_next, t) -> Gaussian:
    """q(x_t | x_{t−1}, x_{t+1}) ∝ q(x_t | x_{t−1}) q(x_{t+1} | x_t), for t in 1..T−1.

    Precision 1/β_t + α_{t+1}/β_{t+1}; mean (√α_t x_{t−1}/β_t + √α_{t+1} x_{t+1}/β_{t+1}) / precision.
    """
    check_same_shape(x_prev=x_prev, x_next=x_next)
    return _bridge(sched, x_prev, x_next, check_timestep(t, sched.T - 1))


def _bridge(sched: Schedule, x_prev, x_next, t) -> Gaussian:
    beta, alpha = at(sched.betas, t, x_prev), at(sched.alphas, t, x_prev)
    beta_next, alpha_next = at(sched.betas, t + 1, x_prev), at(sched.alphas, t + 1, x_prev)
    precision = 1.0 / beta + alpha_next / beta_next
    var = 1.0 / precision
    mean = var * (jnp.sqrt(alpha) * x_prev / beta + jnp.sqrt(alpha_next) * x_next / beta_next)
    return Gaussian(mean, var)


def q_chain(sched: Schedule, x0, key):
    """Runs the forward chain x_0 → x_1 → … → x_T with ``lax.scan``, one q_step at a time.

    Returns x_{1:T} stacked as an array of shape (T, *x0.shape) (row t−1 holds x_t).
    """
    check_floating("x0", x0)

    def step(x_prev, inputs):
        t, step_key = inputs
        mean, var = _step(sched, x_prev, t)  # t = 1..T by construction: no per-step check
        x_t = mean + jnp.sqrt(var) * jax.random.normal(step_key, x_prev.shape, x_prev.dtype)
        return x_t, x_t

    ts = jnp.arange(1, sched.T + 1)
    _, trajectory = jax.lax.scan(step, x0, (ts, jax.random.split(key, sched.T)))
    return trajectory


def constant_coefficient_chain_variance(a, b, t):
    """Var[x_t] of x_t = a x_{t−1} + b ε_t with x_0 = 0 (the seed's boxed derivation).

    Var[x_t] = b² (1 − a^{2t}) / (1 − a²) → b² / (1 − a²) as t → ∞, which equals 1 iff
    b = √(1 − a²); with a = √α that is b = √(1 − α) (the seed prints b = 1 − α, an erratum).
    """
    a2 = jnp.square(a)
    return jnp.square(b) * (1.0 - a2**t) / (1.0 - a2)


def constant_coefficient_chain(key, a, b, x0, num_steps: int):
    """Iterates x_t = a x_{t−1} + b ε_t for t = 1..num_steps with ``lax.scan``: (num_steps, *x0.shape)."""

    def step(x_prev, step_key):
        x_t = a * x_prev + b * jax.random.normal(step_key, x_prev.shape, x_prev.dtype)
        return x_t, x_t

    _, xs = jax.lax.scan(step, x0, jax.random.split(key, num_steps))
    return xs
