"""Samplers for a trained diffusion model, each compiled with ``lax.scan``: ancestral DDPM,
DDIM, two deterministic ODE solvers, DPM-Solver++(2M) and Heun's method on the Karras et
al. (2022) step schedule, and the stochastic SDE-DPM-Solver++(2M).

Pure functions of (model_fn, schedule, key, shape): no Flax, no optax. Conventions (SPEC §1):
timesteps t = 1..T, schedule tables indexed by t (ᾱ_0 = 1), variances not stds, x_T ~ N(0, I).

The network is seen through ``model_fn(x_t, t) -> output`` where x_t has shape (B, *event) and
t is an int32 array of shape (B,) (all entries equal to the current step). ``output`` is the
network's raw output, turned into p_θ(x_{t−1} | x_t) by ``diffusion_jax.reverse`` (the one
adapter: ``prediction`` in {"eps", "x0", "v"}; with ``variance="learned"`` the output also
holds the variance coefficient, as a pair or as ``[prediction | v]`` on the last axis).
Model parameters are closed over by ``model_fn``. To sample repeatedly with new parameters
without recompiling, jit the outer call with the parameters as an argument, e.g.
``jax.jit(lambda params, key: ddpm_sample(lambda x, t: apply(params, x, t), sched, key, shape))``.

PRNG keys (explicit, never a default): ``key`` is split into (prior_key, steps_key);
x_T = N(0, I) drawn with prior_key; the noise of the step leaving x_t is drawn with
``fold_in(steps_key, t)``. A step therefore depends only on (x_t, t, steps_key), so the
``lax.scan`` sampler, the Python-loop baseline and the chunked sampler give the same samples
(``sde_dpm_solver_pp_sample`` draws its step noise the same way, with t the step's start).
The deterministic ODE solvers (``dpm_solver_pp_sample``, ``heun_sample``) use ``key`` only for
x_T (drawn with the same prior_key, so they start from the same x_T as the other samplers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax._checks import (
    check_choice,
    is_concrete,
    is_int,
)
from diffusion_jax.reverse import PREDICTIONS, VARIANCES, p_reverse, predict_x0_eps, split_output
from diffusion_jax.schedules import Schedule

__all__ = [
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_denoise",
    "ddpm_sample",
    "ddpm_sample_chunks",
    "ddpm_sample_loop",
    "dpm_solver_pp_sample",
    "dpm_solver_timesteps",
    "heun_num_steps",
    "heun_sample",
    "karras_timesteps",
    "make_ddim_step",
    "make_ddpm_step",
    "sde_dpm_solver_pp_sample",
]

DPM_SOLVER_SPACINGS = ("logSNR", "time_uniform")

ModelFn = Callable[[jax.Array, jax.Array], object]


# --------------------------------------------------------------------------- DDPM (ancestral)


def make_ddpm_step(
    model_fn: ModelFn,
    sched: Schedule,
    *,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
):
    """Builds the jitted ancestral step ``step(x_t, t, key) -> x_{t−1}``.

    x_t: (B, *event); t: int scalar in 1..T (Python int or int32 array; one compilation for
    all t); key: the run's steps key, the same at every step: the noise is drawn from
    ``fold_in(key, t)``. x_{t−1} = μ + σ_t z, z ~ N(0, I), with (μ, σ²_t) from ``p_reverse``;
    at t = 1 the mean is returned without noise (standard DDPM practice: x_0 = μ_θ(x_1, 1)).
    The scan samplers use exactly this function inside ``lax.scan``.
    """
    _check_model_and_schedule(model_fn, sched)
    check_choice("variance", variance, VARIANCES)
    check_choice("prediction", prediction, PREDICTIONS)

    def step(x_t, t, key):
        t = jnp.asarray(t, jnp.int32)
        t_batch = jnp.full((x_t.shape[0],), t, jnp.int32)
        mean, var = p_reverse(
            model_fn(x_t, t_batch),
            sched,
            x_t,
            t_batch,
            prediction=prediction,
            variance=variance,
            clip_x0=clip_x0,
        )
        noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape, x_t.dtype)
        std = jnp.where(t > 1, jnp.sqrt(var), 0.0)  # no noise on the last step (t = 1)
        return (mean + std * noise).astype(x_t.dtype)

    return jax.jit(step)


def _scan_steps(step, x, key, t_start, num_steps: int, trajectory: bool):
    """Applies ``step`` for t = t_start, t_start−1, …, t_start−num_steps+1 with ``lax.scan``.

    Returns (x_{t_start − num_steps}, stacked outputs (num_steps, *x.shape) or None).
    """

    def body(x_t, t):
        x_prev = step(x_t, t, key)
        return x_prev, (x_prev if trajectory else None)

    ts = jnp.asarray(t_start, jnp.int32) - jnp.arange(num_steps, dtype=jnp.int32)
    return jax.lax.scan(body, x, ts)


def ddpm_sample(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
):
    """Ancestral DDPM sampling: x_T ~ N(0, I), then x_{t−1} ~ p_θ(x_{t−1} | x_t) for t = T..1.

    One ``lax.scan`` over the step of ``make_ddpm_step`` (see there and ``p_reverse`` for
    ``variance``, ``prediction``, ``clip_x0``; the last step returns the mean without noise).
    shape: (B, *event), B ≥ 1. Keys: module docstring.
    Returns x_0 of ``shape``; with ``return_trajectory`` also the trajectory of shape
    (T+1, *shape) whose row t is x_t (row T is the prior draw x_T, row 0 the sample).
    """
    shape = _check_shape(shape)
    step = make_ddpm_step(
        model_fn, sched, variance=variance, prediction=prediction, clip_x0=clip_x0
    )

    def run(key):
        prior_key, steps_key = jax.random.split(key)
        x_T = jax.random.normal(prior_key, shape, dtype)
        x0, ys = _scan_steps(step, x_T, steps_key, sched.T, sched.T, return_trajectory)
        if not return_trajectory:
            return x0
        # ys holds x_{T−1}, …, x_0: reverse it so that row t is x_t.
        return x0, jnp.concatenate([ys[::-1], x_T[None]], axis=0)

    return jax.jit(run)(key)


def ddpm_denoise(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    x_t,
    t_start: int,
    *,
    t_end: int = 0,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
):
    """Runs the ancestral steps t = t_start..t_end+1, taking x_{t_start} to x_{t_end}.

    x_t: (B, *event); 0 ≤ t_end < t_start ≤ T (Python ints). ``key`` is a steps key: the step
    leaving x_t uses ``fold_in(key, t)``, so ``ddpm_sample(key)`` equals this function applied
    to its prior draw with steps_key = ``jax.random.split(key)[1]``, in one call or in pieces.
    """
    _check_step_range(t_start, t_end, sched.T)
    _check_x_t(x_t)
    step = make_ddpm_step(
        model_fn, sched, variance=variance, prediction=prediction, clip_x0=clip_x0
    )
    run = jax.jit(lambda x, key: _scan_steps(step, x, key, t_start, t_start - t_end, False)[0])
    return run(x_t, key)


def ddpm_sample_loop(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    dtype=jnp.float32,
):
    """Baseline: the same jitted step as ``ddpm_sample``, driven by a Python loop over t.

    Exists only to benchmark ``lax.scan`` against a host loop (one dispatch per step); it
    returns the same x_0 as ``ddpm_sample`` for the same key. Prefer ``ddpm_sample``.
    """
    shape = _check_shape(shape)
    step = make_ddpm_step(
        model_fn, sched, variance=variance, prediction=prediction, clip_x0=clip_x0
    )
    prior_key, steps_key = jax.random.split(key)
    x = jax.random.normal(prior_key, shape, dtype)
    for t in range(sched.T, 0, -1):  # deliberate host loop: this is the baseline
        x = step(x, t, steps_key)
    return x


def ddpm_sample_chunks(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    chunk: int = 100,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    dtype=jnp.float32,
) -> Iterator[tuple[int, jax.Array]]:
    """Ancestral sampling in compiled chunks of ``chunk`` steps, for progress bars.

    Yields (t, x_t) after each chunk: t = T − chunk, T − 2·chunk, …, finally (0, x_0); there
    are ceil(T / chunk) yields. Each chunk is one ``lax.scan`` over the step of
    ``make_ddpm_step`` (at most two compilations: the full and the last, shorter chunk); the
    final x_0 equals ``ddpm_sample`` with the same key. Example:
    ``for t, x in tqdm(ddpm_sample_chunks(...), total=math.ceil(sched.T / chunk)): ...``
    """
    shape = _check_shape(shape)
    if not is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (steps per compiled chunk), got {chunk!r}.")
    step = make_ddpm_step(
        model_fn, sched, variance=variance, prediction=prediction, clip_x0=clip_x0
    )
    run_chunk = jax.jit(
        lambda x, key, t_start, n: _scan_steps(step, x, key, t_start, n, False)[0],
        static_argnums=3,
    )
    return _chunk_generator(run_chunk, sched.T, key, shape, dtype, int(chunk))


def _chunk_generator(run_chunk, T, key, shape, dtype, chunk):
    prior_key, steps_key = jax.random.split(key)
    x = jax.random.normal(prior_key, shape, dtype)
    t = T
    while t > 0:  # a loop over chunks, not over timesteps: each chunk is one compiled scan
        n = min(chunk, t)
        x = run_chunk(x, steps_key, jnp.int32(t), n)
        t -= n
        yield t, x


# --------------------------------------------------------------------------- DDIM


def ddim_timesteps(T: int, num_steps: int) -> np.ndarray:
    """The DDIM timestep subsequence τ_1 < … < τ_n (int32, shape (num_steps,)).

    τ_i = floor(1 + (i−1)(T−1)/(n−1) + ½) for i = 1..n ("round(linspace(1, T, n))", rounding
    halves up), so τ_1 = 1, τ_n = T and the spacing (T−1)/(n−1) ≥ 1 makes τ strictly
    increasing; n = 1 gives (T,) (a single jump from x_T to x̂_0). n = T gives 1..T.
    """
    if not is_int(num_steps):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}.")
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must lie in 1..T = 1..{T}, got {num_steps}.")
    if num_steps == 1:
        return np.array([T], np.int32)
    return np.floor(np.linspace(1.0, T, num_steps) + 0.5).astype(np.int32)


def make_ddim_step(
    model_fn: ModelFn,
    sched: Schedule,
    *,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = False,
    variance_output: bool = False,
):
    """Builds the jitted DDIM step ``step(x_t, t, s, key) -> x_s`` for 0 ≤ s < t ≤ T.

    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,  σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s),
    with (x̂_0, ε̂) from ``predict_x0_eps`` and z drawn from ``fold_in(key, t)``. At s = 0
    (ᾱ_0 = 1) this gives x_0 = x̂_0. η = 0 is the deterministic DDIM; η = 1 with s = t − 1 is
    the ancestral step with σ² = β̃_t. ``variance_output``: model_fn returns (prediction, v)
    (a learned-variance model) and v is ignored.
    """
    _check_model_and_schedule(model_fn, sched)
    check_choice("prediction", prediction, PREDICTIONS)
    eta = _check_eta(eta)

    def step(x_t, t, s, key):
        t = jnp.asarray(t, jnp.int32)
        s = jnp.asarray(s, jnp.int32)
        t_batch = jnp.full((x_t.shape[0],), t, jnp.int32)
        output, _ = split_output(model_fn(x_t, t_batch), variance_output)
        x0, eps = predict_x0_eps(
            output, sched, x_t, t_batch, prediction=prediction, clip_x0=clip_x0
        )
        ab_t, ab_s = sched.alpha_bars[t], sched.alpha_bars[s]
        var = eta**2 * (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)
        # max(·, 0): 1 − ᾱ_s − σ² is exactly 0 at s = 0 but may round below it.
        x_s = jnp.sqrt(ab_s) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_s - var, 0.0)) * eps
        if eta > 0.0:  # static: η = 0 draws no noise at all
            noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape, x_t.dtype)
            x_s = x_s + jnp.sqrt(var) * noise
        return x_s.astype(x_t.dtype)

    return jax.jit(step)


def ddim_sample(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    num_steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = False,
    variance_output: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
):
    """DDIM sampling (Song et al., 2021) over the subsequence ``ddim_timesteps(T, num_steps)``.

    x_T ~ N(0, I) (prior_key), then the ``make_ddim_step`` update from τ_n = T down through
    τ_{n−1}, …, τ_1 and finally to s = 0 (x_0 = x̂_0 at the smallest τ_1 = 1), all in one
    ``lax.scan``; num_steps network evaluations. eta ≥ 0 (0: deterministic ODE sampler).
    shape: (B, *event), B ≥ 1. Keys as in the module docstring (noise of the step leaving x_t
    from fold_in(steps_key, t)), so η = 1 with num_steps = T reproduces ``ddpm_sample`` with
    variance="beta_tilde" for the same key.
    Returns x_0; with ``return_trajectory`` also (num_steps+1, *shape) with row 0 = x_0 and
    row i = x_{τ_i} (row num_steps is the prior draw x_T).
    """
    shape = _check_shape(shape)
    taus = ddim_timesteps(sched.T, num_steps)
    step = make_ddim_step(
        model_fn,
        sched,
        eta=eta,
        prediction=prediction,
        clip_x0=clip_x0,
        variance_output=variance_output,
    )
    ts = taus[::-1]
    ss = np.concatenate([ts[1:], np.zeros((1,), np.int32)])

    def run(key):
        prior_key, steps_key = jax.random.split(key)
        x_T = jax.random.normal(prior_key, shape, dtype)

        def body(x_t, ts_pair):
            x_s = step(x_t, ts_pair[0], ts_pair[1], steps_key)
            return x_s, (x_s if return_trajectory else None)

        x0, ys = jax.lax.scan(body, x_T, (jnp.asarray(ts), jnp.asarray(ss)))
        if not return_trajectory:
            return x0
        return x0, jnp.concatenate([ys[::-1], x_T[None]], axis=0)

    return jax.jit(run)(key)


# --------------------------------------------------------------------------- ODE solvers
#
# Both solvers integrate the probability-flow ODE of the discrete-time model, whose network can
# only be evaluated at integer t in 1..T: their noise levels are chosen on that grid (rounded,
# then made distinct so that the number of network evaluations is exactly the NFE asked for),
# and both end at t = 0 (ᾱ_0 = 1) with x_0 = x̂_0 of the last evaluation, at t = 1. The step
# coefficients depend only on the (concrete) schedule and the timesteps, so they are computed
# once in float64 numpy and cast; one ``lax.scan`` runs the network calls.


def _check_nfe(nfe, max_nfe: int, what: str) -> int:
    if not is_int(nfe):
        raise TypeError(f"nfe (the number of network evaluations) must be an int, got {nfe!r}.")
    if nfe < 1:
        raise ValueError(f"nfe (the number of network evaluations) must be at least 1, got {nfe}.")
    if nfe > max_nfe:
        raise ValueError(f"nfe={nfe} exceeds what the grid allows: {what}.")
    return int(nfe)


def _concrete_tables(sched: Schedule):
    """(ᾱ_t, 1 − ᾱ_t) for t = 0..T as float64 numpy; the schedule must be concrete."""
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a diffusion_jax Schedule, got {type(sched).__name__}.")
    if not (is_concrete(sched.alpha_bars) and is_concrete(sched.one_minus_alpha_bars)):
        raise TypeError("the ODE samplers choose their timesteps from the schedule's values, so "
                        "sched must be concrete (close over it; do not pass it through jit).")
    return (np.asarray(sched.alpha_bars, np.float64),
            np.asarray(sched.one_minus_alpha_bars, np.float64))


def _nearest(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, the t in 1..T whose ``values[t − 1]`` is nearest (ties: the lower t).

    values: (T,), strictly increasing in t (σ_t, or −λ_t).
    """
    hi = np.clip(np.searchsorted(values, targets), 1, values.shape[0] - 1)
    lo = hi - 1
    return np.where(np.abs(targets - values[lo]) <= np.abs(values[hi] - targets), lo, hi) + 1


