"""Model kind "vdm": a real train step through the trainer, the loss is ``vdm_elbo``, the
learned schedule's endpoints get gradients, the sampler is cached and stays in [−1, 1]."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import vdm as vdm_lib
from diffusion_jax.training import trainer
from diffusion_jax.training.config import validate_config
from diffusion_jax.training.kinds import vdm
from tests.training.tiny import tiny_config

SHAPE = (8, 8, 1)


def tiny_vdm_config(**diffusion):
    """tiny_config("vdm") run for 2 steps with an evaluation after each, and ``diffusion`` keys."""
    return tiny_config("vdm", train__num_steps=2, train__eval_every=1,
                       **{f"diffusion__{k}": v for k, v in diffusion.items()})


def _setup(config):
    model = vdm.build(config, SHAPE)
    params = vdm.init_params(model, SHAPE, jax.random.key(0, impl="rbg"))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 17, (8, *SHAPE)) / 8.0 - 1.0, jnp.float32)
    return model, params, x


def test_train_step_evaluation_and_samples_through_the_trainer(tmp_path):
    config = tiny_vdm_config(schedule="learned_nnet")
    validate_config(config)
    summary = trainer.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert summary["step"] == 2 and math.isfinite(summary["final_train_metrics"]["loss"])
    ev = summary["eval"]
    assert ev["num_examples"] == 16 and ev["draws"] == 3
    for key in ("bpd", "bpd_se", "reconstruction_nats", "prior_nats", "diffusion_nats"):
        assert math.isfinite(ev[key]), key
    assert ev["bpd_se"] > 0 and ev["bpd"] > 0
    assert (tmp_path / "run" / "samples.png").exists()
    assert vdm.summary_lines(ev)[0].startswith("test ELBO")


@pytest.mark.parametrize("schedule,T", [("fixed", 0), ("learned_linear", 10), ("learned_nnet", 0)])
def test_loss_equals_vdm_elbo(schedule, T):
    config = tiny_vdm_config(schedule=schedule, T=T)
    model, params, x = _setup(config)
    keys = jax.random.split(jax.random.key(5), x.shape[0])
    loss_fn = vdm.make_loss(model, config, num_levels=17)
    loss, metrics = jax.jit(lambda p: loss_fn(p, {"image": x}, keys, train=False))(params)

    @jax.jit
    def direct(params):
        gamma_fn = vdm.gamma_fn_of(model.schedule, params)
        eps_fn = vdm.eps_fn_of(model, params, gamma_fn)
        return vdm_lib.vdm_elbo(eps_fn, gamma_fn, x, vdm.loss_keys(keys)[0], num_levels=17,
                                T=T or None)

    ref = direct(params)
    np.testing.assert_allclose(loss, ref["bpd"].mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["diffusion_nats"], ref["diffusion"].mean(), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["learned_linear", "learned_nnet"])
def test_learned_endpoints_get_gradients_and_fixed_has_none(schedule):
    config = tiny_vdm_config(schedule=schedule)
    model, params, x = _setup(config)
    assert float(vdm.gamma_fn_of(model.schedule, params)(0.0)) == pytest.approx(-13.3)
    keys = jax.random.split(jax.random.key(1), x.shape[0])
    loss_fn = vdm.make_loss(model, config, num_levels=17)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, {"image": x}, keys, train=True)[0]))(params)
    for end in ("gamma_min", "gamma_max"):
        g = float(grads["gamma"][end])
        assert math.isfinite(g) and g != 0.0, (end, g)
    # The endpoints are the parameters, exactly: γ(0), γ(1) move only when they do.
    moved = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    gamma_fn = vdm.gamma_fn_of(model.schedule, moved)
    np.testing.assert_allclose(gamma_fn(0.0), moved["gamma"]["gamma_min"], rtol=1e-6)
    np.testing.assert_allclose(gamma_fn(1.0), moved["gamma"]["gamma_max"], rtol=1e-6)
    assert "gamma" not in vdm.init_params(vdm.build(tiny_vdm_config(schedule="fixed"), SHAPE),
                                          SHAPE, jax.random.key(0))


def test_sampler_is_cached_finite_and_in_range():
    config = tiny_vdm_config(schedule="learned_linear")
    model, params, _ = _setup(config)
    vdm._ancestral_sampler.cache_clear()
    outs = [vdm.sample(config, model, params, jax.random.key(i), num_samples=3,
                       image_shape=SHAPE, progress=False) for i in range(2)]
    info = vdm._ancestral_sampler.cache_info()
    assert info.misses == 1 and info.hits == 1
    for out in outs:
        assert out.shape == (3, *SHAPE) and np.all(np.isfinite(out))
        assert out.min() >= -1.0 and out.max() <= 1.0


def test_v_prediction_and_validation_names_keys():
    config = tiny_vdm_config()
    config.model.prediction = "v"
    model, params, x = _setup(config)
    keys = jax.random.split(jax.random.key(2), x.shape[0])
    loss_fn = vdm.make_loss(model, config, num_levels=17)
    loss, _ = jax.jit(lambda p: loss_fn(p, {"image": x}, keys, train=False))(params)
    assert np.isfinite(loss)
    for key, value, match in [("diffusion.gamma_min", 6.0, "gamma_min"),
                              ("diffusion.schedule", "cosine", "diffusion.schedule"),
                              ("eval.sample_steps", 0, "eval.sample_steps"),
                              ("diffusion.T", -1, "diffusion.T"),
                              ("model.fourier_min", 9, "fourier_min")]:
        bad = tiny_vdm_config()
        section, leaf = key.split(".")
        bad[section][leaf] = value
        with pytest.raises(ValueError, match=match):
            validate_config(bad)
