"""VDM on CIFAR-10 with the settings of Kingma et al. (2021) (google-research/vdm,
configs/cifar10.py). Not run here.

Network: VDM's score U-Net without downsampling: 32 ResBlocks of 128 channels at 32×32 on the
way down (33 up, with skip connections, two in the middle), no attention, dropout 0.1,
Fourier features sin/cos(2^k · 2π · z) for k = 6, 7, conditioned on the normalised γ. Schedule:
linear in γ with learned endpoints from γ(0) = −13.3, γ(1) = 5 ("learnable_scalar"). Loss: the
continuous-time bound L_∞ with antithetic t. Optimisation: AdamW (b2 0.99, weight decay 0.01),
lr 2e-4 constant after 100 warm-up steps, batch 128, EMA 0.9999, 10M steps.
Differences from the released code: GroupNorm groups and the time-embedding MLP are the DDPM
U-Net's (``models/unet.py``), gradients are clipped at norm 1 (the package's default), there is
no data augmentation. Needs the prepared tfds "cifar10" and an accelerator:
`make data DATASET=cifar10`, then
`python -m diffusion_jax train --config experiments/configs/vdm_cifar10.py --workdir runs/vdm_cifar`.
"""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("vdm")
    c.data.name = "cifar10"
    c.data.batch_size = 128
    c.model.ch = 128
    c.model.ch_mult = (1,)  # no downsampling
    c.model.num_res_blocks = 32
    c.model.attn_resolutions = ()
    c.model.mid_attention = False
    c.model.num_heads = 1
    c.model.dropout = 0.1
    c.model.num_groups = 32
    c.model.prediction = "eps"
    c.model.fourier = True
    c.model.fourier_min = 6
    c.model.fourier_max = 7
    c.diffusion.schedule = "learned_linear"
    c.diffusion.gamma_min = -13.3
    c.diffusion.gamma_max = 5.0
    c.diffusion.T = 0  # continuous time
    c.diffusion.antithetic = True
    c.optim.optimizer = "adamw"
    c.optim.lr = 2e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 100
    c.optim.decay = "constant"
    c.optim.ema_decay = 0.9999
    c.train.num_steps = 10_000_000
    c.train.log_every = 1000
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 10_000
    c.train.parallel = "sharding"  # data parallel over all local devices
    c.eval.batch_size = 128
    c.eval.num_samples = 64
    c.eval.vdm_draws = 10
    c.eval.sample_steps = 1000
    return c
