"""Variational diffusion models (Kingma et al. 2021, "VDM") in continuous time t ∈ [0, 1].

Pure functions (no Flax, no optax), after google-research/vdm.

**Conventions.** γ(t) = −log SNR(t) is increasing in t; α_t² = sigmoid(−γ(t)), σ_t² =
sigmoid(γ(t)) (variance preserving: α_t² + σ_t² = 1); z_t = α_t x + σ_t ε. A schedule is any
elementwise callable ``gamma_fn(t) -> γ(t)`` (t of any shape, float): the frozen pytree
dataclasses below (``LinearGamma``, ``DDPMLinearGamma``, ``CosineGamma``, ``MonotoneGamma``,
``DiscreteGamma``) or a plain function / closure. Their float fields are pytree leaves, so a
schedule can be passed through ``jit`` and differentiated (VDM learns γ_min, γ_max).

A γ argument (``gamma_t``, ``gamma_s``, ...) is a scalar, an array of shape (B,) indexing the
leading (batch) axis of x, or an array that broadcasts against x. Networks are called as
``eps_fn(z_t, t)`` with z_t of x's shape (B, *event) and t float of shape (B,) in [0, 1] (the
package's convention: t of shape (B,)); a network that should depend on the schedule only
through γ (VDM's invariance) closes over ``gamma_fn`` and evaluates γ(t) itself.

**The bound, per example in nats.** −log p(x) ≤ L_recon + L_prior + L_diffusion with
L_recon = −E log p(x | z_0) (VDM's per-dimension decoder over the data levels), L_prior =
KL(q(z_1|x) ‖ N(0, I)), and L_diffusion either L_∞ = ½ E_{t~U(0,1), ε}[γ'(t) ‖ε − ε̂(z_t; t)‖²]
(continuous time) or L_T = (T/2) E_{i~U{1..T}, ε}[expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖²]
with t_i = i/T, s_i = (i−1)/T (T steps). ``vdm_elbo`` returns every term per example.

**Relation to DDPM (``gamma_from_schedule``).** With γ read off a discrete schedule at t_i = i/T
(γ(i/T) = −log SNR_i), VDM's z at t_i is DDPM's x_i for i ≥ 1 and L_T's term at i ≥ 2 equals
DDPM's denoising-matching KL(q(x_{i−1}|x_i, x_0) ‖ q(x_{i−1}|x_i, x̂_0(ε̂))) (the posterior
variance β̃_i). VDM's z_0 at t = 0 is an extra, slightly noisy latent (γ_0 finite) where DDPM's
x_0 is the data itself (γ = −∞); VDM's term at i = 1 and its decoder replace DDPM's decoder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax._checks import check_num_levels, check_on_level_grid, is_concrete, is_int
from diffusion_jax.elbo import _check_data, bits_per_dim, map_over_timesteps, sum_over_events
from diffusion_jax.gaussians import Gaussian
from diffusion_jax.schedules import Schedule

__all__ = [
    "GAMMA_MAX",
    "GAMMA_MIN",
    "CosineGamma",
    "DDPMLinearGamma",
    "DiscreteGamma",
    "LinearGamma",
    "MonotoneGamma",
    "gamma_from_schedule",
    "monotone_gamma",
    "monotone_gamma_init",
    "variance_minimizing_grads",
    "vdm_decoder_log_probs",
    "vdm_diffusion_loss_continuous",
    "vdm_diffusion_loss_discrete",
    "vdm_diffusion_term_continuous",
    "vdm_diffusion_term_discrete",
    "vdm_diffusion_terms_discrete",
    "vdm_elbo",
    "vdm_marginal",
    "vdm_posterior",
    "vdm_predict_x",
    "vdm_prior_loss",
    "vdm_reconstruction_loss",
    "vdm_sample",
]

GAMMA_MIN = -13.3  # VDM's defaults: γ(0) and γ(1)
GAMMA_MAX = 5.0

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (z_t (B, *event), t float (B,)) -> ε̂
GammaFn = Callable[[jax.Array], jax.Array]  # t (any shape) -> γ(t), elementwise


def _pytree_dataclass(*data_fields: str):
    """A frozen dataclass registered as a pytree whose ``data_fields`` are leaves."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data_fields), meta_fields=[])

    return wrap