def _distinct_decreasing(ts: np.ndarray, T: int) -> np.ndarray:
    """Rounded timesteps (non-increasing, ts[0] = T, ts[-1] = 1, len ≤ T) -> strictly decreasing.

    Where rounding made neighbours equal they are moved apart, deterministically: first
    upwards from the end (t_i ≥ t_{i+1} + 1, with t_last = 1), then downwards from the start
    (t_i ≤ t_{i−1} − 1, with t_0 = T). A run of steps without collisions is left where it is,
    and the count (hence the NFE) never changes.
    """
    ts = np.asarray(ts, np.int64).copy()
    n = ts.shape[0]
    ts[-1] = 1 if n > 1 else T
    for i in range(n - 2, -1, -1):  # n ≤ T integers, at set-up time (not a sampling loop)
        ts[i] = max(ts[i], ts[i + 1] + 1)
    ts[0] = T
    for i in range(1, n):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts.astype(np.int32)


def dpm_solver_timesteps(sched: Schedule, nfe: int, *, spacing: str = "logSNR") -> np.ndarray:
    """The NFE timesteps of ``dpm_solver_pp_sample``, in the order visited (int32, (nfe,)).

    t_1 = T > t_2 > … > t_nfe = 1 (nfe ≥ 2; nfe = 1 gives (T,)): the network is evaluated once
    at each, and the solver then steps on to the next and finally to t = 0. ``spacing``:

    - ``"logSNR"`` (default, as DPM-Solver's reference for few steps): the half log-SNR
      λ_t = log(√ᾱ_t / √(1 − ᾱ_t)) uniform between λ_T and λ_1; each point is rounded to the
      integer t with the nearest λ_t;
    - ``"time_uniform"``: t uniform between T and 1, rounded (halves up).

    Rounding may make neighbours equal (at the low-noise end, where λ_t grows fastest); they are
    then moved apart to the nearest free integers, so the count stays nfe. Needs 1 ≤ nfe ≤ T.
    """
    check_choice("spacing", spacing, DPM_SOLVER_SPACINGS)
    ab, om = _concrete_tables(sched)
    T = sched.T
    nfe = _check_nfe(nfe, T, f"at most one network evaluation per timestep, nfe ≤ T = {T}")
    if nfe == 1:
        return np.array([T], np.int32)
    if spacing == "time_uniform":
        ts = np.floor(np.linspace(T, 1.0, nfe) + 0.5)
    else:
        lam = 0.5 * (np.log(ab[1:]) - np.log(om[1:]))  # λ_t, t = 1..T, decreasing
        ts = _nearest(-lam, -np.linspace(lam[-1], lam[0], nfe))
    return _distinct_decreasing(ts, T)


