"""Model kind "ddpm": a U-Net ε/x̂_0/v network on the discrete-time diffusion of Ho et al.

Loss, evaluation and sampling all go through the pure core: ``per_example_noise`` / ``q_sample``
draw (t, ε, x_t), the network is called once, ``reverse_kernel`` (the one adapter) turns its
output into p_θ(x_{t−1} | x_t) with x̂_0 and ε̂, and ``eps_mse`` / ``vlb_term_at`` /
``prior_kl`` give the objectives. The test bound is ``diffusion_elbo`` over all T steps.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import ode_likelihood, quality, samplers, timestep_sampling
from diffusion_jax.forward import q_sample
from diffusion_jax.models import UNet
from diffusion_jax.reverse import PREDICTIONS, VARIANCES, reverse_kernel
from diffusion_jax.schedules import Schedule, cosine_schedule, linear_schedule
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training.config import (
    check_choice_key,
    check_nonnegative_int,
    check_positive_int,
    check_positive_number,
    get_key,
)
from diffusion_jax.training.kinds.common import (
    add_unet_config,
    check_attention_levels,
    split_keys,
    validate_unet,
)

LOSSES = ("l_simple", "vlb", "hybrid")
T_SAMPLING = ("uniform", "importance")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim", "dpm_solver++", "heun", "sde_dpm_solver++")
# The solvers that take config.eval.nfe network evaluations: the deterministic ODE solvers
# DPM-Solver++(2M) and Heun, and the stochastic SDE-DPM-Solver++(2M).
NFE_SAMPLER_FNS = {"dpm_solver++": samplers.dpm_solver_pp_sample, "heun": samplers.heun_sample,
                   "sde_dpm_solver++": samplers.sde_dpm_solver_pp_sample}
NFE_SAMPLERS = tuple(NFE_SAMPLER_FNS)
ODE_DIVERGENCES = ("hutchinson", "exact")
FINGERPRINT_KEYS = ("model", "diffusion.T", "diffusion.schedule", "diffusion.beta_1",
                    "diffusion.beta_T", "data.name", "data.binarize")
CAN_SAMPLE = True


def add_config(c: ml_collections.ConfigDict) -> None:
    m = c.model
    add_unet_config(m)
    m.prediction = "eps"
    m.learned_variance = False
    m.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 params and optimizer

    d = c.diffusion = ml_collections.ConfigDict()
    d.T = 1000
    d.schedule = "linear"
    d.beta_1 = 1e-4  # linear schedule only
    d.beta_T = 0.02  # linear schedule only
    d.loss = "l_simple"
    d.variance = "beta"  # σ_t²: beta (fixed large, β̃_2 at t = 1), beta_raw, beta_tilde, learned
    d.hybrid_weight = 0.001
    d.t_sampling = "uniform"  # or "importance" (Nichol & Dhariwal's loss-history sampler; loss vlb)

    c.eval.elbo_chunk_size = 50
    c.eval.sampler = "ddpm"
    c.eval.ddim_steps = 100
    c.eval.nfe = 25  # network evaluations of (sde_)dpm_solver++ (1..T), heun (odd, 1..2T−1)
    # The sampler of the grids drawn during training (progress only; "" = eval.sampler). A cheap
    # one (e.g. "dpm_solver++") keeps periodic evaluation a small part of training; the final
    # grid and figures always use eval.sampler.
    c.eval.progress_sampler = ""
    # Final evaluation extras (0 = off): FD-digits of fd_samples samples drawn with eval.sampler
    # (digits only), and the probability-flow ODE bits/dim of the first ode_examples examples.
    c.eval.fd_samples = 0
    c.eval.fd_bootstrap = 50
    c.eval.ode_examples = 0
    c.eval.ode_divergence = "hutchinson"  # or "exact" (D Jacobian-vector products per call)
    c.eval.ode_tolerance = 1e-5  # rtol = atol of the adaptive solve (score_sde's 1e-5)


def validate(config) -> None:
    m, d = config.model, config.diffusion
    validate_unet(config)
    for key in ("diffusion.T", "eval.elbo_chunk_size", "eval.ddim_steps", "eval.nfe"):
        check_positive_int(config, key)
    if d.T < 2:
        raise ValueError(f"config.diffusion.T must be at least 2, got {d.T}.")
    check_choice_key(config, "diffusion.schedule", SCHEDULES)
    check_choice_key(config, "diffusion.loss", LOSSES)
    check_choice_key(config, "diffusion.variance", VARIANCES)
    check_choice_key(config, "model.prediction", PREDICTIONS)
    check_choice_key(config, "eval.sampler", SAMPLERS)
    check_choice_key(config, "eval.progress_sampler", ("", *SAMPLERS))
    check_choice_key(config, "diffusion.t_sampling", T_SAMPLING)
    if d.t_sampling == "importance" and d.loss != "vlb":
        raise ValueError(f"config.diffusion.t_sampling='importance' reweights the bound and needs "
                         f"config.diffusion.loss='vlb', got loss={d.loss!r}.")
    check_positive_number(config, "diffusion.hybrid_weight", allow_zero=True)
    if d.schedule != "linear":
        defaults = ml_collections.ConfigDict()
        defaults.model = ml_collections.ConfigDict()
        defaults.eval = ml_collections.ConfigDict()
        add_config(defaults)
        for key in ("beta_1", "beta_T"):
            if d[key] != defaults.diffusion[key]:
                raise ValueError(f"config.diffusion.{key}={d[key]!r} is used by the linear schedule "
                                 f"only, but diffusion.schedule={d.schedule!r}; leave it at its "
                                 f"default or set diffusion.schedule='linear'.")
    if config.data.dequantize:
        raise ValueError("config.data.dequantize=True moves pixels off their levels, but a DDPM "
                         "scores them with the discretized decoder, which needs them on the "
                         "levels; set config.data.dequantize=False.")
    if d.schedule == "linear":
        for key in ("diffusion.beta_1", "diffusion.beta_T"):
            value = config.diffusion[key.split(".")[1]]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise ValueError(f"config.{key} must lie in the open interval (0, 1), got {value!r}.")
        if d.beta_1 > d.beta_T:
            raise ValueError(f"config.diffusion.beta_1 ({d.beta_1}) must not exceed "
                             f"config.diffusion.beta_T ({d.beta_T}).")
    if (d.loss == "hybrid" or d.variance == "learned") != bool(m.learned_variance):
        if m.learned_variance:
            raise ValueError("config.model.learned_variance=True needs diffusion.variance='learned' "
                             "(the network's variance output would be ignored otherwise).")
        key = "diffusion.loss='hybrid'" if d.loss == "hybrid" else "diffusion.variance='learned'"
        raise ValueError(f"config.{key} needs config.model.learned_variance=True.")
    if d.loss == "hybrid" and d.variance != "learned":
        raise ValueError("config.diffusion.loss='hybrid' needs config.diffusion.variance='learned'.")
    for key in ("eval.sampler", "eval.progress_sampler"):
        sampler = get_key(config, key)
        if not sampler:
            continue
        if sampler in NFE_SAMPLERS:
            check_nfe(config.eval.nfe, sampler, d.T)
        if sampler == "ddim" and config.eval.ddim_steps > d.T:
            raise ValueError(f"config.eval.ddim_steps ({config.eval.ddim_steps}) must not exceed "
                             f"config.diffusion.T ({d.T}) (config.{key}='ddim').")
    _validate_final_extras(config)


def _validate_final_extras(config) -> None:
    e = config.eval
    for key in ("eval.fd_samples", "eval.ode_examples"):
        check_nonnegative_int(config, key)
    check_positive_int(config, "eval.fd_bootstrap")
    check_choice_key(config, "eval.ode_divergence", ODE_DIVERGENCES)
    check_positive_number(config, "eval.ode_tolerance")
    if e.ode_tolerance >= 1:
        raise ValueError(f"config.eval.ode_tolerance must lie in (0, 1), got {e.ode_tolerance!r}.")
    if e.fd_samples and config.data.name != "digits":
        raise ValueError(f"config.eval.fd_samples={e.fd_samples} asks for FD-digits, which uses "
                         f"the digits classifier's features, but data.name="
                         f"{config.data.name!r}; set eval.fd_samples=0 (for other data use "
                         f"diffusion_jax.quality.sample_quality with your own feature_fn).")
    feature_dim = int(quality.load_digits_classifier()[1]["feature_dim"]) if e.fd_samples else 0
    if e.fd_samples and e.fd_samples <= feature_dim:
        raise ValueError(f"config.eval.fd_samples ({e.fd_samples}) must exceed the feature "
                         f"dimension {feature_dim} (a Fréchet distance needs a full-rank "
                         f"covariance), or be 0 to skip FD-digits.")


def check_nfe(nfe, sampler: str, T: int) -> None:
    """config.eval.nfe must fit ``sampler`` on T steps; errors name the key (never clamped)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"config.eval.nfe must be a positive int, got {nfe!r}.")
    if sampler == "heun":
        try:
            samplers.heun_num_steps(nfe, int(T))
        except ValueError as e:
            raise ValueError(f"config.eval.nfe ({nfe}) does not fit eval.sampler 'heun' with "
                             f"diffusion.T = {T}: {e}") from None
    elif nfe > T:
        raise ValueError(f"config.eval.nfe ({nfe}) must not exceed config.diffusion.T ({T}): "
                         f"{sampler} evaluates the network once per timestep.")


