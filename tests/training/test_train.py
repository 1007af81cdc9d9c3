"""One real train step of each model, on digits and on mocked tfds data; evaluate and sample."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data import tfds_data
from diffusion_jax.training import trainer
from tests.training.tiny import tiny_config

# With `pytest --dist loadgroup` one worker runs this file, so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("train")


def _records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddpm")
    # Progress grids with DDIM (the final grid stays ancestral: eval.sampler).
    summary = trainer.train_and_evaluate(tiny_config("ddpm", eval__progress_sampler="ddim"),
                                         workdir, progress=False)
    return workdir, summary


def test_ddpm_trains_evaluates_and_writes_artifacts(ddpm_run):
    workdir, summary = ddpm_run
    assert summary["step"] == 3
    ev = summary["eval"]
    assert ev["num_examples"] == 16 and ev["T"] == 20
    # Untrained 8-bit... 17-level digits: the bound is positive and finite, with an error bar.
    assert 0 < ev["bpd"] < 100 and 0 < ev["bpd_se"] < ev["bpd"]
    assert len(ev["per_t_bpd"]) == 20
    np.testing.assert_allclose(
        ev["total_nats"],
        ev["reconstruction_nats"] - ev["prior_matching_nats"] - ev["denoising_matching_nats"],
        rtol=1e-5)
    for name in ("samples.png", "loss_curve.png", "elbo_per_t.png", "config.json",
                 "run_info.json", "summary.json"):
        assert (workdir / name).is_file(), name
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["device_count"] >= 1 and info["versions"]["jax"] == "0.10.2"
    records = _records(workdir)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/vlb_bpd"]) for r in train)
    periodic = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in periodic] == [2] and periodic[0]["progress_sampler"] == "ddim"
    # The training phase says what its periodic evaluation and checkpoints took.
    assert 0 < summary["periodic_eval_seconds"] < summary["train_seconds"]
    assert 0 < summary["checkpoint_seconds"] < summary["train_seconds"]
    assert "of which periodic evaluation" in trainer.format_summary(summary)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]


def test_resume_continues_from_the_checkpoint(ddpm_run, tmp_path):
    workdir, _ = ddpm_run
    summary = trainer.train_and_evaluate(tiny_config("ddpm", train__num_steps=5), workdir,
                                         progress=False)
    assert summary["step"] == 5
    steps = [r["step"] for r in _records(workdir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5]  # no step trained twice


def test_workdir_of_another_model_is_refused(ddpm_run):
    workdir, _ = ddpm_run
    other = tiny_config("ddpm", model__ch=16, train__num_steps=6)
    with pytest.raises(ValueError, match="does not match the run.*allow_config_change"):
        trainer.train_and_evaluate(other, workdir, progress=False)


@pytest.mark.parametrize("model_kind, decoder", [("vae", "gaussian"), ("vae", "bernoulli"),
                                                 ("ae", None)])
def test_vae_and_ae_train_and_evaluate(tmp_path, model_kind, decoder):
    overrides = {}
    if decoder:
        overrides["model__decoder"] = decoder
        overrides["data__binarize"] = decoder == "bernoulli"
    summary = trainer.train_and_evaluate(tiny_config(model_kind, **overrides), tmp_path,
                                         progress=False)
    ev = summary["eval"]
    if model_kind == "vae":
        # IWAE-K is a tighter bound than the ELBO (within Monte-Carlo error on 16 examples).
        assert ev["iwae_nll_nats"] <= ev["neg_elbo_nats"] + 3 * ev["neg_elbo_nats_se"]
        assert np.isfinite(ev["iwae_nll_nats"]) and (tmp_path / "samples.png").is_file()
    else:
        assert ev["sq_error"] > 0 and np.isfinite(ev["sq_error_se"])


def test_one_train_step_on_mocked_tfds_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_data, "check_prepared",
                        lambda name, data_dir: tfds_data.check_tfds_name(name))
    config = tiny_config("ddpm", data__name="mnist", train__num_steps=1, train__eval_every=0,
                         eval__max_examples=8)
    with tfds.testing.mock_data(num_examples=16):
        summary = trainer.train_and_evaluate(config, tmp_path, progress=False)
    assert summary["step"] == 1 and np.isfinite(summary["final_train_metrics"]["loss"])
    assert summary["eval"]["num_examples"] == 8 and np.isfinite(summary["eval"]["bpd"])
