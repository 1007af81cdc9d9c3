"""The dataset ELBO: equals diffusion_elbo batch by batch, and resumes after an interruption."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.data import pipeline
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training import trainer
from diffusion_jax.training.builders import build_model
from tests.training.tiny import tiny_config


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config("ddpm")
    model = build_model(config, (8, 8, 1))
    params = trainer._init_params(model, config, (8, 8, 1), jax.random.key(0, impl="rbg"))
    return model, params, dj.linear_schedule(20)


def test_dataset_elbo_matches_diffusion_elbo_and_resumes(tiny_model, tmp_path, monkeypatch):
    model, params, sched = tiny_model
    images = pipeline.full_split("digits", "test")[:24]
    key = jax.random.key(3)
    kwargs = dict(batch_size=8, variance="beta", num_levels=17, chunk_size=7, progress=False)
    full = eval_lib.ddpm_test_elbo(model, params, sched, images, key, **kwargs)

    # Batch 1 by hand: the report is the mean of per-example diffusion_elbo totals.
    rfn = eval_lib.ddpm_reverse_fn(model, params, sched, variance="beta")
    first = dj.diffusion_elbo(rfn, sched, jnp.asarray(images[:8]), jax.random.fold_in(key, 0),
                              decoder="discretized", num_levels=17)["total"]
    assert full["num_examples"] == 24 and len(full["per_t_bpd"]) == 20
    assert full["bpd_se"] > 0

    # Interrupt after two batches, then resume: same numbers, and batch 0-1 not recomputed.
    partial = tmp_path / "eval_partial.npz"
    real_save = eval_lib._save_partial

    def save_then_interrupt(path, fingerprint, done, num_batches):
        real_save(path, fingerprint, done, num_batches)
        if num_batches == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after batch 2 was recorded

    monkeypatch.setattr(eval_lib, "_save_partial", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        eval_lib.ddpm_test_elbo(model, params, sched, images, key, partial_path=partial, **kwargs)
    monkeypatch.undo()
    assert int(np.load(partial)["batches"][0]) == 2
    resumed = eval_lib.ddpm_test_elbo(model, params, sched, images, key, partial_path=partial,
                                      **kwargs)
    for k in ("bpd", "bpd_se", "total_nats", "prior_matching_nats"):
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-5)
    np.testing.assert_allclose(np.load(partial)["total"][:8], first, rtol=1e-5)