def progress_sampler(config) -> str | None:
    """The sampler of the grids drawn during training: ``eval.progress_sampler``, or None
    (``eval.sampler``) when it is ""."""
    return config.eval.progress_sampler or None


def sample_tag(config, sampler: str) -> str:
    """The sampler's name in sample file names, with its network evaluations where it has them
    (e.g. ``heun_nfe19``), so files of different settings never share a name."""
    if sampler in NFE_SAMPLERS:
        return f"{sampler}_nfe{config.eval.nfe}"
    if sampler == "ddim":
        return f"ddim{config.eval.ddim_steps}"
    return sampler


def build_schedule(diff_cfg) -> Schedule:
    if diff_cfg.schedule == "linear":
        return linear_schedule(int(diff_cfg.T), beta_1=diff_cfg.beta_1, beta_T=diff_cfg.beta_T)
    return cosine_schedule(int(diff_cfg.T))


def build(config, image_shape):
    m = config.model
    unet = UNet(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), mid_attention=m.mid_attention,
        num_heads=m.num_heads, dropout=m.dropout, num_groups=m.num_groups,
        prediction=m.prediction, learned_variance=m.learned_variance, dtype=jnp.dtype(m.dtype),
    )
    unet.check_image_shape(image_shape[0], image_shape[1])
    check_attention_levels(m, image_shape)
    return unet


