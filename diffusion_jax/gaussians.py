"""Diagonal Gaussian utilities: densities, KL, the discretized decoder, reparameterized samples.

Variances (not standard deviations) are passed around (SPEC §1); ``var`` may be a scalar or
broadcast against ``mean``. All functions are elementwise: callers sum over event dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffusion_jax._checks import check_floating, check_num_levels

LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(NamedTuple):
    """A diagonal Gaussian N(mean, var I); unpacks as ``(mean, var)``."""

    mean: jax.Array
    var: jax.Array


def gaussian_log_prob(x, mean, var):
    """Elementwise log N(x; mean, var) = −½[log 2π + log var + (x − mean)²/var]."""
    return -0.5 * (LOG_2PI + jnp.log(var) + jnp.square(x - mean) / var)


def gaussian_kl(mean1, var1, mean2, var2):
    """Elementwise KL(N(mean1, var1) ‖ N(mean2, var2)).

    KL = ½[log(var2/var1) + (var1 + (mean1 − mean2)²)/var2 − 1]; arguments broadcast.
    """
    return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + jnp.square(mean1 - mean2)) / var2 - 1.0)


def expected_gaussian_log_prob(mean_x, var_x, mean, var):
    """Elementwise E_{x ~ N(mean_x, var_x)}[log N(x; mean, var)] in closed form."""
    return gaussian_log_prob(mean_x, mean, var) - 0.5 * var_x / var


def sample_gaussian(key, mean, var):
    """Reparameterized sample mean + √var ⊙ ε, ε ~ N(0, I), with the shape of ``mean``."""
    mean = jnp.asarray(mean)
    eps = jax.random.normal(key, jnp.broadcast_shapes(mean.shape, jnp.shape(var)), mean.dtype)
    return mean + jnp.sqrt(var) * eps


def _log1mexp(x):
    """log(1 − exp(x)) for x ≤ 0, accurate near 0 and for very negative x."""
    x = jnp.minimum(x, -1e-30)
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def log_normal_cdf_diff(lower, upper):
    """log(Φ(upper) − Φ(lower)) for lower < upper (standardized), stable in both tails."""
    # Φ(u) − Φ(l) = Φ(−l) − Φ(−u): work in the tail where both CDFs are small.
    flip = lower > 0.0
    hi = jnp.where(flip, -lower, upper)
    lo = jnp.where(flip, -upper, lower)
    log_hi = log_ndtr(hi)
    return log_hi + _log1mexp(log_ndtr(lo) - log_hi)


def discretized_gaussian_log_prob(x, mean, var, num_levels: int):
    """Elementwise log P(x) of DDPM's discretized decoder L_0 for data on ``num_levels`` levels.

    Data x lies on the grid {2k/(L−1) − 1 : k = 0..L−1} in [−1, 1]; each level owns a bin of
    width 2/(L−1) around it, and the edge bins absorb the tails (−∞ and +∞). Uses the exact
    normal CDF (log_ndtr), so probabilities over all levels sum to one. ``num_levels`` (an int
    >= 2) is required: there is no default number of levels. The grid itself is checked by the
    ELBO entry points, not here (elementwise helper).
    """
    check_floating("x", x)
    num_levels = check_num_levels(num_levels, what="discretized_gaussian_log_prob")
    half_bin = 1.0 / (num_levels - 1)
    std = jnp.sqrt(var)
    upper = (x - mean + half_bin) / std
    lower = (x - mean - half_bin) / std
    log_cdf_upper = log_ndtr(upper)  # bin (−∞, x + half]
    log_sf_lower = log_ndtr(-lower)  # bin [x − half, +∞)
    log_mid = log_normal_cdf_diff(lower, upper)
    return jnp.where(
        x < -1.0 + half_bin, log_cdf_upper, jnp.where(x > 1.0 - half_bin, log_sf_lower, log_mid)
    )


def bernoulli_log_prob(x, logits):
    """Elementwise log Bernoulli(x; sigmoid(logits)) for x in {0, 1} (or [0, 1])."""
    return x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)
