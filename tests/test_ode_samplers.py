"""The deterministic ODE samplers DPM-Solver++(2M) and Heun (Karras schedule), beside DDIM, and the
stochastic SDE-DPM-Solver++(2M) (last section but the kind / CLI one).

Gaussian data x_0 ~ N(μ0, s0²) with the exact denoiser (tests/gaussian_case.py): the probability-
flow ODE then maps x_T to x_0 affinely and in closed form, because
(x_t − √ᾱ_t μ0) / √(ᾱ_t s0² + 1 − ᾱ_t) is invariant along the flow. Every sample is compared with
its exact ODE endpoint from the same x_T (the samplers draw x_T from the documented prior key), the
error is fitted against the NFE for each solver's order, and the sample moments are compared with
the exact pushforward of N(0, 1). Then: timesteps, exact NFE counts (a run-time callback counts
the network calls), determinism, errors, and the model kind / CLI integration on a tiny U-Net.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import cli, samplers
from diffusion_jax.training import trainer
from diffusion_jax.training.kinds import ddpm
from diffusion_jax.training.workdir import write_json_atomic
from tests.gaussian_case import GaussianData
from tests.training.tiny import tiny_config

DATA = GaussianData(mu0=0.3, s0=0.5)  # image-like scale
T = 1000
N = 20_000  # samples (one dimension each): Monte-Carlo standard error of the std 0.5 %
KEY = jax.random.key(0)
SLOPE_NFE = (15, 25, 49)  # odd, so that Heun takes them too


@functools.cache
def _sched():
    return dj.linear_schedule(T)  # DDPM's schedule: σ_T = √((1−ᾱ_T)/ᾱ_T) ≈ 157, σ_1 ≈ 0.01


def _model(sched, prediction="eps"):
    """The exact network for DATA: ε̂ = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t) (or x̂_0, or v̂)."""

    def model_fn(x_t, t):
        x0, _ = DATA.denoiser(sched, x_t, t)
        eps = dj.eps_from_x0(sched, x_t, t, x0)
        return {"eps": eps, "x0": x0, "v": dj.v_from_x0_eps(sched, x0, t, eps)}[prediction]

    return model_fn


def _prior(key, shape):
    """x_T as every sampler draws it: N(0, I) from the first half of ``split(key)``."""
    return np.asarray(jax.random.normal(jax.random.split(key)[0], shape), np.float64)


def _exact_endpoint(sched, x_T):
    """The probability-flow ODE's x_0 from x_T (float64): μ0 + s0 (x_T − √ᾱ_T μ0)/√(ᾱ_T s0² + 1 − ᾱ_T)."""
    ab_T = float(np.asarray(sched.alpha_bars, np.float64)[-1])
    return DATA.mu0 + DATA.s0 * (x_T - np.sqrt(ab_T) * DATA.mu0) / np.sqrt(
        ab_T * DATA.s0**2 + 1.0 - ab_T)


def _sample(name, sched, key, shape, nfe, **kw):
    model = _model(sched, kw.get("prediction", "eps"))
    if name == "ddim":
        return samplers.ddim_sample(model, sched, key, shape, num_steps=nfe, **kw)
    fn = {"dpm": samplers.dpm_solver_pp_sample, "heun": samplers.heun_sample}[name]
    return fn(model, sched, key, shape, nfe=nfe, **kw)


@functools.cache
def _gaussian_run(name, nfe):
    """(samples, exact endpoints) in float64, N draws from KEY on the DDPM schedule."""
    sched = _sched()
    x0 = np.asarray(_sample(name, sched, KEY, (N, 1), nfe), np.float64)
    return x0, _exact_endpoint(sched, _prior(KEY, (N, 1)))


def _rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


# --------------------------------------------------------------------------- Gaussian data

# RMS distance to the exact endpoint at NFE 49 (measured: DPM-Solver++ 1.2e-3, Heun 1.5e-2,
# DDIM 2.9e-2; s0 = 0.5; sample std 0.5052 / 0.5190 / 0.4751 against the exact 0.5040). The
# floor common to all (the last evaluation is at t = 1, σ_1 = 0.01, and x_0 = x̂_0(x_1, 1)
# there) is 1.0e-4.
ENDPOINT_RMS_49 = {"dpm": 2e-3, "heun": 2.5e-2, "ddim": 4e-2}


