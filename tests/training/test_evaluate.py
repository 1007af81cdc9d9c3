"""The dataset ELBO: equals diffusion_elbo batch by batch, resumes after an interruption, and
never reuses a partial result of other parameters, another schedule or another checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.data import pipeline
from diffusion_jax.training import evaluate as eval_lib
from diffusion_jax.training.kinds import ddpm
from tests.training.tiny import tiny_config

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_config("ddpm")
    config.eval.batch_size = 8
    config.eval.elbo_chunk_size = 19  # the 19 denoising terms (t = 2..20) in one chunk
    model = ddpm.build(config, IMAGE_SHAPE)
    params = ddpm.init_params(model, IMAGE_SHAPE, jax.random.key(0, impl="rbg"))
    return config, model, params


def _evaluate(config, model, params, images, key, cache_dir=None, tag=None):
    return ddpm.evaluate(config, model, params, images, key, num_levels=17, cache_dir=cache_dir,
                         cache_tag=tag, progress=False)


def _interrupt_after_two_batches(monkeypatch):
    real_save = eval_lib._save_partial

    def save_then_interrupt(path, fingerprint, done, num_batches):
        real_save(path, fingerprint, done, num_batches)
        if num_batches == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after batch 2 was recorded

    monkeypatch.setattr(eval_lib, "_save_partial", save_then_interrupt)


def test_dataset_elbo_matches_diffusion_elbo_and_resumes(tiny_model, tmp_path, monkeypatch):
    config, model, params = tiny_model
    images = pipeline.full_split("digits", "test")[:24]
    key = jax.random.key(3)
    full = _evaluate(config, model, params, images, key)

    # Batch 0 by hand: the report is the mean of per-example diffusion_elbo totals.
    sched = ddpm.build_schedule(config.diffusion)
    rfn = ddpm.reverse_fn(model, params, sched, variance=config.diffusion.variance)
    first = dj.diffusion_elbo(rfn, sched, jnp.asarray(images[:8]), jax.random.fold_in(key, 0),
                              decoder="discretized", num_levels=17, chunk_size=19)["total"]
    assert full["num_examples"] == 24 and len(full["per_t_bpd"]) == 20
    assert full["bpd_se"] > 0

    # Interrupt after two batches, then resume: same numbers, batches 0-1 not recomputed.
    _interrupt_after_two_batches(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(config, model, params, images, key, cache_dir=tmp_path, tag={"step": 1})
    monkeypatch.undo()
    partial = tmp_path / eval_lib.PARTIAL_NAME
    assert int(np.load(partial)["batches"][0]) == 2
    np.testing.assert_allclose(np.load(partial)["total"][:8], first, rtol=1e-5)
    calls = []
    real_in_batches = eval_lib.evaluate_in_batches

    def counting(batch_fn, *args, **kwargs):
        return real_in_batches(lambda x, k: calls.append(1) or batch_fn(x, k), *args, **kwargs)

    monkeypatch.setattr(eval_lib, "evaluate_in_batches", counting)
    resumed = _evaluate(config, model, params, images, key, cache_dir=tmp_path, tag={"step": 1})
    assert len(calls) == 1  # only the third batch ran
    for k in ("bpd", "bpd_se", "total_nats", "prior_matching_nats"):
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-5)
    assert not partial.exists()  # closed when done


def test_partial_results_of_other_settings_are_never_reused(tmp_path):
    images = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
    key = jax.random.key(0)
    calls = []

    def batch_fn(x, k):
        calls.append(1)
        return {"total": x.sum(1) + np.asarray(jax.random.key_data(k)).sum() % 7}

    def run(settings, fail_after=None):
        def fn(x, k):
            if fail_after is not None and len(calls) == fail_after:
                raise KeyboardInterrupt
            return batch_fn(x, k)
        return eval_lib.evaluate_in_batches(fn, images, key, batch_size=4, settings=settings,
                                            cache_dir=tmp_path, progress=False)

    reference = run({"params": "a", "step": 1})
    for other in ({"params": "b", "step": 1}, {"params": "a", "step": 2}):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            run({"params": "a", "step": 1}, fail_after=2)
        calls.clear()
        run(other)
        assert len(calls) == 3  # all batches recomputed: nothing of the other run was reused
        assert not (tmp_path / eval_lib.PARTIAL_NAME).exists()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run({"params": "a", "step": 1}, fail_after=2)
    calls.clear()
    np.testing.assert_array_equal(run({"params": "a", "step": 1})["total"], reference["total"])
    assert len(calls) == 1  # same settings: resumed


@pytest.mark.parametrize("change", ["params", "beta_T", "variance", "checkpoint_step"])
def test_ddpm_evaluation_key_covers_what_determines_the_numbers(tiny_model, monkeypatch, change):
    config, model, params = tiny_model
    seen = []

    def capture(batch_fn, images, key, *, settings, **kwargs):
        seen.append(eval_lib._fingerprint(settings, images, key, kwargs["batch_size"]))
        n = images.shape[0]
        return {"total": np.zeros(n), "per_t": np.zeros((n, config.diffusion.T))}

    monkeypatch.setattr(eval_lib, "evaluate_in_batches", capture)
    images = pipeline.full_split("digits", "test")[:8]
    _evaluate(config, model, params, images, jax.random.key(0), tag={"step": 1})
    new_config, new_params, tag = config.copy_and_resolve_references(), params, {"step": 1}
    if change == "params":
        new_params = jax.tree.map(lambda p: p.at[(0,) * p.ndim].add(1e-3), params)
    elif change == "beta_T":
        new_config.diffusion.beta_T = 0.05
    elif change == "variance":
        new_config.diffusion.variance = "beta_tilde"
    else:
        tag = {"step": 2}
    _evaluate(new_config, model, new_params, images, jax.random.key(0), tag=tag)
    assert seen[0] != seen[1]


def test_final_extras_report_ode_likelihood_beside_the_elbo_and_fd_digits(tiny_model):
    """eval.ode_examples / eval.fd_samples add the ODE bits/dim (paired with the ELBO of the
    same examples, which equals ode_bits_per_dim called directly) and FD-digits."""
    config, model, params = tiny_model
    config = tiny_config("ddpm", eval__ode_examples=3, eval__fd_samples=70, eval__fd_bootstrap=5,
                         eval__batch_size=8, eval__elbo_chunk_size=19, eval__ode_tolerance=1e-3)
    ddpm.validate(config)
    images = pipeline.full_split("digits", "test")[:8]
    key = jax.random.key(5)
    report = _evaluate(config, model, params, images, key)
    plain = _evaluate(tiny_config("ddpm", eval__batch_size=8, eval__elbo_chunk_size=19), model,
                      params, images, key)
    assert report["bpd"] == plain["bpd"] and "ode" not in plain and "fd_digits" not in plain

    ode = report["ode"]
    assert ode["num_examples"] == 3 and ode["divergence"] == "hutchinson" and ode["nfe_mean"] > 6
    _, ode_key = jax.random.split(jax.random.fold_in(key, 1))
    sched = ddpm.build_schedule(config.diffusion)
    direct, _ = dj.ode_likelihood.ode_bits_per_dim(
        ddpm.network_fn(model, params), sched, jnp.asarray(images[:3]),
        jax.random.split(ode_key, 3), num_levels=17, divergence="hutchinson", rtol=1e-3,
        atol=1e-3)
    np.testing.assert_allclose(ode["bpd"], float(np.mean(direct)), rtol=1e-5)
    np.testing.assert_allclose(ode["diff_bpd"], ode["bpd"] - ode["elbo_bpd"], rtol=1e-5, atol=1e-6)

    fd = report["fd_digits"]
    assert fd["num_samples"] == 70 and fd["num_reference"] == 300 and fd["sampler"] == "ddpm"
    assert np.isfinite(fd["fd"]) and fd["fd_se"] > 0 and 0 <= fd["precision"] <= 1
    lines = ddpm.summary_lines(report)
    assert any(line.startswith("ODE likelihood:") for line in lines)
    assert any(line.startswith("FD-digits:") for line in lines)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"eval__fd_samples": 64}, r"eval\.fd_samples \(64\) must exceed the feature dimension 64"),
    ({"eval__fd_samples": 100, "data__name": "mnist"}, r"eval\.fd_samples=100 asks for FD-digits"),
    ({"eval__ode_divergence": "hutchinsen"}, r"eval\.ode_divergence"),
    ({"eval__ode_tolerance": 1.0}, r"eval\.ode_tolerance must lie in \(0, 1\)"),
    ({"eval__ode_examples": -1}, r"eval\.ode_examples must be a non-negative int"),
])
def test_final_extras_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        ddpm.validate(tiny_config("ddpm", **overrides))
