"""The probability-flow ODE likelihood (``diffusion_jax.ode_likelihood``) against closed forms.

Gaussian data N(μ, Σ) with the exact continuous-time denoiser: the flow keeps
M(t)^{-1}(x_t − √ᾱ(t) μ) fixed, M(t) = (ᾱ(t) Σ + (1 − ᾱ(t)) I)^{1/2}, so with the prior N(0, I) at
t = T the model density at t_min is a Gaussian in closed form (the map x_{t_min} -> x_T is affine).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import ode_likelihood as ol

SCHED = dj.linear_schedule(1000)


class GaussianFlow:
    """x_0 ~ N(μ, Q diag(s²) Qᵀ): the exact ε̂(x, t) at real t, and the model's log-density."""

    def __init__(self, mu, scales, rotation=None):
        self.mu = np.asarray(mu, np.float64)
        self.s2 = np.asarray(scales, np.float64) ** 2
        self.Q = np.eye(self.mu.size) if rotation is None else np.asarray(rotation, np.float64)

    def eps_fn(self, sched):
        mu, s2, Q = (jnp.asarray(a, jnp.float32) for a in (self.mu, self.s2, self.Q))

        def fn(x, t):  # x (B, *event), t float (B,)
            shape = x.shape
            x = x.reshape(shape[0], -1)
            log_ab = ol.continuous_log_alpha_bar(sched, t)[:, None]
            a, var = jnp.exp(0.5 * log_ab), -jnp.expm1(log_ab)
            gain = a * s2 / (a * a * s2 + var)  # (B, D), in Σ's eigenbasis
            x0_hat = mu + ((x - a * mu) @ Q * gain) @ Q.T
            return ((x - a * x0_hat) / jnp.sqrt(var)).reshape(shape)

        return fn

    def log_density(self, sched, x, t_min: int = 1):
        """log p_{t_min}(x) of the exact flow from N(0, I) at T, float64: (B,)."""
        ab = np.asarray(sched.alpha_bars, np.float64)
        om = np.asarray(sched.one_minus_alpha_bars, np.float64)
        a0, v0, aT, vT = np.sqrt(ab[t_min]), om[t_min], np.sqrt(ab[sched.T]), om[sched.T]
        ratio = np.sqrt((aT**2 * self.s2 + vT) / (a0**2 * self.s2 + v0))
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        x_T = aT * self.mu + ((x - a0 * self.mu) @ self.Q * ratio) @ self.Q.T
        dims = self.mu.size
        return -0.5 * (dims * math.log(2 * math.pi) + (x_T**2).sum(1)) + np.log(ratio).sum()

    def expected_dequantized_log_density(self, sched, x0, width):
        """E_u[log p_1(x0 + width·u)], u ~ U(−½, ½)^D (Σ diagonal): (B,)."""
        ab = np.asarray(sched.alpha_bars, np.float64)
        om = np.asarray(sched.one_minus_alpha_bars, np.float64)
        a0, v0, aT, vT = np.sqrt(ab[1]), om[1], np.sqrt(ab[-1]), om[-1]
        ratio = np.sqrt((aT**2 * self.s2 + vT) / (a0**2 * self.s2 + v0))
        # x_T = c + ratio·x with c = aT μ − ratio a0 μ; E(x_T²) = (c + ratio x0)² + ratio² w²/12
        x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
        c = aT * self.mu - ratio * a0 * self.mu
        mean_sq = (c + ratio * x0) ** 2 + ratio**2 * width**2 / 12.0
        return (-0.5 * (math.log(2 * math.pi) + mean_sq) + np.log(ratio)).sum(1)


def _random_rotation(dims, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dims, dims)))
    return q * np.sign(np.diag(r))


ONE_D = GaussianFlow(mu=[0.3], scales=[0.5])
_rng = np.random.default_rng(0)
FULL_64 = GaussianFlow(mu=_rng.uniform(-0.5, 0.5, 64), scales=_rng.uniform(0.2, 0.8, 64),
                       rotation=_random_rotation(64, 1))


