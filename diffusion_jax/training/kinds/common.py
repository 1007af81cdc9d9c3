"""Small helpers shared by the model-kind modules."""

from __future__ import annotations

import jax


def split_keys(keys, n: int):
    """(B,) keys -> n arrays of (B,) keys, each derived per example."""
    split = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [split[:, i] for i in range(n)]


def init_loss_state(config):
    """No state beyond the parameters (the default of a model kind)."""
    del config


def loss_state_update(config):
    del config


class SamplingUnsupported(ValueError):
    """The model kind cannot draw samples (e.g. a plain autoencoder has no prior)."""