def init_params(model, image_shape, key):
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    init = jax.jit(lambda k: model.init(k, dummy, jnp.ones((1,), jnp.int32), train=False))
    return init(key)["params"]


def network_fn(model, params, *, train: bool = False, rngs=None):
    """(x_t, t (B,)) -> the network's raw float32 output (the adapter's input)."""

    def fn(x_t, t):
        out = model.apply({"params": params}, x_t, t, train=train, rngs=rngs or {})
        return out.astype(jnp.float32)

    return fn


def reverse_fn(model, params, sched: Schedule, *, variance: str, clip_x0: bool = False):
    """reverse_fn(x_t, t (B,)) -> (mean, var) of p_θ(x_{t−1} | x_t), for ``diffusion_elbo``."""
    net = network_fn(model, params)

    def fn(x_t, t):
        k = reverse_kernel(net(x_t, t), sched, x_t, t, prediction=model.prediction,
                           variance=variance, clip_x0=clip_x0)
        return k.mean, k.var

    return fn


def init_loss_state(config):
    """The loss history of importance-sampled t (``diffusion.t_sampling="importance"``) or None."""
    if config.diffusion.t_sampling == "importance":
        return timestep_sampling.init(int(config.diffusion.T))
    return None


def loss_state_update(config):
    """(loss_state, per_example {"t", "term"}) -> loss_state, or None without a loss state."""
    if config.diffusion.t_sampling != "importance":
        return None
    return lambda state, per_example: timestep_sampling.update(state, per_example["t"],
                                                               per_example["term"])