@pytest.fixture(scope="module")
def loglik_64():
    """jit(x, key, divergence) for the 64-D full-covariance case, compiled once per divergence."""
    fn = FULL_64.eps_fn(SCHED)
    return jax.jit(lambda x, key, divergence: ol.ode_log_likelihood(
        fn, SCHED, x, key, divergence=divergence), static_argnums=2)


def test_gaussian_1d_matches_closed_form():
    x = np.linspace(-1.5, 1.5, 7, dtype=np.float32).reshape(-1, 1)
    fn = ONE_D.eps_fn(SCHED)
    log_p, nfe = jax.jit(lambda x: ol.ode_log_likelihood(fn, SCHED, x, jax.random.key(0)))(x)
    expected = ONE_D.log_density(SCHED, x)
    rel = np.abs(np.asarray(log_p) - expected) / np.abs(expected)
    # Measured at rtol = atol = 1e-5: max relative error 9.8e-5 (8e-5 nats), ~98 NFE; 1.8e-6 at 1e-6.
    assert rel.max() < 3e-4, rel
    assert np.all(np.asarray(nfe) < 300) and np.all((np.asarray(nfe) - 1) % 6 == 0)


def test_gaussian_64d_exact_divergence_matches_closed_form(loglik_64):
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 1)).astype(np.float32) * 0.5
    log_p, _ = loglik_64(x, jax.random.key(0), "exact")
    expected = FULL_64.log_density(SCHED, x)
    rel = np.abs(np.asarray(log_p) - expected) / np.abs(expected)
    assert rel.max() < 1e-4, (np.asarray(log_p), expected)  # measured: max 8e-6 relative (7e-4 nats), 97 NFE


