"""Log-likelihood through the probability-flow ODE of a discrete-time diffusion model.

Song et al. (2021, score_sde ``likelihood.py``): the deterministic flow that shares every
marginal of the forward process turns the diffusion model into a continuous normalizing flow,
whose log-density is exact up to the ODE solver's error. It is reported beside the ELBO
(``elbo.diffusion_elbo``), which bounds the *discrete-time* model's likelihood instead.

**Continuous time from the discrete schedule** (DPM-Solver's ``NoiseScheduleVP("discrete")``,
with our t = 0..T in place of its (n+1)/N): log ᾱ(t) is piecewise linear in t ∈ [0, T] between
the integer points of ``sched.alpha_bars`` (ᾱ(0) = ᾱ_0 = 1), so at an integer t it is the table
value (to float32 rounding, ≤ 2 ulp). Then σ²(t) = 1 − ᾱ(t) = −expm1(log ᾱ(t)) and
β(t) = −d log ᾱ/dt is piecewise constant: β(t) = −log α_k = −log(1 − β_k) for t ∈ [k−1, k).
The log ᾱ table is taken from ``one_minus_alpha_bars`` where ᾱ > ½ (log1p, no cancellation near
t = 0) and from ``alpha_bars`` elsewhere. log SNR(t) = log ᾱ(t) − log(1 − ᾱ(t)) is strictly
decreasing, and ``continuous_time`` inverts it exactly on each linear piece.

**The ODE.** In t (VP SDE dx = −½β x dt + √β dW, score ∇log p_t(x) = −ε̂/σ) the probability
flow is dx/dt = −½ β(t) (x − ε̂(x, t)/σ(t)). With the piecewise-linear extension β(t) jumps at
every integer t (by 20% near t = 1 for the linear schedule), which an adaptive Runge–Kutta
solver's error estimate does not see: on the 1-D Gaussian test below, integrating in t gave
1e−3 relative error at rtol = 1e−5 with ~600 NFE. We therefore integrate in ρ = −log SNR
(DPM-Solver integrates in λ = ½ log SNR for the same reason), where √ᾱ = √sigmoid(−ρ),
σ = √sigmoid(ρ) are smooth and the flow is

    dx/dρ = ½ σ(ρ) (ε̂(x, t(ρ)) − σ(ρ) x),        d/dρ log p_ρ(x(ρ)) = −∇·(dx/dρ),

with t(ρ) = ``continuous_time(sched, −ρ)`` entering only as the network's time input. ρ runs
from ρ(t_min) (data) up to ρ(T) (prior), and log p_{t_min}(x) = log N(x(ρ_T); 0, I) +
∫ ∇·(dx/dρ) dρ. Same 1-D test: 1e−4 relative error with ~100 NFE. The path and the density
are those of the t-ODE (a change of the time variable only).

**The model at non-integer t.** ``eps_fn(x, t)`` is called with t a FLOAT array of shape (B,)
— the one place in the package where a model function gets non-integer t (everywhere else t is
an int timestep 1..T). An adaptive ODE solver evaluates the drift at arbitrary real t; the
U-Net's sinusoidal embedding is a smooth function of t (``models.unet.timestep_embedding``
casts t to float32), so the network interpolates between its trained integer steps, as in
DPM-Solver's use of discrete-time models. ``prediction`` "x0" and "v" outputs are converted to
ε̂ with the continuous ᾱ (``predict_x0_eps`` indexes the integer tables, so the same formulas
are written here with ᾱ(t)); a learned-variance output is split off with ``split_output``.

**Where the ODE starts: t_min = 1.** The discrete model's smallest trained time is t = 1
(σ_1 = √β_1 = 0.01 for the linear schedule). score_sde starts its ODE at ε = 1e−5, the smallest
time of its training range, and treats the dequantised data as x(ε) without correction; we do
the same at t_min = 1, treating the (dequantised) data as x_1. Going below t = 1 would call the
network at times it never saw, with a drift ∝ ε̂/σ(t) → ∞ as σ → 0. ``t_min`` may be set in
(0, T) (log ᾱ is interpolated down to ᾱ_0 = 1 at t = 0), at that risk.

**Divergence.** ``"exact"``: the trace of the Jacobian, one linearisation and D Jacobian-vector
products (vmapped over the basis vectors): D times the cost of a forward pass. ``"hutchinson"``:
the Hutchinson–Skilling estimate εᵀ(∂f/∂x)ε with one jvp, a probe ε (Rademacher by default, or
Gaussian) drawn per example and held fixed over the whole solve (so the ODE stays smooth), an
unbiased estimate of log p. ``"auto"``: exact when D ≤ ``AUTO_EXACT_MAX_DIMS`` = 64 (the 8×8
digits), Hutchinson otherwise.

**Dequantisation and bits/dim** (``ode_bits_per_dim``, score_sde's uniform dequantisation):
data on L levels 2k/(L−1) − 1 have bins of width w = 2/(L−1); x̃ = x_0 + w·u with
u ~ U(−½, ½)^D gives the discrete bound log P(x_0) ≥ E_u[log p(x̃)] + D log w (Jensen on
P(x_0) = ∫_bin p), so bits/dim = −(log p(x̃) + D log w) / (D ln 2) = −log p(x̃)/(D ln 2) − log₂ w
(score_sde's "+7" or "+8" offset; here −log₂(2/255) = 6.99 for 8-bit data in [−1, 1], 3 for the
17-level digits).

**Solver: diffrax**, not a hand-written RK45. diffrax 0.7.2 installs into this environment's
jax 0.10.2 without changing jax, jaxlib, flax or optax (it adds equinox 0.13.8, jaxtyping
0.3.11, lineax 0.1.1, optimistix 0.1.0, wadler-lindig 0.1.8), and its ``diffeqsolve`` jits,
vmaps and differentiates. Its Tsit5/Dopri5 with a PID step-size controller is a maintained,
tested adaptive solver with a proper initial step selection; a hand-written one would be more
code to trust and test. Each example is solved with its own adaptive steps (``vmap`` over the
batch), so its result and NFE do not depend on which other examples share its batch. The error
norm is diffrax's RMS over (x, ∫∇·f), as scipy's RK45 in score_sde; ``rtol = atol = 1e−5`` by
default, as there.

NFE (drift evaluations, each one network call on one example and, with ``"exact"``, its D
jvps): Tsit5 and Dopri5 evaluate the drift 6 times per attempted step (7 stages, first same as
last) plus once at the start, nfe = 6 · num_steps + 1 from diffrax's ``num_steps`` (accepted and
rejected steps); checked for Tsit5 by counting the calls of a model with a callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_num_levels,
    check_on_level_grid,
    is_int,
)
from diffusion_jax.elbo import is_key_batch
from diffusion_jax.reverse import PREDICTIONS, split_output
from diffusion_jax.schedules import Schedule

__all__ = [
    "AUTO_EXACT_MAX_DIMS",
    "DIVERGENCES",
    "PROBES",
    "SOLVERS",
    "continuous_log_alpha_bar",
    "continuous_log_snr",
    "continuous_time",
    "ode_bits_per_dim",
    "ode_log_likelihood",
    "probability_flow_drift",
]

DIVERGENCES = ("exact", "hutchinson", "auto")
PROBES = ("rademacher", "gaussian")
SOLVERS = ("tsit5", "dopri5")
AUTO_EXACT_MAX_DIMS = 64
_EVALS_PER_STEP, _EVALS_AT_START = 6, 1

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B, *event), t float (B,)) -> output


# ----------------------------------------------------------------------------------------------
# The continuous-time schedule.


def _log_alpha_bar_table(sched: Schedule) -> jax.Array:
    """(T+1,) log ᾱ_t without cancellation: log1p(−(1 − ᾱ_t)) where ᾱ_t > ½, log ᾱ_t elsewhere."""
    ab, one_minus = sched.alpha_bars, sched.one_minus_alpha_bars
    return jnp.where(ab > 0.5, jnp.log1p(-one_minus), jnp.log(jnp.where(ab > 0.5, 1.0, ab)))


def continuous_log_alpha_bar(sched: Schedule, t) -> jax.Array:
    """log ᾱ(t) for real t ∈ [0, T] (any shape): piecewise linear between the integer tables.

    (1 − frac) · log ᾱ_k + frac · log ᾱ_{k+1} with t = k + frac: at an integer t it is the
    table's log ᾱ_t. Its slope on [k−1, k) is log α_k, i.e. β(t) = −log(1 − β_k).
    """
    table = _log_alpha_bar_table(sched)
    t = jnp.asarray(t, jnp.result_type(t, jnp.float32))
    k = jnp.clip(jnp.floor(t), 0, sched.T - 1).astype(jnp.int32)
    frac = t - k
    return (1.0 - frac) * table[k] + frac * table[k + 1]


def continuous_log_snr(sched: Schedule, t) -> jax.Array:
    """log SNR(t) = log ᾱ(t) − log(1 − ᾱ(t)) for real t ∈ (0, T] (strictly decreasing)."""
    log_ab = continuous_log_alpha_bar(sched, t)
    return log_ab - jnp.log(-jnp.expm1(log_ab))


def continuous_time(sched: Schedule, log_snr) -> jax.Array:
    """The inverse of ``continuous_log_snr``: the real t ∈ [0, T] with log SNR(t) = log_snr.

    log ᾱ = log sigmoid(log SNR), then the piecewise-linear log ᾱ(t) is inverted on its segment.
    """
    table = _log_alpha_bar_table(sched)
    log_ab = jax.nn.log_sigmoid(jnp.asarray(log_snr))
    k = jnp.clip(jnp.searchsorted(-table, -log_ab, side="right") - 1, 0, sched.T - 1)
    frac = (table[k] - log_ab) / (table[k] - table[k + 1])
    return k + jnp.clip(frac, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# The probability-flow drift in ρ = −log SNR and its divergence, for ONE example (flat (D,)).


def _eps_hat(output, x, log_snr, prediction: str):
    """A network prediction at log SNR -> ε̂, with √ᾱ = √sigmoid(log SNR), σ = √sigmoid(−log SNR)
    (``predict_x0_eps``'s formulas, written with the continuous ᾱ)."""
    if prediction == "eps":
        return output
    sqrt_ab, sigma = jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))
    if prediction == "x0":
        return (x - sqrt_ab * output) / sigma
    return sigma * x + sqrt_ab * output  # v