@pytest.mark.parametrize("name", ["dpm", "heun", "ddim"])
def test_gaussian_data_pushforward_and_exact_endpoints(name):
    x0, exact = _gaussian_run(name, 49)
    err = _rms(x0, exact)
    assert err < ENDPOINT_RMS_49[name], err
    # The exact pushforward of N(0, 1) under the flow. ᾱ_T ≈ 4e-5, so it is the data
    # distribution up to the prior mismatch: mean low by √ᾱ_T μ0 s0 ≈ 9.5e-4, std by 5e-6.
    ab_T = float(np.asarray(_sched().alpha_bars, np.float64)[-1])
    scale = DATA.s0 / np.sqrt(ab_T * DATA.s0**2 + 1.0 - ab_T)
    mean_star, std_star = DATA.mu0 * (1.0 - np.sqrt(ab_T) * scale), scale
    assert abs(mean_star - DATA.mu0) < 1e-3 and abs(std_star - DATA.s0) < 1e-5
    # Moments within Monte-Carlo error (4 standard errors) plus the discretization error, which
    # moves the mean and the std by at most the RMS distance to the exact samples measured above.
    se_mean, se_std = std_star / np.sqrt(N), std_star / np.sqrt(2 * N)
    assert abs(x0.mean() - mean_star) < 4 * se_mean + err
    assert abs(x0.std() - std_star) < 4 * se_std + err
    # The exact endpoints themselves are that distribution within Monte-Carlo error.
    assert abs(exact.mean() - mean_star) < 4 * se_mean
    assert abs(exact.std() - std_star) < 4 * se_std


# Measured log-log slopes of the RMS endpoint error over NFE 15, 25, 49 (float32, this schedule,
# N draws from KEY): DPM-Solver++(2M) -1.97, Heun -2.22 (still pre-asymptotic: -2.14 over NFE
# 25..101), DDIM -0.99.
ORDERS = {"dpm": (-2.0, 0.3), "heun": (-2.0, 0.4), "ddim": (-1.0, 0.1)}


@pytest.mark.parametrize("name", ["dpm", "heun", "ddim"])
def test_error_falls_with_nfe_at_the_solvers_order(name):
    errors = np.array([_rms(*_gaussian_run(name, nfe)) for nfe in SLOPE_NFE])
    assert np.all(np.diff(errors) < 0), errors
    slope = np.polyfit(np.log(SLOPE_NFE), np.log(errors), 1)[0]
    expected, tol = ORDERS[name]
    assert abs(slope - expected) < tol, (slope, errors)


def test_the_second_order_solvers_beat_ddim_at_equal_nfe():
    # Measured RMS errors (DDIM / DPM-Solver++ / Heun): NFE 15: 0.093 / 0.012 / 0.21;
    # 25: 0.056 / 0.0046 / 0.066; 49: 0.029 / 0.0012 / 0.015. Heun's larger constant (its
    # Karras grid takes long steps through σ ≈ s0) makes it win over DDIM only from ~30 NFE.
    for nfe in SLOPE_NFE:
        assert _rms(*_gaussian_run("dpm", nfe)) < _rms(*_gaussian_run("ddim", nfe)) / 5
    assert _rms(*_gaussian_run("heun", 49)) < _rms(*_gaussian_run("ddim", 49)) / 1.5


