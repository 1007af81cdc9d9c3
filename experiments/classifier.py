"""A tiny digits classifier (Flax MLP + optax) used to score decoded images.

Trained on the embedded digits' train split (1,497 images of 8×8, values in [−1, 1]); its
softmax confidence and entropy on decoded images turn "these look like digits" into numbers.
The training loop is one ``lax.scan`` over minibatch steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from diffusion_jax.data import digits as digits_lib
from diffusion_jax.data import pipeline

NUM_CLASSES = 10


class MLPClassifier(nn.Module):
    """x (B, 8, 8, 1) in [−1, 1] -> logits (B, 10): Dense-SiLU blocks and a linear head."""

    hidden: Sequence[int] = (128, 128)

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(NUM_CLASSES)(h)


def train_classifier(key, images, labels, *, steps: int = 2000, batch_size: int = 128,
                     lr: float = 2e-3, weight_decay: float = 1e-4, noise_std: float = 0.1):
    """Trains an ``MLPClassifier`` with AdamW on (images (N, 8, 8, 1), labels (N,)); returns params.

    Gaussian input noise (std ``noise_std``) is added to each minibatch: decoded images are
    smoother than real ones, and the noise keeps the classifier from relying on exact pixels.
    """
    model = MLPClassifier()
    images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    init_key, loop_key = jax.random.split(key)
    params = model.init(init_key, images[:1])["params"]
    schedule = optax.cosine_decay_schedule(lr, steps)
    opt = optax.adamw(schedule, weight_decay=weight_decay)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, step_key):
        p, opt_state = carry
        k_idx, k_noise = jax.random.split(step_key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x = images[idx] + noise_std * jax.random.normal(k_noise, images[idx].shape)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, labels[idx])
        updates, opt_state = opt.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    @jax.jit
    def run(p, keys):
        (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), keys)
        return p, losses

    params, _ = run(params, jax.random.split(loop_key, steps))
    return params


def predict_probs(params, images, *, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities (N, 10) of images (N, 8, 8, 1) clipped to [−1, 1]."""
    model = MLPClassifier()
    fn = jax.jit(lambda x: jax.nn.softmax(model.apply({"params": params}, jnp.clip(x, -1, 1))))
    images = np.asarray(images, np.float32)
    return np.concatenate([np.asarray(fn(images[s:s + batch_size]))
                           for s in range(0, images.shape[0], batch_size)])


def confidence_stats(probs) -> dict:
    """Per-image confidence (max prob) and entropy (nats), their means ± SE, and label diversity.

    ``label_entropy`` is the entropy of the mean predicted distribution (ln 10 ≈ 2.303 when all
    classes are equally represented); exp of it is the effective number of classes.
    """
    probs = np.asarray(probs, np.float64)
    conf = probs.max(axis=1)
    ent = -np.sum(probs * np.log(np.clip(probs, 1e-12, 1.0)), axis=1)
    marginal = probs.mean(axis=0)
    label_entropy = float(-np.sum(marginal * np.log(np.clip(marginal, 1e-12, 1.0))))
    n = probs.shape[0]
    return {
        "n": n,
        "confidence": float(conf.mean()), "confidence_se": float(conf.std(ddof=1) / np.sqrt(n)),
        "entropy": float(ent.mean()), "entropy_se": float(ent.std(ddof=1) / np.sqrt(n)),
        "frac_confident": float(np.mean(conf > 0.9)),
        "label_entropy": label_entropy,
        "effective_classes": float(np.exp(label_entropy)),
        "per_image_confidence": conf,
    }


def trained_digits_classifier(key, *, steps: int = 2000):
    """(params, test accuracy) of a classifier trained on the digits train split."""
    train_x = pipeline.full_split("digits", "train")
    _, train_y = digits_lib.load_digits("train")
    test_x = pipeline.full_split("digits", "test")
    _, test_y = digits_lib.load_digits("test")
    params = train_classifier(key, train_x, train_y, steps=steps)
    accuracy = float(np.mean(predict_probs(params, test_x).argmax(1) == test_y))
    return params, accuracy