def probability_flow_drift(eps_fn: EpsFn, sched: Schedule, event_shape, *, prediction: str = "eps",
                           learned_variance: bool = False):
    """(x_flat (D,), ρ scalar) -> dx/dρ = ½ σ (ε̂(x, t(ρ)) − σ x), shape (D,); ρ = −log SNR.

    Calls ``eps_fn`` on one example, shape (1, *event_shape), with the float time t(ρ) of
    shape (1,) (``continuous_time``).
    """
    check_choice("prediction", prediction, PREDICTIONS)
    event_shape = tuple(event_shape)

    def drift(x_flat, rho):
        log_snr = -rho
        x = x_flat.reshape((1, *event_shape))
        t = continuous_time(sched, log_snr).astype(x_flat.dtype)
        out = eps_fn(x, jnp.full((1,), t, x_flat.dtype))
        pred, _ = split_output(out, learned_variance, event_shape[-1] if event_shape else None)
        if jnp.shape(pred) != x.shape:
            raise ValueError(f"eps_fn returned a prediction of shape {jnp.shape(pred)}; expected "
                             f"x's shape {x.shape} (one example of the batch).")
        eps = _eps_hat(pred.astype(x_flat.dtype), x, log_snr, prediction).reshape(-1)
        sigma = jnp.sqrt(jax.nn.sigmoid(-log_snr))
        return 0.5 * sigma * (eps - sigma * x_flat)

    return drift


