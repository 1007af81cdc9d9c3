import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_case import GaussianData
from hypothesis import given, settings
from hypothesis import strategies as st

import diffusion_jax as dj


def test_linear_golden_values():
    s = dj.linear_schedule(1000)
    assert s.T == 1000
    assert s.betas.shape == s.alphas.shape == s.alpha_bars.shape == (1001,)
    assert s.betas.dtype == jnp.float32
    np.testing.assert_allclose(s.alpha_bars[1000], 4.036e-5, rtol=1e-3)
    np.testing.assert_allclose(s.posterior_variances[488], 0.0097916, rtol=1e-5)
    np.testing.assert_allclose(s.posterior_variances[1000], 0.0199999, rtol=1e-5)
    np.testing.assert_allclose(s.betas[1], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(s.betas[1000], 0.02, rtol=1e-6)


def test_index_zero_is_no_noise():
    for s in (dj.linear_schedule(10), dj.cosine_schedule(10)):
        assert float(s.betas[0]) == 0.0
        assert float(s.alphas[0]) == 1.0
        assert float(s.alpha_bars[0]) == 1.0


def test_tables_built_in_float64():
    # ᾱ_T is a product of 1000 factors: a float32 cumprod drifts, a float64 one cast does not.
    s = dj.linear_schedule(1000)
    exact = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    np.testing.assert_allclose(np.asarray(s.alpha_bars[1:]), exact.astype(np.float32), rtol=1e-6)


def test_cosine_matches_definition():
    T, s_off = 50, 0.008
    s = dj.cosine_schedule(T, s=s_off)
    f = lambda t: np.cos((t / T + s_off) / (1 + s_off) * np.pi / 2) ** 2
    betas = np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), 0.999)
    np.testing.assert_allclose(s.betas[1:], betas, rtol=1e-5)
    np.testing.assert_allclose(s.alpha_bars[1:], np.cumprod(1 - betas), rtol=1e-5)
    # Without clipping ᾱ_t would be f(t)/f(0); check where no clip applied.
    np.testing.assert_allclose(s.alpha_bars[T // 2], f(T // 2) / f(0), rtol=1e-5)


def test_schedule_is_a_pytree_usable_under_jit():
    s = dj.linear_schedule(20)
    leaves, treedef = jax.tree.flatten(s)
    assert len(leaves) == 4
    f = jax.jit(lambda sched: sched.alpha_bars[sched.T])
    np.testing.assert_allclose(f(s), s.alpha_bars[20])
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.T == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(T=1), "T must be at least 2"),
        (dict(T=10, beta_1=0.0), "beta_1"),
        (dict(T=10, beta_T=1.0), "beta_T"),
        (dict(T=10, beta_1=0.1, beta_T=0.01), "beta_1 must not exceed beta_T"),
    ],
)
def test_linear_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dj.linear_schedule(**kwargs)


def test_bad_T_type_and_betas():
    with pytest.raises(TypeError, match="T must be an int"):
        dj.linear_schedule(10.0)
    with pytest.raises(ValueError, match="T must be at least 2"):
        dj.cosine_schedule(1)
    with pytest.raises(ValueError, match="open interval"):
        dj.schedule_from_betas([0.1, 1.5])


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 400), b1=st.floats(1e-5, 1e-2), ratio=st.floats(1.0, 50.0))
def test_linear_schedule_invariants(T, b1, ratio):
    s = dj.linear_schedule(T, beta_1=b1, beta_T=min(b1 * ratio, 0.5))
    ab = np.asarray(s.alpha_bars)
    assert np.all(np.diff(ab) <= 0) and np.all(ab > 0) and ab[0] == 1.0
    np.testing.assert_allclose(s.alphas, 1 - np.asarray(s.betas), rtol=1e-6)
    pv = np.asarray(s.posterior_variances[1:])
    assert pv[0] == 0.0 and np.all(pv[1:] > 0) and np.all(pv <= np.asarray(s.betas[1:]) + 1e-7)


TABLES = ("betas", "alphas", "alpha_bars", "one_minus_alpha_bars")


