"""DDPM on CIFAR-10 with the settings of Ho et al. (2020), Appendix B.

U-Net: ch 128, ch_mult (1, 2, 2, 2), 2 residual blocks per resolution, self-attention at 16×16
(and in the middle block), dropout 0.1, GroupNorm(32) — 35.7 M parameters. Diffusion: T = 1000,
linear β from 1e-4 to 0.02, ε-prediction, L_simple, σ_t² = β_t. Optimisation: Adam, lr 2e-4
with 5,000 warm-up steps, batch 128, gradient clipping at norm 1, EMA 0.9999, 800k steps.
Not reproduced: DDPM's random horizontal flips (the pipeline has no augmentation).
Needs the prepared tfds "cifar10" and an accelerator: `make data DATASET=cifar10`, then
`python -m diffusion_jax train --config experiments/configs/ddpm_cifar10.py --workdir runs/cifar`.
"""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("ddpm")
    c.data.name = "cifar10"
    c.data.batch_size = 128
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.mid_attention = True
    c.model.num_heads = 1
    c.model.dropout = 0.1
    c.model.num_groups = 32
    c.model.prediction = "eps"
    c.model.learned_variance = False
    c.diffusion.T = 1000
    c.diffusion.schedule = "linear"
    c.diffusion.beta_1 = 1e-4
    c.diffusion.beta_T = 0.02
    c.diffusion.loss = "l_simple"
    c.diffusion.variance = "beta"
    c.optim.optimizer = "adam"
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.decay = "constant"
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999
    c.train.num_steps = 800_000
    c.train.log_every = 100
    c.train.eval_every = 50_000
    c.train.checkpoint_every = 10_000
    c.train.parallel = "sharding"  # data parallel over all local devices
    c.eval.batch_size = 250
    c.eval.num_samples = 64
    c.eval.progress_sampler = "dpm_solver++"  # grids during training: 25 network calls
    c.eval.elbo_chunk_size = 20
    return c
