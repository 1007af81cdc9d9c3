"""The PyTorch peer of ``make bench``: our networks as diffusers ``UNet2DModel``s, timed like ours.

``bench/run.py`` runs these functions in their own worker processes (``--worker torch_train``,
``--worker torch_sample``), alternating with our measurements, so every ratio in the report
compares two numbers taken in the same run on the same machine. This module imports torch and
diffusers and never jax (a torch worker holds no JAX runtime). Install the peer with
``pip install -e '.[bench-peer]'`` (torch 2.13.0 and diffusers 0.42.1, pinned in pyproject.toml).

The networks (``build_unet``) have exactly our parameter counts (``tests/test_peer_torch.py``):

- ``"digits"``: the U-Net of ``experiments/configs/ddpm_digits.py`` (``make train``): 651,041
  parameters, 8×8×1; ch 32, ch_mult (1, 2), 1 ResBlock per level, attention only in the middle
  block (one head), GroupNorm with 32 groups.
- ``"benchmark"``: ``diffusion_jax.models.unet_benchmark()``: 1,539,329 parameters, 28×28×1.

Both use DDPM's sinusoidal time embedding as ours does (``flip_sin_to_cos=False``,
``freq_shift=1``: [sin, cos] with frequencies 10000^(−i/(h−1))), GroupNorm ε = 1e-6 and one
attention head in the middle block (``attention_head_dim`` = the middle block's width).

The train step (``train_task_torch``) is the DDPM step of our trainer written in plain torch:
x_0 in [−1, 1], t ~ U{1..T}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, L_simple = mean (ε̂ − ε)²,
global-norm gradient clipping, ``torch.optim.AdamW`` with our config's lr, betas, eps and weight
decay, the same warm-up + constant/cosine learning-rate schedule (``LambdaLR``), the update (and
the EMA, decay as in our config, updated every step) skipped when the gradient is not finite (as
our ``optax.apply_if_finite``). Eager mode (no ``torch.compile``), as diffusers' training
examples run. The sampler (``sample_task_torch``) is the ancestral DDPM step (σ_t² = β_t, no
noise at t = 1) on precomputed coefficient tables under ``torch.inference_mode()``.

Times are wall-clock seconds from ``time.perf_counter``; on a GPU every timed interval ends in
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

T_DEFAULT = 1000
BETA_1, BETA_T = 1e-4, 0.02  # DDPM's linear schedule (ours: diffusion.beta_1, diffusion.beta_T)

# The diffusers twin of each bench network (everything else: UNet2DModel's defaults).
NETS = {
    "digits": dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                   norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                   up_block_types=("UpBlock2D",) * 2),
    "benchmark": dict(sample_size=28, block_out_channels=(32, 64, 64), layers_per_block=2,
                      norm_num_groups=8, down_block_types=("DownBlock2D",) * 3,
                      up_block_types=("UpBlock2D",) * 3),
}
_COMMON = dict(in_channels=1, out_channels=1, norm_eps=1e-6, time_embedding_type="positional",
               flip_sin_to_cos=False, freq_shift=1, dropout=0.0)

# The training settings of our side, per network: "digits" is experiments/configs/ddpm_digits.py
# (what `make train` runs), "benchmark" is bench/measure.py's train_task (base_config("ddpm")
# with lr 2e-4). tests/test_peer_torch.py checks them against the configs.
TRAIN = {
    "digits": dict(image_shape=(8, 8, 1), batch=64, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                   weight_decay=0.0, grad_clip=1.0, warmup_steps=100, decay="cosine",
                   num_steps=2500, ema_decay=0.995, T=1000),
    "benchmark": dict(image_shape=(28, 28, 1), batch=64, lr=2e-4, b1=0.9, b2=0.999, eps=1e-8,
                      weight_decay=0.0, grad_clip=1.0, warmup_steps=100, decay="constant",
                      num_steps=1000, ema_decay=0.999, T=1000),
}


def build_unet(net: str) -> UNet2DModel:
    """The diffusers ``UNet2DModel`` of the same shape and parameter count as our ``net``."""
    if net not in NETS:
        raise ValueError(f"net must be one of {sorted(NETS)}, got {net!r}.")
    spec = NETS[net]
    # One attention head in the middle block: the head dimension is the block's width.
    return UNet2DModel(**_COMMON, **spec, attention_head_dim=spec["block_out_channels"][-1])


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- environment


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup(dev: torch.device) -> None:
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def versions(dev: torch.device | None = None) -> dict:
    """What every peer record carries: library versions, backend, threads, device."""
    dev = dev or device()
    return {
        "torch_version": torch.__version__,
        "diffusers_version": metadata.version("diffusers"),
        "mkldnn_available": bool(torch.backends.mkldnn.is_available()),
        "num_threads": torch.get_num_threads(),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


# --------------------------------------------------------------------------- data


def _digits_path() -> Path:
    """The bundled digits file, found without importing diffusion_jax (which imports jax)."""
    spec = importlib.util.find_spec("diffusion_jax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("diffusion_jax is not installed: `pip install -e .` first.")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "digits.npz"


def digits_images(split: str = "train") -> np.ndarray:
    """The embedded digits of ``split`` in model range: float32 (N, 1, 8, 8), 2k/16 − 1."""
    with np.load(_digits_path()) as f:
        levels = f[f"{split}_images"]  # uint8 (N, 8, 8, 1), values 0..16
    return (levels.astype(np.float32) / 8.0 - 1.0).transpose(0, 3, 1, 2).copy()


def random_images(shape_nhwc, seed: int = 0, num_levels: int = 256) -> np.ndarray:
    """Random images on the 256 levels of [−1, 1], NCHW (as ``measure._images``, transposed)."""
    levels = np.random.default_rng(seed).integers(0, num_levels, shape_nhwc)
    x = (levels / (num_levels - 1) * 2.0 - 1.0).astype(np.float32)
    return x.transpose(0, 3, 1, 2).copy()


def _host_batches(net: str, batch: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` host batches (NCHW float32): real digits for "digits", random levels else."""
    if net == "digits":
        images = digits_images("train")
        order = np.random.default_rng(seed).permutation(len(images))
        need = count * batch
        order = np.resize(order, need)  # cycles through the epoch if it is shorter
        return [images[order[i * batch:(i + 1) * batch]] for i in range(count)]
    h, w, c = TRAIN[net]["image_shape"]
    return [random_images((batch, h, w, c), seed=seed + i) for i in range(count)]