def make_loss(model, config, *, num_levels: int):
    """L_simple, the VLB (single-t unbiased estimate of −ELBO, in bits/dim) or the hybrid.

    One network call per example at t ~ U{1..T}: ε̂ (through the adapter) gives the ε-MSE, the
    reverse kernel gives the bound's term at t (``vlb_term_at``: the decoder NLL at t = 1, the
    denoising KL at t ≥ 2) and −ELBO ≈ prior_kl + T · term. Hybrid (Nichol & Dhariwal):
    ε-MSE + λ · VLB with the mean's gradient stopped in the VLB.
    With ``diffusion.t_sampling="importance"`` t is drawn from the loss history in
    ``loss_state`` (``timestep_sampling``) and −ELBO ≈ prior_kl + term / p_t; the per-example
    (t, term) come back under ``metrics["per_example"]`` for the history's update.
    """
    d = config.diffusion
    sched = build_schedule(d)
    T = sched.T

    importance = d.t_sampling == "importance"

    def loss_fn(params, batch, keys, *, train: bool, step=None, loss_state=None):
        del step
        x0 = batch["image"]
        key_noise, key_dropout, key_t = split_keys(keys, 3) if importance else (
            *split_keys(keys, 2), None)
        t, noise = elbo_lib.per_example_noise(key_noise, x0, T)
        weights = jnp.full(t.shape, float(T))
        if importance and loss_state is not None:  # (periodic evaluation: uniform t)
            t, weights = jax.vmap(lambda k: timestep_sampling.sample(loss_state, k, 1))(key_t)
            t, weights = t[:, 0], weights[:, 0]
        x_t = q_sample(sched, x0, t, noise)
        rngs = {"dropout": key_dropout[0]} if train else None
        output = network_fn(model, params, train=train, rngs=rngs)(x_t, t)
        kernel = reverse_kernel(output, sched, x_t, t, prediction=model.prediction,
                                variance=d.variance)
        mse = elbo_lib.eps_mse(noise, kernel.eps_hat)
        if d.loss == "hybrid":  # the bound trains the variance only
            kernel = reverse_kernel(output, sched, x_t, t, prediction=model.prediction,
                                    variance=d.variance, stop_gradient_mean=True)
        term = elbo_lib.vlb_term_at(sched, x0, x_t, t, kernel.mean, kernel.var,
                                    decoder="discretized", num_levels=num_levels)
        vlb_bpd = elbo_lib.bits_per_dim(-(elbo_lib.prior_kl(sched, x0) + weights * term),
                                        x0[0].size)
        if d.loss == "l_simple":
            loss = mse.mean()
        elif d.loss == "vlb":
            loss = vlb_bpd.mean()
        else:
            loss = mse.mean() + d.hybrid_weight * vlb_bpd.mean()
        metrics = {"loss": loss, "mse_eps": mse.mean(), "vlb_bpd": vlb_bpd.mean()}
        if importance and loss_state is not None:
            metrics["per_example"] = {"t": t, "term": term}
        return loss, metrics

    return loss_fn


