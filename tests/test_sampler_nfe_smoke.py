"""experiments.sampler_nfe end to end with --quick on a tiny trained DDPM (T = 20, 3 steps).

The tiny model's samples are poor, so the FD values are checked for structure (finite, SE > 0,
precision and recall in [0, 1]), not for quality; the NFE bookkeeping (Heun's odd NFE, the
T-step ``ddpm_sample`` reference, the goal check) is checked exactly.
"""

import json
import math

import pytest

from diffusion_jax.training import trainer
from experiments import sampler_nfe
from tests.training.tiny import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sampler_nfe") / "run"
    config = tiny_config("ddpm", train__eval_every=0, train__checkpoint_every=3)
    trainer.train_and_evaluate(config, workdir, progress=False)
    return workdir


def test_missing_run_dir_names_make_train(tmp_path):
    with pytest.raises(sampler_nfe.MissingRun, match="make train"):
        sampler_nfe.main(["--quick", "--run_dir", str(tmp_path / "absent"),
                          "--out_dir", str(tmp_path / "out"), "--no-progress"])


def test_heun_runs_at_the_nearest_odd_nfe_below():
    assert [sampler_nfe.actual_nfe("heun", n) for n in sampler_nfe.NFES] == [
        5, 9, 19, 49, 99, 249, 999]
    assert [sampler_nfe.actual_nfe("ddim", n) for n in sampler_nfe.NFES] == list(sampler_nfe.NFES)


def test_sampler_nfe_quick(tiny_run, tmp_path):
    out = tmp_path / "out"
    data = sampler_nfe.main(["--quick", "--run_dir", str(tiny_run), "--out_dir", str(out),
                             "--no-progress"])
    T = data["settings"]["T"]
    assert T == 20 and data["settings"]["num_samples"] == 80
    rows = data["results"]
    got = {(r["sampler"], r["nominal_nfe"], r["nfe"]) for r in rows}
    assert got == {("ancestral", 20, 20), ("ddim", 5, 5), ("ddim", 10, 10),
                   ("heun", 5, 5), ("heun", 10, 9)}
    assert data["reference"]["sampler"] == "ancestral" and data["reference"]["nfe"] == T
    for r in rows:
        assert r["finite"] and math.isfinite(r["fd"]) and r["fd"] > 0, r
        assert math.isfinite(r["fd_se"]) and r["fd_se"] > 0, r
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1, r
        assert r["seconds"] > 0 and r["ms_per_sample"] == pytest.approx(1e3 * r["seconds"] / 80)
    assert data["real_digits"]["fd"] < data["reference"]["fd"]  # 3 training steps: not digits
    ref = data["reference"]["fd"]
    for name, g in data["goal"].items():
        within = sorted(r["nfe"] for r in rows if r["sampler"] == name and r["fd"] <= 1.1 * ref)
        assert g["smallest_nfe_within"] == (within[0] if within else None)
        assert g["within_goal"] == (bool(within) and within[0] <= 25)
        assert g["within_from_nfe_on"] is None or g["within_from_nfe_on"] >= within[0]
    text = (out / "results.md").read_text()
    assert "python -m experiments.sampler_nfe" in text and "| 10 |" in text and "[NFE 9]" in text
    assert (out / "fd_vs_nfe.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["goal"] == data["goal"]
    # Re-rendering from results.json rebuilds the same tables without sampling.
    before = [ln for ln in text.splitlines() if ln.startswith("| ")]
    sampler_nfe.main(["--quick", "--run_dir", str(tiny_run / "absent"), "--out_dir", str(out),
                      "--no-progress", "--rerender"])
    after = (out / "results.md").read_text()
    assert "re-rendered" in after and [ln for ln in after.splitlines() if ln.startswith("| ")] == before

    # --extend samples only the samplers results.json lacks (the reference must come out the same).
    extended = sampler_nfe.main(["--quick", "--run_dir", str(tiny_run), "--out_dir", str(out),
                                 "--no-progress", "--extend", "--samplers", "ddim,heun,dpm_solver++"])
    got = {(r["sampler"], r["nfe"]) for r in extended["results"]}
    assert got == {(s, n) for s, _, n in {("ancestral", 20, 20), ("ddim", 5, 5), ("ddim", 10, 10),
                                          ("heun", 5, 5), ("heun", 10, 9)}} | {
        ("dpm_solver++", 5), ("dpm_solver++", 10)}
    assert extended["settings"]["extended_with"] == ["dpm_solver++"]
    assert "DPM-Solver++" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="all in"):
        sampler_nfe.main(["--quick", "--run_dir", str(tiny_run), "--out_dir", str(out),
                          "--no-progress", "--extend", "--samplers", "ddim"])
