"""Every kind of mistake gets a clear error that names the problem (and the fix), before any long
work. One row per kind; the count is part of the closing note of the bad-input issue."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import elbo as elbo_lib
from diffusion_jax.data import pipeline
from diffusion_jax.training import kinds
from diffusion_jax.training.config import base_config, validate_config
from diffusion_jax.training.step import ParallelStep
from diffusion_jax.training.trainer import load_trained


def _config(**changes):
    c = base_config("ddpm")
    for dotted, value in changes.items():
        node = c
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _unknown_key():
    c = base_config("ddpm")
    c.optim.lrr = 0.1
    validate_config(c)


SCHED = dj.linear_schedule(10)
X = jnp.zeros((2, 3))
X17 = jnp.array([[-1.0, 0.0, 0.125, 1.0]])  # on the 17-level grid 2k/16 − 1
KEY = jax.random.key(0)
RFN = lambda x, t: (x, 1.0)

CASES = {
    "unknown config key (nearest suggested)": (_unknown_key, ValueError, r"unknown config key 'optim\.lrr'.*Did you mean 'optim\.lr'"),
    "negative learning rate": (lambda: validate_config(_config(**{"optim.lr": -1e-3})), ValueError, r"optim\.lr must be a finite number > 0"),
    "config T < 2": (lambda: validate_config(_config(**{"diffusion.T": 1})), ValueError, r"diffusion\.T must be"),
    # ml_collections' type-safe ConfigDict (the same path as a --config.train.num_steps=10.5 flag).
    "wrong type in config": (lambda: validate_config(_config(**{"train.num_steps": 10.5})), TypeError, r"num_steps.*cannot be casted to type <class 'int'>"),
    "zero steps": (lambda: validate_config(_config(**{"train.num_steps": 0})), ValueError, r"train\.num_steps must be a positive int"),
    "EMA decay out of range": (lambda: validate_config(_config(**{"optim.ema_decay": 1.5})), ValueError, r"ema_decay must lie in \[0, 1\)"),
    "dropout out of range": (lambda: validate_config(_config(**{"model.dropout": 1.0})), ValueError, r"dropout must lie in"),
    "unknown loss name": (lambda: validate_config(_config(**{"diffusion.loss": "l_simpel"})), ValueError, r"Did you mean 'l_simple'"),
    "unknown parallel mode": (lambda: validate_config(_config(**{"train.parallel": "pmapp"})), ValueError, r"train\.parallel must be one of"),
    "bernoulli decoder on non-binary data": (
        lambda: validate_config(_vae_config(decoder="bernoulli")), ValueError, r"binarize=True"),
    "batch not divisible by device count": (
        lambda: ParallelStep(lambda axis_name: None, mode="sharding", global_batch=12), ValueError,
        r"batch_size=12 .* divisible by the device count 8"),
    "image size the U-Net cannot downsample": (
        lambda: kinds.get("ddpm").build(_config(**{"model.ch_mult": (1, 2, 2, 2)}), (28, 28, 1)), ValueError, r"28"),
    "unknown dataset name": (
        lambda: pipeline.make_dataset("mnistt", "train", batch_size=8, seed=0), ValueError, r"mnist"),
    "dataset not prepared offline (fails fast, names make data and digits)": (
        lambda: pipeline.make_dataset("cifar10", "train", batch_size=8, seed=0,
                                      data_dir="/nonexistent/tfds"),
        ValueError, r"make data DATASET=cifar10(.|\n)*digits"),
    "integer images into a loss": (
        lambda: dj.l_simple(lambda x, t: x, SCHED, jnp.zeros((2, 3), jnp.int32), KEY), TypeError, r"x0 must be a floating-point"),
    "pixel values off the declared levels": (
        lambda: pipeline.to_model_range(np.array([[0, 20]], np.uint8), 17), ValueError, r"17"),
    "t outside 1..T": (lambda: dj.q_step(SCHED, X, 11), ValueError, r"t must lie in 1\.\.10"),
    "non-integer t": (lambda: dj.q_marginal(SCHED, X, 2.5), TypeError, r"integer timestep"),
    "mismatched x0 / x_t shapes": (lambda: dj.q_posterior(SCHED, X, jnp.zeros((2, 4)), 3), ValueError, r"x0 \(2, 3\), x_t \(2, 4\)"),
    "unknown ELBO form": (lambda: dj.diffusion_elbo(lambda x, t: (x, 1.0), SCHED, X, KEY, form="ddmp"), ValueError, r"Did you mean 'ddpm'"),
    "unknown decoder": (lambda: dj.diffusion_elbo(lambda x, t: (x, 1.0), SCHED, X, KEY, decoder="bern"), ValueError, r"decoder must be one of"),
    "reverse_fn output of the wrong shape": (
        lambda: dj.diffusion_elbo(lambda x, t: (x[:, :1], 1.0), SCHED, X, KEY), ValueError, r"reverse_fn returned a mean of shape"),
    "invalid schedule (beta_1 > beta_T)": (lambda: dj.linear_schedule(10, 0.1, 0.01), ValueError, r"beta_1 must not exceed beta_T"),
    "invalid schedule (beta outside (0, 1))": (lambda: dj.schedule_from_betas([0.5, 1.2]), ValueError, r"open interval"),
    "sample count <= 0": (
        lambda: kinds.get("ddpm").sample(base_config("ddpm"), None, None, KEY, num_samples=0, image_shape=(8, 8, 1)), ValueError, r"num_samples must be a positive"),
    "sampler batch of zero": (lambda: dj.ddpm_sample(lambda x, t: x, SCHED, KEY, (0, 3)), ValueError, r"shape"),
    "IWAE with K < 1": (
        lambda: dj.iwae_bound(lambda x: (x, x), lambda z: (z, 1.0), X, KEY, num_samples=0), ValueError, r"num_samples"),
    "checkpoint path that does not exist": (
        lambda: load_trained(base_config("ddpm"), "/nonexistent/run"), FileNotFoundError, r"no checkpoints in /nonexistent/run/checkpoints"),
    "per-example keys of the wrong count": (
        lambda: dj.l_simple(lambda x, t: x, SCHED, X, jax.random.split(KEY, 5)), ValueError, r"one key per example"),
    "discretized decoder with < 2 levels": (
        lambda: dj.discretized_gaussian_log_prob(X, 0.0, 1.0, 1), ValueError, r"num_levels must be at least 2"),
    # The pure API never substitutes a number silently (no default 256 levels, no truncated t).
    "discretized decoder without num_levels": (
        lambda: dj.diffusion_elbo(RFN, SCHED, X17, KEY, decoder="discretized"), ValueError, r"needs num_levels"),
    "[0, 255] pixels into the discretized decoder": (
        lambda: dj.diffusion_elbo(RFN, SCHED, jnp.array([[0.0, 128.0, 255.0]]), KEY, decoder="discretized", num_levels=256),
        ValueError, r"256-level grid .* in \[-1, 1\]; got values in \[0, 255\]"),
    "data off the num_levels grid (wrong L)": (
        lambda: dj.diffusion_elbo(RFN, SCHED, 2 * jnp.arange(256.0)[None] / 255 - 1, KEY, decoder="discretized", num_levels=17),
        ValueError, r"17-level grid.*level spacings off it"),
    "num_levels not an int": (
        lambda: dj.diffusion_elbo(RFN, SCHED, X17, KEY, decoder="discretized", num_levels=2.5), TypeError, r"num_levels must be an int"),
    "num_levels < 2 in the ELBO": (
        lambda: dj.diffusion_elbo(RFN, SCHED, X17, KEY, decoder="discretized", num_levels=1), ValueError, r"num_levels must be at least 2"),
    "eps_fn output of the wrong shape ((B, 8, 8) against (B, 8, 8, 1), B = 8 broadcasts)": (
        lambda: dj.l_simple(lambda x, t: x[..., 0], SCHED, jnp.zeros((8, 8, 8, 1)), KEY), ValueError, r"eps_fn returned shape \(8, 8, 8\); expected x0's shape \(8, 8, 8, 1\)"),
    "l_simple with t = 0": (lambda: dj.l_simple(lambda x, t: x, SCHED, X, KEY, t=0), ValueError, r"t must lie in 1\.\.10, got values in 0\.\.0"),
    "l_simple with t > T": (lambda: dj.l_simple(lambda x, t: x, SCHED, X, KEY, t=jnp.array([3, 11])), ValueError, r"t must lie in 1\.\.10"),
    "l_simple with a float t (not truncated)": (lambda: dj.l_simple(lambda x, t: x, SCHED, X, KEY, t=2.7), TypeError, r"integer timestep"),
    "denoising matching KL at t = 1 (infinite)": (
        lambda: elbo_lib.denoising_matching_term(RFN, SCHED, X, 1, KEY), ValueError, r"needs t in 2\.\.T.*decoder"),
    "NaN in the data of an ELBO": (
        lambda: dj.diffusion_elbo(RFN, SCHED, X.at[0, 1].set(jnp.nan), KEY), ValueError, r"x0 holds 1 NaN or Inf"),
    "reverse_fn var indexed as table[t] with t of shape (B,)": (
        lambda: dj.diffusion_elbo(lambda x, t: (x, SCHED.betas[t]), SCHED, X, KEY), ValueError, r"var of shape \(2,\).*schedules\.at"),
    "log SNR schedule not decreasing": (lambda: dj.schedule_from_log_snr([1.0, 2.0]), ValueError, r"strictly decreasing"),
    "importance-sampled t without its weights": (
        lambda: dj.vlb_estimate(RFN, SCHED, X, KEY, decoder="gaussian", t=jnp.array([1, 2])), ValueError, r"weights = 1/p_t"),
}


def _vae_config(decoder):
    c = base_config("vae")
    c.model.decoder = decoder
    return c


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gets_a_clear_error(name):
    fn, error, pattern = CASES[name]
    start = time.monotonic()
    with pytest.raises(error, match=pattern):
        fn()
    assert time.monotonic() - start < 30, "errors must come before any long work"


def test_there_are_at_least_twenty_kinds():
    assert len(CASES) >= 20
