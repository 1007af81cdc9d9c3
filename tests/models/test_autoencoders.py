"""AE / VAE modules: shapes for the three image sizes, the variance maps, closures, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.gaussians import Gaussian
from diffusion_jax.models import VAE, AutoEncoder, Decoder, Encoder, vae_fns

# rbg keys compile ~5x faster than threefry on CPU; the tests do not depend on the values.
INIT_KEY = jax.random.key(0, impl="rbg")
SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
KINDS = ["mlp", "conv"]


def _shapes(tree):
    return jax.tree.map(lambda a: a.shape, tree)


@pytest.mark.parametrize("image_shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_shapes(image_shape, kind):
    model = AutoEncoder(image_shape, latent_dim=5, kind=kind)
    x = jnp.zeros((2, *image_shape))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, params, x).shape == x.shape
    z = jax.eval_shape(functools.partial(model.apply, method=AutoEncoder.encode), params, x)
    assert z.shape == (2, 5)
    # Decoding accepts any leading batch dims, e.g. (K, B, latent).
    z = jnp.zeros((3, 2, 5))
    x_hat = jax.eval_shape(functools.partial(model.apply, method=AutoEncoder.decode), params, z)
    assert x_hat.shape == (3, 2, *image_shape)


@pytest.mark.parametrize("image_shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decoder", ["gaussian", "bernoulli"])
def test_vae_shapes(image_shape, kind, decoder):
    model = VAE(image_shape, latent_dim=3, kind=kind, decoder=decoder, decoder_var="pixel")
    x = jnp.zeros((2, *image_shape))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    (mean, var), dec = jax.eval_shape(model.apply, params, x)
    assert mean.shape == var.shape == (2, 3)
    if decoder == "gaussian":
        assert isinstance(dec, Gaussian)  # unpacks as (mean, var)
        assert dec.mean.shape == dec.var.shape == x.shape
        assert params["params"]["decoder_log_var"].shape == image_shape
    else:
        assert dec.shape == x.shape  # one array of logits
        assert "decoder_log_var" not in params["params"]


@pytest.fixture(scope="module")
def small_vae():
    model = VAE((8, 8, 1), latent_dim=4, kind="conv", hidden=(8, 16), init_decoder_log_var=-2.0)
    x = jax.random.uniform(jax.random.key(1), (5, 8, 8, 1), minval=-1.0, maxval=1.0)
    params = jax.jit(model.init)(INIT_KEY, x)
    return model, params, x


def test_vae_variances_are_exp_of_clipped_log_var(small_vae):
    model, params, x = small_vae
    mean, var = model.apply(params, x, method=VAE.encode)
    raw = model.apply(params, x, method=lambda m, x: m.encoder(x))
    np.testing.assert_allclose(mean, raw[:, :4], rtol=1e-6)
    np.testing.assert_allclose(var, np.exp(np.clip(raw[:, 4:], -10.0, 10.0)), rtol=1e-5)
    assert np.all(var > 0)

    dec = model.apply(params, mean, method=VAE.decode)
    np.testing.assert_allclose(dec.var, np.exp(-2.0), rtol=1e-6)  # scalar, broadcast
    # A huge negative log-variance is clipped at log_var_min, so var stays exp(−10) > 0.
    low = jax.tree.map(lambda a: a, params)
    low["params"]["decoder_log_var"] = jnp.asarray(-1e4)
    np.testing.assert_allclose(
        model.apply(low, mean, method=VAE.decode).var, np.exp(-10.0), rtol=1e-5
    )


def test_vae_call_reparameterizes_with_the_given_key(small_vae):
    model, params, x = small_vae
    key = jax.random.key(7)
    (mean, var), dec = model.apply(params, x, key)
    z = mean + np.sqrt(var) * jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(dec.mean, model.apply(params, z, method=VAE.decode).mean,
                               rtol=1e-5, atol=1e-6)
    (_, _), dec_mean = model.apply(params, x)  # key=None decodes the posterior mean
    np.testing.assert_allclose(
        dec_mean.mean, model.apply(params, mean, method=VAE.decode).mean, rtol=1e-6
    )


def test_vae_fns_closures_vmap_and_grad(small_vae):
    model, params, x = small_vae
    encode_fn, decode_fn = vae_fns(model, params)
    mean, var = encode_fn(x)
    # Per-example (unbatched) calls under vmap agree with the batched call.
    mean_v, var_v = jax.jit(jax.vmap(encode_fn))(x)
    np.testing.assert_allclose(mean_v, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var_v, var, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(decode_fn))(mean).mean, decode_fn(mean).mean,
                               rtol=1e-5, atol=1e-6)

    @jax.jit
    def loss(p):
        enc, dec = vae_fns(model, p)
        m, v = enc(x)
        d_mean, d_var = dec(m)
        return jnp.sum(jnp.square(d_mean - x) / d_var) + jnp.sum(v)

    grads = jax.grad(loss)(params)
    norms = [float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and all(n > 0 for n in norms)


def test_vae_fns_plug_into_the_pure_elbo(small_vae):
    """diffusion_jax.vae.vae_elbo on our closures equals the ELBO computed by hand."""
    vae = pytest.importorskip("diffusion_jax.vae")
    model, params, x = small_vae
    encode_fn, decode_fn = vae_fns(model, params)
    key = jax.random.key(3)
    out = vae.vae_elbo(encode_fn, decode_fn, x, key, decoder="gaussian", num_samples=1)

    mean, var = (np.asarray(a, np.float64) for a in encode_fn(x))
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), mean.shape), np.float64)
    dec = decode_fn(jnp.asarray(mean + np.sqrt(var) * eps, jnp.float32))
    d_mean, d_var = np.asarray(dec.mean, np.float64), np.asarray(dec.var, np.float64)
    xs = np.asarray(x, np.float64)
    log_lik = -0.5 * (np.log(2 * np.pi * d_var) + (xs - d_mean) ** 2 / d_var)
    recon = log_lik.reshape(len(xs), -1).sum(-1)
    kl = 0.5 * (var + mean**2 - 1.0 - np.log(var)).sum(-1)
    np.testing.assert_allclose(out["elbo"], recon - kl, rtol=1e-4)


def test_bernoulli_decoder_returns_raw_logits():
    model = VAE((8, 8, 1), latent_dim=2, kind="mlp", hidden=(16,), decoder="bernoulli")
    z = jnp.array([[30.0, -30.0], [0.0, 0.0]])
    params = jax.jit(model.init)(INIT_KEY, jnp.zeros((1, 8, 8, 1)))
    logits = model.apply(params, z, method=VAE.decode)
    raw = model.apply(params, z, method=lambda m, z: m.decoder_net(z))
    assert isinstance(logits, jax.Array)  # one array, not a (mean, var) pair
    np.testing.assert_array_equal(logits, raw)
    # Logits are unbounded (not probabilities): a large z pushes some outside [0, 1].
    assert np.any((logits < 0) | (logits > 1))


def test_autoencoder_call_is_decode_of_encode():
    model = AutoEncoder((28, 28, 1), latent_dim=3, kind="conv", hidden=(4, 8))
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1), minval=-1.0, maxval=1.0)
    params = jax.jit(model.init)(INIT_KEY, x)

    @jax.jit
    def both(p, x):
        z = model.apply(p, x, method=AutoEncoder.encode)
        return model.apply(p, x), model.apply(p, z, method=AutoEncoder.decode)

    x_hat, dec_of_enc = both(params, x)
    np.testing.assert_allclose(x_hat, dec_of_enc, rtol=1e-6)
    assert x_hat.shape == x.shape and float(jnp.std(x_hat)) > 0


@pytest.mark.parametrize(
    "image_shape,hidden",
    [((30, 30, 1), None), ((28, 28, 1), (8, 16, 32)), ((7, 7, 1), (8,)), ((8, 12, 1), (8, 8, 8))],
)
def test_conv_rejects_image_sizes_it_cannot_halve(image_shape, hidden):
    for build in (
        lambda: AutoEncoder(image_shape, kind="conv", hidden=hidden),
        lambda: VAE(image_shape, kind="conv", hidden=hidden),
        lambda: Encoder(image_shape, 4, kind="conv", hidden=hidden),
        lambda: Decoder(image_shape, kind="conv", hidden=hidden),
    ):
        with pytest.raises(ValueError, match="divisible by"):
            build()
    AutoEncoder(image_shape, kind="mlp")  # the MLP handles any size


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="image_shape"):
        AutoEncoder((28, 28))
    with pytest.raises(ValueError, match="kind"):
        AutoEncoder((8, 8, 1), kind="resnet")
    with pytest.raises(ValueError, match="decoder"):
        VAE((8, 8, 1), decoder="laplace")
    with pytest.raises(ValueError, match="decoder_var"):
        VAE((8, 8, 1), decoder_var="channel")
    with pytest.raises(ValueError, match="latent_dim"):
        VAE((8, 8, 1), latent_dim=0)
    model = AutoEncoder((8, 8, 1), latent_dim=2)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="x must have shape"):
        jax.eval_shape(model.apply, params, jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="z must have shape"):
        jax.eval_shape(functools.partial(model.apply, method=AutoEncoder.decode), params,
                       jnp.zeros((1, 3)))
