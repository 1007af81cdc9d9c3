"""The core composes with jit, vmap (over t and over examples), grad and pmap on 8 host devices."""

import jax
import jax.numpy as jnp
import numpy as np

import diffusion_jax as dj


def test_eight_forced_host_devices():
    assert jax.device_count() == 8


def test_vmap_over_t_equals_python_loop():
    sched = dj.cosine_schedule(30)
    x0 = jax.random.normal(jax.random.key(0), (3,))
    ts = jnp.arange(1, 31)
    mean_v, var_v = jax.vmap(lambda t: dj.q_marginal(sched, x0, t))(ts)
    post_v = jax.vmap(lambda t: dj.q_posterior(sched, x0, 0.5 * x0, t))(ts)
    for i, t in enumerate(range(1, 31)):
        mean, var = dj.q_marginal(sched, x0, t)
        np.testing.assert_allclose(mean_v[i], mean, rtol=1e-6)
        np.testing.assert_allclose(var_v[i], var, rtol=1e-6)
        post = dj.q_posterior(sched, x0, 0.5 * x0, t)
        np.testing.assert_allclose(post_v.mean[i], post.mean, rtol=1e-6)


def test_vmap_over_examples_equals_batched_t():
    sched = dj.linear_schedule(100)
    x0 = jax.random.normal(jax.random.key(1), (5, 2))
    t = jnp.array([1, 20, 40, 80, 100])
    eps = jax.random.normal(jax.random.key(2), (5, 2))
    batched = dj.q_sample(sched, x0, t, eps)
    per_example = jax.vmap(lambda x, tt, e: dj.q_sample(sched, x, tt, e))(x0, t, eps)
    np.testing.assert_allclose(per_example, batched, rtol=1e-6)


def test_grad_of_marginal_log_prob():
    sched = dj.linear_schedule(100)
    f = lambda x0: dj.gaussian_log_prob(0.3, *dj.q_marginal(sched, x0, 50)).sum()
    g = jax.grad(f)(jnp.float32(0.5))
    ab = float(sched.alpha_bars[50])
    np.testing.assert_allclose(g, np.sqrt(ab) * (0.3 - np.sqrt(ab) * 0.5) / (1 - ab), rtol=1e-4)


def test_pmap_equals_single_device():
    sched = dj.linear_schedule(40)
    n = jax.device_count()
    x0 = jax.random.uniform(jax.random.key(3), (n, 2, 3), minval=-1, maxval=1)
    keys = jax.random.split(jax.random.key(4), n)
    rfn = lambda x_t, t: (dj.p_mean_from_eps(sched, x_t, t, 0.1 * x_t), dj.schedules.at(sched.betas, t, x_t))

    def elbo(x, k):
        return dj.diffusion_elbo(rfn, sched, x, k)["total"]

    np.testing.assert_allclose(jax.pmap(elbo)(x0, keys), jax.vmap(elbo)(x0, keys), rtol=1e-5)

    # L_simple with one key per example: sharding the batch over devices changes nothing.
    flat_x = x0.reshape(-1, 3)
    ex_keys = jax.random.split(jax.random.key(5), flat_x.shape[0])
    eps_fn = lambda x, t: jnp.tanh(x) * t[:, None] / 40
    single = dj.l_simple(eps_fn, sched, flat_x, ex_keys)
    sharded = jax.pmap(lambda x, k: dj.l_simple(eps_fn, sched, x, k))(
        x0, ex_keys.reshape(n, 2))
    np.testing.assert_allclose(sharded.reshape(-1), single, rtol=1e-6)
