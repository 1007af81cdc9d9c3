"""A deterministic autoencoder with a 2-D latent on the embedded 8×8 digits (experiment 1)."""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("ae")
    c.data.name = "digits"
    c.data.batch_size = 64
    c.model.kind = "mlp"
    c.model.latent_dim = 2
    c.model.hidden = (256, 128)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.ema_decay = 0.995
    c.train.num_steps = 4000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    return c
