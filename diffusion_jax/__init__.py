"""diffusion_jax: autoencoders, VAEs and diffusion models in JAX.

The top-level package is the pure core (no Flax, no optax): schedules, Gaussians, the forward
process, parameterization conversions, ELBOs and losses. Models, training and data live in the
subpackages ``diffusion_jax.models``, ``diffusion_jax.training`` and ``diffusion_jax.data``.
"""

from diffusion_jax.elbo import (
    bits_per_dim,
    decoder_log_prob,
    diffusion_elbo,
    l_simple,
    map_over_timesteps,
    per_example_noise,
    prior_kl,
    sample_timesteps,
    summed_gaussian_kl,
)
from diffusion_jax.forward import (
    constant_coefficient_chain,
    constant_coefficient_chain_variance,
    q_bridge,
    q_chain,
    q_marginal,
    q_posterior,
    q_sample,
    q_step,
)
from diffusion_jax.gaussians import (
    Gaussian,
    bernoulli_log_prob,
    discretized_gaussian_log_prob,
    expected_gaussian_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    sample_gaussian,
)
from diffusion_jax.parameterization import (
    eps_from_v,
    eps_from_x0,
    p_mean_from_eps,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from diffusion_jax.samplers import (
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    ddpm_sample_chunks,
    ddpm_sample_loop,
    make_ddim_step,
    make_ddpm_step,
    p_reverse,
)
from diffusion_jax.schedules import Schedule, cosine_schedule, linear_schedule, schedule_from_betas
from diffusion_jax.vae import ActiveUnits, active_units, ae_loss, iwae_bound, vae_elbo

__version__ = "0.1.0"