def _dpm_solver_coefficients(ab, om, ts, stochastic: bool = False):
    """(a, b, c, g) per step k: x_s = a_k x_{t_k} + b_k x̂_0(t_k) + c_k x̂_0(t_{k−1}) + g_k z_k,
    s = t_{k+1}, z_k ~ N(0, I).

    DPM-Solver++(2M) in the half log-SNR λ = log α − log σ (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)),
    h = λ_s − λ_t, r = h_{k−1}/h: x_s = (σ_s/σ_t) x_t + α_s (1 − e^{−h}) D with
    D = (1 + 1/(2r)) x̂_0(t_k) − 1/(2r) x̂_0(t_{k−1}) (second order); the first step has no
    history and takes D = x̂_0(t_k) (first order, DDIM); so does the last step to s = 0, where
    λ_0 = +∞ (σ_0 = 0): x_0 = x̂_0(t_nfe). g = 0.

    ``stochastic``: SDE-DPM-Solver++(2M) (midpoint), x_s = (σ_s/σ_t) e^{−h} x_t
    + α_s (1 − e^{−2h}) D + σ_s √(1 − e^{−2h}) z with the same D; its first-order step is the
    ancestral step (DDIM, η = 1) from t to s, and its last step is again x_0 = x̂_0(t_nfe).
    """
    ss = np.concatenate([ts[1:], [0]])
    alpha, sigma = np.sqrt(ab), np.sqrt(om)
    lam = np.log(alpha[1:]) - np.log(sigma[1:])  # λ_t at index t − 1, t = 1..T
    n = ts.shape[0]
    a, b, c, g = np.zeros(n), np.ones(n), np.zeros(n), np.zeros(n)
    k = np.arange(n - 1)  # every step but the last (to s = 0)
    t, s = ts[k], ss[k]
    h = lam[s - 1] - lam[t - 1]
    if stochastic:
        one_minus = -np.expm1(-2.0 * h)  # 1 − e^{−2h}
        a[k] = sigma[s] / sigma[t] * np.exp(-h)
        g[k] = sigma[s] * np.sqrt(one_minus)
    else:
        one_minus = -np.expm1(-h)  # 1 − e^{−h}
        a[k] = sigma[s] / sigma[t]
    base = alpha[s] * one_minus
    b[k] = base
    second = k[1:]  # steps with a previous x̂_0
    if second.size:
        h_prev = lam[ts[second] - 1] - lam[ts[second - 1] - 1]
        half_inv_r = h[second] / (2.0 * h_prev)  # 1/(2r)
        b[second] = base[second] * (1.0 + half_inv_r)
        c[second] = -base[second] * half_inv_r
    return a, b, c, g


