"""Conversions between what a network predicts (ε, x̂_0, v) and the reverse-process mean (SPEC §2)."""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax._checks import check_same_shape, check_timestep
from diffusion_jax.schedules import Schedule, at


def x0_from_eps(sched: Schedule, x_t, t, eps):
    """x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
    check_same_shape(x_t=x_t, eps=eps)
    t = check_timestep(t, sched.T, lowest=0)
    alpha_bar = at(sched.alpha_bars, t, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    return (x_t - jnp.sqrt(one_minus_ab) * eps) / jnp.sqrt(alpha_bar)


def eps_from_x0(sched: Schedule, x_t, t, x0):
    """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t), for t in 1..T."""
    check_same_shape(x_t=x_t, x0=x0)
    t = check_timestep(t, sched.T)
    alpha_bar = at(sched.alpha_bars, t, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(one_minus_ab)


def p_mean_from_eps(sched: Schedule, x_t, t, eps):
    """μ_θ = (x_t − β_t/√(1−ᾱ_t) · ε) / √α_t, for t in 1..T."""
    check_same_shape(x_t=x_t, eps=eps)
    t = check_timestep(t, sched.T)
    beta, alpha = at(sched.betas, t, x_t), at(sched.alphas, t, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    return (x_t - beta / jnp.sqrt(one_minus_ab) * eps) / jnp.sqrt(alpha)


def v_from_x0_eps(sched: Schedule, x0, t, eps):
    """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho, 2022)."""
    check_same_shape(x0=x0, eps=eps)
    t = check_timestep(t, sched.T, lowest=0)
    alpha_bar = at(sched.alpha_bars, t, x0)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x0)
    return jnp.sqrt(alpha_bar) * eps - jnp.sqrt(one_minus_ab) * x0


def x0_from_v(sched: Schedule, x_t, t, v):
    """x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v."""
    check_same_shape(x_t=x_t, v=v)
    t = check_timestep(t, sched.T, lowest=0)
    alpha_bar = at(sched.alpha_bars, t, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    return jnp.sqrt(alpha_bar) * x_t - jnp.sqrt(one_minus_ab) * v


def eps_from_v(sched: Schedule, x_t, t, v):
    """ε̂ = √(1−ᾱ_t) x_t + √ᾱ_t v."""
    check_same_shape(x_t=x_t, v=v)
    t = check_timestep(t, sched.T, lowest=0)
    alpha_bar = at(sched.alpha_bars, t, x_t)
    one_minus_ab = at(sched.one_minus_alpha_bars, t, x_t)
    return jnp.sqrt(one_minus_ab) * x_t + jnp.sqrt(alpha_bar) * v
