"""Model kind "vdm": a variational diffusion model (Kingma et al. 2021) in continuous time.

The network is ``VDMNet``: Fourier features of z_t concatenated to it, then the U-Net, giving
ε̂ (or v̂, turned into ε̂ here) with the image's channel count; it is conditioned on the
normalised γ, 1000 · (γ(t) − γ_lo) / (γ_hi − γ_lo) with (γ_lo, γ_hi) the config's initial
endpoints (VDM's invariance: the network sees the schedule only through γ). The schedule γ(t)
is fixed-linear, linear with learned endpoints, or VDM's learned monotone network; its
parameters live beside the network's: ``params = {"net": ..., "gamma": ...}`` ("gamma" absent
for the fixed schedule), so one optimizer trains both on the same loss.

Loss, evaluation and sampling go through the pure core ``diffusion_jax.vdm``: the loss is
``vdm_elbo``'s bits/dim (L_∞ by default, L_T with ``diffusion.T`` > 0), the test bound averages
``eval.vdm_draws`` stratified (t, ε) draws per example, and the sampler is ancestral on a grid
of ``eval.sample_steps`` steps through ``vdm_posterior`` with the clipped x̂.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import vdm as vdm_lib
from diffusion_jax.models import VDMNet, vdm_unet
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training.config import (
    check_choice_key,
    check_nonnegative_int,
    check_positive_int,
)
from diffusion_jax.training.kinds.common import (
    add_unet_config,
    check_attention_levels,
    progress_sampler,  # noqa: F401
    validate_unet,
)

SCHEDULES = ("fixed", "learned_linear", "learned_nnet")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ancestral",)
FINGERPRINT_KEYS = ("model", "diffusion.schedule", "diffusion.gamma_min", "diffusion.gamma_max",
                    "diffusion.gamma_hidden", "data.name", "data.binarize")
CAN_SAMPLE = True
T_COND_SCALE = 1000.0  # the normalised γ in [0, 1] is scaled to [0, 1000] for the embedding


def add_config(c: ml_collections.ConfigDict) -> None:
    m = c.model
    add_unet_config(m)
    m.prediction = "eps"  # the network's output: ε, or v = α ε − σ x (ε̂ = σ z + α v̂)
    m.dtype = "float32"
    m.fourier = True  # concatenate sin/cos(2^k · 2π · z) for k in fourier_min..fourier_max
    m.fourier_min = 6
    m.fourier_max = 7

    d = c.diffusion = ml_collections.ConfigDict()
    d.schedule = "learned_linear"  # fixed (linear in γ), learned_linear (endpoints), learned_nnet
    d.gamma_min = vdm_lib.GAMMA_MIN  # γ(0) (the initial value for a learned schedule)
    d.gamma_max = vdm_lib.GAMMA_MAX  # γ(1)
    d.gamma_hidden = 1024  # width of the monotone network (learned_nnet only)
    d.T = 0  # 0 = continuous time (L_∞); T > 0 trains on the T-step bound L_T
    d.antithetic = True  # VDM's low-discrepancy t over the batch

    c.eval.vdm_draws = 32  # stratified (t, ε) draws per test example for the bound
    c.eval.sample_steps = 256  # ancestral steps of the sampler
    c.eval.sampler = "ancestral"


def validate(config) -> None:
    m, d = config.model, config.diffusion
    validate_unet(config)
    for key in ("diffusion.gamma_hidden", "eval.vdm_draws", "eval.sample_steps"):
        check_positive_int(config, key)
    check_nonnegative_int(config, "diffusion.T")
    for key in ("model.fourier_min", "model.fourier_max"):
        value = config.model[key.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config.{key} must be an int, got {value!r}.")
    if m.fourier_min > m.fourier_max:
        raise ValueError(f"config.model.fourier_min ({m.fourier_min}) must not exceed "
                         f"config.model.fourier_max ({m.fourier_max}).")
    if not isinstance(m.fourier, bool) or not isinstance(d.antithetic, bool):
        raise ValueError(f"config.model.fourier and config.diffusion.antithetic must be bools, got "
                         f"{m.fourier!r} and {d.antithetic!r}.")
    check_choice_key(config, "diffusion.schedule", SCHEDULES)
    check_choice_key(config, "model.prediction", PREDICTIONS)
    check_choice_key(config, "eval.sampler", SAMPLERS)
    for key in ("diffusion.gamma_min", "diffusion.gamma_max"):
        value = config.diffusion[key.split(".")[1]]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"config.{key} must be a finite number, got {value!r}.")
    if not d.gamma_min < d.gamma_max:
        raise ValueError(f"config.diffusion.gamma_min ({d.gamma_min}) must be below "
                         f"config.diffusion.gamma_max ({d.gamma_max}).")
    if config.data.dequantize:
        raise ValueError("config.data.dequantize=True moves pixels off their levels, but VDM's "
                         "decoder scores them on the levels; set config.data.dequantize=False.")


@dataclasses.dataclass(frozen=True)
class VDMModel:
    """What ``build`` returns: the network and the schedule's description (hashable, so the
    compiled sampler is cached per model). ``schedule`` = (name, γ_min, γ_max, hidden)."""

    net: VDMNet
    schedule: tuple

    @property
    def prediction(self) -> str:
        return self.net.unet.prediction


def build(config, image_shape):
    m = config.model
    unet = vdm_unet(
        image_shape[-1], ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), mid_attention=m.mid_attention,
        num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups,
        prediction=m.prediction, dtype=jnp.dtype(m.dtype),
    )
    unet.check_image_shape(image_shape[0], image_shape[1])
    check_attention_levels(m, image_shape)
    net = VDMNet(unet=unet, fourier=bool(m.fourier), fourier_min=int(m.fourier_min),
                 fourier_max=int(m.fourier_max))
    return VDMModel(net, _schedule_key(config))


def _schedule_key(config):
    d = config.diffusion
    return (d.schedule, float(d.gamma_min), float(d.gamma_max), int(d.gamma_hidden))


def init_gamma_params(schedule_key, key):
    """The schedule's parameters (None for the fixed schedule)."""
    schedule, g_min, g_max, hidden = schedule_key
    if schedule == "fixed":
        return None
    if schedule == "learned_linear":
        return {"gamma_min": jnp.asarray(g_min, jnp.float32),
                "gamma_max": jnp.asarray(g_max, jnp.float32)}
    return vdm_lib.monotone_gamma_init(key, hidden, g_min, g_max)


