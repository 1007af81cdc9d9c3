"""Importance sampling of t: the loss-second-moment state, its probabilities, and the single-t
estimate it weights — unbiased for the full bound, with a lower variance than uniform t."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_case import GaussianData

import diffusion_jax as dj
from diffusion_jax import timestep_sampling as ts

DATA = GaussianData(mu0=0.3, s0=0.5)
# T = 20 with β from 1e-3: the terms span three orders of magnitude (L_1 ≈ −2.0, L_2 ≈ 1.4,
# L_20 ≈ 0.002 nats), the case importance sampling is for.
SCHED = dj.linear_schedule(20, beta_1=1e-3, beta_T=0.3)
N = 20000  # replicas of one data point: each is an independent draw of the estimator


def _reference_history(T, K, batches):
    """improved-diffusion's LossSecondMomentResampler.update_with_all_losses, one pair at a time."""
    hist, counts = np.zeros((T, K)), np.zeros(T, int)
    for t, losses in batches:
        for ti, li in zip(np.asarray(t), np.asarray(losses), strict=True):
            if counts[ti - 1] == K:
                hist[ti - 1, :-1] = hist[ti - 1, 1:]
                hist[ti - 1, -1] = li
            else:
                hist[ti - 1, counts[ti - 1]] = li
                counts[ti - 1] += 1
    return hist, counts


def test_update_equals_the_sequential_reference_with_repeated_t():
    T, K = 5, 3
    rng = np.random.default_rng(0)
    batches = [(rng.integers(1, T + 1, 16), rng.normal(size=16).astype(np.float32))
               for _ in range(4)]  # 16 draws over 5 values: every t repeats, often more than K
    update = jax.jit(ts.update)
    state = ts.init(T, history_size=K)
    for i, (t, losses) in enumerate(batches):
        state = update(state, jnp.asarray(t, jnp.int32), jnp.asarray(losses))
        hist, counts = _reference_history(T, K, batches[: i + 1])
        np.testing.assert_array_equal(state.count, counts)
        for row in range(T):  # the same values per t (a ring buffer orders them differently)
            np.testing.assert_allclose(np.sort(np.asarray(state.history[row, : counts[row]])),
                                       np.sort(hist[row, : counts[row]]), rtol=1e-6)
    assert bool(ts.is_warm(state))


def test_probabilities_uniform_until_warm_then_root_mean_square():
    T, K = 4, 2
    state = ts.init(T, history_size=K)
    state = ts.update(state, jnp.array([1, 2, 3, 4, 1, 2, 3], jnp.int32),
                      jnp.array([1.0, 2.0, 0.5, 4.0, 3.0, -2.0, 0.5]))
    np.testing.assert_allclose(ts.probabilities(state), 0.25)  # t = 4 holds one value of K = 2
    state = ts.update(state, jnp.array([4], jnp.int32), jnp.array([8.0]))
    rms = np.sqrt([(1 + 9) / 2, (4 + 4) / 2, 0.25, (16 + 64) / 2])
    expected = 0.999 * rms / rms.sum() + 0.001 / T
    np.testing.assert_allclose(ts.probabilities(state), expected, rtol=1e-6)
    t, w = jax.jit(ts.sample, static_argnums=2)(state, jax.random.key(0), 40000)
    assert t.dtype == jnp.int32 and int(t.min()) >= 1 and int(t.max()) <= T
    np.testing.assert_allclose(w, 1.0 / expected[np.asarray(t) - 1], rtol=1e-6)
    freq = np.bincount(np.asarray(t) - 1, minlength=T) / t.size
    np.testing.assert_array_less(np.abs(freq - expected), 4 * np.sqrt(expected / t.size))


def test_single_t_variance_formula():
    per_t = jnp.array([[3.0, 1.0, 0.1], [-1.0, 2.0, 0.5]])
    p = jnp.array([0.5, 0.3, 0.2])
    t = jax.random.categorical(jax.random.key(1), jnp.log(p), shape=(200000,))
    draws = np.asarray(per_t[:, t] / p[t])  # (2, R)
    np.testing.assert_allclose(ts.single_t_variance(per_t, p), draws.var(1), rtol=2e-2)
    # Uniform p: T Σ L_t² − (Σ L_t)².
    np.testing.assert_allclose(ts.single_t_variance(per_t), 3 * (per_t**2).sum(1)
                               - per_t.sum(1) ** 2, rtol=1e-6)


