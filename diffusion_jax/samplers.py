"""Samplers for a trained diffusion model: ancestral DDPM and DDIM, compiled with ``lax.scan``.

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
``lax.scan`` sampler, the Python-loop baseline and the chunked sampler give the same samples.
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
    "make_ddim_step",
    "make_ddpm_step",
]

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
