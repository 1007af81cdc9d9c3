"""Variational diffusion models (diffusion_jax.vdm): schedules, posterior, the bound, checked by numbers.

Gaussian data x ~ N(MU, S²) gives closed forms: E[x | z_t] = MU + k_t (z_t − α_t MU) with
k_t = α_t S² / (α_t² S² + σ_t²), so the exact denoiser is ε̂*(z_t, t) = (z_t − α_t E[x|z_t]) / σ_t
= r_t (z_t − α_t MU) / σ_t with r_t = 1 − α_t k_t = σ_t² / (α_t² S² + σ_t²).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import vdm
from diffusion_jax.elbo import vlb_term_at

MU, S = 0.3, 0.5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def denoiser(gamma_fn, scale=1.0):
    """scale · ε̂* for the Gaussian data, a function of (z_t, γ(t)) only (VDM's invariance)."""

    def eps_fn(z, t):
        g = gamma_fn(t).reshape((-1,) + (1,) * (z.ndim - 1))
        a2, s2 = jax.nn.sigmoid(-g), jax.nn.sigmoid(g)
        r = s2 / (a2 * S**2 + s2)
        return scale * r * (z - jnp.sqrt(a2) * MU) / jnp.sqrt(s2)

    return eps_fn


def random_monotone_params(seed, hidden=1024, noise=1.5):
    params = vdm.monotone_gamma_init(jax.random.key(seed), hidden=hidden)
    keys = iter(jax.random.split(jax.random.key(seed + 100), 8))
    for layer in ("l1", "l2", "l3"):
        params[layer] = {k: v + noise * jax.random.normal(next(keys), v.shape) for k, v in params[layer].items()}
    return params


def skewed_monotone_params(hidden=64):
    """A clearly non-linear monotone γ with VDM's endpoints (−13.3, 5): steep around t ≈ 0.5."""
    params = vdm.monotone_gamma_init(jax.random.key(0), hidden=hidden)
    params["l2"]["w"] = 4.0 * params["l2"]["w"] + 8.0
    params["l3"]["w"] = params["l3"]["w"] + 12.0
    return params


# ----------------------------------------------------------------------------------------------
# Schedules.


def test_fixed_schedules_increase_and_match_the_discrete_ddpm_tables():
    ts = jnp.linspace(0.0, 1.0, 1001)
    for gamma_fn, lo, hi in [(vdm.LinearGamma(), -13.3, 5.0), (vdm.DDPMLinearGamma(), -13.3, 10.05),
                             (vdm.CosineGamma(), -13.3, 20.0)]:
        g = np.asarray(gamma_fn(ts))
        assert np.all(np.diff(g) > 0), type(gamma_fn).__name__
        np.testing.assert_allclose([g[0], g[-1]], [lo, hi], atol=1e-3)
        dg = jax.vmap(jax.grad(gamma_fn))(ts)
        assert np.all(np.isfinite(dg)) and np.all(dg >= 0.0)
    assert vdm.LinearGamma()(1.0) == 5.0 and vdm.LinearGamma()(0) == -13.3

    T = 1000
    t = jnp.arange(1, T + 1, dtype=jnp.float32) / T
    # The continuous limit of DDPM's linear β (−log ᾱ(t) = β_1 T t + ½(β_T − β_1) T t²) is within
    # 0.11 of the 1000-step table in γ (measured 0.110 at t = 1/T, 0.068 at t = 1).
    ddpm = vdm.DDPMLinearGamma(gamma_floor=-40.0)(t) + dj.linear_schedule(T).log_snr[1:]
    assert float(jnp.max(jnp.abs(ddpm))) < 0.12
    # The cosine schedule is the same function of t as dj.cosine_schedule (up to its β clip at T).
    cos = vdm.CosineGamma(gamma_floor=-40.0, gamma_ceiling=40.0)(t) + dj.cosine_schedule(T).log_snr[1:]
    np.testing.assert_allclose(cos[:-1], 0.0, atol=2e-3)


def test_monotone_gamma_increases_with_exact_endpoints_and_finite_grads():
    ts = jnp.linspace(0.0, 1.0, 1001)
    gamma = jax.jit(vdm.monotone_gamma)
    param_grads = jax.jit(jax.grad(lambda p: jnp.sum(vdm.monotone_gamma(p, ts[::50]) ** 2)))
    slopes = jax.jit(jax.vmap(jax.grad(vdm.monotone_gamma, argnums=1), (None, 0)))
    for seed in range(2):
        params = random_monotone_params(seed)
        g = np.asarray(gamma(params, ts))
        assert np.all(np.diff(g) > 0), seed
        assert g[0] == np.float32(-13.3) and g[-1] == np.float32(5.0)
        assert vdm.monotone_gamma(params, 0.0) == np.float32(-13.3)
        assert vdm.monotone_gamma(params, 1) == np.float32(5.0)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(param_grads(params)))
        assert np.all(np.asarray(slopes(params, ts)) > 0)
    # any shape of t; elementwise (vmap over t agrees); the schedule object is a pytree
    params = random_monotone_params(0, hidden=16)
    grid = jnp.linspace(0.0, 1.0, 6).reshape(2, 3)
    np.testing.assert_allclose(vdm.monotone_gamma(params, grid),
                               jax.vmap(lambda t: vdm.monotone_gamma(params, t))(grid.ravel()).reshape(2, 3),
                               rtol=1e-6, atol=1e-5)
    sched = vdm.MonotoneGamma(params)
    assert jax.jit(lambda s, t: s(t))(sched, grid).shape == (2, 3)