def _drift_and_divergence(drift, x, rho, probe, exact: bool):
    """(f(x, ρ), ∇·f): exact trace of the Jacobian (D jvps), or Hutchinson's probeᵀ J probe."""
    fn = lambda z: drift(z, rho)
    if exact:
        f, jvp = jax.linearize(fn, x)
        columns = jax.vmap(jvp)(jnp.eye(x.shape[0], dtype=x.dtype))  # row i: J e_i
        return f, jnp.trace(columns)
    f, j_probe = jax.jvp(fn, (x,), (probe,))
    return f, jnp.vdot(probe, j_probe)


# ----------------------------------------------------------------------------------------------
# Public entry points.


def ode_log_likelihood(eps_fn: EpsFn, sched: Schedule, x, key, *, divergence: str = "auto",
                       probe: str = "rademacher", prediction: str = "eps",
                       learned_variance: bool = False, t_min: float = 1.0, rtol: float = 1e-5,
                       atol: float = 1e-5, solver: str = "tsit5", max_steps: int = 4096):
    """log p_{t_min}(x) in nats of the probability-flow ODE with prior N(0, I) at t = T.

    Args:
      eps_fn: (x (B, *event), t float (B,)) -> the network output at real t (ε̂, or x̂_0 / v̂
        per ``prediction``; with ``learned_variance`` a pair or [prediction | v] channels). It
        is called on one example at a time (B = 1, vmapped over the batch).
      sched: the discrete schedule, extended to real t (module docstring).
      x: continuous data, shape (B, *event), floating, finite (dequantise discrete data first,
        or use ``ode_bits_per_dim``).
      key: a PRNG key, or one per example (shape (B,)): the Hutchinson probes (unused by
        ``divergence="exact"``, but always explicit).
      divergence: "exact", "hutchinson" or "auto" (exact when D ≤ 64).
      probe: Hutchinson's probe distribution, "rademacher" or "gaussian".
      prediction: what ``eps_fn`` returns: "eps", "x0" or "v".
      t_min: where the ODE starts, a float in (0, T); 1.0 = the smallest trained time.
      rtol, atol: the PID controller's tolerances (score_sde: 1e−5).
      solver: "tsit5" or "dopri5" (diffrax).
      max_steps: the solver's step budget per example (an error when exceeded).

    Returns:
      (log_p, nfe): log p in nats, shape (B,), and the drift evaluations per example, int (B,).
    """
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a diffusion_jax Schedule, got {type(sched).__name__}.")
    _check_x("x", x)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    check_choice("prediction", prediction, PREDICTIONS)
    check_choice("solver", solver, SOLVERS)
    t_min = _check_t_min(t_min, sched.T)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if not is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}.")
    batch, event_shape = x.shape[0], tuple(x.shape[1:])
    dims = math.prod(event_shape)
    exact = divergence == "exact" or (divergence == "auto" and dims <= AUTO_EXACT_MAX_DIMS)
    keys = key if is_key_batch(key, batch) else jax.random.split(key, batch)
    x_flat = jnp.reshape(x, (batch, dims))
    probes = jax.vmap(lambda k: _draw_probe(k, dims, x_flat.dtype, probe))(keys)
    drift = probability_flow_drift(eps_fn, sched, event_shape, prediction=prediction,
                                   learned_variance=learned_variance)

    def vector_field(rho, y, probe_vector):
        return _drift_and_divergence(drift, y[0], rho, probe_vector, exact)

    rho_data = -continuous_log_snr(sched, t_min)  # the data end, t = t_min
    rho_prior = -continuous_log_snr(sched, float(sched.T))  # the prior end, t = T
    import diffrax  # here, not at the top: importing it takes seconds, and few runs need it

    step_solver = diffrax.Tsit5() if solver == "tsit5" else diffrax.Dopri5()
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def solve_one(x0, probe_vector):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field), step_solver, t0=rho_data, t1=rho_prior, dt0=None,
            y0=(x0, jnp.zeros((), x0.dtype)), args=probe_vector, stepsize_controller=controller,
            max_steps=int(max_steps), saveat=diffrax.SaveAt(t1=True))
        x_T, integral = sol.ys[0][-1], sol.ys[1][-1]
        log_prior = -0.5 * (dims * math.log(2.0 * math.pi) + jnp.sum(jnp.square(x_T)))
        nfe = _EVALS_PER_STEP * sol.stats["num_steps"] + _EVALS_AT_START
        return log_prior + integral, nfe

    return jax.vmap(solve_one)(x_flat, probes)


