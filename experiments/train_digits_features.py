"""Trains the feature classifier of FD-digits and writes ``diffusion_jax/data/digits_features.npz``.

    python -m experiments.train_digits_features            # rebuilds the shipped file (seed 0)
    python -m experiments.train_digits_features --out /tmp/f.npz --seed 1

An MLP 64 → 128 → 64 → 10 with SiLU (``quality.digits_classifier_apply``; its 64-d penultimate
layer is the feature space), trained with AdamW in one ``lax.scan`` on the digits train split.
Each training image is moved by one pixel (a random one of the 8 neighbouring offsets or none,
with probability ``shift_prob``), lightly blurred (probability ``blur_prob``) and given Gaussian
noise of a random std in [0, ``noise_max``], so the features vary smoothly, not erratically, as
images degrade (without the shifts, FD stops growing beyond a 2-pixel shift).

Deterministic for a seed (the same file bit for bit on the same machine); about 15 s on 2 CPU
cores. Prints the train/test accuracy and the FD-digits figures the README states (train vs
test split; blurred, noisy and shifted test digits). The corruptions used for those figures
(``blur``, ``add_noise``, ``shift``) live here too, and the tests use them.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import quality
from diffusion_jax.data import digits as digits_lib
from diffusion_jax.data import pipeline

HIDDEN = (128, 64)
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Corruptions of (N, 8, 8, 1) images in [-1, 1] (the background is -1).


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def blur(images, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (std ``sigma`` pixels, edge-replicated borders); sigma 0: a copy."""
    x = np.asarray(images, np.float64)
    if sigma == 0:
        return x.astype(np.float32)
    kernel = _gaussian_kernel(sigma)
    r = len(kernel) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="edge")
        size = x.shape[axis]
        x = sum(w * np.take(xp, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel))
    return x.astype(np.float32)


def add_noise(images, std: float, rng: np.random.Generator) -> np.ndarray:
    """images + N(0, std²) per pixel, clipped to [-1, 1]."""
    x = np.asarray(images, np.float32)
    return np.clip(x + std * rng.standard_normal(x.shape).astype(np.float32), -1.0, 1.0)


def shift(images, pixels: int) -> np.ndarray:
    """Moves the digits ``pixels`` right and down, filling the vacated border with background -1."""
    x = np.asarray(images, np.float32)
    if pixels == 0:
        return x.copy()
    out = np.full_like(x, -1.0)
    out[:, pixels:, pixels:] = x[:, :-pixels, :-pixels]
    return out


# --------------------------------------------------------------------------------------------
# Training.


