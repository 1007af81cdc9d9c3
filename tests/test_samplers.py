"""Samplers on Gaussian data x_0 ~ N(μ0, s0²), where the exact denoiser E[x_0 | x_t] is linear.

With the exact x̂_0 every sampler is an affine map of (x_T, noise), so its output distribution
is computed here in closed form (float64 numpy, independent of the samplers' code). Tests check
(a) the samples against these closed forms, draw by draw where the noise can be reconstructed
from the documented key semantics, or within Monte-Carlo error, and (b) the closed forms against
the data distribution, with the discretization bias stated. Note that σ² = β̃_t is not the exact
reverse variance (that is β̃_t + c_t² Var[x_0|x_t]): β̃ under-disperses, β over-disperses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import reverse, samplers
from diffusion_jax.schedules import at

MU0 = np.array([0.5, -0.2])
S0 = np.array([0.3, 0.6])
N = 20_000


@pytest.fixture(scope="module")
def sched():
    return dj.cosine_schedule(100)  # ᾱ_T ≈ 2e-7: the prior mismatch is negligible


def exact_x0(sched, x_t, t, mu0=MU0, s0=S0):
    """E[x_0 | x_t] = μ0 + s0²√ᾱ_t/(ᾱ_t s0² + 1 − ᾱ_t) · (x_t − √ᾱ_t μ0), per dimension."""
    ab = at(sched.alpha_bars, t, x_t)
    k = s0**2 * jnp.sqrt(ab) / (ab * s0**2 + 1.0 - ab)
    return mu0 + k * (x_t - jnp.sqrt(ab) * mu0)


def gaussian_model(sched, prediction="eps", mu0=MU0, s0=S0, learned_v=None):
    """model_fn(x_t, t) returning the exact ε, x_0 or v (and a constant learned v if given)."""

    def model_fn(x_t, t):
        x0 = exact_x0(sched, x_t, t, mu0, s0)
        eps = dj.eps_from_x0(sched, x_t, t, x0)
        out = {"eps": eps, "x0": x0, "v": dj.v_from_x0_eps(sched, x0, t, eps)}[prediction]
        if learned_v is not None:
            return out, jnp.full_like(x_t, learned_v)
        return out

    return model_fn


def _tables(sched):
    ab = np.asarray(sched.alpha_bars, np.float64)
    return ab, np.asarray(sched.betas, np.float64), np.asarray(sched.alphas, np.float64)


def ddpm_affine(sched, variance, mu0=MU0, s0=S0):
    """Per t: x_{t−1} = A_t x_t + b_t + σ_t z (σ_1 = 0). Returns (A, b, σ) of shape (T+1, D)."""
    ab, beta, alpha = _tables(sched)
    T = sched.T
    A, b, sig = (np.zeros((T + 1, len(mu0))) for _ in range(3))
    for t in range(1, T + 1):
        k = s0**2 * np.sqrt(ab[t]) / (ab[t] * s0**2 + 1 - ab[t])
        c0 = np.sqrt(ab[t - 1]) * beta[t] / (1 - ab[t])
        ct = np.sqrt(alpha[t]) * (1 - ab[t - 1]) / (1 - ab[t])
        A[t] = c0 * k + ct
        b[t] = c0 * mu0 * (1 - k * np.sqrt(ab[t]))
        var = beta[t] if variance == "beta" else (1 - ab[t - 1]) * beta[t] / (1 - ab[t])
        sig[t] = 0.0 if t == 1 else np.sqrt(var)
    return A, b, sig


def ddpm_moments(sched, variance):
    """Mean and std of the ancestral sampler's x_0 when x_T ~ N(0, 1)."""
    A, b, sig = ddpm_affine(sched, variance)
    m, v = np.zeros_like(MU0), np.ones_like(MU0)
    for t in range(sched.T, 0, -1):
        m, v = A[t] * m + b[t], A[t] ** 2 * v + sig[t] ** 2
    return m, np.sqrt(v)


def ddim_affine(sched, num_steps):
    """DDIM η = 0 with the exact denoiser: x_0 = A x_T + b. Returns (A, b) of shape (D,)."""
    ab, _, _ = _tables(sched)
    taus = list(samplers.ddim_timesteps(sched.T, num_steps))[::-1]
    A, b = np.ones_like(MU0), np.zeros_like(MU0)
    for t, s in zip(taus, taus[1:] + [0], strict=True):
        k = S0**2 * np.sqrt(ab[t]) / (ab[t] * S0**2 + 1 - ab[t])
        a0, b0 = k, MU0 * (1 - k * np.sqrt(ab[t]))  # x̂_0 = a0 x_t + b0
        ae, be = (
            (1 - np.sqrt(ab[t]) * a0) / np.sqrt(1 - ab[t]),
            -np.sqrt(ab[t]) * b0 / np.sqrt(1 - ab[t]),
        )
        a_step = np.sqrt(ab[s]) * a0 + np.sqrt(1 - ab[s]) * ae
        b_step = np.sqrt(ab[s]) * b0 + np.sqrt(1 - ab[s]) * be
        A, b = a_step * A, a_step * b + b_step
    return A, b