def dpm_solver_pp_sample(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    nfe: int,
    spacing: str = "logSNR",
    prediction: str = "eps",
    clip_x0: bool = False,
    variance_output: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
):
    """DPM-Solver++(2M) (Lu et al., 2022): a deterministic ODE sampler in exactly ``nfe`` calls.

    x_T ~ N(0, I) (prior_key, as every sampler here), then the multistep second-order update
    in the data prediction x̂_0 (from ``predict_x0_eps``, so any ``prediction``; ``clip_x0``
    clips x̂_0 to [−1, 1] — thresholding — before it enters the update) over the timesteps
    ``dpm_solver_timesteps(sched, nfe, spacing=spacing)`` T = t_1 > … > t_nfe = 1: one network
    evaluation at each t_k, the step t_k -> t_{k+1} uses x̂_0(t_k) and x̂_0(t_{k−1}); the first
    step is first order (no history yet) and the last, t_nfe = 1 -> 0, is the lower-order final
    step, which at σ_0 = 0 is x_0 = x̂_0(x_1, 1). nfe = 1: x_0 = x̂_0(x_T, T). With first-order
    steps only this is DDIM (η = 0) on the same timesteps. One ``lax.scan``.
    ``variance_output``: model_fn returns (prediction, v) and v is ignored.
    shape: (B, *event), B ≥ 1; 1 ≤ nfe ≤ T.
    Returns x_0; with ``return_trajectory`` also (nfe+1, *shape) with row 0 = x_0 and row i the
    state at the i-th smallest timestep (row nfe = x_T), as ``ddim_sample``.
    """
    return _dpm_solver_pp(model_fn, sched, key, shape, nfe=nfe, spacing=spacing,
                          prediction=prediction, clip_x0=clip_x0,
                          variance_output=variance_output,
                          return_trajectory=return_trajectory, dtype=dtype, stochastic=False)