def init_params(key, sizes) -> dict:
    """LeCun-normal weights and zero biases of an MLP with layer widths ``sizes``."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,))
    return params


def _blur_batch(x):
    """A light fixed blur (3-tap [1, 2, 1]/4 in each direction, edges replicated) in jnp."""
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (1, 1)
        xp = jnp.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = (0.25 * jax.lax.slice_in_dim(xp, 0, n, axis=axis) + 0.5 * jax.lax.slice_in_dim(xp, 1, n + 1, axis=axis)
             + 0.25 * jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis))
    return x


def _shift_one(x, offset):
    """x (8, 8, 1) moved by offset (dy, dx) ∈ {−1, 0, 1}², vacated border filled with -1."""
    padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    return jax.lax.dynamic_slice(padded, (1 - offset[0], 1 - offset[1], 0), x.shape)


def train(key, images, labels, *, steps: int, batch_size: int = 128, lr: float = 3e-3,
          weight_decay: float = 1e-4, noise_max: float = 0.3, blur_prob: float = 0.25,
          shift_prob: float = 0.3, hidden=HIDDEN) -> dict:
    """AdamW (cosine decay) on cross-entropy with shift/blur/noise augmentation; returns numpy params.

    images (N, 8, 8, 1) in [-1, 1], labels (N,) in 0..9; ``hidden`` the widths of the hidden
    layers (the last is the feature dimension). Deterministic for a given ``key``.
    """
    images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    init_key, loop_key = jax.random.split(key)
    params = init_params(init_key, (int(np.prod(images.shape[1:])), *hidden, digits_lib.NUM_CLASSES))
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
    logits_fn = jax.vmap(lambda p, x: quality.digits_classifier_apply(p, x)[1], in_axes=(None, 0))

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()

    def step(carry, step_key):
        p, opt_state = carry
        k_idx, k_std, k_noise, k_blur, k_shift, k_off = jax.random.split(step_key, 6)
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x = images[idx]
        offsets = jax.random.randint(k_off, (batch_size, 2), -1, 2)
        offsets = jnp.where(jax.random.bernoulli(k_shift, shift_prob, (batch_size, 1)), offsets, 0)
        x = jax.vmap(_shift_one)(x, offsets)
        blurred = jax.random.bernoulli(k_blur, blur_prob, (batch_size, 1, 1, 1))
        x = jnp.where(blurred, _blur_batch(x), x)
        std = noise_max * jax.random.uniform(k_std, (batch_size, 1, 1, 1))
        x = x + std * jax.random.normal(k_noise, x.shape)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, labels[idx])
        updates, opt_state = opt.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    @jax.jit
    def run(p, keys):
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), keys)
        return p, losses

    params, _ = run(params, jax.random.split(loop_key, steps))
    return {k: np.asarray(v, np.float32) for k, v in params.items()}


def accuracy(params: dict, images, labels) -> float:
    logits_fn = jax.jit(jax.vmap(lambda x: quality.digits_classifier_apply(params, x)[1]))
    return float(np.mean(np.asarray(logits_fn(jnp.asarray(images, jnp.float32))).argmax(1) == labels))


def figures(path: str, *, seed: int = 0) -> dict:
    """FD-digits reports (vs the test split) of the train split and of corrupted test digits."""
    fn = quality.digits_feature_fn(path=path)
    train_x, test_x = pipeline.full_split("digits", "train"), pipeline.full_split("digits", "test")
    test_f = fn(test_x)
    rng = np.random.default_rng(seed)
    report = lambda x: quality.quality_from_features(fn(x), test_f, num_bootstrap=0, seed=None)
    out = {"train split": quality.quality_from_features(fn(train_x), test_f, num_bootstrap=50, seed=seed)}
    out.update({f"blur σ={s}": report(blur(test_x, s)) for s in (0.5, 0.75, 1.0, 1.5, 2.0)})
    out.update({f"noise σ={s}": report(add_noise(test_x, s, rng)) for s in (0.1, 0.2, 0.4, 0.8)})
    out.update({f"shift {p}px": report(shift(test_x, p)) for p in (1, 2, 3)})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.train_digits_features", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of initialisation and training")
    p.add_argument("--steps", type=int, default=4000, help="AdamW steps (batch 128)")
    p.add_argument("--out", default=quality.DIGITS_FEATURES_PATH, help="the npz to write")
    args = p.parse_args(argv)

    start = time.time()
    train_x, (_, train_y) = pipeline.full_split("digits", "train"), digits_lib.load_digits("train")
    test_x, (_, test_y) = pipeline.full_split("digits", "test"), digits_lib.load_digits("test")
    params = train(jax.random.key(args.seed), train_x, train_y, steps=args.steps)
    train_acc, test_acc = accuracy(params, train_x, train_y), accuracy(params, test_x, test_y)
    np.savez_compressed(
        args.out, **params,
        feature_dim=np.int64(HIDDEN[-1]), hidden=np.asarray(HIDDEN, np.int64),
        num_classes=np.int64(digits_lib.NUM_CLASSES), test_accuracy=np.float64(test_acc),
        train_accuracy=np.float64(train_acc), seed=np.int64(args.seed), steps=np.int64(args.steps),
        format_version=np.int64(FORMAT_VERSION),
    )
    print(f"wrote {args.out}: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} "
          f"({time.time() - start:.1f} s)")
    results = figures(args.out, seed=args.seed)
    print("FD-digits against the digits test split (300 images):")
    for name, report in results.items():
        print(f"  {name:>12}: {report}")
    return {"train_accuracy": train_acc, "test_accuracy": test_acc, **results}


if __name__ == "__main__":
    main()