# ----------------------------------------------------------------------------------------------
# Forward process and posterior.


@pytest.mark.parametrize("gamma_s, gamma_t", [(-13.3, 5.0), (-2.0, -1.999), (0.5, 3.0), (4.0, 12.0)])
def test_posterior_is_bayes_rule(gamma_s, gamma_t):
    """q(z_s|z_t, x) ∝ q(z_s|x) q(z_t|z_s): precision 1/σ_s² + α²_{t|s}/σ²_{t|s} (float64)."""
    x = np.array([[-0.7], [0.2], [0.9]])
    z_t = np.array([[0.3], [-1.2], [2.0]])
    a2s, s2s, a2t, s2t = sigmoid(-gamma_s), sigmoid(gamma_s), sigmoid(-gamma_t), sigmoid(gamma_t)
    a2ts = a2t / a2s
    s2ts = s2t - a2ts * s2s
    precision = 1.0 / s2s + a2ts / s2ts
    mean = (np.sqrt(a2s) * x / s2s + np.sqrt(a2ts) * z_t / s2ts) / precision
    got = vdm.vdm_posterior(jnp.float32(gamma_s), jnp.float32(gamma_t), jnp.asarray(x, jnp.float32),
                            jnp.asarray(z_t, jnp.float32))
    np.testing.assert_allclose(got.mean, mean, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(got.var, 1.0 / precision, rtol=2e-3)


def test_marginal_and_posterior_match_ddpm_on_its_grid():
    T, B = 20, 4
    sched = dj.linear_schedule(T, beta_1=1e-3, beta_T=0.2)
    gamma_fn = vdm.gamma_from_schedule(sched)
    kx, ke = jax.random.split(jax.random.key(0))
    x, eps = jax.random.normal(kx, (B, 3)), jax.random.normal(ke, (B, 3))
    i = jnp.array([2, 7, 13, 20])
    g_t, g_s = gamma_fn(i / T), gamma_fn((i - 1) / T)
    np.testing.assert_array_equal(g_t, -sched.log_snr[i])
    np.testing.assert_allclose(vdm.vdm_marginal(g_t, x).var[:, 0], sched.one_minus_alpha_bars[i], rtol=1e-5)
    z_t = vdm.vdm_sample(g_t, x, eps)
    np.testing.assert_allclose(z_t, dj.q_sample(sched, x, i, eps), atol=1e-6)
    q, ours = dj.q_posterior(sched, x, z_t, i), vdm.vdm_posterior(g_s, g_t, x, z_t)
    np.testing.assert_allclose(ours.mean, q.mean, atol=1e-5)
    np.testing.assert_allclose(jnp.broadcast_to(ours.var, (B, 1)), q.var, rtol=1e-5)
    # vmap over γ pairs = the batched call
    one = lambda gs, gt, xx, zz: vdm.vdm_posterior(gs, gt, xx[None], zz[None]).mean[0]
    np.testing.assert_allclose(jax.vmap(one)(g_s, g_t, x, z_t), ours.mean, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# (a) L_T against DDPM's denoising matching.


def test_discrete_vdm_terms_equal_ddpm_denoising_kl():
    """(a) VDM with T steps and γ read off a DDPM schedule is DDPM's bound, term by term.

    Mapping: t_i = i/T ↔ DDPM step i, γ(t_i) = −log SNR_i, so VDM's z_{t_i} is DDPM's x_i and
    z_{s_i} (s_i = (i−1)/T) is x_{i−1}. For i ≥ 2 the VDM term ½ expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂‖²
    equals KL(q(x_{i−1}|x_i, x_0) ‖ p_θ(x_{i−1}|x_i)) with p_θ = q(x_{i−1}|x_i, x̂_0(ε̂)) (DDPM's
    ε-model with the posterior variance β̃_i), at the same ε. (i = 1 differs: DDPM's x_0 is the
    data, VDM's z_0 a latent at γ(0) = gamma_0.) Measured: relative difference <= 2e-6.
    """
    T, B = 20, 8
    sched = dj.linear_schedule(T, beta_1=1e-3, beta_T=0.2)
    gamma_fn = vdm.gamma_from_schedule(sched)
    kx, ke = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (B, 3), minval=-1.0, maxval=1.0)
    eps = jax.random.normal(ke, (B, 3))
    A = jnp.array([[0.5, 0.1, 0.0], [0.2, 0.3, -0.1], [0.0, 0.4, 0.6]])
    eps_fn = lambda z, t: z @ A + 0.3 * t[:, None]  # a fixed linear fake ε̂
    ours = vdm.vdm_diffusion_terms_discrete(eps_fn, gamma_fn, x, eps, T=T)  # (B, T)

    def ddpm_term(i):
        t = jnp.full((B,), i)
        x_i = dj.q_sample(sched, x, t, eps)
        kernel = dj.reverse_kernel(eps_fn(x_i, t / T), sched, x_i, t, prediction="eps", variance="beta_tilde")
        return vlb_term_at(sched, x, x_i, t, kernel.mean, kernel.var, decoder="gaussian")

    ref = jax.jit(jax.vmap(ddpm_term, out_axes=1))(jnp.arange(2, T + 1))
    np.testing.assert_allclose(ours[:, 1:], ref, rtol=1e-5)
    assert float(ref.min()) > 0.01  # not a trivial agreement
    sampled = vdm.vdm_diffusion_loss_discrete(eps_fn, gamma_fn, x, jax.random.key(1), T=T)
    assert sampled.shape == (B,) and np.all(np.isfinite(sampled)) and np.all(sampled > 0)


# ----------------------------------------------------------------------------------------------
# (b) L_T → L_∞, and refining the grid never loosens the bound.


def test_discrete_bound_converges_to_continuous_and_tightens_with_refinement():
    """(b) Per path (x, ε fixed, the sum over all i exact): measured on 256 paths with the
    imperfect denoiser 0.8 ε̂* and the linear γ: mean L_∞ = 6.288, mean L_T − L_∞ = 10.42, 0.563,
    0.0534, 0.00531 at T = 10, 100, 1000, 10⁴ (O(1/T)); mean L_T − L_{2T} = 6.79, 0.290, 0.0268,
    0.00266, and L_T − L_{2T} > 0 on every path (min 1.7e-6 at T = 10⁴)."""
    B = 256
    gamma_fn = vdm.LinearGamma()
    eps_fn = denoiser(gamma_fn, 0.8)
    kx, ke = jax.random.split(jax.random.key(1))
    x = MU + S * jax.random.normal(kx, (B, 1))
    eps = jax.random.normal(ke, (B, 1))
    nodes, weights = np.polynomial.legendre.leggauss(100)
    ts = jnp.asarray((nodes + 1.0) / 2.0, jnp.float32)
    integrand = jax.jit(jax.vmap(lambda t: vdm.vdm_diffusion_term_continuous(
        eps_fn, gamma_fn, x, jnp.full((B,), t), eps)))(ts)
    l_inf = np.asarray(integrand, np.float64).T @ (weights / 2.0)  # (B,) Gauss-Legendre on [0, 1]
    l_t = {T: np.asarray(vdm.vdm_diffusion_terms_discrete(eps_fn, gamma_fn, x, eps, T=T, chunk_size=2000)
                         .sum(1), np.float64) for T in (10, 20, 100, 200, 1000, 2000, 10000, 20000)}
    gaps = [np.mean(l_t[T] - l_inf) for T in (10, 100, 1000, 10000)]
    assert all(g > 0 for g in gaps)
    assert all(5.0 < a / b < 20.0 for a, b in zip(gaps[1:], gaps[2:], strict=False))  # O(1/T)
    assert gaps[-1] < 1e-3 * np.mean(l_inf)
    for T in (10, 100, 1000, 10000):
        diff = l_t[T] - l_t[2 * T]
        assert diff.mean() > 4.0 * diff.std() / np.sqrt(B), T
        assert diff.min() > -1e-4 * l_t[T].mean(), T


# ----------------------------------------------------------------------------------------------
# (c) Gaussian data: the continuous bound with the exact denoiser is exact.


def gaussian_case(x, g0, g1):
    """(L_∞ target, recon with the exact Gaussian decoder q(x|z_0), prior) in float64.

    With the exact denoiser the continuous-time model's latents have q's marginals, so with the
    exact decoder −ELBO(x) = −log q(x) + E_{q(z_1|x)}[log q(z_1) − log N(z_1; 0, 1)], hence
    L_∞(x) = that − recon(x) − prior(x).
    """
    a2_0, s2_0 = sigmoid(-g0), sigmoid(g0)
    k = np.sqrt(a2_0) * S**2 / (a2_0 * S**2 + s2_0)
    v0 = S**2 * s2_0 / (a2_0 * S**2 + s2_0)
    recon = 0.5 * (np.log(2 * np.pi * v0) + ((1 - k * np.sqrt(a2_0)) ** 2 * (x - MU) ** 2 + k**2 * s2_0) / v0)
    a2_1, s2_1 = sigmoid(-g1), sigmoid(g1)
    prior = 0.5 * (a2_1 * x**2 + s2_1 - np.log(s2_1) - 1.0)
    m1 = np.sqrt(a2_1) * x

    def expected_log_normal(m, v):
        return -0.5 * (np.log(2 * np.pi * v) + ((m1 - m) ** 2 + s2_1) / v)

    log_q = -0.5 * (np.log(2 * np.pi * S**2) + (x - MU) ** 2 / S**2)
    neg_elbo = -log_q + expected_log_normal(np.sqrt(a2_1) * MU, a2_1 * S**2 + s2_1) - expected_log_normal(0.0, 1.0)
    return neg_elbo - recon - prior, recon, prior


def test_gaussian_data_continuous_bound_with_exact_denoiser():
    """(c) Measured (N = 20000 per point, iid t): x = −0.4: L_∞ 6.461 ± 0.077 vs the closed form
    6.435; x = 0.8: 5.894 ± 0.074 vs 5.956 (both within 1 SE; the test allows 4 SE)."""
    g0, g1 = -13.3, 5.0
    gamma_fn = vdm.LinearGamma(g0, g1)
    # the identity holds: quadrature of ½ ∫ E_ε‖ε − ε̂*‖² dγ (closed form in ε) equals the target
    gs = np.linspace(g0, g1, 200001)
    a2, s2 = sigmoid(-gs), sigmoid(gs)
    r = s2 / (a2 * S**2 + s2)
    N = 20000
    for point, key in [(-0.4, 0), (0.8, 1)]:
        target, _, prior = gaussian_case(point, g0, g1)
        quadrature = 0.5 * np.trapezoid((1 - r) ** 2 + r**2 * a2 * (point - MU) ** 2 / s2, gs)
        np.testing.assert_allclose(quadrature, target, rtol=1e-7)
        x = jnp.full((N, 1), point, jnp.float32)
        loss = np.asarray(vdm.vdm_diffusion_loss_continuous(denoiser(gamma_fn), gamma_fn, x,
                                                            jax.random.key(key), antithetic=False), np.float64)
        se = loss.std() / np.sqrt(N)
        assert abs(loss.mean() - target) < 4.0 * se, (point, loss.mean(), target, se)
        assert se < 0.05 * target
        np.testing.assert_allclose(vdm.vdm_prior_loss(jnp.float32(g1), x[:1]), [prior], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# (d) Invariance of E[L_∞] to the schedule between its endpoints; the variance is not invariant.


def test_continuous_loss_invariant_to_schedule_but_not_its_variance():
    """(d) 0.8 ε̂* (a function of (z, γ) only), x ~ N(MU, S²), N = 20000, iid t. Measured: exact
    E[L_∞] = 6.084 (quadrature); linear γ: 6.007 ± 0.075, variance 112.5; skewed monotone γ (same
    endpoints, other samples): 6.050 ± 0.123, variance 302.2, a factor 2.69."""
    N = 20000
    x = MU + S * jax.random.normal(jax.random.key(3), (N, 1))
    g0, g1 = -13.3, 5.0
    gs = np.linspace(g0, g1, 200001)
    a2, s2 = sigmoid(-gs), sigmoid(gs)
    r = s2 / (a2 * S**2 + s2)
    exact = 0.5 * np.trapezoid((1 - 0.8 * r) ** 2 + 0.64 * r**2 * a2 * S**2 / s2, gs)
    stats = {}
    for name, gamma_fn, key in [("linear", vdm.LinearGamma(g0, g1), 4),
                                ("skewed", vdm.MonotoneGamma(skewed_monotone_params()), 5)]:
        np.testing.assert_allclose(gamma_fn(jnp.array([0.0, 1.0])), [g0, g1], rtol=1e-6)
        loss = np.asarray(vdm.vdm_diffusion_loss_continuous(denoiser(gamma_fn, 0.8), gamma_fn, x,
                                                            jax.random.key(key), antithetic=False), np.float64)
        stats[name] = (loss.mean(), loss.std() / np.sqrt(N), loss.var())
        assert abs(loss.mean() - exact) < 4.0 * stats[name][1], (name, stats[name], exact)
    (m1, se1, v1), (m2, se2, v2) = stats["linear"], stats["skewed"]
    assert abs(m1 - m2) < 4.0 * np.hypot(se1, se2)
    assert v2 / v1 > 1.8, (v1, v2)


# ----------------------------------------------------------------------------------------------
# Prior, decoder, the whole bound, gradients.


def test_prior_and_decoder_match_direct_formulas():
    x = jnp.asarray([[-1.0, 0.0, 1.0], [0.5, -0.5, 0.25]])
    for g1 in (-1.0, 2.0, 12.0):
        a2, s2 = sigmoid(-g1), sigmoid(g1)
        xn = np.asarray(x, np.float64)
        ref = 0.5 * (a2 * xn**2 + s2 - np.log(s2) - 1.0).sum(1)
        np.testing.assert_allclose(vdm.vdm_prior_loss(jnp.float32(g1), x), ref, rtol=1e-4, atol=1e-9)
    # decoder: p(x_k | z_0) ∝ N(z_0; α_0 x_k, σ_0²) over the levels (Bayes with a uniform prior)
    L, g0 = 5, -2.0
    z0 = jnp.asarray([[-1.3, 0.1, 0.77]])
    levels = np.linspace(-1.0, 1.0, L)
    log_lik = -0.5 * (np.asarray(z0, np.float64)[..., None] - np.sqrt(sigmoid(-g0)) * levels) ** 2 / sigmoid(g0)
    ref = log_lik - np.log(np.exp(log_lik).sum(-1, keepdims=True))
    np.testing.assert_allclose(vdm.vdm_decoder_log_probs(jnp.float32(g0), z0, num_levels=L), ref, atol=1e-5)
    # reconstruction picks the data's level: with ε = 0 and a tiny σ_0 it is ≈ 0
    xs = jnp.asarray([[-1.0, 0.5, 1.0]])
    assert float(vdm.vdm_reconstruction_loss(jnp.float32(-13.3), xs, jnp.zeros_like(xs), num_levels=L)[0]) < 1e-6


def _fake_net(params):
    return lambda z, t: jnp.tanh(params["a"] * z + params["b"] * t.reshape((-1,) + (1,) * (z.ndim - 1)))


def test_vdm_elbo_jits_and_grads_are_finite():
    L, B = 17, 4
    x = 2.0 * jax.random.randint(jax.random.key(0), (B, 2, 2, 1), 0, L) / (L - 1) - 1.0
    net = {"a": jnp.float32(0.3), "b": jnp.float32(-0.2)}
    gamma_params = random_monotone_params(1, hidden=32)

    def total(net, gp, T):
        out = vdm.vdm_elbo(_fake_net(net), vdm.MonotoneGamma(gp), x, jax.random.key(2), num_levels=L, T=T)
        return jnp.mean(out["total_nats"]), out

    for T in (None, 10):
        (value, out), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True),
                                      static_argnums=2)(net, gamma_params, T)
        assert set(out) == {"reconstruction", "prior", "diffusion", "total_nats", "bpd"}
        assert all(out[k].shape == (B,) for k in out)
        np.testing.assert_allclose(out["total_nats"], -(out["reconstruction"] + out["prior"] + out["diffusion"]))
        np.testing.assert_allclose(out["bpd"], -out["total_nats"] / (4 * np.log(2.0)), rtol=1e-6)
        assert np.all(out["total_nats"] <= 0.0) and np.all(out["diffusion"] >= 0.0)
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)) and np.isfinite(value)
        assert float(jnp.abs(grads[0]["a"])) > 0 and float(jnp.abs(grads[1]["gamma_max"])) > 0


