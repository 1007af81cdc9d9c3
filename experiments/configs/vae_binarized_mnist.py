"""The published binarized-MNIST VAE setting (Burda et al. 2016, IWAE paper, one stochastic layer).

Bernoulli decoder, 50 latent units, two deterministic hidden layers of 200 units in the encoder
and (mirrored) decoder, Adam, batch 100, test log-likelihood from the IWAE bound with K = 5000.
Differences from the paper: SiLU instead of tanh, statically (threshold) binarized images
instead of dynamic binarization of the training set, a cosine learning-rate decay instead of
the paper's 3^i schedule over 3,280 epochs. Needs the prepared tfds "mnist" (`make data`).
"""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("vae")
    c.data.name = "mnist"
    c.data.batch_size = 100
    c.data.binarize = True  # threshold at 1/2; the Bernoulli decoder needs binary data
    c.model.kind = "mlp"
    c.model.latent_dim = 50
    c.model.hidden = (200, 200)
    c.model.decoder = "bernoulli"
    c.vae.kl_warmup_steps = 0
    c.vae.free_bits = 0.0
    c.optim.optimizer = "adam"
    c.optim.lr = 1e-3
    c.optim.b2 = 0.999
    c.optim.eps = 1e-4  # as in the IWAE paper
    c.optim.warmup_steps = 0
    c.optim.decay = "cosine"
    c.optim.grad_clip = 0.0
    c.optim.ema_decay = 0.999
    c.train.num_steps = 600_000  # 1,000 epochs of 60k images at batch 100
    c.train.log_every = 200
    c.train.eval_every = 50_000
    c.train.checkpoint_every = 10_000
    c.eval.batch_size = 100
    c.eval.iwae_k = 5000
    c.eval.num_samples = 100
    return c
