"""Tests for diffusion_jax.vae: AE loss, VAE ELBO, IWAE bound, active units.

The reference model is linear-Gaussian, where everything is closed form (numpy float64):
p(z) = N(0, I_d), p(x|z) = N(Wz + b, s² I_D), so p(x) = N(b, WWᵀ + s² I) and
p(z|x) = N(Σ Wᵀ(x − b)/s², Σ) with Σ = (I + WᵀW/s²)⁻¹.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_jax import vae
from diffusion_jax.gaussians import gaussian_log_prob

LOG_2PI = np.log(2.0 * np.pi)


@dataclasses.dataclass(frozen=True)
class LinearGaussian:
    W: np.ndarray  # (D, d)
    b: np.ndarray  # (D,)
    s2: float

    @classmethod
    def random(cls, seed, d, D, s2, orthogonal=False):
        rng = np.random.default_rng(seed)
        W = rng.normal(size=(D, d))
        if orthogonal:  # orthogonal columns: WᵀW diagonal, so the exact posterior is diagonal
            q, _ = np.linalg.qr(W)
            W = q * rng.uniform(0.5, 2.0, size=d)
        return cls(W, rng.normal(size=D), s2)

    @property
    def d(self):
        return self.W.shape[1]

    @property
    def posterior_cov(self):
        return np.linalg.inv(np.eye(self.d) + self.W.T @ self.W / self.s2)

    def posterior_mean(self, x):
        return (x - self.b) @ self.W @ self.posterior_cov / self.s2

    def sample_x(self, seed, n):
        cov = self.W @ self.W.T + self.s2 * np.eye(len(self.b))
        return np.random.default_rng(seed).multivariate_normal(self.b, cov, size=n)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * np.eye(len(self.b))
        r = x - self.b
        _, logdet = np.linalg.slogdet(cov)
        maha = np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r)
        return -0.5 * (len(self.b) * LOG_2PI + logdet + maha)

    def decode_fn(self):
        W, b = jnp.asarray(self.W, jnp.float32), jnp.asarray(self.b, jnp.float32)
        return lambda z: (z @ W.T + b, self.s2)

    def encode_fn(self, mean_scale=1.0, var_scale=1.0):
        """Diagonal q(z|x): the exact posterior mean times mean_scale, diag(Σ) times var_scale."""
        A = jnp.asarray(self.W @ self.posterior_cov / self.s2 * mean_scale, jnp.float32)
        b = jnp.asarray(self.b, jnp.float32)
        var = jnp.asarray(np.diag(self.posterior_cov) * var_scale, jnp.float32)
        return lambda x: ((x - b) @ A, jnp.broadcast_to(var, (x.shape[0], self.d)))

    def analytic_elbo(self, x, m, v):
        """E_q[log p(x|z)] − KL(q ‖ p(z)) for q = N(m, diag v), in closed form."""
        r = x - (m @ self.W.T + self.b)
        D = len(self.b)
        trace = np.sum(self.W**2 * v[:, None, :], axis=-1).sum(-1)  # tr(W diag(v) Wᵀ)
        rec = -0.5 * (D * (LOG_2PI + np.log(self.s2)) + (np.sum(r**2, -1) + trace) / self.s2)
        kl = 0.5 * np.sum(v + m**2 - 1.0 - np.log(v), -1)
        return rec - kl

    def kl_to_posterior(self, x, m, v):
        """KL(N(m, diag v) ‖ p(z|x)) with the full-covariance exact posterior."""
        cov = self.posterior_cov
        prec = np.linalg.inv(cov)
        r = self.posterior_mean(x) - m
        _, logdet = np.linalg.slogdet(cov)
        tr = np.einsum("ii,bi->b", prec, v)
        maha = np.einsum("bi,ij,bj->b", r, prec, r)
        return 0.5 * (tr + maha - self.d + logdet - np.sum(np.log(v), -1))


def _encoded(encode_fn, x):
    m, v = encode_fn(jnp.asarray(x, jnp.float32))
    return np.asarray(m, np.float64), np.asarray(v, np.float64)


def _mc_elbo(encode_fn, decode_fn, x, key, n):
    """n independent one-sample ELBO estimates (vmapped over keys): mean and standard error."""
    keys = jax.random.split(key, n)
    est = jax.jit(jax.vmap(lambda k: vae.vae_elbo(encode_fn, decode_fn, x, k)["elbo"]))(keys)
    est = np.asarray(est, np.float64)
    return est.mean(0), est.std(0) / np.sqrt(n)


# ---------------------------------------------------------------------------------------------
# 1. Linear-Gaussian: ELBO ≤ IWAE_K ≤ log p(x), the gap is KL(q ‖ p(z|x))


def test_elbo_gap_equals_kl_to_exact_posterior():
    model = LinearGaussian.random(0, d=3, D=5, s2=0.4)  # non-orthogonal W: full-cov posterior
    enc, dec = model.encode_fn(mean_scale=0.7, var_scale=1.8), model.decode_fn()
    x = model.sample_x(1, 6)
    m, v = _encoded(enc, x)
    log_px = model.log_px(x)
    exact_elbo = model.analytic_elbo(x, m, v)
    gap = model.kl_to_posterior(x, m, v)
    # The identity log p(x) = ELBO + KL(q ‖ p(z|x)) in closed form, and a real gap.
    np.testing.assert_allclose(log_px - exact_elbo, gap, rtol=1e-8)
    assert np.all(gap > 0.1)

    xj = jnp.asarray(x, jnp.float32)
    out = vae.vae_elbo(enc, dec, xj, jax.random.key(0), num_samples=3)
    # The KL to p(z) is analytic: exact up to float32.
    np.testing.assert_allclose(out["kl"], 0.5 * np.sum(v + m**2 - 1 - np.log(v), -1), rtol=1e-5)
    np.testing.assert_allclose(out["elbo"], out["reconstruction"] - out["kl"], rtol=1e-6)

    mean, se = _mc_elbo(enc, dec, xj, jax.random.key(1), 4000)
    assert np.all(np.abs(mean - exact_elbo) < 5 * se + 1e-3), (mean, exact_elbo, se)
    assert np.all(np.abs((log_px - mean) - gap) < 5 * se + 1e-3)


def test_iwae_increases_with_k_towards_log_px():
    # An under-dispersed q makes the IWAE bound converge slowly, so every step in K is visible.
    model = LinearGaussian.random(0, d=4, D=8, s2=0.3)
    enc, dec = model.encode_fn(mean_scale=1.0, var_scale=0.2), model.decode_fn()
    x = model.sample_x(2, 64)
    log_px = model.log_px(x)
    exact_elbo = model.analytic_elbo(x, *_encoded(enc, x))
    xj = jnp.asarray(x, jnp.float32)
    keys = jax.random.split(jax.random.key(3), 8)

    @jax.jit
    @jax.vmap
    def all_bounds(k):
        return {K: vae.iwae_bound(enc, dec, xj, k, num_samples=K) for K in (1, 10, 100, 1000)}

    bounds = {K: np.asarray(b, np.float64) for K, b in all_bounds(keys).items()}  # (seeds, B)

    def mean_se(a):
        return a.mean(), a.std() / np.sqrt(a.size)

    # L_1 is an unbiased estimate of the ELBO.
    m1, se1 = mean_se(bounds[1] - exact_elbo)
    assert abs(m1) < 4 * se1
    # Monotone in K (paired: sample k is shared between K values with the same key).
    for lo, hi in [(1, 10), (10, 100), (100, 1000)]:
        d, se = mean_se(bounds[hi] - bounds[lo])
        assert d > 4 * se, (lo, hi, d, se)
    # Still below log p(x) at K = 1000 (expected gap ≈ 0.28 nats here), and far above the ELBO.
    gap, se = mean_se(log_px - bounds[1000])
    assert gap > 3 * se, (gap, se)
    assert gap < 0.5 * np.mean(log_px - exact_elbo)


def test_exact_posterior_makes_elbo_and_iwae_tight():
    model = LinearGaussian.random(4, d=3, D=5, s2=0.5, orthogonal=True)
    assert np.allclose(model.posterior_cov, np.diag(np.diag(model.posterior_cov)), atol=1e-12)
    enc, dec = model.encode_fn(), model.decode_fn()  # q(z|x) = p(z|x)
    x = model.sample_x(5, 8)
    m, v = _encoded(enc, x)
    log_px = model.log_px(x)
    np.testing.assert_allclose(model.analytic_elbo(x, m, v), log_px, atol=1e-5)
    np.testing.assert_allclose(model.kl_to_posterior(x, m, v), 0.0, atol=1e-5)
    xj = jnp.asarray(x, jnp.float32)
    # Every importance weight p(x, z)/q(z|x) equals p(x): the bound is exact for every K.
    for K in (1, 7):
        iwae = vae.iwae_bound(enc, dec, xj, jax.random.key(K), num_samples=K, chunk_size=3)
        np.testing.assert_allclose(iwae, log_px, rtol=1e-5, atol=1e-4)
    mean, se = _mc_elbo(enc, dec, xj, jax.random.key(6), 4000)
    assert np.all(np.abs(mean - log_px) < 5 * se + 1e-3)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    s2=st.floats(0.05, 2.0),
    mean_scale=st.floats(0.0, 1.5),
    var_scale=st.floats(0.2, 5.0),
)
def test_property_elbo_below_log_px(seed, s2, mean_scale, var_scale):
    model = LinearGaussian.random(seed, d=2, D=3, s2=s2)
    enc, dec = model.encode_fn(mean_scale, var_scale), model.decode_fn()
    x = model.sample_x(seed + 1, 4)
    log_px = model.log_px(x)
    mean, se = _mc_elbo(enc, dec, jnp.asarray(x, jnp.float32), jax.random.key(seed), 1000)
    assert np.all(mean <= log_px + 5 * se + 1e-3), (mean, log_px, se)


# ---------------------------------------------------------------------------------------------
# 2. Analytic KL against Monte Carlo


def test_analytic_kl_matches_monte_carlo():
    mean = jnp.array([[0.0, 1.5, -0.7], [2.0, -1.0, 0.3]])
    var = jnp.array([[1.0, 0.3, 2.5], [0.1, 1.7, 0.8]])
    enc = lambda x: (mean, var)
    dec = lambda z: (jnp.zeros((z.shape[0], 1)), 1.0)
    out = vae.vae_elbo(enc, dec, jnp.zeros((2, 1)), jax.random.key(0))
    n = 200_000
    m, v = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    eps = np.random.default_rng(1).normal(size=(n, 2, 3))
    z = m + np.sqrt(v) * eps
    mc = 0.5 * np.sum(z**2 - np.log(v) - eps**2, -1)  # log q(z|x) − log p(z), (n, 2)
    se = mc.std(0) / np.sqrt(n)
    assert np.all(np.abs(mc.mean(0) - np.asarray(out["kl"])) < 5 * se), (mc.mean(0), out["kl"])
    # Per unit: a unit with q = p(z) has zero KL (a collapsed unit).
    np.testing.assert_allclose(out["kl_per_dim"][0, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["kl_per_dim"].sum(-1), out["kl"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. Bernoulli decoder: reconstruction is −binary cross-entropy


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_reconstruction_is_negative_bce(binary):
    B, L, D = 3, 2, 5
    rng = np.random.default_rng(0)
    Wd = jnp.asarray(rng.normal(size=(L, D)) * 2.0, jnp.float32)
    mean = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
    var = jnp.asarray(rng.uniform(0.1, 1.0, size=(B, L)), jnp.float32)
    u = rng.uniform(size=(B, D))
    x = jnp.asarray((u > 0.5) if binary else u, jnp.float32)
    enc, dec = (lambda x: (mean, var)), (lambda z: z @ Wd)
    key = jax.random.key(7)
    out = jax.jit(lambda x: vae.vae_elbo(enc, dec, x, key, decoder="bernoulli", num_samples=3))(x)
    # Reproduce z_k from the documented key semantics: ε_k = normal(fold_in(key, k)).
    eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k), (B, L)))(jnp.arange(3))
    z = np.asarray(mean, np.float64) + np.sqrt(np.asarray(var, np.float64)) * eps
    p = 1.0 / (1.0 + np.exp(-(z @ np.asarray(Wd, np.float64))))  # (3, B, D)
    xn = np.asarray(x, np.float64)
    bce = -(xn * np.log(p) + (1 - xn) * np.log1p(-p)).sum(-1)  # (3, B)
    np.testing.assert_allclose(out["reconstruction"], -bce.mean(0), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 4. Gradients


def _tiny_params(key, D=4, L=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "enc_w": 0.5 * jax.random.normal(k1, (D, L)),
        "enc_logvar": jnp.full((L,), -1.0),
        "dec_w": 0.5 * jax.random.normal(k2, (L, D)),
        "dec_b": 0.1 * jax.random.normal(k3, (D,)),
    }


def _tiny_closures(p, decoder):
    enc = lambda x: (x @ p["enc_w"], jnp.broadcast_to(jnp.exp(p["enc_logvar"]), (x.shape[0], 2)))
    if decoder == "gaussian":
        dec = lambda z: (z @ p["dec_w"] + p["dec_b"], 0.5)
    else:
        dec = lambda z: z @ p["dec_w"] + p["dec_b"]
    return enc, dec


@pytest.mark.parametrize("decoder", ["gaussian", "bernoulli"])
def test_gradients_finite(decoder):
    params = _tiny_params(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 4))

    def elbo_loss(p, key):
        enc, dec = _tiny_closures(p, decoder)
        return vae.vae_elbo(enc, dec, x, key, decoder=decoder, num_samples=2)["loss"].mean()

    def iwae_loss(p, key):
        enc, dec = _tiny_closures(p, decoder)
        return -vae.iwae_bound(enc, dec, x, key, num_samples=7, decoder=decoder, chunk_size=3).mean()

    for fn in (elbo_loss, iwae_loss):
        grads = jax.jit(jax.grad(fn))(params, jax.random.key(2))
        for name, g in grads.items():
            assert np.all(np.isfinite(g)), name
            assert np.any(np.abs(g) > 1e-6), name


def test_reparameterization_gradient():
    L, S = 3, 20_000
    x = jnp.zeros((1, L))
    mu, log_var = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.0, -1.0, 0.5])
    enc = lambda p: lambda x: (p[0][None], jnp.exp(p[1])[None])

    # Decoder N(0, exp(z)) at x = 0: log p(x|z) = −½ Σ_u (log 2π + z_u), so
    # reconstruction = const − ½ Σ_u E[z_u] and dE[z_u]/dμ_u = −2 ∂reconstruction/∂μ_u = 1.
    dec_linear = lambda z: (jnp.zeros_like(z), jnp.exp(z))
    def rec(p, dec):
        return vae.vae_elbo(enc(p), dec, x, jax.random.key(0), num_samples=S)["reconstruction"][0]

    g_mu, _ = jax.jit(jax.grad(rec), static_argnums=1)((mu, log_var), dec_linear)
    np.testing.assert_allclose(-2.0 * g_mu, 1.0, rtol=1e-5)

    # Decoder N(z, 1) at x = 0: reconstruction = const − ½ Σ_u E[z_u²], E[z²] = μ² + σ²:
    # ∂/∂μ = −μ and ∂/∂σ² = −½ (Monte Carlo through z = μ + σ ε).
    dec_square = lambda z: (z, 1.0)
    g_mu, g_logvar = jax.jit(jax.grad(rec), static_argnums=1)((mu, log_var), dec_square)
    g_var = g_logvar / jnp.exp(log_var)
    np.testing.assert_allclose(g_mu, -mu, atol=0.05)
    np.testing.assert_allclose(g_var, -0.5, atol=0.05)


# ---------------------------------------------------------------------------------------------
# 5. KL weight and free bits act on "loss" only


def test_kl_weight_and_free_bits():
    params = _tiny_params(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 4))
    key = jax.random.key(2)

    @jax.jit
    def run(p, kl_weight=1.0, free_bits=0.0):  # both traced: a warm-up schedule works under jit
        enc, dec = _tiny_closures(p, "gaussian")
        return vae.vae_elbo(enc, dec, x, key, num_samples=2, kl_weight=kl_weight, free_bits=free_bits)

    base = run(params)
    np.testing.assert_allclose(base["loss"], -base["elbo"], rtol=1e-6)
    kl_u = np.asarray(base["kl_per_dim"])
    assert kl_u.min() < 0.4 < kl_u.max()  # the floor below binds for some units, not all
    for kw in [dict(kl_weight=0.3), dict(free_bits=0.4), dict(kl_weight=0.3, free_bits=0.4)]:
        out = run(params, **kw)
        np.testing.assert_array_equal(out["elbo"], base["elbo"])
        np.testing.assert_array_equal(out["kl"], base["kl"])
        w, lam = kw.get("kl_weight", 1.0), kw.get("free_bits", 0.0)
        expected = -base["reconstruction"] + w * np.maximum(kl_u, lam).sum(-1)
        np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
        assert not np.allclose(out["loss"], base["loss"])

    # Above every unit's KL the floor is a constant: the KL part of the loss has no gradient.
    def kl_part(p, lam):
        out = run(p, free_bits=lam)
        return jnp.sum(out["loss"] + out["reconstruction"])

    kl_value_and_grad = jax.jit(jax.value_and_grad(kl_part))
    value, g_floor = kl_value_and_grad(params, 100.0)
    np.testing.assert_allclose(value, 5 * 2 * 100.0, rtol=1e-6)
    assert all(np.all(g == 0) for g in jax.tree.leaves(g_floor))
    _, g_free = kl_value_and_grad(params, 0.0)
    assert np.any(np.abs(g_free["enc_logvar"]) > 1e-3)
    # Zero weight (the start of a warm-up): the loss is the reconstruction term alone.
    np.testing.assert_allclose(run(params, 0.0)["loss"], -base["reconstruction"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 6. IWAE chunking and key semantics


def test_iwae_chunking_and_key_semantics():
    model = LinearGaussian.random(0, d=2, D=3, s2=0.3)
    # An over-dispersed q keeps the importance weights bounded, so L_K has a small variance.
    enc, dec = model.encode_fn(0.8, 2.0), model.decode_fn()
    x = jnp.asarray(model.sample_x(1, 3), jnp.float32)
    key = jax.random.key(11)
    full = vae.iwae_bound(enc, dec, x, key, num_samples=37)  # default chunk min(K, 128) = K
    for chunk in (1, 5, 16):  # 5 and 16 leave a padded last chunk
        chunked = vae.iwae_bound(enc, dec, x, key, num_samples=37, chunk_size=chunk)
        np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-5)

    # L_1 = log p(x|z_0) + log p(z_0) − log q(z_0|x) with vae_elbo's z_0 for the same key.
    iwae1 = vae.iwae_bound(enc, dec, x, key, num_samples=1)
    rec = vae.vae_elbo(enc, dec, x, key)["reconstruction"]
    mean, var = enc(x)
    eps = jax.random.normal(jax.random.fold_in(key, 0), mean.shape)
    z = mean + jnp.sqrt(var) * eps
    log_ratio = (gaussian_log_prob(z, 0.0, 1.0) - gaussian_log_prob(z, mean, var)).sum(-1)
    np.testing.assert_allclose(iwae1, rec + log_ratio, rtol=1e-5, atol=1e-5)

    # K = 5000 on a small batch: memory bounded by the chunk; close to log p(x).
    big = vae.iwae_bound(enc, dec, x, jax.random.key(12), num_samples=5000, chunk_size=500)
    log_px = model.log_px(np.asarray(x, np.float64))
    elbo = model.analytic_elbo(np.asarray(x, np.float64), *_encoded(enc, x))
    assert np.all(np.abs(big - log_px) < 0.05), (big, log_px)
    assert np.all(log_px - elbo > 0.2)


# ---------------------------------------------------------------------------------------------
# AE loss and active units


def test_ae_loss_values():
    x = jnp.array([[[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    x_hat = jnp.array([[[1.0, 1.0], [0.0, -1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    np.testing.assert_allclose(vae.ae_loss(x, x_hat), [5.0, 0.0])
    np.testing.assert_allclose(vae.ae_loss(x, x_hat, reduction="mean"), [1.25, 0.0])
    g = jax.grad(lambda xh: vae.ae_loss(x, xh).sum())(x_hat)
    np.testing.assert_allclose(g, 2.0 * (x_hat - x))


def test_active_units():
    rng = np.random.default_rng(0)
    stds = np.array([0.0, 0.05, 0.09, 0.11, 0.5, 1.0])  # variances 0, .0025, .0081, .0121, ...
    means = jnp.asarray(rng.normal(size=(20_000, 6)) * stds + 3.0, jnp.float32)
    count, variances = vae.active_units(means)
    assert int(count) == 3
    np.testing.assert_allclose(variances, np.var(np.asarray(means, np.float64), 0), rtol=1e-4)
    assert int(vae.active_units(means, threshold=1e-3).count) == 5
    assert int(jax.jit(vae.active_units)(means).count) == 3


# ---------------------------------------------------------------------------------------------
# 7. Bad input


def test_errors():
    model = LinearGaussian.random(0, d=2, D=3, s2=0.3)
    enc, dec = model.encode_fn(), model.decode_fn()
    x = jnp.zeros((4, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="decoder.*'gaussian', 'bernoulli'"):
        vae.vae_elbo(enc, dec, x, key, decoder="gauss")
    with pytest.raises(ValueError, match="decoder"):
        vae.iwae_bound(enc, dec, x, key, num_samples=3, decoder="categorical")
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        vae.iwae_bound(enc, dec, x, key, num_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        vae.vae_elbo(enc, dec, x, key, num_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        vae.iwae_bound(enc, dec, x, key, num_samples=4, chunk_size=0)
    with pytest.raises(TypeError, match="num_samples"):
        vae.iwae_bound(enc, dec, x, key, num_samples=2.5)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        vae.vae_elbo(enc, dec, jnp.zeros((4, 3), jnp.int32), key)
    bad_dec = lambda z: (jnp.zeros((z.shape[0], 5)), 1.0)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 3\)"):
        vae.vae_elbo(enc, bad_dec, x, key)
    with pytest.raises(ValueError, match=r"\(8, 5\).*\(4, 3\)"):
        vae.iwae_bound(enc, bad_dec, x, key, num_samples=2)
    with pytest.raises(ValueError, match=r"logits.*\(4, 5\).*\(4, 3\)"):
        vae.vae_elbo(enc, lambda z: jnp.zeros((z.shape[0], 5)), x, key, decoder="bernoulli")
    with pytest.raises(ValueError, match="var"):
        vae.vae_elbo(enc, lambda z: (jnp.zeros((z.shape[0], 3)), jnp.ones(2)), x, key)
    with pytest.raises(TypeError, match="pair"):
        vae.vae_elbo(enc, lambda z: jnp.zeros((z.shape[0], 3)), x, key)
    with pytest.raises(ValueError, match="encode_fn"):
        vae.vae_elbo(lambda x: (jnp.zeros((2, 2)), 1.0), dec, x, key)
    with pytest.raises(ValueError, match="free_bits"):
        vae.vae_elbo(enc, dec, x, key, free_bits=-1.0)
    with pytest.raises(ValueError, match="x_hat"):
        vae.ae_loss(x, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="reduction"):
        vae.ae_loss(x, x, reduction="max")
    with pytest.raises(ValueError, match="means"):
        vae.active_units(jnp.zeros(5))
