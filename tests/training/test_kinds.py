"""The model-kind registry: every kind exposes the same API, the trainer and CLI dispatch through
it, and a kind's sampler is compiled once and equals the core samplers."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.training import kinds
from diffusion_jax.training.kinds import ddpm
from tests.training.tiny import tiny_config

API = ("add_config", "validate", "FINGERPRINT_KEYS", "build", "init_params", "init_loss_state",
       "loss_state_update", "make_loss", "evaluate", "summary_lines", "sample", "CAN_SAMPLE",
       "progress_sampler")
PACKAGE = Path(dj.__file__).parent


@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_every_kind_has_the_whole_api(name):
    kind = kinds.get(name)
    missing = [attr for attr in API if not hasattr(kind, attr)]
    assert not missing, f"kind {name!r} lacks {missing}"


def test_unknown_kind_names_the_key_and_the_nearest_one():
    with pytest.raises(ValueError, match=r"model_kind.*'ddpn'.*Did you mean 'ddpm'"):
        kinds.get("ddpn")


def test_no_model_kind_string_comparison_outside_the_registry():
    pattern = re.compile(r"""model_kind\s*(==|!=|in)\s*[("']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "kinds" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_network_output_is_split_in_one_place():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "jnp.split(" in p.read_text() and p.name not in ("reverse.py", "autoencoders.py")]
    assert not offenders  # autoencoders.py splits its own encoder's (mean, log_var), not p_θ


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_kind_sampler_compiles_once_and_equals_the_core_sampler(sampler):
    config = tiny_config("ddpm")
    model = ddpm.build(config, (8, 8, 1))
    params = ddpm.init_params(model, (8, 8, 1), jax.random.key(0, impl="rbg"))
    cache = ddpm._ancestral_chunk if sampler == "ddpm" else ddpm._ddim_sampler
    cache.cache_clear()
    outs = [ddpm.sample(config, model, params, jax.random.key(i), num_samples=3,
                        image_shape=(8, 8, 1), sampler=sampler, progress=False, chunk=7)
            for i in range(2)]
    assert cache.cache_info().misses == 1 and cache.cache_info().hits == 1
    sched = ddpm.build_schedule(config.diffusion)
    net = ddpm.network_fn(model, params)
    if sampler == "ddpm":
        ref = dj.ddpm_sample(net, sched, jax.random.key(1), (3, 8, 8, 1), clip_x0=True)
    else:
        ref = dj.ddim_sample(net, sched, jax.random.key(1), (3, 8, 8, 1),
                             num_steps=config.eval.ddim_steps, clip_x0=True)
    np.testing.assert_allclose(outs[1], np.asarray(ref), rtol=1e-6, atol=1e-6)
