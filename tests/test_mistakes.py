# ruff: noqa: E501  (a table: one row per mistake, as in tests/test_bad_input.py)
"""The cheap rows of the new-user mistake table (docs/mistakes.md): config values, the pure API and
model building, each a clear error whose message names the key or argument. Rows already in
tests/test_bad_input.py are not repeated here; the expensive rows (training runs, signals, the
disk, the CLI) are recorded in docs/mistakes.md only."""

import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental import checkify

import diffusion_jax as dj
from diffusion_jax.data import pipeline
from diffusion_jax.models import VAE, AutoEncoder, UNet
from diffusion_jax.training import kinds
from diffusion_jax.training.config import base_config, load_config_json, validate_config
from tests.training.tiny import tiny_config

S = dj.linear_schedule(10)
X = jnp.zeros((2, 3))
KEY = jax.random.key(0)
RFN = lambda x, t: (x, jnp.ones_like(x))
EPS = lambda x, t: x


def _config(kind="ddpm", **changes):
    """tiny_config(kind) with dotted keys changed ("model.ch" -> tiny_config's model__ch)."""
    return tiny_config(kind, **{k.replace(".", "__"): v for k, v in changes.items()})


def V(kind="ddpm", **changes):
    """validate_config of the tiny config of ``kind`` with ``changes`` ({"optim.lr": ...})."""
    return lambda: validate_config(_config(kind, **changes))


def build(kind="ddpm", shape=(8, 8, 1), init=False, **changes):
    def run():
        c = _config(kind, **changes)
        validate_config(c)
        module = kinds.get(c.model_kind)
        model = module.build(c, shape)
        if init:
            module.init_params(model, shape, KEY)
    return run


def _model_kind_changed():
    c = tiny_config("ddpm")
    c.model_kind = "vae"
    validate_config(c)


def _section_of_another_kind():
    c = tiny_config("ddpm")
    c.vae = ml_collections.ConfigDict({"free_bits": 0.5})
    validate_config(c)


def _key_of_another_kind():
    c = tiny_config("vae")
    c.model.unlock()
    c.model.ch = 32
    validate_config(c)


def _vae_key_on_an_ae_config():
    c = tiny_config("ae")
    c.eval.iwae_k = 10
    validate_config(c)


def _missing_key():
    c = tiny_config("ddpm")
    del c.train["eval_every"]
    validate_config(c)


def _section_replaced_by_a_value():
    d = tiny_config("ddpm").to_dict()
    d["train"] = 5
    validate_config(ml_collections.ConfigDict(d))


def _config_json(tmp_path, edit):
    d = json.loads(json.dumps(tiny_config("ddpm").to_dict()))
    edit(d)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    return load_config_json(path)


def _resume_with_another(key, value):
    ds = pipeline.make_dataset("digits", "train", batch_size=8, seed=0, prefetch=0)
    state = {**ds.iterator().get_state(), key: value}
    ds.iterator(state)


def _checked(fn, *args):
    err, _ = jax.jit(dj.checked(fn))(*args)
    err.throw()


def _unet(**kw):
    return UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4,
                mid_attention=False, **kw)