# --------------------------------------------------------------------------- schedule


def linear_tables(T: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """DDPM's linear β table (float64 on the host, float32 on the device), indexed t − 1."""
    betas = np.linspace(BETA_1, BETA_T, T, dtype=np.float64)
    alphas = 1.0 - betas
    alpha_bar = np.cumprod(alphas)
    tables = {
        "sqrt_alpha_bar": np.sqrt(alpha_bar),
        "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - alpha_bar),
        "eps_coef": betas / np.sqrt(1.0 - alpha_bar),
        "inv_sqrt_alpha": 1.0 / np.sqrt(alphas),
        "sigma": np.sqrt(betas),
    }
    return {k: torch.as_tensor(v, dtype=torch.float32, device=dev) for k, v in tables.items()}


def lr_lambda(warmup_steps: int, decay: str, num_steps: int):
    """Our ``learning_rate_schedule`` as a LambdaLR factor: linear warm-up from 0 over
    ``warmup_steps``, then constant, or cosine to 0 at ``num_steps`` (optax's
    ``warmup_cosine_decay_schedule``, whose decay_steps count the warm-up)."""
    warmup = max(int(warmup_steps), 1)
    decay_steps = max(int(num_steps), warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if decay == "constant":
            return 1.0
        progress = min(step - warmup, decay_steps - warmup) / (decay_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- train


def make_train_step(net: str, *, lr: float | None = None, seed: int = 0, dev=None):
    """(model, step) for ``net``: ``step(x0) -> loss`` runs one DDPM train step in place."""
    dev = dev or device()
    cfg = dict(TRAIN[net])
    if lr is not None:
        cfg["lr"] = lr
    torch.manual_seed(seed)
    model = build_unet(net).to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(cfg["b1"], cfg["b2"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg["warmup_steps"], cfg["decay"], cfg["num_steps"]))
    tables = linear_tables(cfg["T"], dev)
    T, decay, clip = cfg["T"], cfg["ema_decay"], cfg["grad_clip"]

    def step(x0: torch.Tensor) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(1, T + 1, (b,), device=dev)
        noise = torch.randn_like(x0)
        a = tables["sqrt_alpha_bar"][t - 1].view(b, 1, 1, 1)
        s = tables["sqrt_one_minus_alpha_bar"][t - 1].view(b, 1, 1, 1)
        eps_hat = model(a * x0 + s * noise, t, return_dict=False)[0]
        loss = F.mse_loss(eps_hat, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        if torch.isfinite(norm):  # as optax.apply_if_finite: skip the update and the EMA
            opt.step()
            sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        return loss.detach()

    return model, step


def train_task_torch(*, net: str, batch: int, steps: int, warmup: int, reps: int = 1,
                     lr: float | None = None, seed: int = 0, distinct_batches: int = 8,
                     pace=None) -> dict:
    """Time the torch train step of ``net``: ``warmup`` untimed steps after a first (timed) one,
    then ``reps`` repetitions of ``steps`` steps, each repetition timed as a whole (one
    synchronisation at its end) and divided by ``steps``.

    Each step moves a host batch to the device (``torch.from_numpy(...).to(device)``), cycling
    over ``distinct_batches`` prepared batches. Returns the fields of ``measure.train_task``'s
    record (step_s_median, step_s_all, images_per_s, steps_per_s, first_call_s, cores_busy,
    params, loss_finite, rep_step_s) plus the torch versions. ``pace`` (see ``run.StdinPace``):
    ``pace.before()`` / ``pace.after()`` around each repetition.
    """
    dev = device()
    _setup(dev)
    model, step = make_train_step(net, lr=lr, seed=seed, dev=dev)
    host = _host_batches(net, batch, distinct_batches, seed=seed)
    calls = [0]

    def one():
        x0 = torch.from_numpy(host[calls[0] % len(host)]).to(dev, non_blocking=True)
        calls[0] += 1
        return step(x0)

    start = time.perf_counter()
    loss = one()
    _sync(dev)
    first_call_s = time.perf_counter() - start
    for _ in range(warmup):
        loss = one()
    _sync(dev)
    times, cpu_start = [], _cpu_s()
    for _ in range(reps):
        if pace is not None:
            pace.before()
        start = time.perf_counter()
        for _ in range(steps):
            loss = one()
        _sync(dev)
        times.append((time.perf_counter() - start) / steps)
        if pace is not None:
            pace.after()
    cores_busy = (_cpu_s() - cpu_start) / (sum(times) * steps)
    step_s = statistics.median(times)
    h, w, c = TRAIN[net]["image_shape"]
    return {
        "net": net, "framework": "torch", "params": num_params(model), "batch": batch,
        "image_shape": [h, w, c], "steps_per_rep": steps, "reps": reps, "warmup": warmup,
        "compile_s": None, "first_call_s": first_call_s,
        "step_s_median": step_s, "step_s_all": times, "images_per_s": batch / step_s,
        "steps_per_s": 1.0 / step_s, "cores_busy": cores_busy,
        "rep_step_s": times, "rep_step_s_all": [[t] for t in times],
        "loss": float(loss), "loss_finite": math.isfinite(float(loss)),
        "settings": dict(TRAIN[net], lr=lr or TRAIN[net]["lr"], image_shape=[h, w, c]),
        **versions(dev),
    }


# --------------------------------------------------------------------------- sampling


def sample_task_torch(*, net: str = "benchmark", batch: int = 16, T: int = 1000, steps: int = 100,
                      reps: int = 3, seed: int = 0) -> dict:
    """Ancestral DDPM sampling with the diffusers twin of ``net``, as ``measure.sample_task``
    times ours: the first ``steps`` of the T steps (t = T..T−steps+1), ``reps`` repetitions
    from the same x_T, the median scaled by T / steps; s/image = that ÷ ``batch``."""
    dev = device()
    _setup(dev)
    torch.manual_seed(seed)
    model = build_unet(net).to(dev).eval()
    tables = linear_tables(T, dev)
    h, w, c = TRAIN[net]["image_shape"]
    gen = torch.Generator(device=dev).manual_seed(seed)
    x_T = torch.randn((batch, c, h, w), generator=gen, device=dev)
    t_end = T - steps

    @torch.inference_mode()
    def run():
        x = x_T
        for t in range(T, t_end, -1):
            t_batch = torch.full((batch,), t, dtype=torch.long, device=dev)
            eps = model(x, t_batch, return_dict=False)[0]
            x = (x - tables["eps_coef"][t - 1] * eps) * tables["inv_sqrt_alpha"][t - 1]
            if t > 1:
                x = x + tables["sigma"][t - 1] * torch.randn(x.shape, generator=gen, device=dev)
        return x

    times, out = [], None
    for _ in range(reps):
        _sync(dev)
        start = time.perf_counter()
        out = run()
        _sync(dev)
        times.append(time.perf_counter() - start)
    scale = T / steps
    s_per_run = statistics.median(times) * scale
    return {
        "net": net, "framework": "torch", "params": num_params(model), "batch": batch,
        "image_shape": [h, w, c], "T": T, "steps_timed": steps, "reps": reps,
        "extrapolated": steps != T, "scale": scale, "times_s": times, "s_per_run": s_per_run,
        "s_per_image": s_per_run / batch, "finite": bool(torch.isfinite(out).all()),
        **versions(dev),
    }