def test_log_snr_round_trip():
    """linear schedule -> log SNR_t -> schedule_from_log_snr gives the same tables."""
    betas = np.linspace(1e-4, 0.02, 1000)
    log_ab = np.cumsum(np.log1p(-betas))
    log_snr = log_ab - np.log(-np.expm1(log_ab))  # float64, as the float64 tables are built
    s, r = dj.linear_schedule(1000), dj.schedule_from_log_snr(log_snr)
    assert r.T == 1000 and r.betas.dtype == jnp.float32
    for name in TABLES:
        np.testing.assert_allclose(getattr(r, name), getattr(s, name), rtol=2e-6, err_msg=name)
    # From the schedule's own float32 log SNR (float32 input: ~1e-6 relative in log SNR).
    r32 = dj.schedule_from_log_snr(s.log_snr[1:])
    np.testing.assert_allclose(r32.alpha_bars, s.alpha_bars, rtol=1e-5)
    np.testing.assert_allclose(r32.betas, s.betas, rtol=2e-4)
    np.testing.assert_allclose(r.log_snr[1:], log_snr, rtol=1e-5, atol=1e-5)


def test_jit_gives_the_eager_tables():
    betas = np.linspace(1e-3, 0.2, 30).astype(np.float32)
    log_snr = np.asarray(dj.linear_schedule(30, 1e-3, 0.2).log_snr[1:])
    for build, arg in ((dj.schedule_from_betas, betas), (dj.schedule_from_log_snr, log_snr)):
        eager, jitted = build(arg), jax.jit(build)(jnp.asarray(arg))
        assert jitted.T == eager.T == 30
        for name in TABLES:
            np.testing.assert_allclose(getattr(jitted, name), getattr(eager, name), rtol=2e-5,
                                       atol=1e-7, err_msg=(build.__name__, name))


def test_grad_through_schedule_from_betas():
    betas = jnp.linspace(1e-3, 0.2, 10)
    g = jax.grad(lambda b: dj.schedule_from_betas(b).alpha_bars[-1])(betas)
    ab_T = np.prod(1 - np.asarray(betas, np.float64))
    np.testing.assert_allclose(g, -ab_T / (1 - np.asarray(betas, np.float64)), rtol=1e-5)


def test_grad_of_the_full_elbo_wrt_a_learned_log_snr_schedule():
    """A monotone log SNR from softplus increments; jax.grad of diffusion_elbo (fixed key, the
    exact-Gaussian reverse process of the same schedule) = a central finite difference."""
    data = GaussianData(mu0=0.3, s0=0.5)
    x0 = jnp.linspace(-1.0, 1.0, 64)[:, None]

    def neg_elbo(theta):
        log_snr = 5.0 - jnp.cumsum(jax.nn.softplus(theta))
        sched = dj.schedule_from_log_snr(log_snr)
        out = dj.diffusion_elbo(data.reverse_fn(sched), sched, x0, jax.random.key(0))
        return -out["total"].mean()

    theta = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.3, 10), jnp.float32)
    value, grad = jax.jit(jax.value_and_grad(neg_elbo))(theta)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.any(grad != 0)
    f = jax.jit(neg_elbo)
    direction = jnp.asarray(np.random.default_rng(1).normal(size=10), jnp.float32)
    h = 1e-2
    fd = (f(theta + h * direction) - f(theta - h * direction)) / (2 * h)
    print(f"directional derivative: grad {float(jnp.dot(grad, direction)):.6f}, central "
          f"difference {float(fd):.6f}")
    np.testing.assert_allclose(jnp.dot(grad, direction), fd, rtol=2e-3)
    for i in (0, 9):  # the first and last coordinates on their own
        e = jnp.zeros(10).at[i].set(h)
        np.testing.assert_allclose(grad[i], (f(theta + e) - f(theta - e)) / (2 * h), rtol=5e-3,
                                   atol=1e-4)


@pytest.mark.parametrize("log_snr, match", [
    ([1.0, 2.0, 0.5], "strictly decreasing"),
    ([1.0, 1.0], "strictly decreasing"),
    ([np.nan, 0.0], "finite"),
    ([[1.0, 0.0]], "one-dimensional"),
    ([1.0], "T must be at least 2"),
])
def test_bad_log_snr(log_snr, match):
    with pytest.raises(ValueError, match=match):
        dj.schedule_from_log_snr(log_snr)