def ode_bits_per_dim(eps_fn: EpsFn, sched: Schedule, x0, key, *, num_levels: int,
                     num_dequant: int = 1, **ode_kwargs):
    """Bits/dim of L-level data x0 through the ODE, with uniform dequantisation (score_sde).

    x̃ = x0 + w·u, u ~ U(−½, ½)^D, w = 2/(L−1): bpd = −(log p(x̃) + D log w)/(D ln 2), the
    discrete log-likelihood lower bound log P(x0) ≥ E_u[log p(x̃)] + D log w in bits/dim,
    averaged over ``num_dequant`` draws of u per example.

    Args:
      x0: data on the grid 2k/(L−1) − 1 (k = 0..L−1), shape (B, *event), floating.
      key: a PRNG key, or one per example (shape (B,)): dequantisation noise and probes.
      num_levels: L, an int ≥ 2 (required: 17 for the embedded digits, 256 for 8-bit images).
      num_dequant: draws of the dequantisation noise per example (≥ 1).
      **ode_kwargs: passed to ``ode_log_likelihood`` (divergence, rtol, atol, t_min, ...).

    Returns:
      (bpd, nfe): bits/dim per example, shape (B,), and the drift evaluations per example
      summed over the ``num_dequant`` solves, int (B,).
    """
    _check_x("x0", x0)
    num_levels = check_num_levels(num_levels, what="ode_bits_per_dim")
    check_on_level_grid("x0", x0, num_levels)
    if not is_int(num_dequant) or num_dequant < 1:
        raise ValueError(f"num_dequant must be a positive int, got {num_dequant!r}.")
    batch, dims = x0.shape[0], math.prod(x0.shape[1:])
    width = 2.0 / (num_levels - 1)
    keys = key if is_key_batch(key, batch) else jax.random.split(key, batch)

    def one_draw(i):
        draw_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        split = jax.vmap(jax.random.split)(draw_keys)  # (B, 2): dequantisation, probes
        u = jax.vmap(lambda k: jax.random.uniform(k, x0.shape[1:], x0.dtype, -0.5, 0.5))(
            split[:, 0])
        return ode_log_likelihood(eps_fn, sched, x0 + width * u, split[:, 1], **ode_kwargs)

    log_p, nfe = jax.lax.map(one_draw, jnp.arange(num_dequant))
    bound = jnp.mean(log_p, axis=0) + dims * math.log(width)
    return -bound / (dims * math.log(2.0)), jnp.sum(nfe, axis=0)


def _draw_probe(key, dims: int, dtype, probe: str):
    if probe == "rademacher":
        return jax.random.rademacher(key, (dims,), dtype)
    return jax.random.normal(key, (dims,), dtype)


def _check_x(name: str, x) -> None:
    check_floating(name, x)
    if jnp.ndim(x) < 2:
        raise ValueError(f"{name} must have shape (batch, *event_shape) with at least one event "
                         f"dim, got shape {jnp.shape(x)}; add a trailing axis for scalar data.")
    check_finite(name, x)


def _check_t_min(t_min, T: int) -> float:
    if isinstance(t_min, bool) or not isinstance(t_min, int | float):
        raise TypeError(f"t_min must be a Python number in (0, T), got {type(t_min).__name__}.")
    if not 0.0 < t_min < T:
        raise ValueError(f"t_min must lie in the open interval (0, T = {T}), got {t_min!r}; "
                         f"1.0 (the smallest trained time) is the default.")
    return float(t_min)