def gamma_fn_of(schedule_key, params):
    """γ(t) of the schedule with the parameters in ``params`` (the whole param dict)."""
    schedule, g_min, g_max, _ = schedule_key
    if schedule == "fixed":
        return vdm_lib.LinearGamma(g_min, g_max)
    if schedule == "learned_linear":
        return vdm_lib.LinearGamma(params["gamma"]["gamma_min"], params["gamma"]["gamma_max"])
    return vdm_lib.MonotoneGamma(params["gamma"])


def init_params(model, image_shape, key):
    """{"net": the network's parameters, "gamma": the schedule's (learned schedules only)}."""
    k_net, k_gamma = jax.random.split(key)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    init = jax.jit(lambda k: model.net.init(k, dummy, jnp.ones((1,), jnp.float32), train=False))
    params = {"net": init(k_net)["params"]}
    gamma = init_gamma_params(model.schedule, k_gamma)
    return params if gamma is None else {**params, "gamma": gamma}


def eps_fn_of(model, params, gamma_fn, *, train: bool = False, rngs=None):
    """(z_t, t (B,)) -> ε̂ float32: the network on the normalised γ(t) (v̂ converted to ε̂)."""
    _, g_lo, g_hi, _ = model.schedule
    prediction = model.prediction

    def eps_fn(z_t, t):
        g = gamma_fn(t)
        t_cond = T_COND_SCALE * (g - g_lo) / (g_hi - g_lo)
        out = model.net.apply({"params": params["net"]}, z_t, t_cond, train=train, rngs=rngs or {})
        out = out.astype(jnp.float32)
        if prediction == "v":  # ε = σ z + α v
            ge = g.reshape(g.shape + (1,) * (z_t.ndim - 1))
            out = jnp.sqrt(jax.nn.sigmoid(ge)) * z_t + jnp.sqrt(jax.nn.sigmoid(-ge)) * out
        return out

    return eps_fn


def init_loss_state(config):
    del config


def loss_state_update(config):
    del config


def loss_keys(keys):
    """(the vdm_elbo key, the dropout key) of a batch from its per-example keys (B,)."""
    return jax.random.fold_in(keys[0], 0), jax.random.fold_in(keys[0], 1)