def sde_dpm_solver_pp_sample(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    nfe: int,
    spacing: str = "logSNR",
    prediction: str = "eps",
    clip_x0: bool = False,
    variance_output: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
):
    """SDE-DPM-Solver++(2M) (Lu et al., 2022; diffusers' ``"sde-dpmsolver++"``, midpoint): the
    stochastic counterpart of ``dpm_solver_pp_sample``, in exactly ``nfe`` network calls.

    It solves the reverse SDE rather than the probability-flow ODE, so it samples the model's
    ancestral (SDE) distribution, which for an imperfect network may be better than its ODE's.
    Same timesteps ``dpm_solver_timesteps(sched, nfe, spacing=spacing)``, x̂_0, arguments and
    x_T (prior_key) as ``dpm_solver_pp_sample``; with s the next timestep, h = λ_s − λ_t:

        x_s = (σ_s/σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) (D0 + D1/2) + σ_s √(1 − e^{−2h}) z,

    D0 = x̂_0(x_t, t), D1 = (D0 − x̂_0 of the previous step)/r, r = h_prev/h (D1 = 0 on the
    first step: first order, which is the ancestral DDIM η = 1 step from t to s). The last step,
    t_nfe = 1 -> 0, returns x_0 = x̂_0(x_1, 1) without noise. The noise z of the step leaving
    x_t is drawn with ``fold_in(steps_key, t)`` (module docstring). One ``lax.scan``.
    nfe = 2 is ``ddim_sample(num_steps=2, eta=1.0)`` for the same key.
    Returns x_0; with ``return_trajectory`` also (nfe+1, *shape) as ``dpm_solver_pp_sample``.
    """
    return _dpm_solver_pp(model_fn, sched, key, shape, nfe=nfe, spacing=spacing,
                          prediction=prediction, clip_x0=clip_x0,
                          variance_output=variance_output,
                          return_trajectory=return_trajectory, dtype=dtype, stochastic=True)


