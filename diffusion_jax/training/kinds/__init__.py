"""Model kinds: one module per kind, chosen once through this registry.

A kind module owns everything that differs between model kinds, behind the same names:

- ``add_config(c)``: adds the kind's config sections (``model`` and its own, e.g. ``diffusion``)
  and kind-specific ``eval`` keys to the shared base config;
- ``validate(config)``: the kind's config checks (ValueError/TypeError naming the key);
- ``FINGERPRINT_KEYS``: config keys that shape the parameters or their meaning;
- ``build(config, image_shape)`` -> the Flax module; ``init_params(model, image_shape, key)``;
- ``init_loss_state(config)`` / ``loss_state_update(config)``: the objective's own state (e.g.
  the loss history of importance-sampled t) and its update from the loss's per-example
  statistics, or None;
- ``make_loss(model, config, *, num_levels)`` -> ``loss_fn(params, batch, keys, *, train, step)``
  returning ``(loss, metrics)``, built from the pure core;
- ``evaluate(config, model, params, images, key, *, num_levels, cache_dir, cache_tag, progress)``
  -> the final test metrics; ``summary_lines(report)`` -> lines for the run summary;
- ``sample(config, model, params, key, *, num_samples, image_shape, sampler, progress)`` ->
  images in [−1, 1]; ``CAN_SAMPLE`` says whether the kind can (an AE has no prior);
  ``progress_sampler(config)`` -> the sampler of the grids drawn during training, or None for
  the final one;

A new kind is one module plus one line in ``KINDS`` (and a config under experiments/configs).
"""

from __future__ import annotations

import difflib
from types import ModuleType

from diffusion_jax.training.kinds import ae, ddpm, vae, vdm
from diffusion_jax.training.kinds.common import SamplingUnsupported

KINDS: dict[str, ModuleType] = {"ddpm": ddpm, "vae": vae, "ae": ae, "vdm": vdm}


def get(name) -> ModuleType:
    """The kind module registered as ``name``; a ValueError naming ``model_kind`` otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        hint = difflib.get_close_matches(str(name), list(KINDS), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"config.model_kind must be one of {tuple(KINDS)}, got {name!r}.{extra}") from None
