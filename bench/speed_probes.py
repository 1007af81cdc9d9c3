"""Speed probes of issue 15: candidate changes to the train step, each timed against what the
library does, interleaved in one process (A, B, A, B, ...), after checking it computes the same
values and gradients. Not part of ``make bench``; the measured ratios are rows in bench/README.md.

    .venv/bin/python bench/speed_probes.py                 # every probe (~4 min, idle machine)
    .venv/bin/python bench/speed_probes.py groupnorm wgrad # some of them
    .venv/bin/python bench/speed_probes.py --quick         # tiny sizes: checks only (smoke test)

Probes:
  groupnorm  GroupNorm + SiLU, forward + backward, per layer size: flax's ``nn.GroupNorm``
             against a two-stage formulation (per-(b, c) sums over H·W, then per
             group) and against a hand-written ``jax.custom_vjp`` backward; then the whole
             ddpm_digits train step (whose GroupNorm computes the statistics as dots, the
             library's since issue 15) against the two-stage one and against flax's.
  gnbackward the library's dot GroupNorm with a hand-written backward, as a ``jax.custom_vjp``
             (no forward mode) and as a ``jax.custom_jvp`` (JAX transposes the tangent map):
             gradients (and jvps) against the library's, then the whole ddpm_digits and
             benchmark U-Net train steps.
  wgrad      backward-filter 3×3 convolutions: XLA's autodiff (the library) against patches ×
             matmul (one dot over the im2col matrix) and nine shifted dots.
  multistep  k = 4 train-step gradients of the ddpm_digits U-Net: 4 calls against one
             ``lax.scan`` over the 4 micro-batches (``make_multi_step``).
  optimizer  the ddpm_digits train step with the optimizer on every leaf (the library) against
             ``optax.flatten`` (one vector for clip + AdamW + the finite check).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax import lax  # noqa: E402

from diffusion_jax.models.unet import group_norm as LIBRARY_GROUP_NORM  # noqa: E402
from diffusion_jax.models.unet import group_statistics  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def interleaved(fns: dict, args, *, rounds: int, calls: int) -> dict:
    """Median ms per call of each jitted fn, timed in turn (A, B, ..., A, B, ...)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _close(a, b, what, rtol=1e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(jnp.max(jnp.abs(y))) + 1e-30
        err = float(jnp.max(jnp.abs(x - y))) / scale
        if not err < rtol:
            raise AssertionError(f"{what}: relative error {err:.2e} ≥ {rtol}")


def _compare_row(label: str, fns: dict, args, *, rounds: int, calls: int) -> str:
    """Checks every candidate of ``fns`` against the first (the baseline), times them
    interleaved and returns one row: each time and the baseline's time ÷ the candidate's."""
    base, *others = fns
    ref = fns[base](*args)
    for name in others:
        _close(fns[name](*args), ref, f"{label}: {name}")
    ms = interleaved(fns, args, rounds=rounds, calls=calls)
    return f"{label}: {base} {ms[base]:.2f} ms, " + ", ".join(
        f"{name} {ms[name]:.2f} ms ({ms[base] / ms[name]:.2f}×)" for name in others)


# --------------------------------------------------------------------------- GroupNorm


def group_norm_flax(x, scale, bias, groups, silu=True):
    y = nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply(
        {"params": {"scale": scale, "bias": bias}}, x)
    return nn.silu(y) if silu else y


def group_norm_two_stage(x, scale, bias, groups, silu=True):
    """Sums per (b, c) over H·W, then per group on the (B, C) sums; one affine map per (b, c)."""
    B, H, W, C = x.shape
    n = H * W * (C // groups)
    s1 = jnp.sum(x, axis=(1, 2)).reshape(B, groups, -1).sum(-1)
    s2 = jnp.sum(jnp.square(x), axis=(1, 2)).reshape(B, groups, -1).sum(-1)
    mean = s1 / n
    rstd = lax.rsqrt(jnp.maximum(s2 / n - jnp.square(mean), 0.0) + 1e-6)
    a = jnp.repeat(rstd, C // groups, axis=-1) * scale
    b = bias - jnp.repeat(mean, C // groups, axis=-1) * a
    y = x * a[:, None, None, :] + b[:, None, None, :]
    return nn.silu(y) if silu else y


def _gn_stats(x, groups):
    B, H, W, C = x.shape
    xg = x.reshape(B, H * W, groups, C // groups)
    mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xg), axis=(1, 3), keepdims=True) - jnp.square(mean), 0)
    return xg, mean, lax.rsqrt(var + 1e-6)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def group_norm_silu_custom_vjp(x, scale, bias, groups):
    return _gn_silu_fwd(x, scale, bias, groups)[0]


def _gn_silu_fwd(x, scale, bias, groups):
    xg, mean, rstd = _gn_stats(x, groups)
    y = ((xg - mean) * rstd).reshape(x.shape) * scale + bias
    return y * jax.nn.sigmoid(y), (x, mean, rstd, scale, bias)


def _gn_silu_bwd(groups, res, g):
    """dx = rstd (d x̂ − mean(d x̂) − x̂ mean(d x̂ · x̂)) per group, d x̂ = γ · SiLU'(y) · g."""
    x, mean, rstd, scale, bias = res
    B, H, W, C = x.shape
    shape = (B, H * W, groups, C // groups)
    xhat = (x.reshape(shape) - mean) * rstd
    y = xhat.reshape(x.shape) * scale + bias
    s = jax.nn.sigmoid(y)
    dy = g * s * (1 + y * (1 - s))
    dxhat = (dy * scale).reshape(shape)
    m1 = jnp.mean(dxhat, axis=(1, 3), keepdims=True)
    m2 = jnp.mean(dxhat * xhat, axis=(1, 3), keepdims=True)
    dx = (rstd * (dxhat - m1 - xhat * m2)).reshape(x.shape)
    xhat = xhat.reshape(x.shape)
    return dx, jnp.sum(dy * xhat, axis=(0, 1, 2)), jnp.sum(dy, axis=(0, 1, 2))


group_norm_silu_custom_vjp.defvjp(_gn_silu_fwd, _gn_silu_bwd)


def probe_groupnorm(quick: bool) -> list[str]:
    rows = []
    sizes = [(4, 8, 16, 8)] if quick else [(64, 8, 32, 8), (64, 4, 64, 8), (64, 8, 96, 8),
                                           (64, 28, 32, 8), (64, 14, 64, 8)]
    for B, H, C, G in sizes:
        k = jax.random.split(jax.random.key(0), 4)
        x = 2 * jax.random.normal(k[0], (B, H, H, C)) + 0.5
        scale = 1 + 0.1 * jax.random.normal(k[1], (C,))
        bias = 0.1 * jax.random.normal(k[2], (C,))
        ct = jax.random.normal(k[3], x.shape)

        def vjp_of(f, groups=G, ct=ct):
            return jax.jit(lambda *args: jax.vjp(lambda *a: f(*a, groups), *args)[1](ct))

        fns = {"flax": vjp_of(group_norm_flax), "two-stage": vjp_of(group_norm_two_stage),
               "custom_vjp": vjp_of(group_norm_silu_custom_vjp)}
        rows.append(_compare_row(f"GroupNorm+SiLU fwd+bwd B{B} {H}×{H}×{C} G{G}", fns,
                                 (x, scale, bias), rounds=1 if quick else 5,
                                 calls=2 if quick else 30))
    rows.append(_digits_step_rows(quick, "two-stage GroupNorm in the U-Net", _two_stage_unet))
    rows.append(_digits_step_rows(quick, "candidate = flax's GroupNorm (library: statistics as "
                                         "dots; a ratio < 1 means the library is faster)",
                                  _flax_unet))
    if not quick:
        rows.append(_benchmark_step_row("two-stage GroupNorm", _two_stage_unet))
    return rows


def _benchmark_step_row(label, patch):
    """The benchmark U-Net's train step (28×28, batch 64) with the library's GroupNorm and under
    ``patch``, each compiled under its own GroupNorm, timed interleaved."""
    from diffusion_jax.models import unet_benchmark
    from diffusion_jax.training import kinds
    from diffusion_jax.training.config import base_config
    from diffusion_jax.training.optim import make_optimizer
    from diffusion_jax.training.step import create_train_state, make_train_step

    cfg = base_config("ddpm")
    cfg.optim.lr = 2e-4
    kind, model = kinds.get("ddpm"), unet_benchmark()
    loss_fn = kind.make_loss(model, cfg, num_levels=256)
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    params = kind.init_params(model, (28, 28, 1), jax.random.key(0, impl="rbg"))
    state = create_train_state(params, optimizer, jax.random.key(1))
    levels = jax.random.randint(jax.random.key(2), (64, 28, 28, 1), 0, 256)
    batch = {"image": levels / 127.5 - 1.0}

    def compiled():
        step = make_train_step(loss_fn, optimizer, ema_decay=cfg.optim.ema_decay, global_batch=64)
        return jax.jit(step).lower(state, batch).compile()

    step_a = compiled()
    undo = patch()
    try:
        step_b = compiled()
    finally:
        undo()
    _close(step_b(state, batch)[0].params, step_a(state, batch)[0].params, "benchmark step",
           rtol=1e-3)
    ms = interleaved({"library": lambda s: step_a(s, batch)[1],
                      "candidate": lambda s: step_b(s, batch)[1]}, (state,), rounds=4, calls=3)
    return (f"benchmark U-Net train step, {label}: library {ms['library']:.0f} ms, candidate "
            f"{ms['candidate']:.0f} ms ({ms['library'] / ms['candidate']:.2f}×)")


class _TwoStageGroupNorm(nn.Module):
    """flax GroupNorm's parameters, ``group_norm_two_stage`` inside (SiLU stays outside)."""

    num_groups: int

    @nn.compact
    def __call__(self, x):
        C = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (C,))
        bias = self.param("bias", nn.initializers.zeros, (C,))
        return group_norm_two_stage(x, scale, bias, self.num_groups, silu=False)


def _flax_unet():
    """Patches the U-Net's GroupNorm factory back to ``flax.linen.GroupNorm`` (the library's
    GroupNorm before issue 15; the library's now computes the statistics as dots)."""
    from diffusion_jax.models import unet

    original = unet._group_norm

    def factory(channels, num_groups, dtype, param_dtype, name):
        return nn.GroupNorm(num_groups=unet.group_count(channels, num_groups), epsilon=1e-6,
                            name=name)

    unet._group_norm = factory
    return lambda: setattr(unet, "_group_norm", original)


def _two_stage_unet():
    """Patches the U-Net's GroupNorm factory; returns the undo function."""
    from diffusion_jax.models import unet

    original = unet._group_norm

    def factory(channels, num_groups, dtype, param_dtype, name):
        return _TwoStageGroupNorm(unet.group_count(channels, num_groups), name=name)

    unet._group_norm = factory
    return lambda: setattr(unet, "_group_norm", original)


# --------------------------------------------------------------------------- the digits step


def _digits_setup(quick: bool, optimizer=None):
    from diffusion_jax.training import kinds
    from diffusion_jax.training.optim import make_optimizer
    from diffusion_jax.training.step import create_train_state, make_train_step
    from experiments.configs.ddpm_digits import get_config

    cfg = get_config()
    if quick:
        cfg.model.ch, cfg.model.ch_mult, cfg.model.mid_attention = 8, (1,), False
        cfg.model.num_groups = 4
    kind = kinds.get("ddpm")
    model = kind.build(cfg, (8, 8, 1))
    params = kind.init_params(model, (8, 8, 1), jax.random.key(0, impl="rbg"))
    optimizer = optimizer or make_optimizer(cfg.optim, cfg.train.num_steps)
    state = create_train_state(params, optimizer, jax.random.key(1))
    loss_fn = kind.make_loss(model, cfg, num_levels=17)
    step = jax.jit(make_train_step(loss_fn, optimizer, ema_decay=cfg.optim.ema_decay,
                                   global_batch=64))
    levels = jax.random.randint(jax.random.key(2), (64, 8, 8, 1), 0, 17)
    return cfg, model, state, step, {"image": levels / 8.0 - 1.0}


def _digits_step_rows(quick, label, patch):
    """The whole train step without and with ``patch`` (same parameters): same loss, grads."""
    _, _, state, step_a, batch = _digits_setup(quick)
    undo = patch()
    try:  # traced and compiled while patched
        _, _, _, step_b, _ = _digits_setup(quick)
        step_b = step_b.lower(state, batch).compile()
    finally:
        undo()
    _close(step_b(state, batch)[0].params, step_a(state, batch)[0].params, label, rtol=1e-3)
    ms = interleaved({"library": lambda s: step_a(s, batch)[1],
                      "candidate": lambda s: step_b(s, batch)[1]}, (state,),
                     rounds=1 if quick else 5, calls=2 if quick else 30)
    return (f"ddpm_digits train step, {label}: library {ms['library']:.1f} ms, candidate "
            f"{ms['candidate']:.1f} ms ({ms['library'] / ms['candidate']:.2f}×)")


# --------------------------------------------------------------------------- GroupNorm backward


def _gn_per_channel(x, groups, eps):
    """The library's group statistics (``models.unet.group_statistics``) spread to the channels:
    the membership matrix, elements per group, and μ and 1/σ per (b, c)."""
    member, mean, rstd = group_statistics(x, groups, eps)
    n = x.shape[1] * x.shape[2] * (x.shape[-1] // groups)
    return member, n, mean @ member.T, rstd @ member.T


def _gn_affine(x, scale, bias, mean_c, rstd_c):
    a = rstd_c * scale
    return x * a[:, None, None, :] + (bias - mean_c * a)[:, None, None, :]


def _gn_sums(x, g, mean_c, rstd_c):
    """Σ_p g and Σ_p x̂·g per (b, c) (p: the H·W positions), for a tangent or cotangent g of x:
    with them, dy (or dx) = g·A + x·P + Q with per-(b, c) coefficients."""
    sum_g = jnp.sum(g, axis=(1, 2))
    sum_xg = jnp.sum(x * g, axis=(1, 2))
    sum_xhat_g = rstd_c * (sum_xg - mean_c * sum_g)
    return sum_g, sum_xhat_g


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_custom_vjp(x, scale, bias, groups, eps=1e-6):
    return LIBRARY_GROUP_NORM(x, scale, bias, groups, eps)


def _gn_vjp_fwd(x, scale, bias, groups, eps):
    member, n, mean_c, rstd_c = _gn_per_channel(x, groups, eps)
    return _gn_affine(x, scale, bias, mean_c, rstd_c), (x, scale, member, mean_c, rstd_c)


def _gn_vjp_bwd(groups, eps, res, g):
    x, scale, member, mean_c, rstd_c = res
    n = x.shape[1] * x.shape[2] * (x.shape[-1] // groups)
    sum_g, sum_xhat_g = _gn_sums(x, g, mean_c, rstd_c)
    m1 = ((sum_g * scale) @ member / n) @ member.T  # group mean of g·scale
    m2 = ((sum_xhat_g * scale) @ member / n) @ member.T  # ... of g·scale·x̂
    A = rstd_c * scale
    P = -rstd_c * rstd_c * m2
    Q = -rstd_c * m1 + rstd_c * rstd_c * mean_c * m2
    dx = g * A[:, None, None, :] + x * P[:, None, None, :] + Q[:, None, None, :]
    return dx, jnp.sum(sum_xhat_g, 0), jnp.sum(sum_g, 0)


group_norm_custom_vjp.defvjp(_gn_vjp_fwd, _gn_vjp_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def group_norm_custom_jvp(x, scale, bias, groups, eps=1e-6):
    return LIBRARY_GROUP_NORM(x, scale, bias, groups, eps)


@group_norm_custom_jvp.defjvp
def _gn_jvp(groups, eps, primals, tangents):
    (x, scale, bias), (dx, ds, db) = primals, tangents
    member, n, mean_c, rstd_c = _gn_per_channel(x, groups, eps)
    y = _gn_affine(x, scale, bias, mean_c, rstd_c)
    sum_dx, sum_xhat_dx = _gn_sums(x, dx, mean_c, rstd_c)
    e1 = (sum_dx @ member / n) @ member.T
    e2 = (sum_xhat_dx @ member / n) @ member.T
    a = rstd_c * scale
    P = -rstd_c * rstd_c * scale * e2 + rstd_c * ds
    Q = -rstd_c * scale * e1 + mean_c * rstd_c * rstd_c * scale * e2 - mean_c * rstd_c * ds + db
    return y, dx * a[:, None, None, :] + x * P[:, None, None, :] + Q[:, None, None, :]


def _patch_group_norm(fn):
    from diffusion_jax.models import unet

    def patch():
        original = unet.group_norm
        unet.group_norm = fn
        return lambda: setattr(unet, "group_norm", original)
    return patch


def probe_gn_backward(quick: bool) -> list[str]:
    for B, H, C, G in [(4, 8, 32, 8), (3, 4, 64, 8), (2, 28, 32, 8)]:
        k = jax.random.split(jax.random.key(0), 5)
        x = 2 * jax.random.normal(k[0], (B, H, H, C)) + 0.5
        scale = 1 + 0.1 * jax.random.normal(k[1], (C,))
        bias = 0.1 * jax.random.normal(k[2], (C,))
        ct, v = jax.random.normal(k[3], x.shape), jax.random.normal(k[4], x.shape)

        def loss(x, s, b, fn, G=G, ct=ct):
            return jnp.sum(jax.nn.silu(fn(x, s, b, G, 1e-6)) * ct)

        want = jax.grad(loss, (0, 1, 2))(x, scale, bias, LIBRARY_GROUP_NORM)
        for fn in (group_norm_custom_vjp, group_norm_custom_jvp):
            for a, b in zip(want, jax.grad(loss, (0, 1, 2))(x, scale, bias, fn), strict=True):
                _close(b, a, f"{fn.__name__} gradient", rtol=2e-4)
        jvp_want = jax.jvp(functools.partial(LIBRARY_GROUP_NORM, scale=scale, bias=bias, num_groups=G),
                           (x,), (v,))[1]
        jvp_got = jax.jvp(lambda x, s=scale, b=bias, G=G: group_norm_custom_jvp(x, s, b, G),
                          (x,), (v,))[1]
        _close(jvp_got, jvp_want, "custom_jvp tangent", rtol=2e-4)
    rows = [_digits_step_rows(quick, "custom_vjp GroupNorm backward",
                              _patch_group_norm(group_norm_custom_vjp)),
            _digits_step_rows(quick, "custom_jvp GroupNorm tangent map",
                              _patch_group_norm(group_norm_custom_jvp))]
    if not quick:
        rows += [_benchmark_step_row("custom_vjp GroupNorm backward",
                                     _patch_group_norm(group_norm_custom_vjp)),
                 _benchmark_step_row("custom_jvp GroupNorm tangent map",
                                     _patch_group_norm(group_norm_custom_jvp))]
    return rows


# --------------------------------------------------------------------------- backward-filter


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def wgrad_autodiff(x, dy, w):
    return jax.vjp(lambda w: _conv(x, w), w)[1](dy)[0]


def _shifted(x):
    B, H, W, C = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)]


def wgrad_patches_matmul(x, dy, w):
    """dW = Pᵀ dY with P the (B·H·W, 9·Cin) im2col matrix: one dot."""
    C, O = x.shape[-1], dy.shape[-1]
    patches = jnp.concatenate(_shifted(x), -1).reshape(-1, 9 * C)
    dw = lax.dot_general(patches, dy.reshape(-1, O), (((0,), (0,)), ((), ())))
    return dw.reshape(3, 3, C, O)


def wgrad_nine_dots(x, dy, w):
    C, O = x.shape[-1], dy.shape[-1]
    d = dy.reshape(-1, O)
    dws = [lax.dot_general(s.reshape(-1, C), d, (((0,), (0,)), ((), ()))) for s in _shifted(x)]
    return jnp.stack(dws).reshape(3, 3, C, O)


def probe_wgrad(quick: bool) -> list[str]:
    rows = []
    sizes = [(4, 8, 8, 8)] if quick else [(64, 8, 32, 32), (64, 8, 96, 32), (64, 4, 64, 64),
                                           (64, 28, 32, 32), (64, 14, 64, 64), (64, 7, 64, 64)]
    for B, H, Ci, Co in sizes:
        k = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(k[0], (B, H, H, Ci))
        w = 0.1 * jax.random.normal(k[1], (3, 3, Ci, Co))
        dy = jax.random.normal(k[2], (B, H, H, Co))
        fns = {"autodiff": jax.jit(wgrad_autodiff),
               "patches×matmul": jax.jit(wgrad_patches_matmul),
               "9 dots": jax.jit(wgrad_nine_dots)}
        rows.append(_compare_row(f"backward-filter B{B} {H}×{H} {Ci}→{Co}", fns, (x, dy, w),
                                 rounds=1 if quick else 3, calls=2 if quick else 20))
    return rows


# --------------------------------------------------------------------------- steps per call


def probe_multistep(quick: bool) -> list[str]:
    cfg, model, state, _, batch = _digits_setup(quick)
    t = jnp.full((64,), 500)
    xs = jnp.stack([batch["image"]] * 4)

    def loss(p, x):
        return jnp.mean(jnp.square(model.apply({"params": p}, x, t, train=False) - x))

    grad = jax.jit(jax.grad(loss))

    def four_calls(p, xs):
        return [grad(p, xs[i]) for i in range(4)]

    scanned = jax.jit(lambda p, xs: lax.scan(lambda c, x: (c, jax.grad(loss)(p, x)), 0, xs)[1])
    ref = four_calls(state.params, xs)
    got = scanned(state.params, xs)
    _close([jax.tree.map(lambda g, i=i: g[i], got) for i in range(4)], ref, "scan gradients")
    ms = interleaved({"4 calls": four_calls, "scan": scanned}, (state.params, xs),
                     rounds=1 if quick else 2, calls=1 if quick else 3)
    return [f"4 train-step gradients of the ddpm_digits U-Net: 4 calls {ms['4 calls']:.0f} ms, one "
            f"lax.scan {ms['scan']:.0f} ms ({ms['4 calls'] / ms['scan']:.2f}×)"]


# --------------------------------------------------------------------------- optimizer


def probe_optimizer(quick: bool) -> list[str]:
    from diffusion_jax.training.optim import learning_rate_schedule
    from experiments.configs.ddpm_digits import get_config

    o = get_config().optim
    inner = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                        optax.adamw(learning_rate_schedule(o, 2500), b1=o.b1, b2=o.b2, eps=o.eps,
                                    weight_decay=o.weight_decay))
    flat = optax.flatten(optax.apply_if_finite(inner, max_consecutive_errors=2**30))
    _, _, state, step_a, batch = _digits_setup(quick)
    _, _, state_b, step_b, _ = _digits_setup(quick, optimizer=flat)
    _close(step_b(state_b, batch)[0].params, step_a(state, batch)[0].params, "flat optimizer")
    ms = interleaved({"per leaf": lambda: step_a(state, batch)[1],
                      "flat": lambda: step_b(state_b, batch)[1]}, (),
                     rounds=1 if quick else 5, calls=2 if quick else 30)
    return [f"ddpm_digits train step, optimizer per leaf {ms['per leaf']:.1f} ms, optax.flatten "
            f"{ms['flat']:.1f} ms ({ms['per leaf'] / ms['flat']:.2f}×)"]


PROBES = {"groupnorm": probe_groupnorm, "gnbackward": probe_gn_backward, "wgrad": probe_wgrad,
          "multistep": probe_multistep, "optimizer": probe_optimizer}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probes", nargs="*", choices=[*PROBES, []], default=[])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the checks only")
    args = parser.parse_args(argv)
    for name in args.probes or PROBES:
        for row in PROBES[name](args.quick):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
