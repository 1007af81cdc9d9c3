"""The single-t bound (vlb_term_at, vlb_term, vlb_estimate) and eps_mse, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_case import GaussianData

import diffusion_jax as dj
from diffusion_jax import elbo as elbo_lib

DATA = GaussianData(mu0=0.3, s0=0.5)
SCHED = dj.linear_schedule(10, beta_1=1e-2, beta_T=0.3)


def _toy_reverse(sched, w=0.3, c=-0.2):
    """ε_θ(x_t, t) = tanh(w x_t + c t/T), σ_t² = β_t; t of shape (B,)."""

    def reverse_fn(x_t, t):
        assert t.shape == (x_t.shape[0],) and t.dtype == jnp.int32
        t_b = t.reshape((-1,) + (1,) * (x_t.ndim - 1))
        eps = jnp.tanh(w * x_t + c * t_b / sched.T)
        return dj.p_mean_from_eps(sched, x_t, t, eps), dj.schedules.at(sched.betas, t, x_t)

    return reverse_fn


def test_vlb_term_at_is_the_decoder_nll_at_t1_and_the_kl_after():
    x0 = 2 * jnp.round(jax.random.uniform(jax.random.key(0), (6, 2, 3)) * 16) / 16 - 1
    x_t = x0 + 0.3 * jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.array([1, 2, 3, 1, 10, 5], jnp.int32)
    mean, var = _toy_reverse(SCHED)(x_t, t)
    # By hand in float64: q(x_{t−1} | x_t, x_0) from the tables, KL and log densities.
    x0_, xt_, m_, v_ = (np.asarray(a, np.float64).reshape(6, -1) for a in (x0, x_t, mean, var))
    ab, om = np.asarray(SCHED.alpha_bars, np.float64), np.asarray(SCHED.one_minus_alpha_bars, np.float64)
    b, a = np.asarray(SCHED.betas, np.float64), np.asarray(SCHED.alphas, np.float64)
    tt = np.asarray(t)[:, None]
    q_mean = (np.sqrt(ab[tt - 1]) * b[tt] * x0_ + np.sqrt(a[tt]) * om[tt - 1] * xt_) / om[tt]
    q_var = om[tt - 1] * b[tt] / om[tt]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = 0.5 * (np.log(v_ / q_var) + (q_var + (q_mean - m_) ** 2) / v_ - 1).sum(1)
    gauss_nll = 0.5 * (np.log(2 * np.pi * v_) + (x0_ - m_) ** 2 / v_).sum(1)
    expected = np.where(tt[:, 0] == 1, gauss_nll, kl)
    vlb_term_at = jax.jit(dj.vlb_term_at, static_argnames=("decoder", "num_levels"))
    got = vlb_term_at(SCHED, x0, x_t, t, mean, var, decoder="gaussian")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    disc = vlb_term_at(SCHED, x0, x_t, t, mean, var, decoder="discretized", num_levels=17)
    disc_nll = -dj.discretized_gaussian_log_prob(x0, mean, var, 17).reshape(6, -1).sum(1)
    np.testing.assert_allclose(disc, np.where(tt[:, 0] == 1, disc_nll, kl), rtol=1e-5, atol=1e-5)


def test_vlb_terms_sum_to_the_exact_gaussian_elbo():
    """Σ_t E[L_t] + prior KL = −ELBO: each term's mean over 4000 replicas, at every t = 1..T."""
    x0 = jnp.full((4000, 1), 0.8)
    rfn = DATA.reverse_fn(SCHED)
    terms = jax.jit(jax.vmap(lambda t: dj.vlb_term(rfn, SCHED, x0, t, jax.random.fold_in(
        jax.random.key(2), t), decoder="gaussian")))(jnp.arange(1, SCHED.T + 1))  # (T, B)
    mean = float(terms.mean(1).sum() + dj.prior_kl(SCHED, x0)[0])
    se = float(np.sqrt((np.asarray(terms).var(1, ddof=1) / terms.shape[1]).sum()))
    exact = -DATA.exact_elbo(SCHED, 0.8)
    assert abs(mean - exact) < 4 * se + 1e-4, (mean, exact, se)
    assert se < 0.02


def test_mixed_t_in_one_batch_equals_one_t_at_a_time():
    """t (B,) indexes the batch: entry i of a mixed-t batch equals a batch of one t, same key."""
    x0 = jax.random.uniform(jax.random.key(3), (4, 3, 2), minval=-1, maxval=1)
    keys = jax.random.split(jax.random.key(4), 4)
    t = jnp.array([1, 2, 7, 10], jnp.int32)
    vlb_term = jax.jit(lambda t: dj.vlb_term(_toy_reverse(SCHED), SCHED, x0, t, keys,
                                             decoder="gaussian"))
    mixed = vlb_term(t)
    for i in range(4):
        one = vlb_term(jnp.full((4,), t[i]))
        np.testing.assert_allclose(mixed[i], one[i], rtol=1e-6)


