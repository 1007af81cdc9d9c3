"""The reverse process p_θ(x_{t−1} | x_t) from a network's raw output: the one adapter.

Every loss, sampler and evaluation turns a network output into a reverse kernel here, and
nowhere else (score_sde's ``get_score_fn`` plays this role there). Pure: no Flax, no optax.

A network output at (x_t, t) is, per ``prediction``:

- ``"eps"``: ε̂, with x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t;
- ``"x0"``: x̂_0 itself;
- ``"v"``: v̂ = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho), x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂;

and with ``variance="learned"`` the network also outputs Nichol & Dhariwal's interpolation
coefficient v ∈ [−1, 1] of the log-variance: either as a pair ``(prediction, v)`` or as one
array ``[prediction | v]`` concatenated on the last (channel) axis, as a U-Net returns it.

Variances σ²_t (``variance``):

- ``"beta"`` (default, "fixed large"): β_t for t ≥ 2 and β̃_2 at t = 1, the convention of the
  DDPM and improved-DDPM reference code ("a better decoder log-likelihood"); bits/dim computed
  with it compare with published figures.
- ``"beta_raw"``: β_t at every t, β_1 at t = 1 (this project's convention before 2026-12;
  about 0.4 bits/dim looser on 256-level data).
- ``"beta_tilde"`` ("fixed small"): β̃_t, with β̃_2 at t = 1 (β̃_1 = 0 would make the
  decoder degenerate).
- ``"learned"``: exp(frac · log β_t + (1 − frac) · log β̃_t), frac = (v + 1)/2.

Timesteps t follow the package convention: an int array of shape (B,) indexing x_t's leading
axis (an int scalar also works).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_choice, check_same_shape
from diffusion_jax.forward import q_posterior
from diffusion_jax.gaussians import Gaussian
from diffusion_jax.parameterization import eps_from_v, eps_from_x0, x0_from_eps, x0_from_v
from diffusion_jax.schedules import Schedule, at

__all__ = [
    "PREDICTIONS",
    "VARIANCES",
    "ReverseKernel",
    "clipped_posterior_variances",
    "fixed_large_variances",
    "learned_log_variance",
    "p_reverse",
    "predict_x0_eps",
    "reverse_kernel",
    "split_output",
]

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("beta", "beta_raw", "beta_tilde", "learned")


class ReverseKernel(NamedTuple):
    """p_θ(x_{t−1} | x_t) = N(mean, var I) and the (x̂_0, ε̂) it was built from."""

    mean: jax.Array
    var: jax.Array
    x0_hat: jax.Array
    eps_hat: jax.Array

    @property
    def gaussian(self) -> Gaussian:
        return Gaussian(self.mean, self.var)


def split_output(output, learned_variance: bool, channels: int | None = None):
    """A network output -> (prediction, v or None): the one place the output is decoded.

    With ``learned_variance`` the output is a pair (prediction, v) or one array whose last axis
    holds [prediction | v] (2C channels; ``channels`` = C when known); otherwise it is the
    prediction itself.
    """
    if learned_variance:
        if isinstance(output, tuple | list):
            if len(output) != 2:
                raise TypeError(f"a learned-variance output must be a pair (prediction, v), "
                                f"got a sequence of {len(output)}.")
            return output[0], output[1]
        last = jnp.shape(output)[-1]
        if last % 2 or (channels is not None and last != 2 * channels):
            expected = f"{2 * channels} = 2 x {channels}" if channels else "an even number of"
            raise TypeError(f"a learned-variance output must be a pair (prediction, v) or hold "
                            f"[prediction | v] on its last axis ({expected} channels), got shape "
                            f"{jnp.shape(output)}.")
        prediction, v = jnp.split(output, 2, axis=-1)
        return prediction, v
    if isinstance(output, tuple | list):
        raise TypeError("the network returned a pair; pass variance='learned' (or "
                        "learned_variance=True) for a model that also outputs its variance.")
    return output, None


def predict_x0_eps(model_output, sched: Schedule, x_t, t, *, prediction: str = "eps",
                   clip_x0: bool = False):
    """A prediction (x_t's shape) -> the pair (x̂_0, ε̂), both of x_t's shape.

    With ``clip_x0``, x̂_0 is clipped to [−1, 1] and ε̂ recomputed from it,
    ε̂ = (x_t − √ᾱ_t x̂_0) / √(1−ᾱ_t), so that x_t = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε̂ stays true.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    check_same_shape(model_output=model_output, x_t=x_t)
    if prediction == "eps":
        eps = model_output
        x0 = x0_from_eps(sched, x_t, t, eps)
    elif prediction == "x0":
        x0 = model_output
        eps = eps_from_x0(sched, x_t, t, x0)
    else:
        x0 = x0_from_v(sched, x_t, t, model_output)
        eps = eps_from_v(sched, x_t, t, model_output)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = eps_from_x0(sched, x_t, t, x0)
    return x0, eps


def clipped_posterior_variances(sched: Schedule) -> jax.Array:
    """(T+1,) β̃_t with the zero β̃_1 (and the unused β̃_0) replaced by β̃_2, as in improved-DDPM."""
    post = sched.posterior_variances
    return post.at[:2].set(post[2])


def fixed_large_variances(sched: Schedule) -> jax.Array:
    """(T+1,) the "fixed large" σ²_t: β_t for t ≥ 2, β̃_2 at t = 1 (and the unused index 0).

    DDPM and improved-DDPM use β̃_2 for the decoder p(x_0 | x_1) because β_1 is a poor
    decoder variance; their published bits/dim use this table.
    """
    return sched.betas.at[:2].set(sched.posterior_variances[2])


def learned_log_variance(sched: Schedule, t, v, x=None):
    """Nichol & Dhariwal's log σ²_t = frac · log β_t + (1 − frac) · log β̃_t, frac = (v + 1)/2.

    β̃ is clipped (``clipped_posterior_variances``): v = 1 gives β_t, v = −1 gives β̃_t (β̃_2 at
    t = 1). t: int scalar or (B,) indexing the leading axis of v (of ``x`` when given).
    """
    ref = v if x is None else x
    log_beta = at(jnp.log(sched.betas.at[0].set(1.0)), t, ref)  # index 0 unused; avoid log 0
    log_beta_tilde = at(jnp.log(clipped_posterior_variances(sched)), t, ref)
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def reverse_kernel(output, sched: Schedule, x_t, t, *, prediction: str = "eps",
                   variance: str = "beta", clip_x0: bool = False,
                   stop_gradient_mean: bool = False) -> ReverseKernel:
    """The network output at (x_t, t) -> p_θ(x_{t−1} | x_t), with x̂_0 and ε̂.

    Mean: the forward posterior mean at x̂_0, μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x̂_0
      + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t (for ε-prediction without clipping this is
      μ_θ = (x_t − β_t/√(1−ᾱ_t) · ε̂) / √α_t).
    Variance: per ``variance`` (module docstring).
    ``stop_gradient_mean``: the mean (and x̂_0, ε̂) carry no gradient — Nichol & Dhariwal's
      hybrid loss trains only the variance through the bound.
    Shapes: x_t (B, *event), t int (B,) or scalar; mean, x̂_0, ε̂ of x_t's shape, var
      broadcastable to it.
    """
    check_choice("variance", variance, VARIANCES)
    prediction_out, v = split_output(output, variance == "learned", jnp.shape(x_t)[-1])
    if stop_gradient_mean:
        prediction_out = jax.lax.stop_gradient(prediction_out)
    x0, eps = predict_x0_eps(prediction_out, sched, x_t, t, prediction=prediction, clip_x0=clip_x0)
    mean, _ = q_posterior(sched, x0, x_t, t)
    if variance == "beta":
        var = at(fixed_large_variances(sched), t, x_t)
    elif variance == "beta_raw":
        var = at(sched.betas, t, x_t)
    elif variance == "beta_tilde":
        var = at(clipped_posterior_variances(sched), t, x_t)
    else:
        var = jnp.exp(learned_log_variance(sched, t, v, x_t))
    return ReverseKernel(mean, var, x0, eps)


def p_reverse(model_output, sched: Schedule, x_t, t, *, prediction: str = "eps",
              variance: str = "beta", clip_x0: bool = False) -> Gaussian:
    """p_θ(x_{t−1} | x_t) as a Gaussian (mean, var): ``reverse_kernel`` without x̂_0 and ε̂.

    The ``reverse_fn`` of the ELBO for a network ``net``:
    ``lambda x_t, t: dj.p_reverse(net(x_t, t), sched, x_t, t)``.
    """
    k = reverse_kernel(model_output, sched, x_t, t, prediction=prediction, variance=variance,
                       clip_x0=clip_x0)
    return Gaussian(k.mean, k.var)