def test_variance_minimizing_grads_are_grads_of_the_second_moment():
    B = 64
    x = MU + S * jax.random.normal(jax.random.key(0), (B, 1))
    net = {"a": jnp.float32(0.3), "b": jnp.float32(-0.2)}
    gamma_params = random_monotone_params(2, hidden=16)

    def loss_fn(net, gp):
        return vdm.vdm_diffusion_loss_continuous(_fake_net(net), vdm.MonotoneGamma(gp), x, jax.random.key(1))

    losses, g_net, g_gamma = jax.jit(vdm.variance_minimizing_grads, static_argnums=0)(loss_fn, net, gamma_params)
    np.testing.assert_allclose(losses, jax.jit(loss_fn)(net, gamma_params), rtol=1e-5)
    ref_net = jax.jit(jax.grad(lambda n: jnp.mean(loss_fn(n, gamma_params))))(net)
    ref_gamma, ref_plain = jax.jit(lambda gp: (jax.grad(lambda p: jnp.mean(loss_fn(net, p) ** 2))(gp),
                                               jax.grad(lambda p: jnp.mean(loss_fn(net, p)))(gp)))(gamma_params)
    for got, ref in [(g_net, ref_net), (g_gamma, ref_gamma)]:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))
    # and it is not the plain loss gradient
    assert not np.allclose(g_gamma["l2"]["w"], ref_plain["l2"]["w"], rtol=0.1)


def test_bad_arguments_are_rejected():
    x = jnp.zeros((2, 3))
    eps_fn = lambda z, t: z
    with pytest.raises(ValueError, match="T must be"):
        vdm.vdm_diffusion_loss_discrete(eps_fn, vdm.LinearGamma(), x, jax.random.key(0), T=0)
    with pytest.raises(ValueError, match="num_levels"):
        vdm.vdm_elbo(eps_fn, vdm.LinearGamma(), x, jax.random.key(0), num_levels=None)
    with pytest.raises(ValueError, match="grid"):
        vdm.vdm_elbo(eps_fn, vdm.LinearGamma(), x + 0.1, jax.random.key(0), num_levels=3)
    with pytest.raises(ValueError, match="shape"):
        vdm.vdm_diffusion_loss_continuous(lambda z, t: z[:, :1], vdm.LinearGamma(), x, jax.random.key(0))
    with pytest.raises(ValueError, match="gamma_0"):
        vdm.gamma_from_schedule(dj.linear_schedule(10), gamma_0=0.0)
