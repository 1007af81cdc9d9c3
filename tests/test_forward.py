import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj

SCHEDULES = {"linear": dj.linear_schedule(200), "cosine": dj.cosine_schedule(200)}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_closed_form_marginal_equals_iterated_chain(name):
    sched = SCHEDULES[name]
    n = 20_000
    x0 = jnp.broadcast_to(jnp.array([0.7, -0.4]), (n, 2))
    traj = jax.jit(dj.q_chain)(sched, x0, jax.random.key(0))  # (T, n, 2)
    for t in (1, 10, 50, 200):
        mean, var = dj.q_marginal(sched, x0[:1], t)
        xt = np.asarray(traj[t - 1])
        se_mean = np.sqrt(float(var) / n)
        np.testing.assert_allclose(xt.mean(0), np.asarray(mean[0]), atol=5 * se_mean)
        # Var of a sample variance: 2σ⁴/(n−1).
        np.testing.assert_allclose(xt.var(0), float(var), atol=5 * float(var) * np.sqrt(2 / n))


def test_q_step_matches_definition():
    sched = SCHEDULES["linear"]
    mean, var = dj.q_step(sched, jnp.ones(3), 7)
    np.testing.assert_allclose(mean, np.sqrt(sched.alphas[7]) * np.ones(3), rtol=1e-6)
    np.testing.assert_allclose(var, sched.betas[7], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("t", [2, 3, 100, 200])
def test_posterior_equals_bayes_rule(name, t):
    """q(x_{t−1}|x_t, x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0): multiply the Gaussians in float64."""
    sched = SCHEDULES[name]
    x0, xt = np.array([0.3, -0.8]), np.array([1.1, 0.2])
    a = float(sched.alphas[t])
    ab_prev = float(np.float64(np.cumprod(1 - np.asarray(sched.betas, np.float64))[t - 1]))
    # Likelihood in x_{t−1}: N(x_t; √a x_{t−1}, 1−a) ∝ N(x_{t−1}; x_t/√a, (1−a)/a).
    prec = a / (1 - a) + 1 / (1 - ab_prev)
    mean = (np.sqrt(a) * xt / (1 - a) + np.sqrt(ab_prev) * x0 / (1 - ab_prev)) / prec
    got_mean, got_var = dj.q_posterior(sched, jnp.asarray(x0, jnp.float32),
                                       jnp.asarray(xt, jnp.float32), t)
    np.testing.assert_allclose(got_var, 1 / prec, rtol=2e-4)
    np.testing.assert_allclose(got_mean, mean, rtol=2e-4, atol=1e-6)


def test_posterior_at_t1_is_x0():
    sched = SCHEDULES["cosine"]
    x0 = jnp.array([[0.5, -0.5]])
    mean, var = dj.q_posterior(sched, x0, x0 + 0.3, 1)
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    assert float(var) == 0.0


def test_bridge_equals_bayes_rule():
    sched = SCHEDULES["linear"]
    t = 40
    x_prev, x_next = jnp.array([0.2]), jnp.array([-0.5])
    grid = jnp.linspace(-3, 3, 200_001)
    logw = dj.gaussian_log_prob(grid, jnp.sqrt(sched.alphas[t]) * x_prev, sched.betas[t])
    logw += dj.gaussian_log_prob(x_next, jnp.sqrt(sched.alphas[t + 1]) * grid, sched.betas[t + 1])
    w = np.exp(np.asarray(logw, np.float64) - float(logw.max()))
    w /= w.sum()
    g = np.asarray(grid, np.float64)
    mean, var = dj.q_bridge(sched, x_prev, x_next, t)
    np.testing.assert_allclose(float(mean[0]), (w * g).sum(), rtol=1e-3)
    np.testing.assert_allclose(float(var), (w * g**2).sum() - (w * g).sum() ** 2, rtol=1e-3)


def test_q_sample_is_reparameterized_marginal():
    sched = SCHEDULES["linear"]
    x0, noise = jnp.ones((2, 3)), jnp.full((2, 3), 0.5)
    t = jnp.array([5, 150])
    xt = dj.q_sample(sched, x0, t, noise)
    for i in range(2):
        ab = sched.alpha_bars[t[i]]
        np.testing.assert_allclose(xt[i], np.sqrt(ab) + np.sqrt(1 - ab) * 0.5, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.9, 0.99])
def test_seed_variance_derivation(alpha):
    a = np.sqrt(alpha)
    n, steps = 20_000, 400
    for b, limit in ((np.sqrt(1 - alpha), 1.0), (1 - alpha, 1 - alpha)):  # correct vs printed
        xs = dj.constant_coefficient_chain(jax.random.key(3), a, b, jnp.zeros((n,)), steps)
        for t in (1, 5, 50, steps):
            expected = float(dj.constant_coefficient_chain_variance(a, b, t))
            np.testing.assert_allclose(float(xs[t - 1].var()), expected,
                                       rtol=5 * np.sqrt(2 / n))
        np.testing.assert_allclose(float(dj.constant_coefficient_chain_variance(a, b, 10**6)),
                                   limit, rtol=1e-4)
    # Only b = √(1 − α) keeps the stationary variance at one.
    assert abs(float(dj.constant_coefficient_chain_variance(a, 1 - alpha, 10**6)) - 1) > 0.05


def test_timestep_errors():
    sched = SCHEDULES["linear"]
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.200"):
        dj.q_step(sched, x, 0)
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.200"):
        dj.q_posterior(sched, x, x, 201)
    with pytest.raises(ValueError, match=r"t must lie in 0\.\.200"):
        dj.q_marginal(sched, x, jnp.array([3, 500]))
    with pytest.raises(TypeError, match="integer timestep"):
        dj.q_marginal(sched, x, 1.5)
    with pytest.raises(ValueError, match="indexes the batch axis"):
        dj.q_marginal(sched, x, jnp.array([1, 2, 3]))


def test_shape_mismatch_errors():
    sched = SCHEDULES["linear"]
    with pytest.raises(ValueError, match=r"x0 \(2, 3\), x_t \(2, 4\)"):
        dj.q_posterior(sched, jnp.zeros((2, 3)), jnp.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="noise"):
        dj.q_sample(sched, jnp.zeros((2, 3)), 5, jnp.zeros((3,)))
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        dj.q_marginal(sched, jnp.zeros((2,), jnp.int32), 5)
