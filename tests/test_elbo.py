"""The diffusion ELBO: every form against the exact Gaussian case, and its transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_case import GaussianData

import diffusion_jax as dj
from diffusion_jax import elbo as elbo_lib

DATA = GaussianData(mu0=0.3, s0=0.5)
CASES = {
    "T10": dj.linear_schedule(10, beta_1=1e-2, beta_T=0.3),
    "T1000": dj.linear_schedule(1000),
}
N_PER_POINT = 1000
POINTS = (-0.4, 0.8)


def _x0():
    return jnp.repeat(jnp.asarray(POINTS, jnp.float32), N_PER_POINT)[:, None]


@pytest.fixture(scope="module")
def estimates():
    """Every form on Gaussian data with the exact reverse process: {(case, form): (B,) totals}."""
    out = {}
    for case, sched in CASES.items():
        fn = jax.jit(lambda key, form, s=sched: dj.diffusion_elbo(
            DATA.reverse_fn(s), s, _x0(), key, form=form)["total"], static_argnums=1)
        for form in elbo_lib.FORMS:
            out[case, form] = np.asarray(fn(jax.random.key(7), form)).reshape(len(POINTS), -1)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("form", ["ddpm", "consistency", "monte_carlo"])
def test_forms_equal_exact_elbo_and_bound_log_likelihood(estimates, case, form):
    sched = CASES[case]
    for i, x0 in enumerate(POINTS):
        values = estimates[case, form][i]
        mean, se = values.mean(), values.std() / np.sqrt(values.size)
        exact_elbo = DATA.exact_elbo(sched, x0)
        log_p = DATA.exact_log_likelihood(sched, x0)
        assert exact_elbo <= log_p + 5e-5  # closed forms from float32 tables; T=1000 gap ~1e-8
        assert abs(mean - exact_elbo) < 4 * se + 1e-3, (x0, mean, se, exact_elbo)
        assert mean <= log_p + 4 * se + 1e-3


def test_elbo_gap_closes_when_prior_matches():
    # T = 1000: q(x_T | x_0) ≈ N(0, 1), so the exact ELBO and log p(x_0) agree to 1e-4 nats.
    sched = CASES["T1000"]
    for x0 in POINTS:
        assert abs(DATA.exact_elbo(sched, x0) - DATA.exact_log_likelihood(sched, x0)) < 1e-4
    # T = 10 with a mismatched prior leaves a visible gap: the bound is strict.
    sched = CASES["T10"]
    assert DATA.exact_log_likelihood(sched, 0.8) - DATA.exact_elbo(sched, 0.8) > 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_consistency_form_is_not_the_elbo(estimates, case):
    """Measured (x_0 = 0.8, seed 7): T = 10 gives about −6.1 nats where the exact ELBO is −0.76;
    T = 1000 gives about −983 nats against −0.73. The printed form treats x_t as independent of
    x_{t+1}, so every one of its T − 1 terms is biased."""
    sched = CASES[case]
    values = estimates[case, "consistency_as_printed"][1]
    mean, se = values.mean(), values.std() / np.sqrt(values.size)
    gap = DATA.exact_elbo(sched, 0.8) - mean
    assert gap > 20 * se and gap > 4.0


def test_monte_carlo_has_lowest_variance_for_the_exact_model(estimates):
    # With the exact reverse process, log p(x_{0:T}) − log q(x_{1:T}|x_0) depends on x_T only.
    for case in CASES:
        sds = {f: estimates[case, f].std(axis=1).mean() for f in ("ddpm", "consistency",
                                                                   "monte_carlo")}
        assert sds["monte_carlo"] < sds["ddpm"] and sds["monte_carlo"] < sds["consistency"]


def _toy_reverse(params, sched):
    """A tiny ε-model ε_θ(x_t, t) = tanh(w x_t + c t/T): stands in for a network (t: (B,))."""

    def reverse_fn(x_t, t):
        assert t.shape == (x_t.shape[0],) and t.dtype == jnp.int32  # the package's t convention
        t_b = t.reshape((-1,) + (1,) * (x_t.ndim - 1))  # (B, 1, ..., 1)
        eps = jnp.tanh(params["w"] * x_t + params["c"] * t_b / sched.T)
        var = jnp.maximum(dj.schedules.at(sched.betas, t, x_t), 1e-5)
        return dj.p_mean_from_eps(sched, x_t, t, eps), var

    return reverse_fn


@pytest.mark.parametrize("form", elbo_lib.FORMS)
def test_chunked_vmap_equals_python_loop_over_t(form):
    sched = dj.linear_schedule(12)
    params = {"w": jnp.float32(0.3), "c": jnp.float32(-0.2)}
    x0 = jax.random.uniform(jax.random.key(0), (3, 2, 2), minval=-1, maxval=1)
    key = jax.random.key(1)
    rfn = _toy_reverse(params, sched)
    out = {c: dj.diffusion_elbo(rfn, sched, x0, key, form=form, chunk_size=c) for c in (1, 5, 64)}
    for c in (5, 64):
        np.testing.assert_allclose(out[c]["total"], out[1]["total"], rtol=1e-5)
    if form == "ddpm":
        key_terms = jax.random.split(key, 3)[2]
        loop = sum(elbo_lib.denoising_matching_term(rfn, sched, x0, t,
                                                    jax.random.fold_in(key_terms, t))
                   for t in range(2, sched.T + 1))
        np.testing.assert_allclose(out[5]["denoising_matching"], loop, rtol=1e-5)


def test_per_t_terms_sum_to_the_total():
    sched = dj.cosine_schedule(20)
    rfn = _toy_reverse({"w": jnp.float32(0.5), "c": jnp.float32(0.1)}, sched)
    x0 = jax.random.uniform(jax.random.key(3), (4, 5), minval=-1, maxval=1)
    for form in ("ddpm", "consistency"):
        out = dj.diffusion_elbo(rfn, sched, x0, jax.random.key(4), form=form, return_per_t=True)
        assert out["per_t"].shape == (4, 20)
        if form == "ddpm":
            expected = -out["total"] - out["prior_matching"]
        else:
            expected = -out["total"]
        np.testing.assert_allclose(out["per_t"].sum(1), expected, rtol=1e-5)


def test_jit_equals_eager():
    sched = dj.linear_schedule(15)
    rfn = _toy_reverse({"w": jnp.float32(0.3), "c": jnp.float32(0.4)}, sched)
    x0 = jax.random.uniform(jax.random.key(5), (2, 3), minval=-1, maxval=1)
    for form in elbo_lib.FORMS:
        eager = dj.diffusion_elbo(rfn, sched, x0, jax.random.key(6), form=form)["total"]
        jitted = jax.jit(lambda x, form=form: dj.diffusion_elbo(
            rfn, sched, x, jax.random.key(6), form=form)["total"])(x0)
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sched", [dj.linear_schedule(50), dj.cosine_schedule(50)],
                         ids=["linear", "cosine"])
@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_losses_and_gradients_finite_at_every_t(sched, decoder):
    x0 = 2 * jnp.round(jax.random.uniform(jax.random.key(8), (3, 4)) * 16) / 16 - 1
    params = {"w": jnp.float32(0.3), "c": jnp.float32(0.2)}

    def loss(p):
        out = dj.diffusion_elbo(_toy_reverse(p, sched), sched, x0, jax.random.key(9),
                                decoder=decoder, num_levels=17, return_per_t=True)
        return -out["total"].mean(), out["per_t"]

    (value, per_t), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert np.isfinite(value) and np.all(np.isfinite(per_t))
    assert all(np.isfinite(g) and g != 0 for g in jax.tree.leaves(grads))
    for t in (1, 2, sched.T):
        g = jax.grad(lambda p, t=t: dj.l_simple(
            lambda x, tt: jnp.tanh(p["w"] * x + p["c"] * tt[:, None] / sched.T),
            sched, x0, jax.random.key(0), t=t).mean())(params)
        assert all(np.isfinite(v) for v in jax.tree.leaves(g))


def test_discretized_reconstruction_is_a_log_probability():
    sched = dj.linear_schedule(100)
    x0 = 2 * jnp.arange(17, dtype=jnp.float32)[None, :] / 16 - 1
    rfn = lambda x_t, t: (jnp.clip(x_t, -1, 1), dj.schedules.at(sched.betas, t, x_t))
    out = dj.diffusion_elbo(rfn, sched, x0, jax.random.key(0), decoder="discretized",
                            num_levels=17)
    assert float(out["reconstruction"][0]) <= 0.0
    assert float(out["prior_matching"][0]) >= 0.0


@pytest.mark.parametrize("var_shape", ["scalar", "per_example", "full"])
def test_summed_kl_equals_elementwise_kl_summed(var_shape):
    """summed_gaussian_kl (variance part on the variances' own shapes) = Σ_events gaussian_kl."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
    shape = (3, 4, 5, 1)
    m1, m2 = jax.random.normal(k1, shape), jax.random.normal(k2, shape)
    v_shape = {"scalar": (), "per_example": (3, 1, 1, 1), "full": shape}[var_shape]
    v1 = jnp.exp(jax.random.normal(k3, v_shape))
    v2 = jnp.exp(jax.random.normal(k4, v_shape))
    expected = elbo_lib.sum_over_events(dj.gaussian_kl(m1, v1, m2, v2))
    got = elbo_lib.summed_gaussian_kl(m1, m1, v1, m2, v2)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-5)
    assert got.shape == (3,)


