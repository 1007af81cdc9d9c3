"""DDPM on the embedded 8×8 digits: the main job (`make train`), ≤ 10 minutes on a 2-core CPU."""

from diffusion_jax.training.config import base_config


def get_config():
    c = base_config("ddpm")
    c.data.name = "digits"
    c.data.batch_size = 64
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()  # self-attention in the 4×4 middle block only
    c.model.dropout = 0.0
    c.diffusion.T = 1000
    c.diffusion.loss = "l_simple"
    c.diffusion.variance = "beta"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.ema_decay = 0.995
    c.train.num_steps = 2500
    c.train.eval_every = 1000
    c.train.checkpoint_every = 500
    c.eval.num_samples = 64
    # Grids during training are progress only: DPM-Solver++ with eval.nfe = 25 network calls
    # instead of 1,000 ancestral steps. The final grid and figures use eval.sampler (ancestral).
    c.eval.progress_sampler = "dpm_solver++"
    # At the end: FD-digits of 300 ancestral samples (as many as test digits) and the
    # probability-flow ODE bits/dim of 64 test digits (Hutchinson), beside their ELBO.
    c.eval.fd_samples = 300
    c.eval.ode_examples = 64
    return c