def evaluate(config, model, params, images, key, *, num_levels: int, cache_dir=None,
             cache_tag=None, progress: bool = True) -> dict:
    """The full T-term ELBO over ``images`` (per term, nats and bits/dim ± standard error).

    Resumable: finished batches are kept in ``cache_dir/eval_partial.npz``, keyed by
    ``cache_tag`` (checkpoint step and parameter fingerprint) and every setting that changes
    the numbers (schedule tables, variance, decoder, levels, form, batches, key, images); the
    file is removed when the evaluation completes.
    """
    if config.eval.ode_examples > images.shape[0]:  # before the ELBO, not minutes after it
        raise ValueError(f"config.eval.ode_examples ({config.eval.ode_examples}) exceeds the "
                         f"{images.shape[0]} test examples evaluated; lower it (or raise "
                         f"eval.max_examples).")
    sched = build_schedule(config.diffusion)
    variance, form, chunk = config.diffusion.variance, "ddpm", config.eval.elbo_chunk_size
    dims = int(np.prod(images.shape[1:]))
    evaluate_batch = _elbo_fn(model, _sched_key(config.diffusion), variance, int(num_levels),
                              int(chunk))

    settings = {"kind": "ddpm", "tag": cache_tag, "variance": variance, "form": form,
                "decoder": "discretized", "num_levels": num_levels, "T": sched.T,
                "betas": eval_lib.array_digest(sched.betas),
                "prediction": model.prediction, "params": eval_lib.tree_digest(params)}
    results = eval_lib.evaluate_in_batches(
        lambda x, k: evaluate_batch(params, x, k), images, key,
        batch_size=config.eval.batch_size, settings=settings, cache_dir=cache_dir,
        desc="full ELBO", progress=progress)
    report = {"num_examples": int(images.shape[0]), "T": sched.T, "form": form,
              "variance": variance, "num_levels": num_levels}
    for k, v in results.items():
        if k == "per_t":
            # per_t holds loss terms (nats lost at each t): their bits/dim are those of −term.
            report["per_t_bpd"] = np.asarray(elbo_lib.bits_per_dim(-v.mean(0), dims)).tolist()
            continue
        report[f"{k}_nats"], report[f"{k}_nats_se"] = eval_lib.mean_and_stderr(v)
    bpd = np.asarray(elbo_lib.bits_per_dim(results["total"], dims))
    report["bpd"], report["bpd_se"] = eval_lib.mean_and_stderr(bpd)
    fd_key, ode_key = jax.random.split(jax.random.fold_in(key, 1))
    if config.eval.ode_examples:
        report["ode"] = ode_evaluation(config, model, params, images, bpd, ode_key,
                                       num_levels=num_levels, progress=progress)
    if config.eval.fd_samples:
        report["fd_digits"] = fd_evaluation(config, model, params, fd_key, images.shape[1:],
                                            progress=progress)
    return report


def ode_evaluation(config, model, params, images, elbo_bpd, key, *, num_levels: int,
                   progress: bool = True) -> dict:
    """Probability-flow ODE bits/dim (``ode_likelihood.ode_bits_per_dim``, uniform
    dequantisation) of the first ``eval.ode_examples`` images, beside the full-T ELBO bits/dim
    ``elbo_bpd`` (per example) of the same images, with their paired difference."""
    e = config.eval
    n = int(e.ode_examples)
    images = images[:n]
    solve = _ode_bpd_fn(model, _sched_key(config.diffusion), int(num_levels), e.ode_divergence,
                        float(e.ode_tolerance))
    batch = int(e.batch_size)
    keys = jax.random.split(key, n)
    bpd, nfe = [], []
    start = time.perf_counter()
    for s in tqdm(range(0, n, batch), desc="ODE likelihood", unit="batch", disable=not progress):
        b, f = solve(params, jnp.asarray(images[s:s + batch]), keys[s:s + batch])
        bpd.append(np.asarray(b))
        nfe.append(np.asarray(f))
    seconds = time.perf_counter() - start
    bpd, nfe = np.concatenate(bpd), np.concatenate(nfe)
    out = {"num_examples": n, "divergence": e.ode_divergence, "tolerance": float(e.ode_tolerance),
           "nfe_mean": float(nfe.mean()), "seconds": seconds}
    out["bpd"], out["bpd_se"] = eval_lib.mean_and_stderr(bpd)
    out["elbo_bpd"], out["elbo_bpd_se"] = eval_lib.mean_and_stderr(elbo_bpd[:n])
    out["diff_bpd"], out["diff_bpd_se"] = eval_lib.mean_and_stderr(bpd - elbo_bpd[:n])
    return out