def _as_time(t):
    """t as a floating array (ints become float32)."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Schedules γ(t).


@_pytree_dataclass("gamma_min", "gamma_max")
class LinearGamma:
    """VDM's fixed linear schedule γ(t) = γ_min + (γ_max − γ_min) t (learnable endpoints).

    Written as (1 − t) γ_min + t γ_max, so γ(0) = γ_min and γ(1) = γ_max exactly.
    """

    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX

    def __call__(self, t):
        t = _as_time(t)
        return (1.0 - t) * self.gamma_min + t * self.gamma_max


@_pytree_dataclass("beta_1", "beta_T", "T", "gamma_floor")
class DDPMLinearGamma:
    """DDPM's linear-β schedule in continuous time (the T → ∞ limit with t = step / T).

    −log ᾱ(t) = b(t) = β_1 T t + ½ (β_T − β_1) T t², so 1/SNR(t) = 1/ᾱ − 1 = expm1(b(t)), and
    γ(t) = log(expm1(b(t)) + exp(γ_floor)). The exact γ is −∞ at t = 0 (DDPM's x_0 is the data
    itself); the floor adds a noise variance ratio exp(γ_floor) so that γ(0) = γ_floor is finite
    (z_0 a slightly noisy latent, as VDM needs) while staying smooth and strictly increasing. It
    shifts γ by exp(γ_floor − γ_exact) at most: < 0.016 at t ≥ 1/T for the defaults.
    """

    beta_1: float = 1e-4
    beta_T: float = 0.02
    T: float = 1000.0
    gamma_floor: float = GAMMA_MIN

    def __call__(self, t):
        t = _as_time(t)
        b = self.T * t * (self.beta_1 + 0.5 * (self.beta_T - self.beta_1) * t)
        return jnp.log(jnp.expm1(b) + jnp.exp(self.gamma_floor))


@_pytree_dataclass("s", "gamma_floor", "gamma_ceiling")
class CosineGamma:
    """Nichol & Dhariwal's cosine schedule in continuous time.

    ᾱ(t) = f(t)/f(0), f(t) = cos²((t + s)/(1 + s) · π/2), so 1/SNR = (f(0) − f(t))/f(t) with
    f(t) = sin²(π/2 · (1 − t)/(1 + s)) and f(0) − f(t) = sin(π/2 · t/(1 + s)) ·
    sin(π/2 · (t + 2s)/(1 + s)) (both without cancellation). Clipped smoothly at both ends:
    SNR gets exp(−γ_ceiling) added (ᾱ is kept away from 0 at t = 1: γ(1) ≈ γ_ceiling) and 1/SNR
    gets exp(γ_floor) added (γ(0) = γ_floor, finite):
    γ(t) = log(g / (f + g exp(−γ_ceiling)) + exp(γ_floor)), g = f(0) − f(t).
    """

    s: float = 0.008
    gamma_floor: float = GAMMA_MIN
    gamma_ceiling: float = 20.0

    def __call__(self, t):
        t = _as_time(t)
        half_pi = 0.5 * math.pi / (1.0 + self.s)
        f = jnp.square(jnp.sin(half_pi * (1.0 - t)))
        g = jnp.sin(half_pi * t) * jnp.sin(half_pi * (t + 2.0 * self.s))
        inv_snr = g / (f + g * jnp.exp(-self.gamma_ceiling))
        return jnp.log(inv_snr + jnp.exp(self.gamma_floor))


@_pytree_dataclass("gammas")
class DiscreteGamma:
    """γ read off a T-step discrete schedule: ``gammas[i]`` = γ(i/T) for i = 0..T, shape (T+1,).

    Between the nodes t_i = i/T (computed as ``arange(T+1) / T`` in the dtype of ``gammas``, so
    ``vdm_diffusion_term_discrete``'s i/T hits them exactly) γ is linear in t: exact at every
    node, increasing, and with a (piecewise constant) derivative for L_∞.
    """

    gammas: jax.Array

    def __call__(self, t):
        gammas = jnp.asarray(self.gammas)
        T = gammas.shape[0] - 1
        t = _as_time(t).astype(gammas.dtype)
        nodes = jnp.arange(T + 1, dtype=gammas.dtype) / T
        j = jnp.clip(jnp.searchsorted(nodes, t, side="right") - 1, 0, T - 1)
        w = (t - nodes[j]) / (nodes[j + 1] - nodes[j])
        return (1.0 - w) * gammas[j] + w * gammas[j + 1]


def gamma_from_schedule(sched: Schedule, *, gamma_0: float = GAMMA_MIN) -> DiscreteGamma:
    """The VDM schedule of a DDPM ``Schedule``: γ(i/T) = −log SNR_i for i = 1..T, γ(0) = gamma_0.

    The mapping t_i = i/T ↔ DDPM step i: VDM's z_{t_i} is DDPM's x_i (same ᾱ_i), s_i = (i−1)/T
    is x_{i−1}. DDPM's x_0 is the data (γ = −∞); VDM needs a finite γ(0) for its latent z_0, so
    ``gamma_0`` (< γ(1/T)) stands in for it; only the terms at i = 1 (and the decoder) use it.
    """
    gammas = -sched.log_snr[1:]
    if is_concrete(gammas) and is_concrete(gamma_0) and not float(gamma_0) < float(gammas[0]):
        raise ValueError(f"gamma_0 must be below gamma(1/T) = {float(gammas[0])!r}, got {gamma_0!r}.")
    return DiscreteGamma(jnp.concatenate([jnp.full((1,), gamma_0, gammas.dtype), gammas]))


# The learned monotone schedule (VDM appendix).


def monotone_gamma_init(key, hidden: int = 1024, gamma_min: float = GAMMA_MIN,
                        gamma_max: float = GAMMA_MAX) -> dict:
    """Parameters of VDM's monotone network γ_η (a dict pytree of float32 arrays).

    Layers l1: 1→1, l2: 1→hidden, l3: hidden→1, with weights softplus(w) > 0 of the free
    parameters ``w`` stored here. l1 starts as t ↦ 2t − 1 (inputs of l2 in [−1, 1]); l2's weights
    and biases and l3's weights start normal. ``gamma_min``, ``gamma_max`` are learned scalars.
    """
    if not is_int(hidden) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden!r}.")
    k2w, k2b, k3 = jax.random.split(key, 3)
    f32 = jnp.float32
    return {
        "l1": {"w": jnp.asarray(math.log(math.expm1(2.0)), f32), "b": jnp.asarray(-1.0, f32)},
        "l2": {"w": jax.random.normal(k2w, (hidden,), f32), "b": jax.random.normal(k2b, (hidden,), f32)},
        "l3": {"w": jax.random.normal(k3, (hidden,), f32)},
        "gamma_min": jnp.asarray(gamma_min, f32),
        "gamma_max": jnp.asarray(gamma_max, f32),
    }


def _gamma_tilde(params, t):
    """γ̃(t) = l1(t) + l3(sigmoid(l2(l1(t)))) for t of shape (N,); l3 averages over the hidden
    units (VDM divides by the width), which keeps γ̃ of order one at any width."""
    h = jax.nn.softplus(params["l1"]["w"]) * t + params["l1"]["b"]
    u = jax.nn.sigmoid(h[:, None] * jax.nn.softplus(params["l2"]["w"]) + params["l2"]["b"])
    return h + jnp.mean(u * jax.nn.softplus(params["l3"]["w"]), axis=-1)


def monotone_gamma(params, t):
    """VDM's learned schedule γ_η(t) = γ_min + (γ_max − γ_min) (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)).

    Strictly increasing in t (every weight is positive and l1's slope is > 0), with γ(0) =
    γ_min and γ(1) = γ_max exactly (rounding at the ends is snapped away without touching the
    gradient). t: any shape; returns γ of t's shape. Pure, elementwise in t: jit/vmap/grad-able
    in both arguments.
    """
    t = _as_time(t)
    dtype = jnp.result_type(t.dtype, params["gamma_min"].dtype)
    t = t.astype(dtype)
    g = _gamma_tilde(params, jnp.concatenate([jnp.asarray([0.0, 1.0], dtype), t.reshape(-1)]))
    u = ((g[2:] - g[0]) / (g[1] - g[0])).reshape(t.shape)
    u = u + jax.lax.stop_gradient(jnp.where(t == 0.0, -u, jnp.where(t == 1.0, 1.0 - u, 0.0)))
    return (1.0 - u) * params["gamma_min"] + u * params["gamma_max"]


@_pytree_dataclass("params")
class MonotoneGamma:
    """``monotone_gamma`` as a schedule object: ``MonotoneGamma(params)(t)``; a pytree, so
    ``jax.grad`` with respect to it gives gradients for ``params``."""

    params: dict

    def __call__(self, t):
        return monotone_gamma(self.params, t)


# ----------------------------------------------------------------------------------------------
# The forward process q(z_t | x) and the posterior q(z_s | z_t, x).


def _expand(gamma, x):
    """γ of shape (B,) (indexing x's batch axis) -> (B, 1, ..., 1); other shapes unchanged."""
    gamma = jnp.asarray(gamma)
    if gamma.ndim == 1 and jnp.ndim(x) > 1:
        gamma = gamma.reshape(gamma.shape + (1,) * (jnp.ndim(x) - 1))
    return gamma


def vdm_marginal(gamma_t, x) -> Gaussian:
    """q(z_t | x) = N(α_t x, σ_t² I), α_t² = sigmoid(−γ_t), σ_t² = sigmoid(γ_t)."""
    g = _expand(gamma_t, x)
    return Gaussian(jnp.sqrt(jax.nn.sigmoid(-g)) * x, jax.nn.sigmoid(g))


def vdm_sample(gamma_t, x, eps):
    """z_t = α_t x + σ_t ε (a reparameterized sample of q(z_t | x))."""
    g = _expand(gamma_t, x)
    return jnp.sqrt(jax.nn.sigmoid(-g)) * x + jnp.sqrt(jax.nn.sigmoid(g)) * eps


def vdm_predict_x(gamma_t, z_t, eps_hat):
    """x̂ = (z_t − σ_t ε̂) / α_t."""
    g = _expand(gamma_t, z_t)
    return (z_t - jnp.sqrt(jax.nn.sigmoid(g)) * eps_hat) / jnp.sqrt(jax.nn.sigmoid(-g))


def vdm_posterior(gamma_s, gamma_t, x, z_t) -> Gaussian:
    """q(z_s | z_t, x) for s < t (γ_s < γ_t).

    With α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α²_{t|s} σ_s² = c σ_t², c = −expm1(γ_s − γ_t) =
    1 − SNR_t/SNR_s (VDM's stable form):
      mean = α_{t|s} σ_s²/σ_t² z_t + α_s σ²_{t|s}/σ_t² x = (α_s/α_t) exp(γ_s − γ_t) z_t + α_s c x,
      var  = σ²_{t|s} σ_s²/σ_t² = c σ_s².
    """
    gs, gt = _expand(gamma_s, x), _expand(gamma_t, x)
    c = -jnp.expm1(gs - gt)
    ratio = jnp.exp(0.5 * (jax.nn.softplus(gt) - jax.nn.softplus(gs)))  # α_s/α_t
    mean = ratio * jnp.exp(gs - gt) * z_t + jnp.sqrt(jax.nn.sigmoid(-gs)) * c * x
    return Gaussian(mean, c * jax.nn.sigmoid(gs))


# ----------------------------------------------------------------------------------------------
# The terms of the bound, per example (B,), in nats.


def _eps_hat(eps_fn: EpsFn, z_t, t):
    eps_hat = eps_fn(z_t, t)
    if jnp.shape(eps_hat) != jnp.shape(z_t):
        raise ValueError(f"eps_fn returned shape {jnp.shape(eps_hat)}; expected z_t's shape "
                         f"{jnp.shape(z_t)} exactly (no broadcasting).")
    return eps_hat


def _sample_times(key, batch: int, antithetic: bool, dtype):
    """t of shape (batch,) in [0, 1): VDM's low-discrepancy t_i = mod(u + i/B, 1) (one u per
    batch) when ``antithetic``, else iid uniform."""
    if antithetic:
        u = jax.random.uniform(key, (), dtype)
        return jnp.mod(u + jnp.arange(batch, dtype=dtype) / batch, 1.0)
    return jax.random.uniform(key, (batch,), dtype)


def _check_inputs(x, T=None):
    _check_data(x)
    if T is not None and (not is_int(T) or T < 1):
        raise ValueError(f"T must be a positive int (or None for continuous time), got {T!r}.")


def vdm_diffusion_term_continuous(eps_fn: EpsFn, gamma_fn: GammaFn, x, t, eps):
    """½ γ'(t) ‖ε − ε̂(z_t; t)‖² at given t (B,) and ε (x's shape): (B,). E_{t,ε} of it is L_∞.

    γ'(t) comes from ``jax.jvp`` of ``gamma_fn`` (elementwise in t), so any differentiable
    schedule works and gradients flow to its parameters through both γ(t) and γ'(t).
    """
    t = jnp.broadcast_to(_as_time(t).astype(x.dtype), (x.shape[0],))
    g_t, dg_t = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    z_t = vdm_sample(g_t, x, eps)
    eps_hat = _eps_hat(eps_fn, z_t, t)
    return 0.5 * dg_t * sum_over_events(jnp.square(eps - eps_hat))


def vdm_diffusion_loss_continuous(eps_fn: EpsFn, gamma_fn: GammaFn, x, key, *, antithetic: bool = True):
    """L_∞ = ½ E_{t~U(0,1), ε}[γ'(t) ‖ε − ε̂(z_t; t)‖²], one (t, ε) sample per example: (B,).

    ``antithetic``: VDM's low-discrepancy t_i = mod(u + i/B, 1) with one u per batch (each t_i is
    still uniform, so every per-example value is unbiased; the batch mean has lower variance);
    otherwise t iid uniform. ``eps_fn(z_t, t)`` gets t of shape (B,).
    """
    _check_inputs(x)
    k_t, k_eps = jax.random.split(key)
    t = _sample_times(k_t, x.shape[0], antithetic, x.dtype)
    eps = jax.random.normal(k_eps, x.shape, x.dtype)
    return vdm_diffusion_term_continuous(eps_fn, gamma_fn, x, t, eps)


def vdm_diffusion_term_discrete(eps_fn: EpsFn, gamma_fn: GammaFn, x, i, eps, *, T: int):
    """½ expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖² with t_i = i/T, s_i = (i−1)/T: (B,).

    One term of L_T = Σ_{i=1..T} (this) = T E_i[this]; i is an int in 1..T, scalar or (B,). It
    equals KL(q(z_{s_i} | z_{t_i}, x) ‖ q(z_{s_i} | z_{t_i}, x̂)) with x̂ = ``vdm_predict_x``.
    """
    i = jnp.broadcast_to(jnp.asarray(i), (x.shape[0],)).astype(x.dtype)
    t, s = i / T, (i - 1.0) / T
    g_t, g_s = gamma_fn(t), gamma_fn(s)
    z_t = vdm_sample(g_t, x, eps)
    eps_hat = _eps_hat(eps_fn, z_t, t)
    return 0.5 * jnp.expm1(g_t - g_s) * sum_over_events(jnp.square(eps - eps_hat))


def vdm_diffusion_terms_discrete(eps_fn: EpsFn, gamma_fn: GammaFn, x, eps, *, T: int,
                                 chunk_size: int | None = None):
    """All T terms of L_T on the same ε, shape (B, T) (column i−1: the term at i).

    The row sums are L_T(x, ε) with the expectation over i taken exactly. Evaluated with vmap
    over i in chunks of ``chunk_size`` (``map_over_timesteps``).
    """
    _check_inputs(x, T)
    term = lambda i: vdm_diffusion_term_discrete(eps_fn, gamma_fn, x, i, eps, T=T)
    return map_over_timesteps(term, jnp.arange(1, T + 1), chunk_size).T


def vdm_diffusion_loss_discrete(eps_fn: EpsFn, gamma_fn: GammaFn, x, key, *, T: int,
                                antithetic: bool = True):
    """L_T = (T/2) E_{i~U{1..T}, ε}[expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖²]: (B,).

    i = ceil(t T) for t drawn as in ``vdm_diffusion_loss_continuous`` (VDM's discretization);
    one (i, ε) sample per example. ``eps_fn`` gets t_i = i/T of shape (B,).
    """
    _check_inputs(x, T)
    k_t, k_eps = jax.random.split(key)
    t = _sample_times(k_t, x.shape[0], antithetic, x.dtype)
    i = jnp.clip(jnp.ceil(t * T), 1, T).astype(jnp.int32)
    eps = jax.random.normal(k_eps, x.shape, x.dtype)
    return T * vdm_diffusion_term_discrete(eps_fn, gamma_fn, x, i, eps, T=T)


def vdm_prior_loss(gamma_1, x):
    """KL(q(z_1 | x) ‖ N(0, I)) summed over events: (B,).

    Per dimension ½(α_1² x² + σ_1² − log σ_1² − 1) = ½(α_1² (x² − 1) + softplus(−γ_1)) (using
    σ² − 1 = −α², −log σ² = softplus(−γ)), accurate when σ_1² is close to 1.
    """
    g = _expand(gamma_1, x)
    kl = 0.5 * (jax.nn.sigmoid(-g) * (jnp.square(x) - 1.0) + jax.nn.softplus(-g))
    return sum_over_events(jnp.broadcast_to(kl, jnp.shape(x)))


def vdm_decoder_log_probs(gamma_0, z_0, *, num_levels: int):
    """log p(x = level k | z_0) for the L levels x_k = 2k/(L−1) − 1: shape (*z_0.shape, L).

    VDM's factorized decoder: logits −½ (z_0/α_0 − x_k)² α_0²/σ_0² (∝ −(z_0 − α_0 x_k)²/(2σ_0²)),
    normalized with log_softmax over k. Memory: L values per data dimension.
    """
    g = _expand(gamma_0, z_0)[..., None]
    levels = 2.0 * jnp.arange(num_levels, dtype=z_0.dtype) / (num_levels - 1) - 1.0
    z_scaled = (z_0 / jnp.sqrt(jax.nn.sigmoid(-_expand(gamma_0, z_0))))[..., None]
    return jax.nn.log_softmax(-0.5 * jnp.square(z_scaled - levels) * jnp.exp(-g), axis=-1)


def vdm_reconstruction_loss(gamma_0, x, eps, *, num_levels: int):
    """−log p(x | z_0) summed over events, z_0 = α_0 x + σ_0 ε (one ε sample given): (B,).

    x lies on the grid 2k/(L−1) − 1 (L = ``num_levels``); the decoder is
    ``vdm_decoder_log_probs``.
    """
    num_levels = check_num_levels(num_levels, what="vdm_reconstruction_loss")
    log_probs = vdm_decoder_log_probs(gamma_0, vdm_sample(gamma_0, x, eps), num_levels=num_levels)
    k = jnp.clip(jnp.round((x + 1.0) * (0.5 * (num_levels - 1))), 0, num_levels - 1).astype(jnp.int32)
    return -sum_over_events(jnp.take_along_axis(log_probs, k[..., None], axis=-1)[..., 0])


def vdm_elbo(eps_fn: EpsFn, gamma_fn: GammaFn, x, key, *, num_levels: int, T: int | None = None,
             antithetic: bool = True) -> dict[str, jax.Array]:
    """VDM's bound per example, one Monte-Carlo sample of each expectation.

    Args:
      eps_fn: (z_t, t) -> ε̂, z_t of x's shape, t float (B,) in [0, 1].
      gamma_fn: the schedule t -> γ(t) (elementwise; differentiable in t when T is None).
      x: data (B, *event) on the ``num_levels`` grid 2k/(L−1) − 1 in [−1, 1].
      key: a PRNG key (the decoder's ε and the diffusion loss's (t, ε) come from splits of it).
      num_levels: L (required, an int >= 2).
      T: None for continuous time (L_∞), else the number of steps (L_T).
      antithetic: VDM's low-discrepancy sampling of t over the batch.

    Returns a dict of (B,) arrays: the three losses (each >= 0) "reconstruction" (−log p(x|z_0)),
    "prior" (KL(q(z_1|x) ‖ N(0, I))), "diffusion" (L_∞ or L_T); "total_nats" = −(reconstruction
    + prior + diffusion), an ELBO (a lower bound on log p(x), so <= 0, the sign of
    ``diffusion_elbo``'s "total"); and "bpd" = −total_nats / (D ln 2), D = dims per example.
    """
    _check_inputs(x, T)
    num_levels = check_num_levels(num_levels, what="vdm_elbo")
    check_on_level_grid("x", x, num_levels)
    k_rec, k_diff = jax.random.split(key)
    g_0 = gamma_fn(jnp.zeros((), x.dtype))
    g_1 = gamma_fn(jnp.ones((), x.dtype))
    recon = vdm_reconstruction_loss(g_0, x, jax.random.normal(k_rec, x.shape, x.dtype),
                                    num_levels=num_levels)
    prior = vdm_prior_loss(g_1, x)
    if T is None:
        diffusion = vdm_diffusion_loss_continuous(eps_fn, gamma_fn, x, k_diff, antithetic=antithetic)
    else:
        diffusion = vdm_diffusion_loss_discrete(eps_fn, gamma_fn, x, k_diff, T=T, antithetic=antithetic)
    total = -(recon + prior + diffusion)
    return {"reconstruction": recon, "prior": prior, "diffusion": diffusion, "total_nats": total,
            "bpd": bits_per_dim(total, math.prod(x.shape[1:]))}


# ----------------------------------------------------------------------------------------------
# Training the schedule to minimise the variance of the loss estimate.


def variance_minimizing_grads(loss_fn, net_params, gamma_params):
    """VDM's gradients: the network descends the loss, the schedule descends its second moment.

    ``loss_fn(net_params, gamma_params) -> (B,)`` per-example loss estimates L_i (e.g. the
    diffusion loss with a fixed key). Returns ``(losses, net_grads, gamma_grads)`` with
    net_grads = ∇_θ mean_i L_i and gamma_grads = ∇_η mean_i L_i² = mean_i 2 L_i ∇_η L_i.

    Since E[L_∞] does not depend on the schedule between its endpoints, ∇_η E[L²] = ∇_η Var[L]
    there: descending it minimises the variance of the estimator. This is what VDM's custom
    gradient on the γ output does (it multiplies the incoming gradient ∂L_i/∂γ_i by 2 L_i, γ_i
    feeding only example i); here it is one forward pass and two pullbacks of ``jax.vjp`` with
    cotangents 1/B and 2 L/B. For the endpoints (γ_min, γ_max), which do change E[L], VDM
    descends the bound itself; ∇ mean L² = ∇Var + 2 E[L] ∇E[L] also lowers it.
    """
    losses, pullback = jax.vjp(loss_fn, net_params, gamma_params)
    batch = losses.shape[0]
    net_grads, _ = pullback(jnp.full_like(losses, 1.0 / batch))
    _, gamma_grads = pullback(2.0 * jax.lax.stop_gradient(losses) / batch)
    return losses, net_grads, gamma_grads

