"""A VAE with a 2-D latent and a Gaussian decoder on the embedded 8×8 digits (experiments 1, 4).

q(z|x) = N(μ(x), diag σ²(x)), p(z) = N(0, I), p(x|z) = N(dec(z), s² I) with a learned scalar s².
"""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("vae")
    c.data.name = "digits"
    c.data.batch_size = 64
    c.model.kind = "mlp"
    c.model.latent_dim = 2
    c.model.hidden = (256, 128)
    c.model.decoder = "gaussian"
    c.vae.kl_warmup_steps = 0
    c.vae.free_bits = 0.0
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.ema_decay = 0.995
    c.train.num_steps = 4000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.eval.iwae_k = 1000
    c.eval.num_samples = 100
    return c