def test_hutchinson_is_unbiased(loglik_64):
    """The mean over probes of the Hutchinson log-likelihood equals the exact-divergence value."""
    n = 48
    x = np.broadcast_to(np.random.default_rng(3).normal(size=(1, 8, 8, 1)) * 0.5,
                        (n, 8, 8, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(7), n)
    estimates = np.asarray(loglik_64(x, keys, "hutchinson")[0], np.float64)
    exact = FULL_64.log_density(SCHED, x[:1])[0]
    mean, se = estimates.mean(), estimates.std(ddof=1) / math.sqrt(n)
    assert se > 1e-3  # the probes do vary the estimate (Σ is not diagonal)
    assert abs(mean - exact) < 4 * se, (mean, se, exact)


def test_bits_per_dim_matches_direct_computation():
    """On a Gaussian model and a 17-level grid, bpd = −(E_u log p(x0 + w u) + D log w)/(D ln 2)."""
    levels, dims, batch = 17, 4, 64
    width = 2.0 / (levels - 1)
    model = GaussianFlow(mu=[0.1, -0.2, 0.0, 0.3], scales=[0.4, 0.6, 0.5, 0.7])
    k = np.random.default_rng(4).integers(0, levels, size=(batch, dims))
    x0 = (2.0 * k / (levels - 1) - 1.0).astype(np.float32)
    bpd, nfe = jax.jit(lambda x: ol.ode_bits_per_dim(
        model.eps_fn(SCHED), SCHED, x, jax.random.key(5), num_levels=levels, num_dequant=2))(x0)
    expected = -(model.expected_dequantized_log_density(SCHED, x0, width) + dims * math.log(width)
                 ) / (dims * math.log(2.0))
    diff = np.asarray(bpd, np.float64) - expected  # only the dequantisation noise remains
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(batch) + 1e-4, diff
    assert np.all(np.abs(diff) < 0.2)
    assert np.all((np.asarray(nfe) - 2) % 6 == 0)  # two solves per example


@pytest.mark.parametrize("sched", [dj.linear_schedule(1000), dj.cosine_schedule(50)],
                         ids=["linear", "cosine"])
def test_schedule_extension(sched):
    T = sched.T
    ints = jnp.arange(T + 1, dtype=jnp.float32)
    np.testing.assert_allclose(np.exp(ol.continuous_log_alpha_bar(sched, ints)), sched.alpha_bars,
                               rtol=1e-6)  # 2 ulp
    fine = jnp.linspace(0.0, T, 20 * T + 1)
    log_ab = np.asarray(ol.continuous_log_alpha_bar(sched, fine), np.float64)
    assert np.all(np.diff(log_ab) < 0)
    log_snr = ol.continuous_log_snr(sched, fine[1:])
    assert np.all(np.diff(np.asarray(log_snr)) < 0)
    np.testing.assert_allclose(ol.continuous_time(sched, log_snr), fine[1:], atol=2e-3 * T / 1000)
    # the slope on [k−1, k) is log α_k: β(t) = −log(1 − β_k)
    k = np.arange(1, T + 1)
    slope = (np.asarray(ol.continuous_log_alpha_bar(sched, k - 0.25))
             - np.asarray(ol.continuous_log_alpha_bar(sched, k - 0.75))) / 0.5
    np.testing.assert_allclose(slope, np.log1p(-np.asarray(sched.betas[1:], np.float64)), rtol=2e-2,
                               atol=1e-6)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_predictions_give_the_same_drift(prediction):
    fn = ONE_D.eps_fn(SCHED)
    x = jnp.array([0.7])
    for rho in (-4.0, 0.0, 5.0):
        t = ol.continuous_time(SCHED, -rho)[None]
        eps = fn(x[None], t)
        sqrt_ab, sigma = jnp.sqrt(jax.nn.sigmoid(-rho)), jnp.sqrt(jax.nn.sigmoid(rho))
        x0 = (x - sigma * eps) / sqrt_ab
        out = x0 if prediction == "x0" else sqrt_ab * eps - sigma * x0
        ref = ol.probability_flow_drift(fn, SCHED, (1,))(x, rho)
        got = ol.probability_flow_drift(lambda x, t, out=out: out, SCHED, (1,),
                                        prediction=prediction)(x, rho)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_clear_errors():
    fn = ONE_D.eps_fn(SCHED)
    key = jax.random.key(0)
    on_grid = jnp.array([[-1.0], [1.0]])
    with pytest.raises(ValueError, match="17-level grid"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid + 0.05, key, num_levels=17)
    with pytest.raises(ValueError, match="lie on the 17-level grid"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid * 255.0, key, num_levels=17)
    with pytest.raises(ValueError, match="needs num_levels"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid, key, num_levels=None)
    with pytest.raises(ValueError, match="at least 2"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid, key, num_levels=1)
    with pytest.raises(TypeError, match="num_levels must be an int"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid, key, num_levels=16.0)
    with pytest.raises(ValueError, match="num_dequant"):
        ol.ode_bits_per_dim(fn, SCHED, on_grid, key, num_levels=17, num_dequant=0)
    with pytest.raises(ValueError, match="divergence must be one of .*Did you mean 'exact'"):
        ol.ode_log_likelihood(fn, SCHED, on_grid, key, divergence="exakt")
    with pytest.raises(ValueError, match="probe"):
        ol.ode_log_likelihood(fn, SCHED, on_grid, key, probe="normal")
    with pytest.raises(ValueError, match="prediction"):
        ol.ode_log_likelihood(fn, SCHED, on_grid, key, prediction="score")
    with pytest.raises(ValueError, match=r"t_min must lie in the open interval \(0, T = 1000\)"):
        ol.ode_log_likelihood(fn, SCHED, on_grid, key, t_min=0.0)
    with pytest.raises(ValueError, match="rtol"):
        ol.ode_log_likelihood(fn, SCHED, on_grid, key, rtol=0.0)
    with pytest.raises(ValueError, match="at least one event dim"):
        ol.ode_log_likelihood(fn, SCHED, jnp.zeros(3), key)
    with pytest.raises(TypeError, match="floating"):
        ol.ode_log_likelihood(fn, SCHED, jnp.zeros((3, 1), jnp.int32), key)
    with pytest.raises(ValueError, match="eps_fn returned a prediction of shape"):
        ol.ode_log_likelihood(lambda x, t: x[..., 0], SCHED, on_grid, key)