def make_loss(model, config, *, num_levels: int):
    """−ELBO in bits/dim (``vdm_elbo``), the batch mean; one (t, ε) draw per example.

    The schedule's parameters get the gradient of the same bound (as VDM's released code): the
    endpoints move the bound, the interior of γ only the variance of its estimate.
    """
    d = config.diffusion
    sched_key = model.schedule
    T = int(d.T) or None
    antithetic = bool(d.antithetic)

    def loss_fn(params, batch, keys, *, train: bool, step=None):
        del step
        x = batch["image"]
        elbo_key, dropout_key = loss_keys(keys)
        gamma_fn = gamma_fn_of(sched_key, params)
        rngs = {"dropout": dropout_key} if train else None
        eps_fn = eps_fn_of(model, params, gamma_fn, train=train, rngs=rngs)
        out = vdm_lib.vdm_elbo(eps_fn, gamma_fn, x, elbo_key, num_levels=num_levels, T=T,
                               antithetic=antithetic)
        loss = out["bpd"].mean()
        metrics = {"loss": loss, "bpd": loss,
                   "recon_nats": out["reconstruction"].mean(), "prior_nats": out["prior"].mean(),
                   "diffusion_nats": out["diffusion"].mean(),
                   "gamma_0": gamma_fn(jnp.zeros(())), "gamma_1": gamma_fn(jnp.ones(()))}
        return loss, metrics

    return loss_fn


def evaluate(config, model, params, images, key, *, num_levels: int, cache_dir=None,
             cache_tag=None, progress: bool = True) -> dict:
    """The test bound: per example, the mean over ``eval.vdm_draws`` draws of each term.

    Draw k of example b uses t = mod(u_b + k/K, 1) (stratified over the K draws, u_b uniform;
    i = ceil(t T) for L_T) and fresh ε for the diffusion term and the decoder, so each
    per-example mean is an unbiased estimate of its bound; the standard error is over examples
    (it includes what is left of the Monte-Carlo noise). Resumable like ddpm's evaluation.
    """
    d = config.diffusion
    sched_key = model.schedule
    T = int(d.T) or None
    draws = int(config.eval.vdm_draws)
    dims = int(np.prod(images.shape[1:]))

    @jax.jit
    def evaluate_batch(params, x, batch_key):
        gamma_fn = gamma_fn_of(sched_key, params)
        eps_fn = eps_fn_of(model, params, gamma_fn)
        g_0, g_1 = gamma_fn(jnp.zeros(())), gamma_fn(jnp.ones(()))
        k_u, k_draws = jax.random.split(batch_key)
        u = jax.random.uniform(k_u, (x.shape[0],))

        def one_draw(carry, k):
            k_rec, k_eps = jax.random.split(jax.random.fold_in(k_draws, k))
            t = jnp.mod(u + k / draws, 1.0)
            eps = jax.random.normal(k_eps, x.shape)
            if T is None:
                diff = vdm_lib.vdm_diffusion_term_continuous(eps_fn, gamma_fn, x, t, eps)
            else:
                i = jnp.clip(jnp.ceil(t * T), 1, T).astype(jnp.int32)
                diff = T * vdm_lib.vdm_diffusion_term_discrete(eps_fn, gamma_fn, x, i, eps, T=T)
            rec = vdm_lib.vdm_reconstruction_loss(g_0, x, jax.random.normal(k_rec, x.shape),
                                                  num_levels=num_levels)
            return (carry[0] + diff, carry[1] + rec), None

        zeros = jnp.zeros((x.shape[0],))
        (diff, rec), _ = jax.lax.scan(one_draw, (zeros, zeros), jnp.arange(draws))
        diff, rec = diff / draws, rec / draws
        prior = vdm_lib.vdm_prior_loss(g_1, x)
        return {"reconstruction": rec, "prior": prior, "diffusion": diff,
                "total": -(rec + prior + diff)}

    settings = {"kind": "vdm", "tag": cache_tag, "schedule": list(sched_key), "T": T or 0,
                "draws": draws, "num_levels": num_levels, "prediction": model.prediction,
                "params": eval_lib.tree_digest(params)}
    results = eval_lib.evaluate_in_batches(
        lambda x, k: evaluate_batch(params, x, k), images, key,
        batch_size=config.eval.batch_size, settings=settings, cache_dir=cache_dir,
        desc="VDM bound", progress=progress)
    gamma_fn = gamma_fn_of(sched_key, params)
    report = {"num_examples": int(images.shape[0]), "T": T or "continuous", "draws": draws,
              "num_levels": num_levels, "schedule": d.schedule,
              "gamma_0": float(gamma_fn(jnp.zeros(()))), "gamma_1": float(gamma_fn(jnp.ones(())))}
    for k, v in results.items():
        report[f"{k}_nats"], report[f"{k}_nats_se"] = eval_lib.mean_and_stderr(v)
    bpd = np.asarray(elbo_lib.bits_per_dim(results["total"], dims))
    report["bpd"], report["bpd_se"] = eval_lib.mean_and_stderr(bpd)
    return report