def _dpm_solver_pp(model_fn, sched, key, shape, *, nfe, spacing, prediction, clip_x0,
                   variance_output, return_trajectory, dtype, stochastic: bool):
    """The scan of ``dpm_solver_pp_sample`` (ODE) and ``sde_dpm_solver_pp_sample`` (SDE)."""
    shape = _check_shape(shape)
    _check_model_and_schedule(model_fn, sched)
    check_choice("prediction", prediction, PREDICTIONS)
    ts = dpm_solver_timesteps(sched, nfe, spacing=spacing)
    ab, om = _concrete_tables(sched)
    a, b, c, g = (jnp.asarray(v, dtype)
                  for v in _dpm_solver_coefficients(ab, om, ts, stochastic=stochastic))

    def run(key):
        prior_key, steps_key = jax.random.split(key)
        x_T = jax.random.normal(prior_key, shape, dtype)

        def body(carry, step):
            x_t, x0_prev = carry
            t, a_k, b_k, c_k, g_k = step
            t_batch = jnp.full((shape[0],), t, jnp.int32)
            output, _ = split_output(model_fn(x_t, t_batch), variance_output)
            x0, _ = predict_x0_eps(output, sched, x_t, t_batch, prediction=prediction,
                                   clip_x0=clip_x0)
            x0 = x0.astype(dtype)
            x_s = a_k * x_t + b_k * x0 + c_k * x0_prev
            if stochastic:  # static: the ODE solver draws no noise at all
                x_s = x_s + g_k * jax.random.normal(jax.random.fold_in(steps_key, t), shape, dtype)
            x_s = x_s.astype(dtype)
            return (x_s, x0), (x_s if return_trajectory else None)

        (x0, _), ys = jax.lax.scan(body, (x_T, jnp.zeros_like(x_T)),
                                   (jnp.asarray(ts), a, b, c, g))
        if not return_trajectory:
            return x0
        return x0, jnp.concatenate([ys[::-1], x_T[None]], axis=0)

    return jax.jit(run)(key)


def heun_num_steps(nfe: int, T: int) -> int:
    """The number N of noise levels of ``heun_sample`` for ``nfe`` network evaluations.

    Heun's method costs 2 evaluations per step between noise levels and the last step to σ = 0
    is an Euler step (1 evaluation), so nfe = 2N − 1 for N levels: nfe must be odd (an even
    value is an error, never rounded), 1 ≤ nfe ≤ 2T − 1 (N ≤ T distinct integer timesteps).
    """
    if not is_int(T) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}.")
    nfe = _check_nfe(nfe, 2 * T - 1,
                     f"Heun takes nfe = 2N − 1 for N ≤ T = {T} noise levels, nfe ≤ {2 * T - 1}")
    if nfe % 2 == 0:
        raise ValueError(f"nfe={nfe} is even, but Heun's method takes nfe = 2N − 1 network "
                         f"evaluations for N noise levels (2 per Heun step, 1 for the final Euler "
                         f"step to σ = 0); use nfe={nfe - 1} or nfe={nfe + 1}.")
    return (nfe + 1) // 2


