"""Optimizers and learning-rate schedules from the config (optax only)."""

from __future__ import annotations

import optax

from diffusion_jax._checks import check_choice

OPTIMIZERS = ("adamw", "adam")
DECAYS = ("constant", "cosine")


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant or cosine decay to zero."""
    check_choice("optim.decay", optim_cfg.decay, DECAYS)
    warmup = int(optim_cfg.warmup_steps)
    if optim_cfg.decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, optim_cfg.lr, warmup_steps=max(warmup, 1), decay_steps=max(num_steps, warmup + 1)
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_cfg.lr, max(warmup, 1)), optax.constant_schedule(optim_cfg.lr)],
        boundaries=[max(warmup, 1)],
    )


def make_optimizer(optim_cfg, num_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam/AdamW, wrapped so non-finite updates are skipped.

    ``optax.apply_if_finite`` leaves parameters and moments untouched when a gradient holds a
    NaN or Inf and counts consecutive skips (the trainer stops after ``max_consecutive_skips``).
    """
    check_choice("optim.optimizer", optim_cfg.optimizer, OPTIMIZERS)
    lr = learning_rate_schedule(optim_cfg, num_steps)
    if optim_cfg.optimizer == "adamw":
        inner = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                            weight_decay=optim_cfg.weight_decay)
    else:
        inner = optax.adam(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps)
    chain = [inner]
    if optim_cfg.grad_clip > 0:
        chain.insert(0, optax.clip_by_global_norm(optim_cfg.grad_clip))
    # A huge limit: the trainer, not optax, decides when too many skips end the run.
    return optax.apply_if_finite(optax.chain(*chain), max_consecutive_errors=2**30)
