import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