@functools.lru_cache(maxsize=4)
def _ode_bpd_fn(model, sched_key, num_levels, divergence, tolerance):
    sched = _schedule_from_key(sched_key)

    def solve(params, x0, keys):
        return ode_likelihood.ode_bits_per_dim(
            network_fn(model, params), sched, x0, keys, num_levels=num_levels,
            divergence=divergence, rtol=tolerance, atol=tolerance, prediction=model.prediction,
            learned_variance=model.learned_variance)

    return jax.jit(solve)


def fd_evaluation(config, model, params, key, image_shape, *, progress: bool = True) -> dict:
    """FD-digits ± bootstrap SE, precision and recall (``quality.fd_digits``, against the digits
    test split) of ``eval.fd_samples`` samples drawn with ``eval.sampler``."""
    e = config.eval
    start = time.perf_counter()
    samples = sample(config, model, params, key, num_samples=int(e.fd_samples),
                     image_shape=tuple(image_shape), progress=progress)
    seconds = time.perf_counter() - start
    q = quality.fd_digits(samples, reference="test", num_bootstrap=int(e.fd_bootstrap), seed=0)
    return {"fd": q.fd, "fd_se": q.fd_se, "precision": q.precision, "recall": q.recall,
            "num_samples": q.num_samples, "num_reference": q.num_reference,
            "sampler": sample_tag(config, e.sampler), "sampling_seconds": seconds}


@functools.lru_cache(maxsize=8)
def _elbo_fn(model, sched_key, variance, num_levels, chunk):
    """jit((params, x0, key) -> diffusion_elbo terms with per-t columns), compiled once per
    model and settings (parameters are an argument, so new checkpoints reuse it)."""
    sched = _schedule_from_key(sched_key)

    def evaluate_batch(params, x0, batch_key):
        rfn = reverse_fn(model, params, sched, variance=variance)
        return elbo_lib.diffusion_elbo(rfn, sched, x0, batch_key, form="ddpm",
                                       decoder="discretized", num_levels=num_levels,
                                       chunk_size=chunk, return_per_t=True)

    return jax.jit(evaluate_batch)


def _sched_key(d):
    return (int(d.T), d.schedule, float(d.beta_1), float(d.beta_T))


def summary_lines(ev: dict) -> list[str]:
    return [f"test ELBO: {ev['bpd']:.4f} ± {ev['bpd_se']:.4f} bits/dim "
            f"({-ev['total_nats']:.2f} ± {ev['total_nats_se']:.2f} nats NLL bound per example, "
            f"{ev['num_examples']} test examples, T = {ev['T']}, decoder variance "
            f"{ev['variance']!r}, {ev['num_levels']} levels)"] + extra_summary_lines(ev)


def extra_summary_lines(ev: dict) -> list[str]:
    lines = []
    if "ode" in ev:
        o = ev["ode"]
        lines.append(f"ODE likelihood: {o['bpd']:.4f} ± {o['bpd_se']:.4f} bits/dim (ELBO on the "
                     f"same {o['num_examples']} examples {o['elbo_bpd']:.4f} ± "
                     f"{o['elbo_bpd_se']:.4f}; ODE − ELBO {o['diff_bpd']:+.4f} ± "
                     f"{o['diff_bpd_se']:.4f}; {o['divergence']} divergence, "
                     f"{o['nfe_mean']:.0f} NFE per example, {o['seconds']:.0f} s)")
    if "fd_digits" in ev:
        q = ev["fd_digits"]
        lines.append(f"FD-digits: {q['fd']:.2f} ± {q['fd_se']:.2f} (precision "
                     f"{q['precision']:.3f}, recall {q['recall']:.3f}; {q['num_samples']} "
                     f"{q['sampler']} samples vs the {q['num_reference']} test digits)")
    return lines


