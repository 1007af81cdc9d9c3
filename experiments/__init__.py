"""Experiments that reproduce (or correct) the claims of the seed text, one command each.

    python -m experiments.latent_spaces       # 1. AE vs VAE latent spaces (2-D)
    python -m experiments.chain_variance      # 2. the boxed variance derivation (√α and 1 − α)
    python -m experiments.elbo_estimators     # 3. three ways to write the diffusion ELBO
    python -m experiments.posterior_collapse  # 4. ELBO gap (IWAE), KL per unit, active units
    python -m experiments.ddpm_objectives     # 5. DDPM on digits: L_simple vs the full ELBO
    python -m experiments.run_all             # all of the above (`make experiments`)

Every command accepts ``--quick`` (tiny settings), ``--out_dir`` (figures and the markdown
table, default ``experiments/results/<name>``), ``--run_dir`` (training runs and checkpoints,
default ``runs/experiments/<name>``) and ``--seed``.
"""

import os

# XLA CPU: send convolutions and dots to the multi-threaded Eigen path instead of a one-thread
# YNN fusion (PLATFORM.md: ~1.6x faster U-Net steps on 2 cores). It must be set before JAX
# starts, which is why it lives here (this runs before any experiment module imports jax); a
# user's own ``ynn_fusion_type`` entry wins.
_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