def step_noise(key, shape, T):
    """The documented noise of the step leaving x_t: N(0, I) from fold_in(steps_key, t)."""
    steps_key = jax.random.split(key)[1]
    ts = jnp.arange(T + 1)
    return np.asarray(
        jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(steps_key, t), shape))(ts)
    )


def assert_moments(samples, mean, std, n_se=5.0):
    """Per dimension: sample mean and std within n_se Monte-Carlo standard errors."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[0]
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), n_se * std / math.sqrt(n))
    np.testing.assert_array_less(np.abs(samples.std(0) - std), n_se * std / math.sqrt(2 * n))


# --------------------------------------------------------------------------- ancestral DDPM


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_each_step_is_the_closed_form_update(sched, variance):
    """Row by row: x_{t−1} = A_t x_t + b_t + σ_t z_t, z_t from fold_in(steps_key, t)."""
    key, shape = jax.random.key(0), (64, 2)
    x0, traj = samplers.ddpm_sample(
        gaussian_model(sched), sched, key, shape, variance=variance, return_trajectory=True
    )
    traj = np.asarray(traj, np.float64)
    assert traj.shape == (sched.T + 1, *shape)
    np.testing.assert_array_equal(np.asarray(x0), traj[0])
    prior = jax.random.normal(jax.random.split(key)[0], shape)
    np.testing.assert_array_equal(traj[sched.T], np.asarray(prior))
    A, b, sig = ddpm_affine(sched, variance)
    z = step_noise(key, shape, sched.T)
    predicted = A[1:, None] * traj[1:] + b[1:, None] + sig[1:, None] * z[1:]
    np.testing.assert_allclose(traj[:-1], predicted, rtol=5e-5, atol=5e-5)  # float32 ε↔x̂_0


@pytest.mark.parametrize(
    "variance, data_rel_tol",
    # closed-form std of the sampler vs s0 (cosine, T = 100): β̃: −5.3 %, −3.1 %; β: +1.5 %, +0.6 %
    [("beta_tilde", 0.06), ("beta", 0.02)],
)
def test_ddpm_reproduces_gaussian_data(sched, variance, data_rel_tol):
    samples = samplers.ddpm_sample(
        gaussian_model(sched), sched, jax.random.key(1), (N, 2), variance=variance
    )
    mean, std = ddpm_moments(sched, variance)
    assert_moments(samples, mean, std)
    # The closed form itself against the data: means exact, stds within the stated bias.
    np.testing.assert_allclose(mean, MU0, atol=2e-4)
    np.testing.assert_allclose(std, S0, rtol=data_rel_tol)
    # β̃ is the lower and β the upper bound of the true reverse variance (DDPM §3.2).
    assert np.all(std < S0) if variance == "beta_tilde" else np.all(std > S0)


def test_scan_equals_python_loop(sched):
    model, key, shape = gaussian_model(sched), jax.random.key(2), (16, 2)
    scanned = samplers.ddpm_sample(model, sched, key, shape, variance="beta")
    looped = samplers.ddpm_sample_loop(model, sched, key, shape, variance="beta")
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(looped), atol=1e-6)


def test_chunks_equal_one_scan_and_denoise_resumes(sched):
    model, key, shape = gaussian_model(sched), jax.random.key(4), (16, 2)
    x0, traj = samplers.ddpm_sample(model, sched, key, shape, return_trajectory=True)
    chunks = list(samplers.ddpm_sample_chunks(model, sched, key, shape, chunk=30))
    assert [t for t, _ in chunks] == [70, 40, 10, 0]
    for t, x in chunks:
        np.testing.assert_allclose(np.asarray(x), np.asarray(traj[t]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(chunks[-1][1]), np.asarray(x0), atol=1e-6)
    # Resuming from x_50 with the steps key gives the same x_10 and x_0.
    steps_key = jax.random.split(key)[1]
    x10 = samplers.ddpm_denoise(model, sched, steps_key, traj[50], 50, t_end=10)
    np.testing.assert_allclose(np.asarray(x10), np.asarray(traj[10]), atol=1e-6)
    x0_resumed = samplers.ddpm_denoise(model, sched, steps_key, x10, 10)
    np.testing.assert_allclose(np.asarray(x0_resumed), np.asarray(x0), atol=1e-6)


def test_prediction_modes_give_the_same_samples(sched):
    key, shape = jax.random.key(5), (256, 2)
    ddpm = {
        p: samplers.ddpm_sample(gaussian_model(sched, p), sched, key, shape, prediction=p)
        for p in samplers.PREDICTIONS
    }
    ddim = {
        p: samplers.ddim_sample(
            gaussian_model(sched, p), sched, key, shape, num_steps=20, prediction=p
        )
        for p in samplers.PREDICTIONS
    }
    for p in ("x0", "v"):
        np.testing.assert_allclose(np.asarray(ddpm[p]), np.asarray(ddpm["eps"]), atol=1e-4)
        np.testing.assert_allclose(np.asarray(ddim[p]), np.asarray(ddim["eps"]), atol=1e-4)


def test_sampler_jits_with_parameters_as_arguments(sched):
    """Params as jit arguments: new parameters reuse the compiled sampler (no closure consts)."""
    key, shape = jax.random.key(6), (8, 2)

    @jax.jit
    def sample(mu0, key):
        model = gaussian_model(sched, mu0=mu0)
        return samplers.ddim_sample(model, sched, key, shape, num_steps=10)

    eager = samplers.ddim_sample(gaussian_model(sched), sched, key, shape, num_steps=10)
    np.testing.assert_allclose(
        np.asarray(sample(jnp.asarray(MU0), key)), np.asarray(eager), atol=1e-5
    )
    shifted = sample(jnp.asarray(MU0) + 1.0, key)
    assert sample._cache_size() == 1
    assert np.all(np.asarray(shifted) > np.asarray(eager))


# --------------------------------------------------------------------------- DDIM


def test_ddim_timesteps_golden():
    np.testing.assert_array_equal(samplers.ddim_timesteps(100, 5), [1, 26, 51, 75, 100])
    np.testing.assert_array_equal(samplers.ddim_timesteps(100, 1), [100])
    np.testing.assert_array_equal(samplers.ddim_timesteps(7, 7), np.arange(1, 8))
    for T, n in [(1000, 50), (1000, 999), (200, 3), (10, 9)]:
        taus = samplers.ddim_timesteps(T, n)
        assert taus.shape == (n,) and taus[0] == 1 and taus[-1] == T
        assert np.all(np.diff(taus) > 0)


def test_ddim_eta0_is_the_closed_form_affine_map(sched):
    """η = 0 is deterministic: x_0 = A x_T + b for every draw (A, b from the update formula)."""
    key, shape = jax.random.key(7), (64, 2)
    x0, traj = samplers.ddim_sample(
        gaussian_model(sched), sched, key, shape, num_steps=20, return_trajectory=True
    )
    assert traj.shape == (21, *shape)
    A, b = ddim_affine(sched, 20)
    np.testing.assert_allclose(np.asarray(x0), A * np.asarray(traj[-1]) + b, atol=2e-5)
    # The steps key plays no role when η = 0: only the prior draw matters.
    prior = jax.random.normal(jax.random.split(key)[0], shape)
    np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(prior))


def test_ddim_reproduces_gaussian_data(sched):
    samples = samplers.ddim_sample(
        gaussian_model(sched), sched, jax.random.key(8), (N, 2), num_steps=50
    )
    A, b = ddim_affine(sched, 50)
    assert_moments(samples, b, np.abs(A))
    # Discretization of the DDIM ODE: with 50 of 100 steps the std is low by 4.3 % and 2.8 %
    # (20 steps: 10 %, 7 %); the mean is exact to 2e-4. Tolerance 5 %.
    np.testing.assert_allclose(b, MU0, atol=2e-4)
    np.testing.assert_allclose(np.abs(A), S0, rtol=0.05)
    np.testing.assert_allclose(np.abs(ddim_affine(sched, 100)[0]), S0, rtol=0.03)


def test_ddim_eta1_all_steps_equals_ddpm_beta_tilde(sched):
    model, key, shape = gaussian_model(sched), jax.random.key(9), (32, 2)
    ddim = samplers.ddim_sample(model, sched, key, shape, num_steps=sched.T, eta=1.0)
    ddpm = samplers.ddpm_sample(model, sched, key, shape, variance="beta_tilde")
    np.testing.assert_allclose(np.asarray(ddim), np.asarray(ddpm), atol=1e-4)


# --------------------------------------------------------------------------- reverse kernel


def test_p_reverse_mean_equals_p_mean_from_eps(sched):
    key_x, key_e = jax.random.split(jax.random.key(10))
    x_t = jax.random.normal(key_x, (sched.T, 3, 4))
    eps = jax.random.normal(key_e, (sched.T, 3, 4))
    ts = jnp.arange(1, sched.T + 1)
    # t of shape (B,) indexing the batch axis: one example per timestep.
    mean, var = reverse.p_reverse(eps, sched, x_t, ts, prediction="eps", variance="beta")
    expected = dj.p_mean_from_eps(sched, x_t, ts, eps)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(expected), rtol=1e-4, atol=1e-4)
    # "beta" (fixed large): β_t for t ≥ 2 and β̃_2 at t = 1, as DDPM's reference code.
    expected_var = np.asarray(sched.betas[1:]).copy()
    expected_var[0] = float(sched.posterior_variances[2])
    np.testing.assert_allclose(np.asarray(var).ravel(), expected_var, rtol=1e-6)
    # "beta_raw" keeps β_1 at t = 1.
    _, var_raw = reverse.p_reverse(eps, sched, x_t, ts, prediction="eps", variance="beta_raw")
    np.testing.assert_allclose(np.asarray(var_raw).ravel(), np.asarray(sched.betas[1:]))
    # A scalar t under vmap over examples gives the same.
    reverse_fn = lambda x, t, e: reverse.p_reverse(e, sched, x, t).mean
    vmapped = jax.vmap(reverse_fn)(x_t, ts, eps)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(mean), rtol=1e-6, atol=1e-6)


def test_split_output_pair_and_concatenated_agree(sched):
    ts = jnp.arange(1, sched.T + 1)
    x_t = jax.random.normal(jax.random.key(3), (sched.T, 4, 4, 1))
    pred = jax.random.normal(jax.random.key(4), x_t.shape)
    v = jnp.tanh(jax.random.normal(jax.random.key(5), x_t.shape))
    as_pair = reverse.reverse_kernel((pred, v), sched, x_t, ts, variance="learned")
    as_array = reverse.reverse_kernel(jnp.concatenate([pred, v], -1), sched, x_t, ts,
                                      variance="learned")
    for a, b in zip(as_pair, as_array, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(TypeError, match="pair"):
        reverse.reverse_kernel((pred, v), sched, x_t, ts, variance="beta")
    with pytest.raises(TypeError, match="2 x 1 channels"):
        reverse.reverse_kernel(jnp.zeros((sched.T, 4, 4, 3)), sched, x_t, ts, variance="learned")


def test_p_reverse_beta_tilde_variance_and_finite_decoder(sched):
    ts = jnp.arange(1, sched.T + 1)
    x_t = jnp.zeros((sched.T, 2))
    _, var = reverse.p_reverse(jnp.zeros_like(x_t), sched, x_t, ts, variance="beta_tilde")
    post = np.asarray(sched.posterior_variances)
    np.testing.assert_allclose(np.asarray(var)[1:, 0], post[2:], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(var)[0, 0], post[2], rtol=1e-6)  # β̃_1 = 0 → β̃_2
    assert np.all(np.asarray(var) > 0.0)


def test_learned_variance_endpoints(sched):
    ts = jnp.arange(1, sched.T + 1)
    x_t = jnp.zeros((sched.T, 2))
    pred = jnp.zeros_like(x_t)
    betas = np.asarray(sched.betas[1:])
    beta_tilde = np.asarray(reverse.clipped_posterior_variances(sched)[1:])
    var = {}
    for v in (-1.0, 0.0, 1.0):
        out = (pred, jnp.full_like(x_t, v))
        var[v] = np.asarray(reverse.p_reverse(out, sched, x_t, ts, variance="learned").var)[:, 0]
    np.testing.assert_allclose(var[1.0], betas, rtol=1e-5)
    np.testing.assert_allclose(var[-1.0], beta_tilde, rtol=1e-5)
    np.testing.assert_allclose(var[0.0], np.sqrt(betas * beta_tilde), rtol=1e-5)
    # Samplers: learned v = ±1 reproduces the fixed variances for the same key.
    key, shape = jax.random.key(11), (16, 2)
    for v, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        learned = samplers.ddpm_sample(
            gaussian_model(sched, learned_v=v), sched, key, shape, variance="learned"
        )
        reference = samplers.ddpm_sample(gaussian_model(sched), sched, key, shape, variance=fixed)
        np.testing.assert_allclose(np.asarray(learned), np.asarray(reference), atol=1e-5)


def test_learned_variance_gradients_finite_at_every_t(sched):
    ts = jnp.arange(1, sched.T + 1)
    x_t = jnp.ones((sched.T, 2))

    def loss(v):
        out = (jnp.zeros_like(x_t), v)
        mean, var = reverse.p_reverse(out, sched, x_t, ts, variance="learned")
        return jnp.sum(dj.gaussian_log_prob(x_t, mean, var))

    value, grad = jax.value_and_grad(loss)(jnp.zeros_like(x_t))
    assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad)))


def test_clip_x0_keeps_predictions_in_range(sched):
    """Data centred at 0.9 with s0 = 0.5: the exact x̂_0 often exceeds 1; clipping bounds it."""
    mu0, s0 = np.array([0.9]), np.array([0.5])
    model = gaussian_model(sched, "eps", mu0=mu0, s0=s0)
    key, shape = jax.random.key(12), (2000, 1)
    x_t = jax.random.normal(key, shape) * 2.0
    t = jnp.full((shape[0],), 40)
    x0_free, _ = reverse.predict_x0_eps(model(x_t, t), sched, x_t, t)
    x0_clip, eps_clip = reverse.predict_x0_eps(model(x_t, t), sched, x_t, t, clip_x0=True)
    assert np.abs(np.asarray(x0_free)).max() > 1.2
    np.testing.assert_allclose(np.asarray(x0_clip), np.clip(np.asarray(x0_free), -1, 1))
    # ε̂ is recomputed so that x_t = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε̂ still holds.
    np.testing.assert_allclose(
        np.asarray(dj.x0_from_eps(sched, x_t, t, eps_clip)), np.asarray(x0_clip), atol=1e-5
    )
    mean, _ = reverse.p_reverse(model(x_t, t), sched, x_t, t, clip_x0=True)
    np.testing.assert_allclose(
        np.asarray(mean), np.asarray(dj.q_posterior(sched, x0_clip, x_t, t).mean), atol=1e-6
    )
    # The final sample is x̂_0 (DDIM) or μ̃_1 = x̂_0 (DDPM): in [−1, 1] with clipping only.
    free = samplers.ddpm_sample(model, sched, key, shape)
    assert np.asarray(free).max() > 1.0
    for sample in (
        samplers.ddpm_sample(model, sched, key, shape, clip_x0=True),
        samplers.ddim_sample(model, sched, key, shape, num_steps=10, clip_x0=True),
    ):
        assert np.abs(np.asarray(sample)).max() <= 1.0


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(sched):
    model, key = gaussian_model(sched), jax.random.key(13)
    with pytest.raises(ValueError, match="number of samples"):
        samplers.ddpm_sample(model, sched, key, (0, 2))
    with pytest.raises(ValueError, match="batch axis"):
        samplers.ddim_sample(model, sched, key, (), num_steps=5)
    with pytest.raises(ValueError, match="event dimension"):
        samplers.ddpm_sample(model, sched, key, (4, -1))
    with pytest.raises(TypeError, match="shape must be a tuple"):
        samplers.ddpm_sample(model, sched, key, 4)
    with pytest.raises(ValueError, match="variance"):
        samplers.ddpm_sample(model, sched, key, (4, 2), variance="fixed_large")
    with pytest.raises(ValueError, match="prediction.*'eps'"):
        samplers.ddim_sample(model, sched, key, (4, 2), num_steps=5, prediction="epsilon")
    with pytest.raises(ValueError, match="num_steps"):
        samplers.ddim_sample(model, sched, key, (4, 2), num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        samplers.ddim_sample(model, sched, key, (4, 2), num_steps=sched.T + 1)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim_sample(model, sched, key, (4, 2), num_steps=5, eta=-0.1)
    with pytest.raises(ValueError, match="chunk"):
        next(samplers.ddpm_sample_chunks(model, sched, key, (4, 2), chunk=0))
    with pytest.raises(ValueError, match="t_end < t_start"):
        samplers.ddpm_denoise(model, sched, key, jnp.zeros((4, 2)), 10, t_end=10)
    with pytest.raises(TypeError, match="pair"):
        samplers.ddpm_sample(model, sched, key, (4, 2), variance="learned")
    with pytest.raises(TypeError, match="variance='learned'"):
        samplers.ddpm_sample(gaussian_model(sched, learned_v=0.0), sched, key, (4, 2))
    with pytest.raises(ValueError, match="shapes must match"):
        samplers.ddpm_sample(lambda x, t: x[:, :1], sched, key, (4, 2))
    with pytest.raises(TypeError, match="model_fn must be callable"):
        samplers.ddpm_sample(None, sched, key, (4, 2))