def test_vlb_estimate_is_prior_plus_weighted_term():
    x0 = jax.random.uniform(jax.random.key(5), (8, 4), minval=-1, maxval=1)
    keys = jax.random.split(jax.random.key(6), 8)
    rfn = _toy_reverse(SCHED)
    out = dj.vlb_estimate(rfn, SCHED, x0, keys, decoder="gaussian")
    t_draw, _ = dj.per_example_noise(keys, x0, SCHED.T)  # the same t as l_simple draws
    np.testing.assert_array_equal(out["t"], t_draw)
    np.testing.assert_allclose(out["weights"], 10.0)
    term = dj.vlb_term(rfn, SCHED, x0, out["t"], keys, decoder="gaussian")
    np.testing.assert_allclose(out["term"], term, rtol=1e-6)
    np.testing.assert_allclose(out["neg_elbo"], dj.prior_kl(SCHED, x0) + 10.0 * term, rtol=1e-6)
    w = jnp.linspace(1.0, 3.0, 8)
    given = dj.vlb_estimate(rfn, SCHED, x0, keys, decoder="gaussian", t=out["t"], weights=w)
    np.testing.assert_allclose(given["neg_elbo"], out["prior_matching"] + w * term, rtol=1e-6)
    with pytest.raises(ValueError, match="no weights"):
        dj.vlb_estimate(rfn, SCHED, x0, keys, decoder="gaussian", t=out["t"])


def test_vlb_gradients_finite_at_every_t():
    x0 = 2 * jnp.round(jax.random.uniform(jax.random.key(7), (10, 4)) * 16) / 16 - 1
    t = jnp.arange(1, 11, dtype=jnp.int32)

    def loss(w):
        terms = dj.vlb_term(_toy_reverse(SCHED, w=w), SCHED, x0, t, jax.random.key(8),
                            decoder="discretized", num_levels=17)
        return terms.sum(), terms

    (_, terms), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(0.3)
    assert np.all(np.isfinite(terms)) and np.isfinite(grad) and grad != 0


def test_ddpm_form_keeps_its_numbers():
    """Golden values: diffusion_elbo(form="ddpm") before the single-t bound and the t convention
    change (t scalar then, (B,) now) gave exactly these totals on this model."""
    sched = dj.cosine_schedule(20)

    def rfn(x_t, t):
        t_b = t.reshape((-1,) + (1,) * (x_t.ndim - 1))
        eps = jnp.tanh(0.5 * x_t + 0.1 * t_b / 20)
        return (dj.p_mean_from_eps(sched, x_t, t, eps),
                jnp.maximum(dj.schedules.at(sched.betas, t, x_t), 1e-5))

    x0 = 2 * jnp.round(jax.random.uniform(jax.random.key(3), (4, 5)) * 16) / 16 - 1
    golden = {"gaussian": [-727.3508, -2213.0417, -239.32516, -1117.6595],
              "discretized": [-737.83984, -2223.4966, -249.19037, -1127.2428]}
    elbo = jax.jit(lambda x, decoder: dj.diffusion_elbo(rfn, sched, x, jax.random.key(4),
                                                        decoder=decoder, num_levels=17)["total"],
                   static_argnums=1)
    for decoder, expected in golden.items():
        np.testing.assert_allclose(elbo(x0, decoder), expected, rtol=2e-6)


def test_eps_mse_and_l_simple_share_one_formula():
    noise = jax.random.normal(jax.random.key(9), (3, 4, 2))
    eps_hat = 0.5 * noise + 0.1
    per = ((noise - eps_hat) ** 2).reshape(3, -1)
    np.testing.assert_allclose(dj.eps_mse(noise, eps_hat), per.mean(1), rtol=1e-6)
    np.testing.assert_allclose(dj.eps_mse(noise, eps_hat, reduce="sum"), per.sum(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"eps_hat must have the noise's shape \(3, 4, 2\)"):
        dj.eps_mse(noise, eps_hat[..., :1])
    x0 = jax.random.uniform(jax.random.key(10), (3, 4, 2), minval=-1, maxval=1)
    keys = jax.random.split(jax.random.key(11), 3)
    t, eps = dj.per_example_noise(keys, x0, SCHED.T)
    x_t = dj.q_sample(SCHED, x0, t, eps)
    np.testing.assert_allclose(dj.l_simple(lambda x, tt: 0.2 * x, SCHED, x0, keys),
                               dj.eps_mse(eps, 0.2 * x_t), rtol=1e-6)


def test_inner_terms_are_not_rechecked_inside_the_vmap():
    """diffusion_elbo checks once; the per-t terms it maps over carry no range checks (one
    run-time check per reverse_fn call remains: the model's variance)."""
    rfn = lambda x_t, t: (0.9 * x_t, dj.schedules.at(SCHED.betas, t, x_t))
    x0 = jnp.zeros((2, 3))
    jaxpr = str(jax.make_jaxpr(lambda x: dj.diffusion_elbo(rfn, SCHED, x, jax.random.key(0)))(x0))
    # checks: x0 finite (1) + the variance of the t = 1 call (1) + the variance in the mapped term (1)
    assert jaxpr.count("check[") == 3, jaxpr.count("check[")
    # Called on its own, a public term checks its t (a traced one under checked mode).
    term = jax.make_jaxpr(lambda t: elbo_lib.denoising_matching_term(
        rfn, SCHED, x0, t, jax.random.key(0)))(3)
    assert str(term).count("check[") == 2  # t in 2..T, the variance (x0 is concrete here)