def sample(config, model, params, key, *, num_samples: int, image_shape, sampler=None,
           progress: bool = True, chunk: int = 100) -> np.ndarray:
    """(num_samples, H, W, C) in [−1, 1]: ancestral DDPM (compiled chunks), DDIM, the ODE
    solvers DPM-Solver++(2M) ("dpm_solver++") and Heun ("heun"), or the stochastic
    SDE-DPM-Solver++(2M) ("sde_dpm_solver++").

    ``sampler`` overrides ``config.eval.sampler``; DDIM takes ``config.eval.ddim_steps`` steps,
    the NFE solvers (``NFE_SAMPLERS``) ``config.eval.nfe`` network evaluations (checked by
    ``check_nfe``: an NFE the sampler cannot take exactly is an error naming the key, never
    adjusted). All clip x̂_0 to [−1, 1]. The compiled samplers take the parameters as an argument and are cached per
    model, schedule and shape (and steps / NFE), so repeated calls (sample grids during
    training, batches of the CLI's ``sample``) compile once. Samples equal
    ``samplers.ddpm_sample`` / ``ddim_sample`` / ``dpm_solver_pp_sample`` / ``heun_sample`` /
    ``sde_dpm_solver_pp_sample`` with the same key and ``clip_x0=True``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    d = config.diffusion
    sampler = config.eval.sampler if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    shape = (int(num_samples), *image_shape)
    sched_key = _sched_key(d)
    if sampler == "ddim":
        steps = int(config.eval.ddim_steps)
        if steps > d.T:
            raise ValueError(f"config.eval.ddim_steps ({steps}) must lie in 1..diffusion.T "
                             f"({d.T}); pass --config.eval.ddim_steps=N with N <= {d.T}.")
        return np.asarray(_ddim_sampler(model, sched_key, shape, steps)(params, key))
    if sampler in NFE_SAMPLERS:
        nfe = config.eval.nfe
        check_nfe(nfe, sampler, int(d.T))
        return np.asarray(_nfe_sampler(model, sched_key, shape, sampler, int(nfe))(params, key))
    run_chunk = _ancestral_chunk(model, sched_key, d.variance)
    prior_key, steps_key = jax.random.split(key)
    x = jax.random.normal(prior_key, shape, jnp.float32)
    t = int(d.T)
    with tqdm(total=t, desc="sampling", unit="step", disable=not progress) as bar:
        while t > 0:  # a loop over compiled chunks of steps, for the progress bar
            n = min(chunk, t)
            x = run_chunk(params, x, steps_key, jnp.int32(t), n)
            x.block_until_ready()  # dispatch is async: the bar must follow the real work
            t -= n
            bar.update(n)
    return np.asarray(x)


def _schedule_from_key(sched_key) -> Schedule:
    T, schedule, beta_1, beta_T = sched_key
    if schedule == "linear":
        return linear_schedule(T, beta_1=beta_1, beta_T=beta_T)
    return cosine_schedule(T)


@functools.lru_cache(maxsize=8)
def _ancestral_chunk(model, sched_key, variance):
    """jit((params, x_t, steps_key, t_start, n) -> x_{t_start − n}): n ancestral steps."""
    sched = _schedule_from_key(sched_key)

    def run(params, x, steps_key, t_start, n):
        step = samplers.make_ddpm_step(network_fn(model, params), sched, variance=variance,
                                       prediction=model.prediction, clip_x0=True)
        ts = t_start - jnp.arange(n, dtype=jnp.int32)
        return jax.lax.scan(lambda x_t, t: (step(x_t, t, steps_key), None), x, ts)[0]

    return jax.jit(run, static_argnums=4)


@functools.lru_cache(maxsize=8)
def _ddim_sampler(model, sched_key, shape, steps):
    sched = _schedule_from_key(sched_key)
    return jax.jit(lambda params, key: samplers.ddim_sample(
        network_fn(model, params), sched, key, shape, num_steps=steps,
        prediction=model.prediction, clip_x0=True, variance_output=model.learned_variance))


@functools.lru_cache(maxsize=8)
def _nfe_sampler(model, sched_key, shape, sampler, nfe):
    """jit((params, key) -> x_0) of the NFE sampler ``sampler`` with ``nfe`` evaluations."""
    sched = _schedule_from_key(sched_key)
    solve = NFE_SAMPLER_FNS[sampler]
    return jax.jit(lambda params, key: solve(
        network_fn(model, params), sched, key, shape, nfe=nfe, prediction=model.prediction,
        clip_x0=True, variance_output=model.learned_variance))
