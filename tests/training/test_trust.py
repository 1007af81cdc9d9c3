"""The trainer's records stay true through refused resumes, corrupt checkpoints, deleted
checkpoints and changed settings (each case failed before its fix)."""

import json
import shutil

import jax
import numpy as np
import pytest

from diffusion_jax.data import pipeline
from diffusion_jax.training import trainer
from diffusion_jax.training.kinds import ddpm
from diffusion_jax.training.workdir import read_metrics
from tests.training.test_faults import _garble_newest
from tests.training.tiny import tiny_config

# With `pytest --dist loadgroup` one worker runs this file, so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("trust")


def _config(**overrides):
    base = dict(train__num_steps=4, train__checkpoint_every=2, train__eval_every=0,
                train__log_every=1, eval__max_examples=8)
    return tiny_config("ddpm", **{**base, **{k.replace(".", "__"): v for k, v in overrides.items()}})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trust") / "run"
    summary = trainer.train_and_evaluate(_config(), workdir, progress=False)
    assert summary["eval"]["checkpoint_step"] == 4
    return workdir


def _copy(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    (workdir / "summary.json").unlink()  # as if the run had been interrupted, not finished
    return workdir


def _records(workdir):
    return {name: (workdir / name).read_bytes() for name in ("config.json", "run_info.json",
                                                               "metrics.jsonl")}


@pytest.mark.parametrize("change, error, match", [
    ({"seed": 1}, ValueError, r"config\.seed"),
    ({"model.ch": 12}, trainer.ConfigMismatch, r"model\.ch"),
    ({"diffusion.beta_T": 0.05}, trainer.ConfigMismatch, r"diffusion\.beta_T"),
    ({"train.num_steps": 3}, ValueError, r"train\.num_steps \(3\) is below"),
    ({"model.ch": 12, "train.allow_config_change": True}, trainer.ConfigMismatch, r"shapes"),
])
def test_a_refused_resume_leaves_the_runs_records_untouched(finished_run, tmp_path, change, error,
                                                           match):
    workdir = _copy(finished_run, tmp_path)
    before = _records(workdir)
    with pytest.raises(error, match=match):
        trainer.train_and_evaluate(_config(**change), workdir, progress=False)
    assert _records(workdir) == before


def test_deleted_checkpoints_do_not_silently_restart_over_the_records(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    shutil.rmtree(workdir / "checkpoints")
    before = _records(workdir)
    with pytest.raises(FileExistsError, match="no checkpoint to resume"):
        trainer.train_and_evaluate(_config(), workdir, progress=False)
    assert _records(workdir) == before


def test_corrupt_latest_checkpoint_is_quarantined_and_each_step_is_logged_once(finished_run,
                                                                             tmp_path):
    workdir = _copy(finished_run, tmp_path)
    _garble_newest(workdir / "checkpoints", 4)
    summary = trainer.train_and_evaluate(_config(**{"train.num_steps": 6}), workdir,
                                         progress=False)
    assert summary["step"] == 6 and summary["eval"]["checkpoint_step"] == 6
    # The reported figure is the evaluation of the final parameters, not the step-4 one.
    first = json.loads((finished_run / "summary.json").read_text())["eval"]
    assert summary["eval"]["bpd"] != first["bpd"]
    run = trainer.load_trained(_config(**{"train.num_steps": 6}), workdir)
    images = pipeline.full_split("digits", "test")[:8]
    eval_key = jax.random.split(jax.random.key(0), 3)[1]
    fresh = ddpm.evaluate(_config(), run.model, run.params, images, eval_key, num_levels=17,
                          progress=False)
    np.testing.assert_allclose(summary["eval"]["bpd"], fresh["bpd"], rtol=1e-6)
    assert not (workdir / "eval_partial.npz").exists()
    quarantined = list((workdir / "checkpoints_quarantine").iterdir())
    assert [p.name.split("-")[0] for p in quarantined] == ["4"]
    # Steps 3-4 ran again after the fallback to checkpoint 2: each step is recorded once.
    steps = [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 6
    # The step that was corrupt has been saved again (it was StepAlreadyExistsError before).
    assert {4, 6} <= {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
