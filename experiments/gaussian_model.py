"""Gaussian data x_0 ~ N(μ_0, s_0² I) and linear-Gaussian reverse models: exact ELBO and log p.

For Gaussian data every conditional of the forward process is Gaussian, so the *optimal*
reverse model is known in closed form (per dimension; the dimensions are independent):

    E[x_0 | x_t] = μ_0 + k_t (x_t − √ᾱ_t μ_0),  k_t = s_0² √ᾱ_t / (ᾱ_t s_0² + 1 − ᾱ_t),
    Var[x_0 | x_t] = s_0² (1 − ᾱ_t) / (ᾱ_t s_0² + 1 − ᾱ_t),
    q(x_{t−1} | x_t) = ∫ q(x_{t−1} | x_t, x_0) q(x_0 | x_t) dx_0
                     = N(μ̃_t(E[x_0|x_t], x_t), β̃_t + c_t² Var[x_0|x_t]),
    c_t = √ᾱ_{t−1} β_t/(1−ᾱ_t).

Its mean is linear in x_t. We consider reverse models of that form,
    p(x_T) = N(0, I),   p(x_{t−1} | x_t) = N(A_t x_t + b_t, σ_t²)      (t = 1..T),
with the optimal mean and either the optimal variance ("exact") or DDPM's fixed σ_t² = β_t
("fixed_beta", as a trained DDPM with fixed variances uses). For any such model:

* log p(x_0) is Gaussian: x_0 = Σ_t P_t (b_t + σ_t ε_t) + P_{T+1} x_T with P_t = Π_{s<t} A_s, so
  mean Σ_t P_t b_t and variance Σ_t P_t² σ_t² + P_{T+1}².
* the ELBO is the DDPM decomposition evaluated in expectation (exactly):
  E_{q(x_1|x_0)} log p(x_0|x_1) − KL(q(x_T|x_0)‖N(0, 1))
      − Σ_{t≥2} E_{q(x_t|x_0)} KL(q(x_{t−1}|x_t,x_0)‖p),
  where with q(x_{t−1}|x_t,x_0) = N(u_t x_0 + w_t x_t, β̃_t) and x_t ~ N(√ᾱ_t x_0, 1−ᾱ_t),
  E KL = ½ [log(σ_t²/β̃_t) − 1 + (β̃_t + d_t² + (w_t − A_t)² (1−ᾱ_t)) / σ_t²],
  d_t = (u_t + (w_t − A_t)√ᾱ_t) x_0 − b_t.
All exact quantities are computed in float64 numpy, vectorised over t (no loop over t).
The same construction backs tests/gaussian_case.py.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import diffusion_jax as dj

VARIANCES = ("exact", "fixed_beta")


@dataclasses.dataclass(frozen=True)
class GaussianData:
    mu0: float
    s0: float

    def sample(self, rng: np.random.Generator, shape) -> np.ndarray:
        return (self.mu0 + self.s0 * rng.standard_normal(shape)).astype(np.float32)

    def log_prob(self, x0) -> np.ndarray:
        """log q(x_0) summed over the event dims: (B,)."""
        return _sum_events(_log_normal(np.asarray(x0, np.float64), self.mu0, self.s0**2))


@dataclasses.dataclass(frozen=True)
class LinearGaussianReverse:
    """p(x_{t−1}|x_t) = N(A_t x_t + b_t, σ_t²); tables of shape (T+1,) indexed by t (0 unused)."""

    A: np.ndarray
    b: np.ndarray
    var: np.ndarray

    @classmethod
    def optimal(cls, data: GaussianData, sched, variance: str = "exact") -> LinearGaussianReverse:
        """The optimal mean for ``data``; variance "exact" (optimal) or "fixed_beta" (β_t)."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}.")
        ab, om, betas, alphas = _tables(sched)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        om_prev = np.concatenate([[0.0], om[:-1]])
        one_minus = np.where(om > 0, om, 1.0)  # index 0 unused
        denom = ab * data.s0**2 + om
        k = data.s0**2 * np.sqrt(ab) / denom
        x0_var = data.s0**2 * om / denom
        c0 = np.sqrt(ab_prev) * betas / one_minus  # coefficient of x_0 in μ̃_t
        ct = np.sqrt(alphas) * om_prev / one_minus  # coefficient of x_t in μ̃_t
        A = c0 * k + ct
        b = c0 * data.mu0 * (1.0 - k * np.sqrt(ab))
        post_var = om_prev * betas / one_minus
        var = post_var + c0**2 * x0_var if variance == "exact" else betas.copy()
        return cls(A, b, var)

    @property
    def T(self) -> int:
        return self.A.shape[0] - 1

    def reverse_fn(self):
        """reverse_fn(x_t, t) -> (mean, var) for ``dj.diffusion_elbo`` (float32 tables).

        t: int (B,) indexing x_t's leading axis (the package's convention for model functions).
        """
        A, b, var = (jnp.asarray(a, jnp.float32) for a in (self.A, self.b, self.var))

        def fn(x_t, t):
            A_t, b_t, var_t = (dj.schedules.at(table, t, x_t) for table in (A, b, var))
            return A_t * x_t + b_t, var_t

        return fn

    def exact_log_likelihood(self, x0) -> np.ndarray:
        """log p(x_0) per example (summed over the event dims), float64: (B,)."""
        A, b, var = self.A[1:], self.b[1:], self.var[1:]
        P = np.concatenate([[1.0], np.cumprod(A)])  # P[t−1] = Π_{s<t} A_s, P[T] = Π_{s≤T} A_s
        mean = np.sum(P[:-1] * b)
        total_var = np.sum(P[:-1] ** 2 * var) + P[-1] ** 2
        return _sum_events(_log_normal(np.asarray(x0, np.float64), mean, total_var))

    def exact_elbo(self, sched, x0) -> np.ndarray:
        """The ELBO per example (summed over the event dims), float64: (B,)."""
        ab, om, betas, alphas = _tables(sched)
        T = self.T
        x0 = np.asarray(x0, np.float64)
        x = x0.reshape(x0.shape[0], -1)[..., None]  # (B, D, 1): broadcast against t
        A, b, var = self.A, self.b, self.var
        # Reconstruction: E_{x_1 ~ N(√ᾱ_1 x_0, 1−ᾱ_1)} log N(x_0; A_1 x_1 + b_1, σ_1²).
        resid = x[..., 0] - A[1] * np.sqrt(ab[1]) * x[..., 0] - b[1]
        rec = -0.5 * (np.log(2 * np.pi * var[1]) + (resid**2 + A[1] ** 2 * om[1]) / var[1])
        # Prior matching: KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1)).
        mT, vT = np.sqrt(ab[T]) * x[..., 0], om[T]
        prior = 0.5 * (vT + mT**2 - 1.0 - np.log(vT))
        # Denoising matching, t = 2..T, vectorised over t.
        t = np.arange(2, T + 1)
        ab_t, ab_prev, om_t, om_prev = ab[t], ab[t - 1], om[t], om[t - 1]
        u = np.sqrt(ab_prev) * betas[t] / om_t
        w = np.sqrt(alphas[t]) * om_prev / om_t
        post_var = om_prev * betas[t] / om_t
        d = (u + (w - A[t]) * np.sqrt(ab_t)) * x - b[t]
        e_sq = d**2 + (w - A[t]) ** 2 * om_t
        kl = 0.5 * (np.log(var[t] / post_var) - 1.0 + (post_var + e_sq) / var[t])
        per_dim = rec - prior - kl.sum(-1)
        return per_dim.sum(-1)


def _tables(sched):
    """(ᾱ, 1 − ᾱ, β, α) as float64 numpy tables of shape (T+1,).

    1 − ᾱ comes from the schedule's own table (computed in float64 before the cast), not from
    1 − float32(ᾱ), which loses digits at small t.
    """
    names = ("alpha_bars", "one_minus_alpha_bars", "betas", "alphas")
    return tuple(np.asarray(getattr(sched, n), np.float64) for n in names)


def _log_normal(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def _sum_events(x):
    return x.reshape(x.shape[0], -1).sum(axis=1)
