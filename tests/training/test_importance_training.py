"""Importance-sampled t as a training option: the loss history fills from the train step, and a
warm history changes which t are drawn and how they are weighted (weights 1/p_t)."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import timestep_sampling
from diffusion_jax.training.kinds import ddpm
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import create_train_state, make_train_step
from tests.training.parallel_tiny import tiny_unet
from tests.training.tiny import tiny_config


def _setup():
    config = tiny_config("ddpm")
    config.diffusion.loss = "vlb"
    config.diffusion.t_sampling = "importance"
    model = tiny_unet()  # one resolution level: the smallest U-Net with every layer kind
    params = ddpm.init_params(model, (8, 8, 1), jax.random.key(0, impl="rbg"))
    loss_fn = ddpm.make_loss(model, config, num_levels=17)
    return config, model, params, loss_fn


def test_train_step_records_every_example_in_the_loss_history():
    config, _, params, loss_fn = _setup()
    optimizer = make_optimizer(config.optim, 10)
    state = create_train_state(params, optimizer, jax.random.key(1), ddpm.init_loss_state(config))
    step = jax.jit(make_train_step(loss_fn, optimizer, ema_decay=0.9, global_batch=8,
                                   update_loss_state=ddpm.loss_state_update(config)))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 17, (8, 8, 8, 1)) / 8.0 - 1.0,
                         jnp.float32)
    for _ in range(3):
        state, metrics = step(state, {"image": images})
    history = state.loss_state
    assert int(history.count.sum()) == 24  # 3 steps x 8 examples (no t drawn 10+ times here)
    assert "per_example" not in metrics and np.isfinite(float(metrics["loss"]))
    assert np.all(np.asarray(history.history)[np.asarray(history.count) == 0] == 0)


def test_warm_history_draws_t_by_loss_and_weights_by_one_over_p():
    config, _, params, loss_fn = _setup()
    T = config.diffusion.T
    state = timestep_sampling.init(T)
    losses = jnp.where(jnp.arange(1, T + 1) == 5, 100.0, 1.0)
    for _ in range(timestep_sampling.HISTORY_SIZE):
        state = timestep_sampling.update(state, jnp.arange(1, T + 1), losses)
    p = np.asarray(timestep_sampling.probabilities(state))
    images = jnp.zeros((64, 8, 8, 1), jnp.float32)
    keys = jax.random.split(jax.random.key(2), 64)
    _, metrics = loss_fn(params, {"image": images}, keys, train=True, step=0, loss_state=state)
    t = np.asarray(metrics["per_example"]["t"])
    assert np.mean(t == 5) > 0.5 and p[4] > 0.8  # p_5 = 100 / (100 + 19), nearly
    # Uniform t would put about 64/20 = 3 examples at t = 5.
    _, uniform = loss_fn(params, {"image": images}, keys, train=True, step=0, loss_state=None)
    assert "per_example" not in uniform