def karras_timesteps(sched: Schedule, nfe: int, *, rho: float = 7.0) -> np.ndarray:
    """The N = (nfe + 1)/2 timesteps of ``heun_sample``, in the order visited (int32, (N,)).

    Karras et al. (2022), eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,
    i = 0..N−1, in the variance-exploding noise level σ_t = √((1 − ᾱ_t)/ᾱ_t), with
    σ_max = σ_T and σ_min = σ_1. Each σ_i is rounded to the nearest discrete σ_t (nearest in σ,
    as Karras et al. do for their DDPM/iDDPM models), so the network always sees an integer t;
    rounding that makes neighbours equal is resolved by moving them to the nearest free
    integers (the count, hence the NFE, never changes). So T = t_1 > … > t_N = 1 (N = 1: (T,)).
    nfe must be odd, 1 ≤ nfe ≤ 2T − 1 (``heun_num_steps``); ρ > 0.
    """
    ab, om = _concrete_tables(sched)
    T = sched.T
    n = heun_num_steps(nfe, T)
    rho = _check_rho(rho)
    if n == 1:
        return np.array([T], np.int32)
    sig = np.sqrt(om[1:] / ab[1:])  # σ_t, t = 1..T, increasing
    inv_rho = 1.0 / rho
    ramp = np.linspace(0.0, 1.0, n)
    targets = (sig[-1] ** inv_rho + ramp * (sig[0] ** inv_rho - sig[-1] ** inv_rho)) ** rho
    return _distinct_decreasing(_nearest(sig, targets), T)


def _heun_coefficients(ab, om, ts):
    """Per network evaluation e = 0..2N−2 of ``heun_sample``: (t_e, √ᾱ_{t_e}, p_e, q_e, keep_e).

    Evaluation e sees x_t = √ᾱ_{t_e} x̃_eval and gives d_e = ε̂; then
    x̃_eval <- x̃_base + p_e d_e + q_e d_{e−1}, and x̃_base <- x̃_eval unless keep_e. Evaluation
    2i (t_i) is Heun step i's Euler predictor (p = Δ_i = σ_{i+1} − σ_i, q = 0, keep the base
    x̃_i), evaluation 2i + 1 (t_{i+1}) its trapezoidal corrector (p = q = Δ_i/2, the new base is
    x̃_{i+1}); the last, 2N − 2 at t_N = 1, is the Euler step to σ = 0 (p = −σ_1).
    """
    sig = np.sqrt(om[ts] / ab[ts])
    n = ts.shape[0]
    delta = np.diff(sig)  # (N − 1,) σ_{i+1} − σ_i < 0
    t = np.empty(2 * n - 1, np.int32)
    p, q, keep = np.zeros(2 * n - 1), np.zeros(2 * n - 1), np.zeros(2 * n - 1, bool)
    t[0:-1:2], t[1::2], t[-1] = ts[:-1], ts[1:], ts[-1]
    p[0:-1:2], keep[0::2] = delta, True
    p[1::2] = q[1::2] = delta / 2.0
    p[-1] = -sig[-1]
    return t, np.sqrt(ab[t]), p, q, keep