def test_dpm_solver_first_order_steps_are_ddim():
    """NFE 1 and 2 hold no second-order step (first step and final step are first order): the
    update is then DDIM's on the same timesteps, (T,) and (T, 1)."""
    sched, shape = _sched(), (64, 3)
    for nfe in (1, 2):
        np.testing.assert_array_equal(samplers.dpm_solver_timesteps(sched, nfe)[::-1],
                                      samplers.ddim_timesteps(T, nfe))
        dpm = _sample("dpm", sched, KEY, shape, nfe)
        ddim = _sample("ddim", sched, KEY, shape, nfe)
        np.testing.assert_allclose(np.asarray(dpm), np.asarray(ddim), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dpm", "heun"])
def test_predictions_clipping_and_variance_output(name):
    """x0 and v predictions give the eps samples (one adapter); clip_x0 keeps x_0 in [−1, 1]; a
    learned-variance pair output has its variance ignored; trajectories hold x_T and x_0."""
    sched, shape, nfe = _sched(), (256, 2), 9
    base, traj = _sample(name, sched, KEY, shape, nfe, return_trajectory=True)
    rows = nfe + 1 if name == "dpm" else (nfe + 1) // 2 + 1
    assert traj.shape == (rows, *shape)
    np.testing.assert_array_equal(np.asarray(traj[0]), np.asarray(base))
    np.testing.assert_allclose(np.asarray(traj[-1]), _prior(KEY, shape), rtol=1e-6)
    v = _sample(name, sched, KEY, shape, nfe, prediction="v")
    np.testing.assert_allclose(np.asarray(v), np.asarray(base), atol=2e-4)
    clipped = np.asarray(_sample(name, sched, KEY, shape, nfe, clip_x0=True))
    assert np.abs(np.asarray(base)).max() > 1.0 and np.abs(clipped).max() <= 1.0
    model = _model(sched)
    fn = samplers.dpm_solver_pp_sample if name == "dpm" else samplers.heun_sample
    pair = fn(lambda x, t: (model(x, t), jnp.zeros_like(x)), sched, KEY, shape, nfe=nfe,
              variance_output=True)
    np.testing.assert_allclose(np.asarray(pair), np.asarray(base), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- timesteps and NFE


def _check_grid(ts, n, T_):
    assert ts.dtype == np.int32 and ts.shape == (n,)
    assert ts[0] == T_ and (n == 1 or ts[-1] == 1)
    assert np.all(np.diff(ts) < 0) and ts.min() >= 1


def test_timesteps_golden_and_well_formed():
    sched = _sched()
    np.testing.assert_array_equal(
        samplers.dpm_solver_timesteps(sched, 20),
        [1000, 948, 894, 835, 773, 705, 630, 547, 455, 354, 254, 167, 104, 62, 36, 20, 11, 5, 2, 1])
    np.testing.assert_array_equal(samplers.dpm_solver_timesteps(sched, 5, spacing="time_uniform"),
                                  [1000, 750, 501, 251, 1])
    np.testing.assert_array_equal(samplers.karras_timesteps(sched, 19),
                                  [1000, 938, 865, 776, 664, 512, 302, 103, 19, 1])
    for s in (dj.linear_schedule(20), dj.cosine_schedule(50), dj.cosine_schedule(1000), sched):
        for nfe in sorted({1, 2, 3, 7, s.T // 2, s.T - 1, s.T}):
            for spacing in samplers.DPM_SOLVER_SPACINGS:
                _check_grid(samplers.dpm_solver_timesteps(s, nfe, spacing=spacing), nfe, s.T)
        for nfe in sorted({1, 3, 9, s.T - 1 + s.T % 2, 2 * s.T - 1}):
            _check_grid(samplers.karras_timesteps(s, nfe), (nfe + 1) // 2, s.T)
    # Every step on the full grid: NFE = T visits T..1; Heun's 2T − 1 uses every level.
    small = dj.linear_schedule(20)
    np.testing.assert_array_equal(samplers.dpm_solver_timesteps(small, 20), np.arange(20, 0, -1))
    np.testing.assert_array_equal(samplers.karras_timesteps(small, 39), np.arange(20, 0, -1))


def test_karras_levels_are_the_nearest_discrete_sigmas():
    """Without collisions each level is the discrete σ_t nearest Karras's σ_i (ρ = 7)."""
    sched = _sched()
    ab = np.asarray(sched.alpha_bars, np.float64)
    sigma = np.sqrt((1.0 - ab[1:]) / ab[1:])  # σ_t, t = 1..T
    for nfe in (9, 19, 35):
        n = (nfe + 1) // 2
        ramp = np.arange(n) / (n - 1)
        target = (sigma[-1] ** (1 / 7) + ramp * (sigma[0] ** (1 / 7) - sigma[-1] ** (1 / 7))) ** 7
        nearest = np.array([np.argmin(np.abs(sigma - s)) + 1 for s in target])
        np.testing.assert_array_equal(samplers.karras_timesteps(sched, nfe), nearest)


@pytest.mark.parametrize("name", ["dpm", "heun"])
def test_exact_nfe_counted_at_run_time_and_determinism(name):
    """A debug callback inside the model records every network call and its t; the same key
    gives the same samples (different keys: see the kind test below)."""
    sched, seen = dj.linear_schedule(50), []

    def model(x_t, t):
        jax.debug.callback(lambda t: seen.append(int(t[0])), t, ordered=True)
        return _model(sched)(x_t, t)

    fn = samplers.dpm_solver_pp_sample if name == "dpm" else samplers.heun_sample
    runs = []
    for nfe in (1, 7, 7):
        seen.clear()
        runs.append(np.asarray(fn(model, sched, KEY, (4, 1), nfe=nfe)))
        jax.effects_barrier()
        assert len(seen) == nfe, seen
        if name == "dpm":
            assert seen == samplers.dpm_solver_timesteps(sched, nfe).tolist()
        else:  # t_1, then t_{i+1} twice (corrector, next predictor), the last for the Euler step
            ts = samplers.karras_timesteps(sched, nfe).tolist()
            assert seen == [ts[0]] + [t for t in ts[1:] for _ in range(2)]
    np.testing.assert_array_equal(runs[1], runs[2])


def test_clear_errors():
    sched, model = dj.linear_schedule(20), _model(dj.linear_schedule(20))
    dpm = functools.partial(samplers.dpm_solver_pp_sample, model, sched, KEY, (2, 1))
    heun = functools.partial(samplers.heun_sample, model, sched, KEY, (2, 1))
    for fn in (dpm, heun):
        with pytest.raises(ValueError, match="at least 1"):
            fn(nfe=0)
        with pytest.raises(TypeError, match="must be an int"):
            fn(nfe=5.0)
        with pytest.raises(TypeError, match="must be an int"):
            fn(nfe=True)
        with pytest.raises(ValueError, match="prediction"):
            fn(nfe=3, prediction="score")
    with pytest.raises(ValueError, match=r"nfe=21 exceeds .* nfe ≤ T = 20"):
        dpm(nfe=21)
    with pytest.raises(ValueError, match=r"nfe=10 is even.*use nfe=9 or nfe=11"):
        heun(nfe=10)
    with pytest.raises(ValueError, match=r"nfe=41 exceeds .*nfe ≤ 39"):
        heun(nfe=41)
    with pytest.raises(ValueError, match=r"spacing must be one of \('logSNR', 'time_uniform'\)"):
        dpm(nfe=3, spacing="log_snr")
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        heun(nfe=3, rho=0.0)
    with pytest.raises(TypeError, match="sched must be concrete"):
        jax.jit(lambda s: samplers.dpm_solver_pp_sample(model, s, KEY, (2, 1), nfe=3))(sched)
    with pytest.raises(TypeError, match="shape"):
        samplers.heun_sample(model, sched, KEY, 4, nfe=3)


# --------------------------------------------------------------------------- SDE-DPM-Solver++(2M)


def test_sde_dpm_solver_carries_the_prior_to_the_data_distribution():
    """Gaussian data, exact denoiser, NFE 50: sample mean and std are N(μ0, s0²)'s within Monte-
    Carlo error (the exact SDE marginal; prior mismatch < 1e-3, see above). Measured (KEY,
    key(1)): mean 0.3044 / 0.2989, std 0.5058 / 0.5050 against 0.2990 / 0.5040; at NFE 10 the
    std is 0.511 (discretization). The samples are not the ODE's: noise is injected."""
    sched = _sched()
    ab_T = float(np.asarray(sched.alpha_bars, np.float64)[-1])
    scale = DATA.s0 / np.sqrt(ab_T * DATA.s0**2 + 1.0 - ab_T)
    mean_star, std_star = DATA.mu0 * (1.0 - np.sqrt(ab_T) * scale), scale
    x0 = np.asarray(samplers.sde_dpm_solver_pp_sample(_model(sched), sched, KEY, (N, 1), nfe=50),
                    np.float64)
    se_mean, se_std = std_star / np.sqrt(N), std_star / np.sqrt(2 * N)
    assert abs(x0.mean() - mean_star) < 4 * se_mean, x0.mean()
    assert abs(x0.std() - std_star) < 4 * se_std + 2e-3, x0.std()
    assert _rms(x0, _exact_endpoint(sched, _prior(KEY, (N, 1)))) > 0.1


def test_sde_dpm_solver_first_order_step_is_the_ancestral_ddim_step():
    """The first step (no history) is DDIM η = 1 over the same jump, with the same noise
    (fold_in(steps_key, t)): NFE 2 (first and final steps only) equals ``ddim_sample(eta=1)``
    end to end; at NFE 20 the first state after x_T is ``make_ddim_step(eta=1)``'s jump."""
    sched, shape = _sched(), (64, 3)
    model = _model(sched)
    sde = samplers.sde_dpm_solver_pp_sample(model, sched, KEY, shape, nfe=2)
    ddim = samplers.ddim_sample(model, sched, KEY, shape, num_steps=2, eta=1.0)
    np.testing.assert_allclose(np.asarray(sde), np.asarray(ddim), rtol=1e-5, atol=1e-5)
    ts = samplers.dpm_solver_timesteps(sched, 20)
    _, traj = samplers.sde_dpm_solver_pp_sample(model, sched, KEY, shape, nfe=20,
                                                return_trajectory=True)
    assert traj.shape == (21, *shape)
    np.testing.assert_allclose(np.asarray(traj[-1]), _prior(KEY, shape), rtol=1e-6)
    step = samplers.make_ddim_step(model, sched, eta=1.0)
    x_s = step(traj[-1], int(ts[0]), int(ts[1]), jax.random.split(KEY)[1])
    np.testing.assert_allclose(np.asarray(traj[-2]), np.asarray(x_s), rtol=1e-5, atol=1e-5)
    # Later steps are the midpoint second-order update (float64 here, from the same states and
    # noise): x_s = (σ_s/σ_t) e^{−h} x_t + α_s (1 − e^{−2h}) (D0 + D1/2) + σ_s √(1 − e^{−2h}) z.
    ab = np.asarray(sched.alpha_bars, np.float64)
    lam = np.concatenate([[np.inf], 0.5 * np.log(ab[1:] / (1.0 - ab[1:]))])  # λ_t
    for k in (5, 15):  # t = 705 -> 630 and t = 20 -> 11
        t_prev, t, s_ = (int(v) for v in ts[k - 1:k + 2])
        x_prev, x_t = traj[20 - (k - 1)], traj[20 - k]
        d_prev, d0 = (np.asarray(DATA.denoiser(sched, x, jnp.full((shape[0],), tt))[0])
                      for x, tt in ((x_prev, t_prev), (x_t, t)))
        h, h_prev = lam[s_] - lam[t], lam[t] - lam[t_prev]
        z = jax.random.normal(jax.random.fold_in(jax.random.split(KEY)[1], t), shape)
        expected = (np.sqrt((1 - ab[s_]) / (1 - ab[t])) * np.exp(-h) * np.asarray(x_t, np.float64)
                    + np.sqrt(ab[s_]) * -np.expm1(-2 * h) * (d0 + 0.5 * (d0 - d_prev) * h / h_prev)
                    + np.sqrt((1 - ab[s_]) * -np.expm1(-2 * h)) * np.asarray(z, np.float64))
        np.testing.assert_allclose(np.asarray(traj[20 - (k + 1)]), expected, rtol=1e-4, atol=1e-4)
        first = step(x_t, t, s_, jax.random.split(KEY)[1])  # the first-order jump differs
        assert np.abs(np.asarray(first) - expected).max() > 1e-3


def test_sde_dpm_solver_exact_nfe_determinism_and_keys():
    sched, seen = dj.linear_schedule(50), []

    def model(x_t, t):
        jax.debug.callback(lambda t: seen.append(int(t[0])), t, ordered=True)
        return _model(sched)(x_t, t)

    runs = []
    for nfe, key in ((1, KEY), (7, KEY), (7, KEY), (7, jax.random.key(1))):
        seen.clear()
        runs.append(np.asarray(samplers.sde_dpm_solver_pp_sample(model, sched, key, (4, 1),
                                                                 nfe=nfe)))
        jax.effects_barrier()
        assert seen == samplers.dpm_solver_timesteps(sched, nfe).tolist()
    np.testing.assert_array_equal(runs[1], runs[2])
    assert not np.allclose(runs[1], runs[3])
    # Same x_T as the ODE solver, different x_0 (the step noise).
    ode = samplers.dpm_solver_pp_sample(_model(sched), sched, KEY, (4, 1), nfe=7)
    assert not np.allclose(runs[1], np.asarray(ode))


def test_sde_dpm_solver_predictions_and_clear_errors():
    sched, shape = _sched(), (256, 2)
    fn = functools.partial(samplers.sde_dpm_solver_pp_sample, sched=sched, key=KEY, shape=shape,
                           nfe=9)
    base = fn(_model(sched))
    v = fn(_model(sched, "v"), prediction="v")
    np.testing.assert_allclose(np.asarray(v), np.asarray(base), atol=2e-4)
    assert np.abs(np.asarray(fn(_model(sched), clip_x0=True))).max() <= 1.0
    small, model = dj.linear_schedule(20), _model(dj.linear_schedule(20))
    sde = functools.partial(samplers.sde_dpm_solver_pp_sample, model, small, KEY, (2, 1))
    with pytest.raises(ValueError, match="at least 1"):
        sde(nfe=0)
    with pytest.raises(TypeError, match="must be an int"):
        sde(nfe=True)
    with pytest.raises(ValueError, match="prediction"):
        sde(nfe=3, prediction="score")
    with pytest.raises(ValueError, match=r"nfe=21 exceeds .* nfe ≤ T = 20"):
        sde(nfe=21)
    with pytest.raises(ValueError, match=r"spacing must be one of"):
        sde(nfe=3, spacing="log_snr")
    with pytest.raises(TypeError, match="sched must be concrete"):
        jax.jit(lambda s: samplers.sde_dpm_solver_pp_sample(model, s, KEY, (2, 1), nfe=3))(small)
    with pytest.raises(TypeError, match="shape"):
        samplers.sde_dpm_solver_pp_sample(model, small, KEY, 4, nfe=3)


# --------------------------------------------------------------------------- kind and CLI

IMAGE = (8, 8, 1)
NFE = {"dpm_solver++": 4, "heun": 5, "sde_dpm_solver++": 4}


def _tiny(**overrides):
    """The tiny DDPM config with the smallest U-Net (one level, no attention), T = 20."""
    return tiny_config("ddpm", model__ch_mult=(1,), model__mid_attention=False, **overrides)


@functools.cache
def _tiny_model():
    config = _tiny()
    model = ddpm.build(config, IMAGE)
    return model, ddpm.init_params(model, IMAGE, jax.random.key(0, impl="rbg"))


def test_kind_validates_eval_nfe_naming_the_key():
    ddpm.validate(_tiny(eval__sampler="heun", eval__nfe=39))
    ddpm.validate(_tiny(eval__sampler="dpm_solver++", eval__nfe=20))
    ddpm.validate(_tiny(eval__sampler="sde_dpm_solver++", eval__nfe=20))
    ddpm.validate(_tiny(eval__sampler="ddim", eval__nfe=40))  # unused by ddim: only positive
    cases = [
        ({"eval__sampler": "heun", "eval__nfe": 20}, r"config\.eval\.nfe \(20\).*even.*nfe=19 or nfe=21"),
        ({"eval__sampler": "heun", "eval__nfe": 41}, r"config\.eval\.nfe \(41\).*nfe ≤ 39"),
        ({"eval__sampler": "dpm_solver++", "eval__nfe": 25},
         r"config\.eval\.nfe \(25\) must not exceed config\.diffusion\.T \(20\)"),
        ({"eval__sampler": "dpm_solver++", "eval__nfe": 0}, r"config\.eval\.nfe must be a positive int"),
        ({"eval__sampler": "sde_dpm_solver++", "eval__nfe": 21},
         r"config\.eval\.nfe \(21\) must not exceed config\.diffusion\.T \(20\)"),
        ({"eval__sampler": "dpm_solver"}, r"config\.eval\.sampler.*Did you mean 'dpm_solver\+\+'"),
        # The progress grids' sampler is checked as strictly as the final one.
        ({"eval__progress_sampler": "dpm_solver++", "eval__nfe": 25},
         r"config\.eval\.nfe \(25\) must not exceed config\.diffusion\.T \(20\)"),
        ({"eval__progress_sampler": "ddmi"}, r"config\.eval\.progress_sampler.*'ddmi'"),
        ({"eval__progress_sampler": "ddim", "eval__ddim_steps": 21},
         r"config\.eval\.ddim_steps \(21\).*config\.eval\.progress_sampler='ddim'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            ddpm.validate(_tiny(**overrides))
    model, params = _tiny_model()
    with pytest.raises(ValueError, match=r"config\.eval\.nfe \(6\).*even"):  # sample() checks too
        ddpm.sample(_tiny(eval__nfe=6), model, params, KEY, num_samples=1, image_shape=IMAGE,
                    sampler="heun")


@pytest.mark.parametrize("sampler", ["dpm_solver++", "heun", "sde_dpm_solver++"])
def test_kind_nfe_sampler_compiles_once_and_equals_the_core_sampler(sampler):
    config, (model, params) = _tiny(eval__nfe=NFE[sampler]), _tiny_model()
    before = ddpm._nfe_sampler.cache_info()
    outs = [ddpm.sample(config, model, params, jax.random.key(i), num_samples=2,
                        image_shape=IMAGE, sampler=sampler, progress=False) for i in range(2)]
    after = ddpm._nfe_sampler.cache_info()  # (no cache_clear: the CLI test reuses the entry)
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 1
    assert after.misses + after.hits - before.misses - before.hits == 2
    assert outs[0].shape == (2, *IMAGE) and np.abs(outs[0]).max() <= 1.0
    assert not np.allclose(outs[0], outs[1])
    fn = ddpm.NFE_SAMPLER_FNS[sampler]
    ref = fn(ddpm.network_fn(model, params), ddpm.build_schedule(config.diffusion),
             jax.random.key(1), (2, *IMAGE), nfe=NFE[sampler], clip_x0=True)
    np.testing.assert_allclose(outs[1], np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert ddpm.sample_tag(config, sampler) == f"{sampler}_nfe{NFE[sampler]}"


def test_cli_sample_with_the_ode_samplers(capfd, tmp_path, monkeypatch):
    """``sample --sampler heun --nfe 5`` (and the config key for dpm_solver++) on a stand-in for
    a trained run (the tiny untrained U-Net); file names carry the NFE; mistakes are one line."""
    model, params = _tiny_model()
    monkeypatch.setattr(trainer, "load_trained", lambda config, workdir: trainer.Trained(
        ddpm, model, params, IMAGE, 17, 2))
    config_json = tmp_path / "config.json"
    write_json_atomic(config_json, _tiny().to_dict())

    def run(*args):
        capfd.readouterr()
        code = cli.main(["sample", "--config", str(config_json), "--workdir", str(tmp_path),
                         "--num_samples=2", "--batch_size=2", "--progress=false", *args])
        return code, *capfd.readouterr()

    code, out, err = run("--sampler", "heun", "--nfe", "5")
    assert code == 0, err
    npy = tmp_path / "samples" / "sample_step2_seed0_heun_nfe5_n2_b2.npy"
    assert str(npy) in out and npy.with_suffix(".png").is_file()
    expected = ddpm.sample(_tiny(eval__nfe=5), model, params,
                           jax.random.fold_in(jax.random.key(0), 0), num_samples=2,
                           image_shape=IMAGE, sampler="heun", progress=False)
    np.testing.assert_array_equal(np.load(npy), expected)
    code, out, err = run("--sampler=dpm_solver++", "--config.eval.nfe=4")
    assert code == 0, err
    assert (tmp_path / "samples" / "sample_step2_seed0_dpm_solver++_nfe4_n2_b2.npy").is_file()
    code, out, err = run("--sampler", "sde_dpm_solver++", "--nfe", "3")
    assert code == 0, err
    assert (tmp_path / "samples" / "sample_step2_seed0_sde_dpm_solver++_nfe3_n2_b2.npy").is_file()

    mistakes = [
        (("--sampler", "heun", "--nfe", "4"), ["config.eval.nfe (4)", "even", "nfe=3 or nfe=5"]),
        (("--sampler", "dpm_solver++", "--nfe", "21"), ["config.eval.nfe (21)", "must not exceed"]),
        (("--sampler", "sde_dpm_solver++", "--nfe", "21"),
         ["config.eval.nfe (21)", "must not exceed"]),
        (("--sampler", "ddim", "--nfe", "5"), ["--nfe 5", "'ddim'", "ddim_steps"]),
        (("--nfe", "5"), ["--nfe 5", "'ddpm'"]),  # the config's sampler is ddpm
        (("--sampler", "heun", "--nfe", "0"), ["--nfe must be a positive int"]),
        (("--sampler", "heun", "--nfe", "five"), ["--nfe expects an int"]),
    ]
    for args, needles in mistakes:
        code, _, err = run(*args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err, (needle, err)
