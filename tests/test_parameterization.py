import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj


@pytest.fixture(params=["linear", "cosine"])
def sched(request):
    return dj.linear_schedule(100) if request.param == "linear" else dj.cosine_schedule(100)


def _data(seed=0, shape=(4, 3)):
    k0, k1 = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(k0, shape, minval=-1, maxval=1), jax.random.normal(k1, shape)


def test_x0_from_eps_inverts_q_sample(sched):
    x0, eps = _data()
    t = jnp.array([1, 10, 50, 100])
    x_t = dj.q_sample(sched, x0, t, eps)
    np.testing.assert_allclose(dj.x0_from_eps(sched, x_t, t, eps), x0, atol=2e-4)
    np.testing.assert_allclose(dj.eps_from_x0(sched, x_t, t, x0), eps, atol=2e-3)


def test_p_mean_from_eps_equals_posterior_mean_at_x0_hat(sched):
    x0, eps = _data(1)
    for t in (2, 30, 100):
        x_t = dj.q_sample(sched, x0, t, eps)
        expected, _ = dj.q_posterior(sched, dj.x0_from_eps(sched, x_t, t, eps), x_t, t)
        np.testing.assert_allclose(dj.p_mean_from_eps(sched, x_t, t, eps), expected, atol=1e-4)


def test_v_parameterization_round_trips(sched):
    x0, eps = _data(2)
    t = jnp.array([1, 10, 50, 100])
    x_t = dj.q_sample(sched, x0, t, eps)
    v = dj.v_from_x0_eps(sched, x0, t, eps)
    np.testing.assert_allclose(dj.x0_from_v(sched, x_t, t, v), x0, atol=1e-5)
    np.testing.assert_allclose(dj.eps_from_v(sched, x_t, t, v), eps, atol=1e-5)


def test_conversion_errors(sched):
    with pytest.raises(ValueError, match="shapes must match"):
        dj.p_mean_from_eps(sched, jnp.zeros((2, 3)), 5, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.100"):
        dj.p_mean_from_eps(sched, jnp.zeros((2, 3)), 0, jnp.zeros((2, 3)))