# name -> (callable, expected exception, regex the message must match: it names the key/argument)
CASES = {
    # ---- config values: wrong types, inf/NaN, negative, out of range, unknown choices
    "optim.lr = inf": (V(**{"optim.lr": math.inf}), ValueError, r"config\.optim\.lr must be a finite number > 0, got inf"),
    "optim.lr = NaN": (V(**{"optim.lr": math.nan}), ValueError, r"config\.optim\.lr must be a finite number > 0, got nan"),
    "optim.b1 < 0": (V(**{"optim.b1": -0.1}), ValueError, r"config\.optim\.b1 must lie in \[0, 1\)"),
    "optim.b2 = 1": (V(**{"optim.b2": 1.0}), ValueError, r"config\.optim\.b2 must lie in \[0, 1\)"),
    "optim.eps = 0": (V(**{"optim.eps": 0.0}), ValueError, r"config\.optim\.eps must be a finite number > 0"),
    "optim.weight_decay < 0": (V(**{"optim.weight_decay": -0.01}), ValueError, r"config\.optim\.weight_decay must be a finite number >= 0"),
    "optim.grad_clip = inf": (V(**{"optim.grad_clip": math.inf}), ValueError, r"config\.optim\.grad_clip must be a finite number >= 0, got inf"),
    "optim.optimizer = sgd": (V(**{"optim.optimizer": "sgd"}), ValueError, r"config\.optim\.optimizer must be one of \('adamw', 'adam'\)"),
    "optim.decay typo": (V(**{"optim.decay": "cosin"}), ValueError, r"config\.optim\.decay .*Did you mean 'cosine'"),
    "optim.warmup_steps < 0": (V(**{"optim.warmup_steps": -1}), ValueError, r"config\.optim\.warmup_steps must be a non-negative int"),
    "data.batch_size < 0": (V(**{"data.batch_size": -8}), ValueError, r"config\.data\.batch_size must be a positive int, got -8"),
    "data.batch_size a string": (V(**{"data.batch_size": "64"}), TypeError, r"'batch_size'.*<class 'str'>"),
    "train.num_steps = True": (V(**{"train.num_steps": True}), ValueError, r"config\.train\.num_steps must be a positive int, got True"),
    "train.log_every = 0": (V(**{"train.log_every": 0}), ValueError, r"config\.train\.log_every must be a positive int"),
    "train.keep_checkpoints = 0": (V(**{"train.keep_checkpoints": 0}), ValueError, r"config\.train\.keep_checkpoints must be a positive int"),
    "train.eval_every < 0": (V(**{"train.eval_every": -1}), ValueError, r"config\.train\.eval_every must be a non-negative int"),
    "eval.max_examples < 0": (V(**{"eval.max_examples": -1}), ValueError, r"config\.eval\.max_examples must be a non-negative int"),
    "eval.num_samples = 0": (V(**{"eval.num_samples": 0}), ValueError, r"config\.eval\.num_samples must be a positive int"),
    # Fixed here: a negative seed failed later in the data pipeline without naming config.seed.
    "seed < 0": (V(**{"seed": -1}), ValueError, r"config\.seed must lie in 0\.\.4294967295, got -1"),
    # Fixed here: jax.random.key(2**32) == key(0), so the "new" seed silently repeated seed 0.
    "seed >= 2**32 (would repeat seed 0)": (V(**{"seed": 2**32}), ValueError, r"config\.seed must lie in 0\.\.4294967295.*2\*\*32 would repeat seed 0"),
    "data.name typo": (V(**{"data.name": "mnistt"}), ValueError, r"config\.data\.name must be one of .*Did you mean 'mnist'"),
    # ---- keys: unknown kinds, keys of another model kind, missing keys, config.json
    "model_kind unknown": (lambda: base_config("diffusion"), ValueError, r"config\.model_kind must be one of \('ddpm', 'vae', 'ae', 'vdm'\), got 'diffusion'"),
    # Fixed here: only "unknown config key 'diffusion'", though the user changed model_kind.
    "model_kind changed alone": (_model_kind_changed, ValueError, r"config\.model_kind is 'vae', but the other keys are those of model_kind 'ddpm' \(e\.g\. 'diffusion'\)"),
    "a section of another kind": (_section_of_another_kind, ValueError, r"unknown config key 'vae'"),
    "a model key of another kind": (_key_of_another_kind, ValueError, r"unknown config key 'model\.ch'"),
    "a vae key on an ae config (not blamed on model_kind)": (_vae_key_on_an_ae_config, ValueError, r"^unknown config key 'eval\.iwae_k'"),
    # Fixed here: the message said base_config(None) and quoted the key as train.'eval_every'.
    "a key deleted from the config": (_missing_key, ValueError, r"config key 'train\.eval_every' is missing; start from .*base_config\('ddpm'\)"),
    # Fixed here: a TypeError "argument of type 'int' is not iterable".
    "a section replaced by a value": (_section_replaced_by_a_value, ValueError, r"config\.train must be a section"),
    # ---- impossible combinations
    "hybrid loss without learned variance": (V(**{"diffusion.loss": "hybrid"}), ValueError, r"config\.diffusion\.loss='hybrid' needs config\.model\.learned_variance=True"),
    "variance learned without a variance output": (V(**{"diffusion.variance": "learned"}), ValueError, r"config\.diffusion\.variance='learned' needs config\.model\.learned_variance=True"),
    "variance output that nothing reads": (V(**{"model.learned_variance": True}), ValueError, r"config\.model\.learned_variance=True needs diffusion\.variance='learned'"),
    "hybrid loss with a fixed variance": (
        V(**{"diffusion.loss": "hybrid", "model.learned_variance": True, "diffusion.variance": "beta_tilde"}),
        ValueError, r"config\.diffusion\.loss='hybrid' needs config\.diffusion\.variance='learned'"),
    "num_groups not dividing the channels": (V(**{"model.num_groups": 3}), ValueError, r"config\.model\.num_groups=3 must divide every channel count .*\[8\]"),
    "num_groups = 0": (V(**{"model.num_groups": 0}), ValueError, r"config\.model\.num_groups must be a positive int"),
    "attn_resolutions matching no level": (build(**{"model.attn_resolutions": (5,), "model.ch_mult": (1, 2)}), ValueError, r"config\.model\.attn_resolutions=\(5,\): \[5\] match no level.*\[8, 4\]"),
    "num_heads not dividing the channels": (build(init=True, **{"model.num_heads": 3, "model.ch_mult": (1, 2), "model.mid_attention": True}), ValueError, r"num_heads=3 must divide the channel count 16"),
    "ch_mult with a zero": (build(**{"model.ch_mult": (1, 0)}), ValueError, r"ch_mult must be a non-empty tuple of positive ints, got \(1, 0\)"),
    "ch_mult empty": (build(**{"model.ch_mult": ()}), ValueError, r"ch_mult must be a non-empty tuple"),
    "ch too small": (build(**{"model.ch": 2, "model.num_groups": 1}), ValueError, r"ch must be at least 4, got 2"),
    "model.dtype float16": (V(**{"model.dtype": "float16"}), ValueError, r"config\.model\.dtype must be one of \('float32', 'bfloat16'\)"),
    "model.prediction epsilon": (V(**{"model.prediction": "epsilon"}), ValueError, r"config\.model\.prediction .*Did you mean 'eps'"),
    "ddim_steps > T": (V(**{"eval.sampler": "ddim", "eval.ddim_steps": 50}), ValueError, r"config\.eval\.ddim_steps \(50\) must not exceed config\.diffusion\.T \(20\)"),
    "eval.sampler unknown": (V(**{"eval.sampler": "ddim_fast"}), ValueError, r"config\.eval\.sampler .*Did you mean 'ddim'"),
    "beta_1 = 0": (V(**{"diffusion.beta_1": 0.0}), ValueError, r"config\.diffusion\.beta_1 must lie in the open interval \(0, 1\)"),
    "beta_T = 1": (V(**{"diffusion.beta_T": 1.0}), ValueError, r"config\.diffusion\.beta_T must lie in the open interval \(0, 1\), got 1\.0"),
    "beta_1 = NaN": (V(**{"diffusion.beta_1": math.nan}), ValueError, r"config\.diffusion\.beta_1 .*got nan"),
    "schedule typo": (V(**{"diffusion.schedule": "cosinee"}), ValueError, r"config\.diffusion\.schedule .*Did you mean 'cosine'"),
    "hybrid_weight < 0": (V(**{"diffusion.hybrid_weight": -1.0}), ValueError, r"config\.diffusion\.hybrid_weight must be a finite number >= 0"),
    "elbo_chunk_size = 0": (V(**{"eval.elbo_chunk_size": 0}), ValueError, r"config\.eval\.elbo_chunk_size must be a positive int"),
    "vae.free_bits < 0": (V("vae", **{"vae.free_bits": -1.0}), ValueError, r"config\.vae\.free_bits must be a finite number >= 0"),
    "vae.kl_warmup_steps < 0": (V("vae", **{"vae.kl_warmup_steps": -5}), ValueError, r"config\.vae\.kl_warmup_steps must be"),
    "eval.iwae_k = 0": (V("vae", **{"eval.iwae_k": 0}), ValueError, r"config\.eval\.iwae_k must be a positive int"),
    "vae decoder typo": (V("vae", **{"model.decoder": "bernouli"}), ValueError, r"config\.model\.decoder .*Did you mean 'bernoulli'"),
    "ae model.kind unknown": (V("ae", **{"model.kind": "cnn"}), ValueError, r"config\.model\.kind must be one of \('mlp', 'conv'\)"),
    "ae latent_dim = 0": (V("ae", **{"model.latent_dim": 0}), ValueError, r"config\.model\.latent_dim must be a positive int"),
    "ae hidden width 0": (V("ae", **{"model.hidden": (0,)}), ValueError, r"config\.model\.hidden must be a tuple of positive ints"),
    "conv AE with more stages than the image halves": (
        build("ae", **{"model.kind": "conv", "model.hidden": (8, 8, 8, 8)}), ValueError, r"hidden=\(8, 8, 8, 8\)\) needs H and W divisible by 16, got image size 8x8"),
    # ---- data
    "batch larger than the train split": (
        lambda: pipeline.make_dataset("digits", "train", batch_size=5000, seed=0), ValueError, r"1497 examples, fewer than one batch of 5000"),
    # Fixed here: the message now names config.seed / config.data.batch_size.
    "resume with another seed": (lambda: _resume_with_another("seed", 7), ValueError, r"seed=7 but this dataset has seed=0 \(config\.seed\)"),
    "resume with another batch size": (
        lambda: _resume_with_another("global_batch_size", 16), ValueError, r"global_batch_size=16 .*\(config\.data\.batch_size\)"),
    # ---- pure API: schedules
    "linear_schedule with a float T": (lambda: dj.linear_schedule(10.0), TypeError, r"T must be an int, got float"),
    "linear_schedule with beta_1 = NaN": (lambda: dj.linear_schedule(10, math.nan, 0.02), ValueError, r"beta_1 must lie in the open interval"),
    "betas of rank 2": (lambda: dj.schedule_from_betas(np.full((2, 5), 0.1)), ValueError, r"betas must be one-dimensional.*\(2, 5\)"),
    "betas with a NaN": (lambda: dj.schedule_from_betas([0.1, math.nan, 0.2]), ValueError, r"every beta_t must lie in the open interval"),
    "a single beta": (lambda: dj.schedule_from_betas([0.1]), ValueError, r"T must be at least 2, got 1"),
    "cosine s < 0": (lambda: dj.cosine_schedule(10, s=-1.0), ValueError, r"s must be non-negative"),
    "cosine max_beta = 1": (lambda: dj.cosine_schedule(10, max_beta=1.0), ValueError, r"max_beta must lie in \(0, 1\)"),
    # ---- pure API: shapes, dtypes, t
    "noise of another shape": (lambda: dj.q_sample(S, X, 3, jnp.zeros((2, 4))), ValueError, r"x0 \(2, 3\), noise \(2, 4\)"),
    "t of shape (3,) for a batch of 2": (lambda: dj.q_sample(S, X, jnp.array([1, 2, 3]), X), ValueError, r"t of shape \(3,\) indexes the batch axis, but x has shape \(2, 3\)"),
    "t of rank 2": (lambda: dj.q_sample(S, X, jnp.ones((2, 2), jnp.int32), X), ValueError, r"t must be a scalar or have shape \(batch,\)"),
    "q_bridge at t = T": (lambda: dj.q_bridge(S, X, X, 10), ValueError, r"t must lie in 1\.\.9"),
    "integer x_prev": (lambda: dj.q_step(S, jnp.zeros((2, 3), jnp.int32), 1), TypeError, r"x_prev must be a floating-point array"),
    "p_mean_from_eps t > T": (lambda: dj.p_mean_from_eps(S, X, 11, X), ValueError, r"t must lie in 1\.\.10"),
    "p_mean_from_eps with t and eps swapped": (lambda: dj.p_mean_from_eps(S, X, X, 3), ValueError, r"x_t \(2, 3\), eps \(\)"),
    "traced t > T under dj.checked": (
        lambda: _checked(lambda t: dj.q_step(S, X + 1.0, t), jnp.array(11)), checkify.JaxRuntimeError, r"t must lie in 1\.\.10, got values in 11\.\.11"),
    "keys of shape (2, 2)": (
        lambda: dj.l_simple(EPS, S, X, jax.random.split(KEY, 4).reshape(2, 2)), ValueError, r"key must be a single PRNG key or one key per example.*\(2, 2\)"),
    "an int where a key goes": (lambda: dj.l_simple(EPS, S, X, 0), ValueError, r"key must be a single PRNG key.*dtype int32"),
    "x0 without an event axis": (lambda: dj.diffusion_elbo(RFN, S, jnp.zeros(4), KEY), ValueError, r"x0 must have shape \(batch, \*event_shape\)"),
    "reverse_fn returns one array": (lambda: dj.diffusion_elbo(lambda x, t: x, S, X, KEY), TypeError, r"reverse_fn must return a \(mean, var\) pair"),
    "negative variance under dj.checked": (
        lambda: _checked(lambda k: dj.diffusion_elbo(lambda x, t: (x, -jnp.ones_like(x)), S, X, k), KEY),
        checkify.JaxRuntimeError, r"reverse_fn returned a variance that is not positive"),
    "chunk_size = 0": (lambda: dj.diffusion_elbo(RFN, S, X, KEY, chunk_size=0), ValueError, r"chunk_size must be a positive int, got 0"),
    "reverse_kernel prediction unknown": (lambda: dj.reverse_kernel(X, S, X, 3, prediction="epsilon"), ValueError, r"prediction must be one of .*Did you mean 'eps'"),
    "reverse_kernel variance unknown": (lambda: dj.reverse_kernel(X, S, X, 3, variance="fixed"), ValueError, r"variance must be one of \('beta', 'beta_raw', 'beta_tilde', 'learned'\)"),
    "learned variance without the 2C output": (lambda: dj.reverse_kernel(X, S, X, 3, variance="learned"), TypeError, r"learned-variance output must be a pair.*6 = 2 x 3 channels"),
    "l_simple reduce unknown": (lambda: dj.l_simple(EPS, S, X, KEY, reduce="max"), ValueError, r"reduce must be one of \('mean', 'sum'\)"),
    "eps_mse with a broadcastable eps_hat": (lambda: dj.eps_mse(X, jnp.zeros((1, 3))), ValueError, r"eps_hat must have the noise's shape \(2, 3\) exactly"),
    "vlb_estimate weights without t": (lambda: dj.vlb_estimate(RFN, S, X, KEY, decoder="gaussian", weights=jnp.ones(2)), ValueError, r"weights without t"),
    "bits_per_dim with 0 dims": (lambda: dj.bits_per_dim(1.0, 0), ValueError, r"num_dims must be a positive int"),
    # ---- pure API: samplers
    "ddim num_steps = 0": (lambda: dj.ddim_sample(EPS, S, KEY, (2, 3), num_steps=0), ValueError, r"num_steps must lie in 1\.\.T = 1\.\.10, got 0"),
    "ddim num_steps > T": (lambda: dj.ddim_sample(EPS, S, KEY, (2, 3), num_steps=11), ValueError, r"num_steps must lie in 1\.\.T = 1\.\.10, got 11"),
    "ddim num_steps a float": (lambda: dj.ddim_sample(EPS, S, KEY, (2, 3), num_steps=2.5), TypeError, r"num_steps must be an int"),
    "ddim eta < 0": (lambda: dj.ddim_sample(EPS, S, KEY, (2, 3), num_steps=5, eta=-1.0), ValueError, r"eta must be a finite number"),
    "sample shape with a negative size": (lambda: dj.ddpm_sample(EPS, S, KEY, (2, -3)), ValueError, r"every event dimension of shape must be positive"),
    "sample shape of floats": (lambda: dj.ddim_sample(EPS, S, KEY, (2.0, 3), num_steps=5), TypeError, r"shape must be a tuple of ints"),
    "model output of the wrong shape in a sampler": (lambda: dj.ddpm_sample(lambda x, t: x[:, :1], S, KEY, (2, 3)), ValueError, r"model_output \(2, 1\), x_t \(2, 3\)"),
    "sampler variance typo": (lambda: dj.ddpm_sample(EPS, S, KEY, (2, 3), variance="learnt"), ValueError, r"variance must be one of .*Did you mean 'learned'"),
    "sampler without a model": (lambda: dj.ddpm_sample(None, S, KEY, (2, 3)), TypeError, r"model_fn must be callable"),
    "sampler chunk = 0": (lambda: list(dj.ddpm_sample_chunks(EPS, S, KEY, (2, 3), chunk=0)), ValueError, r"chunk must be a positive int"),
    # ---- pure API: ODE samplers, ODE likelihood, sample quality (issue "sample quality")
    "heun with an even NFE": (lambda: dj.heun_sample(EPS, S, KEY, (2, 3), nfe=4), ValueError, r"nfe=4 is even"),
    "dpm_solver++ NFE > T": (lambda: dj.dpm_solver_pp_sample(EPS, S, KEY, (2, 3), nfe=11), ValueError, r"nfe"),
    "dpm_solver++ spacing typo": (lambda: dj.dpm_solver_pp_sample(EPS, S, KEY, (2, 3), nfe=5, spacing="logsnr"), ValueError, r"spacing"),
    "ODE likelihood of data off the level grid": (lambda: dj.ode_bits_per_dim(EPS, S, jnp.full((2, 3), 0.3), KEY, num_levels=17), ValueError, r"x0"),
    "ODE likelihood divergence typo": (lambda: dj.ode_log_likelihood(EPS, S, X, KEY, divergence="hutchison"), ValueError, r"divergence"),
    "FD-digits of 10 samples": (lambda: dj.quality.fd_digits(jnp.zeros((10, 8, 8, 1)), seed=0), ValueError, r"samples"),
    "FD-digits of 28x28 images": (lambda: dj.quality.fd_digits(jnp.zeros((100, 28, 28, 1)), seed=0), ValueError, r"\(N, 8, 8, 1\)"),
    "eval.fd_samples below the feature dimension": (V(**{"eval.fd_samples": 50}), ValueError, r"config\.eval\.fd_samples \(50\) must exceed the feature dimension 64"),
    "eval.nfe even with heun": (V(**{"eval.sampler": "heun", "eval.nfe": 20}), ValueError, r"config\.eval\.nfe \(20\) does not fit eval\.sampler 'heun'"),
    "eval.ode_divergence typo": (V(**{"eval.ode_divergence": "exakt"}), ValueError, r"config\.eval\.ode_divergence"),
    # ---- pure API: VAE / AE
    "vae_elbo decoder typo": (lambda: dj.vae_elbo(lambda x: (x, x), lambda z: (z, 1.0), X, KEY, decoder="bernouli"), ValueError, r"decoder must be one of .*Did you mean 'bernoulli'"),
    "vae_elbo kl_weight < 0": (lambda: dj.vae_elbo(lambda x: (x, x + 1), lambda z: (z, 1.0), X, KEY, kl_weight=-1.0), ValueError, r"kl_weight must be non-negative"),
    "iwae_bound K a float": (lambda: dj.iwae_bound(lambda x: (x, x + 1), lambda z: (z, 1.0), X, KEY, num_samples=1.5), TypeError, r"num_samples must be a positive Python int"),
    "ae_loss shapes differ": (lambda: dj.ae_loss(X, jnp.zeros((2, 4))), ValueError, r"x \(2, 3\), x_hat \(2, 4\)"),
    "ae_loss reduction unknown": (lambda: dj.ae_loss(X, X, reduction="avg"), ValueError, r"reduction must be one of \('sum', 'mean'\)"),
    # ---- models
    "UNet t of shape (B, 1)": (
        lambda: _unet().init(KEY, jnp.zeros((2, 8, 8, 1)), jnp.ones((2, 1), jnp.int32), train=False), ValueError, r"t must be a scalar or have shape \(2,\), got shape \(2, 1\)"),
    "VAE decode with a latent of the wrong size": (
        lambda: VAE(image_shape=(8, 8, 1), latent_dim=2, hidden=(4,)).apply(
            {"params": {"decoder_log_var": jnp.zeros(())}}, jnp.zeros((1, 3)), method=VAE.decode), ValueError, r"z must have shape \(\.\.\., 2\), got shape \(1, 3\)"),
    "AutoEncoder fed 28x28 images, built for 8x8": (
        lambda: AutoEncoder(image_shape=(8, 8, 1), latent_dim=2, hidden=(4,)).init(KEY, jnp.zeros((1, 28, 28, 1))), ValueError, r"x must have shape \(\.\.\., 8, 8, 1\), got shape \(1, 28, 28, 1\)"),
}

