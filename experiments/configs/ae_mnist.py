"""A deterministic autoencoder with a 2-D latent on MNIST (experiment 1 at full scale).

Needs the prepared tfds data: `make data DATASET=mnist` (or `python -m diffusion_jax prepare
--dataset mnist`), then `python -m diffusion_jax train --config experiments/configs/ae_mnist.py
--workdir runs/ae_mnist`.
"""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("ae")
    c.data.name = "mnist"
    c.data.batch_size = 128
    c.model.kind = "mlp"
    c.model.latent_dim = 2
    c.model.hidden = (512, 256)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 500
    c.optim.decay = "cosine"
    c.optim.ema_decay = 0.999
    c.train.num_steps = 50_000  # ~107 epochs of 60k images
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.checkpoint_every = 5_000
    c.eval.batch_size = 500
    return c
