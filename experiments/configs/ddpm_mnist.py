"""DDPM on MNIST (28×28×1): a scaled-down CIFAR-10 recipe (Ho et al. 2020).

U-Net ch 64, ch_mult (1, 2, 2) (28 → 14 → 7), 2 residual blocks, attention at 14×14 and in the
middle, dropout 0.1; T = 1000 linear, L_simple, Adam lr 2e-4 (5,000 warm-up steps), batch 128,
grad clip 1, EMA 0.9999, 100k steps. Needs the prepared tfds "mnist" (`make data`).
"""

from diffusion_jax.training.config import base_config


def get_config(dataset: str = "mnist"):
    c = base_config("ddpm")
    c.data.name = dataset
    c.data.batch_size = 128
    c.model.ch = 64
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (14,)
    c.model.mid_attention = True
    c.model.dropout = 0.1
    c.model.num_groups = 32
    c.diffusion.T = 1000
    c.diffusion.schedule = "linear"
    c.diffusion.loss = "l_simple"
    c.diffusion.variance = "beta"
    c.optim.optimizer = "adam"
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.decay = "constant"
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999
    c.train.num_steps = 100_000
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 5_000
    c.train.parallel = "sharding"
    c.eval.batch_size = 250
    c.eval.num_samples = 64
    c.eval.progress_sampler = "dpm_solver++"  # grids during training: 25 network calls
    c.eval.elbo_chunk_size = 25
    return c