@pytest.fixture(scope="module")
def estimates():
    """Uniform-t and importance-sampled single-t estimates of −ELBO (N draws each), the state."""
    rfn = DATA.reverse_fn(SCHED)
    x0 = jnp.full((N, 1), 0.8)
    estimate = jax.jit(lambda key, t, w: dj.vlb_estimate(rfn, SCHED, x0, key, decoder="gaussian",
                                                         t=t, weights=w))
    uniform = jax.jit(lambda key: dj.vlb_estimate(rfn, SCHED, x0, key, decoder="gaussian"))
    # Warm the state the way a trainer does: uniform t until every t holds K losses.
    state = ts.init(SCHED.T)
    warm_up = uniform(jax.random.key(1))
    state = jax.jit(ts.update)(state, warm_up["t"][:2000], warm_up["term"][:2000])
    assert bool(ts.is_warm(state))
    t, w = ts.sample(state, jax.random.key(2), N)
    full = jax.jit(lambda x: dj.diffusion_elbo(rfn, SCHED, x, jax.random.key(5))["total"])
    return {"uniform": np.asarray(uniform(jax.random.key(3))["neg_elbo"], np.float64),
            "importance": np.asarray(estimate(jax.random.key(4), t, w)["neg_elbo"], np.float64),
            "full": -np.asarray(full(x0), np.float64),
            "state": state, "rfn": rfn}


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_single_t_estimate_is_unbiased(estimates, sampler):
    """Mean of N draws = −ELBO: the closed form, and the full T-term diffusion_elbo."""
    values = estimates[sampler]
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(values.size)
    exact = -DATA.exact_elbo(SCHED, 0.8)  # 0.733 nats
    assert abs(mean - exact) < 4 * se, (sampler, mean, se, exact)
    full = estimates["full"]
    full_mean, full_se = full.mean(), full.std(ddof=1) / np.sqrt(full.size)
    assert abs(mean - full_mean) < 4 * np.hypot(se, full_se), (mean, full_mean)
    print(f"{sampler}: {mean:.4f} ± {se:.4f}; exact {exact:.4f}; full bound {full_mean:.4f} ± "
          f"{full_se:.4f}")


def test_importance_sampling_lowers_the_variance(estimates):
    """Measured: Var(uniform) ≈ 160, Var(importance) ≈ 30 nats², a ratio of about 0.19."""
    p = np.asarray(ts.probabilities(estimates["state"]))
    assert p.max() / p.min() > 100  # a far from uniform state
    ratio = estimates["importance"].var() / estimates["uniform"].var()
    print(f"Var uniform {estimates['uniform'].var():.1f}, importance "
          f"{estimates['importance'].var():.1f}, ratio {ratio:.3f}")
    assert ratio < 0.4, ratio


def test_monte_carlo_moments_measures_per_example_variance(estimates):
    """The helper the lead can run on a trained model: R draws per example via lax.map."""
    rfn = estimates["rfn"]
    x0 = jnp.asarray([[0.8], [-0.4]])
    keys = jax.random.split(jax.random.key(6), 4000)
    out = jax.jit(lambda k: ts.monte_carlo_moments(lambda kk: dj.vlb_estimate(
        rfn, SCHED, x0, kk, decoder="gaussian")["neg_elbo"], k))(keys)
    exact = -np.array([DATA.exact_elbo(SCHED, 0.8), DATA.exact_elbo(SCHED, -0.4)])
    np.testing.assert_array_less(np.abs(out["mean"] - exact), 4 * out["mean_se"])
    # Example 0 is the fixture's data point: the same variance as its N replicas (±10 %).
    np.testing.assert_allclose(out["var"][0], estimates["uniform"].var(), rtol=0.1)
