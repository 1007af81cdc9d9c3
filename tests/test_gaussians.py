import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import diffusion_jax as dj


def test_log_prob_matches_scipy():
    x, m, v = np.array([0.3, -1.0, 2.0]), np.array([0.0, 0.5, 2.5]), np.array([1.0, 0.2, 3.0])
    np.testing.assert_allclose(
        dj.gaussian_log_prob(x, m, v), stats.norm.logpdf(x, m, np.sqrt(v)), rtol=1e-5
    )


def test_kl_matches_monte_carlo():
    m1, v1, m2, v2 = 0.4, 0.3, -0.2, 1.7
    x = dj.sample_gaussian(jax.random.key(0), jnp.full((400_000,), m1), v1)
    mc = dj.gaussian_log_prob(x, m1, v1) - dj.gaussian_log_prob(x, m2, v2)
    se = float(mc.std() / np.sqrt(mc.size))
    assert abs(float(mc.mean()) - float(dj.gaussian_kl(m1, v1, m2, v2))) < 4 * se


def test_kl_broadcasts_scalars_and_is_zero_for_equal():
    m = jnp.linspace(-1, 1, 6).reshape(2, 3)
    kl = dj.gaussian_kl(m, 0.5, 0.0, 1.0)
    assert kl.shape == (2, 3)
    np.testing.assert_allclose(dj.gaussian_kl(m, 0.5, m, 0.5), 0.0, atol=1e-7)


def test_expected_log_prob_matches_monte_carlo():
    mx, vx, m, v = 0.2, 0.5, 1.0, 0.7
    x = dj.sample_gaussian(jax.random.key(1), jnp.full((400_000,), mx), vx)
    mc = dj.gaussian_log_prob(x, m, v)
    se = float(mc.std() / np.sqrt(mc.size))
    assert abs(float(mc.mean()) - float(dj.expected_gaussian_log_prob(mx, vx, m, v))) < 4 * se


def test_sample_gaussian_moments():
    x = dj.sample_gaussian(jax.random.key(2), jnp.full((200_000,), 1.5), 0.25)
    assert abs(float(x.mean()) - 1.5) < 4 * 0.5 / np.sqrt(x.size)
    assert abs(float(x.var()) - 0.25) < 0.005


@pytest.mark.parametrize("num_levels", [2, 17, 256])
@pytest.mark.parametrize("mean, var", [(0.0, 0.01), (0.93, 1e-4), (-3.0, 0.5), (0.2, 4.0)])
def test_discretized_probabilities_sum_to_one(num_levels, mean, var):
    levels = 2 * jnp.arange(num_levels) / (num_levels - 1) - 1
    logp = dj.discretized_gaussian_log_prob(levels, mean, var, num_levels)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(jax.scipy.special.logsumexp(logp), 0.0, atol=2e-5)


def test_discretized_matches_cdf_difference():
    L, mean, var = 256, 0.1, 0.02
    x = 2 * 100 / 255 - 1
    std = np.sqrt(var)
    expected = stats.norm.cdf((x + 1 / 255 - mean) / std) - stats.norm.cdf((x - 1 / 255 - mean) / std)
    np.testing.assert_allclose(
        np.exp(dj.discretized_gaussian_log_prob(jnp.float32(x), mean, var, L)), expected, rtol=1e-4
    )


def test_discretized_is_stable_in_far_tails():
    # A bin 40 standard deviations away: the naive log(Φ(u) − Φ(l)) is log(0) = −inf.
    logp = dj.discretized_gaussian_log_prob(jnp.float32(0.0), 0.8, 1e-4, 256)
    assert np.isfinite(logp) and logp < -1000
    grad = jax.grad(lambda m: dj.discretized_gaussian_log_prob(jnp.float32(0.0), m, 1e-4, 256))(0.8)
    assert np.isfinite(grad)


@settings(max_examples=30, deadline=None)
@given(
    m1=st.floats(-3, 3), v1=st.floats(1e-3, 5), m2=st.floats(-3, 3), v2=st.floats(1e-3, 5)
)
def test_kl_nonnegative(m1, v1, m2, v2):
    assert float(dj.gaussian_kl(m1, v1, m2, v2)) >= -1e-5


def test_discretized_rejects_integer_data():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        dj.discretized_gaussian_log_prob(jnp.arange(3), 0.0, 1.0, 256)