def summary_lines(ev: dict) -> list[str]:
    T = ev["T"]
    bound = "L_∞ (continuous time)" if T == "continuous" else f"L_T, T = {T}"
    return [
        f"test ELBO: {ev['bpd']:.4f} ± {ev['bpd_se']:.4f} bits/dim "
        f"({-ev['total_nats']:.2f} ± {ev['total_nats_se']:.2f} nats NLL bound per example, "
        f"{ev['num_examples']} test examples, {bound}, {ev['draws']} draws per example, "
        f"{ev['num_levels']} levels)",
        f"  terms (nats): reconstruction {ev['reconstruction_nats']:.3f}, prior "
        f"{ev['prior_nats']:.4f}, diffusion {ev['diffusion_nats']:.2f}; schedule "
        f"{ev['schedule']!r}, γ(0) = {ev['gamma_0']:.2f}, γ(1) = {ev['gamma_1']:.2f}",
    ]


def sample(config, model, params, key, *, num_samples: int, image_shape, sampler=None,
           progress: bool = True) -> np.ndarray:
    """(num_samples, H, W, C) in [−1, 1]: ancestral sampling on ``eval.sample_steps`` steps.

    z_1 ~ N(0, I); for i = N..1, z_{s} ~ q(z_s | z_t, x̂(z_t)) with t = i/N, s = (i−1)/N and
    x̂ = clip((z_t − σ_t ε̂)/α_t, −1, 1); the result is the decoder's mean E[x | z_0] over the
    levels. Compiled once per (model, schedule, shape, steps); params are an argument.
    """
    del progress
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    if sampler not in (None, *SAMPLERS):
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    steps = int(config.eval.sample_steps)
    if steps < 1:
        raise ValueError(f"config.eval.sample_steps must be a positive int, got {steps!r}.")
    num_levels = 2 if config.data.binarize else _num_levels(config)
    fn = _ancestral_sampler(model, (int(num_samples), *image_shape), steps, num_levels)
    return np.asarray(fn(params, key))


def _num_levels(config) -> int:
    from diffusion_jax.data import pipeline

    return int(pipeline.dataset_spec(config.data.name).num_levels)


@functools.lru_cache(maxsize=8)
def _ancestral_sampler(model, shape, steps, num_levels):
    def run(params, key):
        gamma_fn = gamma_fn_of(model.schedule, params)
        eps_fn = eps_fn_of(model, params, gamma_fn)
        prior_key, steps_key = jax.random.split(key)
        z = jax.random.normal(prior_key, shape, jnp.float32)

        def step(z_t, i):
            t = jnp.full((shape[0],), i / steps, jnp.float32)
            s = jnp.full((shape[0],), (i - 1) / steps, jnp.float32)
            g_t, g_s = gamma_fn(t), gamma_fn(s)
            x_hat = jnp.clip(vdm_lib.vdm_predict_x(g_t, z_t, eps_fn(z_t, t)), -1.0, 1.0)
            post = vdm_lib.vdm_posterior(g_s, g_t, x_hat, z_t)
            noise = jax.random.normal(jax.random.fold_in(steps_key, i), shape, jnp.float32)
            return post.mean + jnp.sqrt(post.var) * noise, None

        z, _ = jax.lax.scan(step, z, jnp.arange(steps, 0, -1))
        g_0 = gamma_fn(jnp.zeros((shape[0],), jnp.float32))
        probs = jnp.exp(vdm_lib.vdm_decoder_log_probs(g_0, z, num_levels=num_levels))
        levels = 2.0 * jnp.arange(num_levels, dtype=jnp.float32) / (num_levels - 1) - 1.0
        return jnp.clip(jnp.sum(probs * levels, axis=-1), -1.0, 1.0)

    return jax.jit(run)