JSON_CASES = {
    "config.json with lr as a string": (lambda d: d["optim"].update(lr="1e-3"), TypeError, r"'lr'.*<class 'str'>"),
    # Fixed here (shared with validate_config): names model_kind, not only the stray key.
    "config.json with model_kind changed": (lambda d: d.update(model_kind="vae"), ValueError, r"config\.model_kind is 'vae', but the other keys are those of model_kind 'ddpm'"),
    "config.json without model_kind": (lambda d: d.pop("model_kind"), ValueError, r"is not a run config \(no 'model_kind' key\)"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_gets_a_clear_error(name):
    fn, error, pattern = CASES[name]
    start = time.monotonic()
    with pytest.raises(error, match=pattern):
        fn()
    assert time.monotonic() - start < 10, "a mistake must be reported before any long work"


@pytest.mark.parametrize("name", list(JSON_CASES))
def test_config_json_mistake_gets_a_clear_error(name, tmp_path):
    edit, error, pattern = JSON_CASES[name]
    with pytest.raises(error, match=pattern):
        _config_json(tmp_path, edit)


def test_the_rows_are_not_those_of_test_bad_input():
    from tests import test_bad_input

    assert not set(CASES) & set(test_bad_input.CASES)
    assert len(CASES) + len(JSON_CASES) >= 60


def test_valid_seeds_and_dequantized_continuous_models_still_pass():
    for kind, changes in [("ddpm", {"seed": 2**32 - 1}), ("ddpm", {"seed": 0}),
                          ("vae", {"data.dequantize": True}), ("ae", {"data.dequantize": True})]:
        validate_config(_config(kind, **changes))


# Defects the table found in kinds/ (docs/mistakes.md), fixed there.
def test_empty_hidden_builds_a_linear_autoencoder():
    c = _config("ae", **{"model.hidden": ()})
    validate_config(c)
    assert kinds.get("ae").build(c, (8, 8, 1)).hidden == ()


def test_cosine_schedule_rejects_linear_only_keys():
    with pytest.raises(ValueError, match=r"beta_T"):
        validate_config(_config(**{"diffusion.schedule": "cosine", "diffusion.beta_T": 0.05}))


def test_dequantized_data_for_a_ddpm_is_refused():
    with pytest.raises(ValueError, match=r"dequantize"):
        validate_config(_config(**{"data.dequantize": True}))
