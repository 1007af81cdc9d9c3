"""diffusion_jax: autoencoders, VAEs and diffusion models in JAX.

The top-level package is the pure core (no Flax, no optax): schedules, Gaussians, the forward
process, the reverse process (``reverse_kernel``: p_θ from a network's output), parameterization
conversions, ELBOs and losses, samplers. Models, training and data live in the
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
from diffusion_jax.reverse import (
    ReverseKernel,
    p_reverse,
    predict_x0_eps,
    reverse_kernel,
    split_output,
)
from diffusion_jax.samplers import (
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    ddpm_sample_chunks,
    ddpm_sample_loop,
    dpm_solver_pp_sample,
    dpm_solver_timesteps,
    heun_num_steps,
    heun_sample,
    karras_timesteps,
    make_ddim_step,
    make_ddpm_step,
    sde_dpm_solver_pp_sample,
)
from diffusion_jax.schedules import Schedule, cosine_schedule, linear_schedule, schedule_from_betas
from diffusion_jax.vae import ActiveUnits, active_units, ae_loss, iwae_bound, vae_elbo

__version__ = "0.1.0"

# The single-t bound, the checked mode, schedules from log SNR, importance sampling of t, the
# probability-flow ODE likelihood and sample quality (FD, precision/recall).
from diffusion_jax import ode_likelihood, quality, timestep_sampling  # noqa: E402
from diffusion_jax.checked import checked  # noqa: E402
from diffusion_jax.elbo import eps_mse, vlb_estimate, vlb_term, vlb_term_at  # noqa: E402
from diffusion_jax.ode_likelihood import ode_bits_per_dim, ode_log_likelihood  # noqa: E402
from diffusion_jax.schedules import schedule_from_log_snr  # noqa: E402

# Variational diffusion models in continuous time (a block of its own, for clean merges).
from diffusion_jax.vdm import (  # noqa: E402
    CosineGamma,
    DDPMLinearGamma,
    DiscreteGamma,
    LinearGamma,
    MonotoneGamma,
    gamma_from_schedule,
    monotone_gamma,
    monotone_gamma_init,
    variance_minimizing_grads,
    vdm_decoder_log_probs,
    vdm_diffusion_loss_continuous,
    vdm_diffusion_loss_discrete,
    vdm_diffusion_term_continuous,
    vdm_diffusion_term_discrete,
    vdm_diffusion_terms_discrete,
    vdm_elbo,
    vdm_marginal,
    vdm_posterior,
    vdm_predict_x,
    vdm_prior_loss,
    vdm_reconstruction_loss,
    vdm_sample,
)
