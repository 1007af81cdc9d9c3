"""Gaussian data x_0 ~ N(mu0, s0²): the exact reverse process, log-likelihood and ELBO in closed form."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import diffusion_jax as dj


@dataclasses.dataclass(frozen=True)
class GaussianData:
    mu0: float
    s0: float

    def denoiser(self, sched, x_t, t):
        """E[x_0 | x_t] = mu0 + k_t (x_t − √ᾱ_t mu0) and Var[x_0 | x_t] (both exact).

        t: int (B,) indexing x_t's leading axis (or a scalar); tables are looked up with
        ``dj.schedules.at`` so they broadcast against (B, *event).
        """
        ab = dj.schedules.at(sched.alpha_bars, t, x_t)
        denom = ab * self.s0**2 + 1.0 - ab
        k = self.s0**2 * jnp.sqrt(ab) / denom
        return self.mu0 + k * (x_t - jnp.sqrt(ab) * self.mu0), self.s0**2 * (1.0 - ab) / denom

    def reverse_fn(self, sched):
        """The exact reverse kernel q(x_{t−1} | x_t) = ∫ q(x_{t−1}|x_t, x_0) q(x_0|x_t) dx_0.

        ``fn(x_t, t)`` with t of shape (B,) (the package's convention for model functions).
        """

        def fn(x_t, t):
            at = lambda table, s=t: dj.schedules.at(table, s, x_t)
            x0_hat, x0_var = self.denoiser(sched, x_t, t)
            mean, var = dj.q_posterior(sched, x0_hat, x_t, t)
            coef_x0 = jnp.sqrt(at(sched.alpha_bars, t - 1)) * at(sched.betas) / at(
                sched.one_minus_alpha_bars)
            return mean, var + coef_x0**2 * x0_var

        return fn

    def exact_log_likelihood(self, sched, x0):
        """log p_θ(x_0) of the model p(x_T) = N(0, 1) followed by the exact reverse kernels."""
        ab = np.asarray(sched.alpha_bars, np.float64)
        betas = np.asarray(sched.betas, np.float64)
        alphas = np.asarray(sched.alphas, np.float64)
        m, v = 0.0, 1.0
        for t in range(sched.T, 0, -1):
            denom = ab[t] * self.s0**2 + 1 - ab[t]
            k = self.s0**2 * np.sqrt(ab[t]) / denom
            x0_var = self.s0**2 * (1 - ab[t]) / denom
            c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
            ct = np.sqrt(alphas[t]) * (1 - ab[t - 1]) / (1 - ab[t])
            post_var = (1 - ab[t - 1]) * betas[t] / (1 - ab[t])
            A = c0 * k + ct
            b = c0 * self.mu0 * (1 - k * np.sqrt(ab[t]))
            m, v = A * m + b, A**2 * v + post_var + c0**2 * x0_var
        x0 = np.asarray(x0, np.float64)
        return -0.5 * (np.log(2 * np.pi * v) + (x0 - m) ** 2 / v)

    def exact_elbo(self, sched, x0):
        """ELBO = log q(x_0) + E_{q(x_T|x_0)}[log N(x_T; 0, 1) − log q(x_T)] (closed form)."""
        ab_T = float(sched.alpha_bars[sched.T])
        x0 = np.asarray(x0, np.float64)
        log_q0 = -0.5 * (np.log(2 * np.pi * self.s0**2) + (x0 - self.mu0) ** 2 / self.s0**2)
        mean_T, var_T = np.sqrt(ab_T) * x0, 1 - ab_T
        q_T_var = ab_T * self.s0**2 + 1 - ab_T

        def expected_log_normal(m, v):
            return -0.5 * (np.log(2 * np.pi * v) + ((mean_T - m) ** 2 + var_T) / v)

        return log_q0 + expected_log_normal(0.0, 1.0) - expected_log_normal(
            np.sqrt(ab_T) * self.mu0, q_T_var
        )