def test_bits_per_dim():
    np.testing.assert_allclose(dj.bits_per_dim(-np.log(2) * 784 * 3.0, 784), 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match="num_dims"):
        dj.bits_per_dim(1.0, 0)


def test_l_simple_matches_definition_and_per_example_keys():
    sched = dj.linear_schedule(100)
    x0 = jax.random.uniform(jax.random.key(0), (8, 3), minval=-1, maxval=1)
    eps_fn = lambda x, t: 0.5 * x
    keys = jax.random.split(jax.random.key(1), 8)
    full = dj.l_simple(eps_fn, sched, x0, keys)
    # Per-example keys: the first half of the batch alone gives the same losses.
    np.testing.assert_allclose(dj.l_simple(eps_fn, sched, x0[:4], keys[:4]), full[:4], rtol=1e-6)
    t, noise = dj.per_example_noise(keys, x0, sched.T)
    x_t = dj.q_sample(sched, x0, t, noise)
    np.testing.assert_allclose(full, ((noise - 0.5 * x_t) ** 2).mean(1), rtol=1e-5)
    assert int(t.min()) >= 1 and int(t.max()) <= 100


def test_bad_input_errors():
    sched = dj.linear_schedule(10)
    rfn = lambda x, t: (x, 0.1)
    x0 = jnp.zeros((2, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="form must be one of .* Did you mean 'ddpm'"):
        dj.diffusion_elbo(rfn, sched, x0, key, form="dpm")
    with pytest.raises(ValueError, match="decoder must be one of"):
        dj.diffusion_elbo(rfn, sched, x0, key, decoder="bernoulli")
    with pytest.raises(ValueError, match=r"reverse_fn returned a mean of shape \(2, 4\)"):
        dj.diffusion_elbo(lambda x, t: (jnp.zeros((2, 4)), 0.1), sched, x0, key)
    with pytest.raises(ValueError, match="at least one event dim"):
        dj.diffusion_elbo(rfn, sched, jnp.zeros((2,)), key)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        dj.diffusion_elbo(rfn, sched, jnp.zeros((2, 3), jnp.int32), key)
    with pytest.raises(ValueError, match="chunk_size"):
        dj.diffusion_elbo(rfn, sched, x0, key, chunk_size=0)
    with pytest.raises(ValueError, match="one key per example"):
        dj.l_simple(lambda x, t: x, sched, x0, jax.random.split(key, 3))