def heun_sample(
    model_fn: ModelFn,
    sched: Schedule,
    key,
    shape,
    *,
    nfe: int,
    rho: float = 7.0,
    prediction: str = "eps",
    clip_x0: bool = False,
    variance_output: bool = False,
    return_trajectory: bool = False,
    dtype=jnp.float32,
):
    """Heun's second-order method on the probability-flow ODE (Karras et al., 2022, Alg. 1).

    In the variance-exploding variable x̃ = x_t / √ᾱ_t with σ_t = √((1 − ᾱ_t)/ᾱ_t) the ODE is
    dx̃/dσ = (x̃ − x̂_0)/σ = ε̂, with (x̂_0, ε̂) from ``predict_x0_eps`` at x_t = √ᾱ_t x̃ (so any
    ``prediction``; ``clip_x0`` clips x̂_0 to [−1, 1] and ε̂ follows it). x_T ~ N(0, I)
    (prior_key, as every sampler here); the noise levels are those of
    ``karras_timesteps(sched, nfe, rho=rho)``, T = t_1 > … > t_N = 1, N = (nfe + 1)/2: a Heun
    step (Euler predictor, trapezoidal corrector; 2 evaluations) from each t_i to t_{i+1}, then
    an Euler step from σ_1 to σ = 0 (1 evaluation), which is x_0 = x̂_0(x_1, 1). Exactly ``nfe``
    network calls; nfe must be odd (an even nfe raises ValueError, see ``heun_num_steps``).
    One ``lax.scan`` of nfe iterations, one network evaluation each (so the network appears
    once in the compiled program): predictor and corrector differ only in their coefficients.
    ``variance_output``: model_fn returns (prediction, v) and v is ignored.
    Returns x_0; with ``return_trajectory`` also (N+1, *shape) with row 0 = x_0 and row i = x_t
    (the usual, not the scaled, variable) at the i-th smallest timestep (row N = x_T).
    """
    shape = _check_shape(shape)
    _check_model_and_schedule(model_fn, sched)
    check_choice("prediction", prediction, PREDICTIONS)
    ts = karras_timesteps(sched, nfe, rho=rho)
    ab, om = _concrete_tables(sched)
    t_e, scale, p, q, keep = _heun_coefficients(ab, om, ts)
    steps = (jnp.asarray(t_e), *(jnp.asarray(v, dtype) for v in (scale, p, q)), jnp.asarray(keep))

    def run(key):
        prior_key, _ = jax.random.split(key)
        x_T = jax.random.normal(prior_key, shape, dtype)

        def body(carry, step):
            x_base, x_eval, d_prev, _ = carry
            t, scale_e, p_e, q_e, keep_e = step
            t_batch = jnp.full((shape[0],), t, jnp.int32)
            x_t = (scale_e * x_eval).astype(dtype)
            output, _ = split_output(model_fn(x_t, t_batch), variance_output)
            x0, d = predict_x0_eps(output, sched, x_t, t_batch, prediction=prediction,
                                   clip_x0=clip_x0)
            d = d.astype(dtype)
            x_eval = (x_base + p_e * d + q_e * d_prev).astype(dtype)
            x_base = jnp.where(keep_e, x_base, x_eval)
            y = scale_e * x_base if return_trajectory else None
            return (x_base, x_eval, d, x0.astype(dtype)), y

        x_scaled = x_T / jnp.asarray(scale[0], dtype)
        init = (x_scaled, x_scaled, jnp.zeros_like(x_T), jnp.zeros_like(x_T))
        (_, _, _, x0), ys = jax.lax.scan(body, init, steps)
        # The last Euler step lands on x̃_eval = x̂_0 up to rounding; return x̂_0 itself (exactly
        # in [−1, 1] under clip_x0), as the other samplers do.
        if not return_trajectory:
            return x0
        # Rows after each corrector (odd e) are x_t at t_2..t_N, scaled back to x_t.
        return x0, jnp.concatenate([x0[None], ys[1::2][::-1], x_T[None]], axis=0)

    return jax.jit(run)(key)


# --------------------------------------------------------------------------- checks


def _check_shape(shape) -> tuple[int, ...]:
    if not isinstance(shape, tuple | list) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) for d in shape
    ):
        raise TypeError(f"shape must be a tuple of ints (batch, *event), got {shape!r}.")
    if len(shape) == 0:
        raise ValueError("shape must have a leading batch axis: (batch, *event), got ().")
    if shape[0] < 1:
        raise ValueError(f"shape[0] is the number of samples and must be at least 1, got {shape}.")
    if any(d < 1 for d in shape[1:]):
        raise ValueError(f"every event dimension of shape must be positive, got {shape}.")
    return tuple(int(d) for d in shape)


def _check_model_and_schedule(model_fn, sched) -> None:
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable as model_fn(x_t, t), got {model_fn!r}.")
    if not isinstance(sched, Schedule):
        raise TypeError(f"sched must be a diffusion_jax Schedule, got {type(sched).__name__}.")


def _check_eta(eta) -> float:
    if not is_concrete(eta):
        raise TypeError("eta must be a Python float (it is static: η = 0 draws no noise).")
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"eta must be a finite number ≥ 0, got {eta!r}.")
    return eta


def _check_step_range(t_start, t_end, T) -> None:
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not is_int(value):
            raise TypeError(f"{name} must be a Python int, got {type(value).__name__}.")
    if not 0 <= t_end < t_start <= T:
        raise ValueError(
            f"need 0 <= t_end < t_start <= T = {T}, got t_start={t_start}, t_end={t_end}."
        )


def _check_x_t(x) -> None:
    if jnp.ndim(x) < 1:
        raise ValueError(f"x_t must have a leading batch axis, got shape {jnp.shape(x)}.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"x_t must be a floating-point array, got dtype {jnp.result_type(x)}.")


def _check_rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, int | float | np.floating | np.integer):
        raise TypeError(f"rho must be a number, got {rho!r}.")
    rho = float(rho)
    if not (math.isfinite(rho) and rho > 0.0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}.")
    return rho
