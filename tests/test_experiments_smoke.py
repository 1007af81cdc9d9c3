"""Experiments: every config validates and builds; every experiment runs end to end with --quick.

The smoke runs write into a tmp dir and check the numbers they can (closed forms hold, IWAE
bounds rise with K, the printed consistency form is biased), not only that files exist.
"""

import importlib
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax.data import pipeline
from diffusion_jax.models import num_params
from diffusion_jax.training import kinds
from diffusion_jax.training.config import validate_config
from experiments.gaussian_model import GaussianData, LinearGaussianReverse

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds(name):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    validate_config(config)
    shape = tuple(pipeline.dataset_spec(config.data.name).image_shape)
    kind = kinds.get(config.model_kind)
    model = kind.build(config, shape)
    params = jax.eval_shape(lambda k: kind.init_params(model, shape, k), jax.random.key(0))
    n = num_params(params)
    assert n > 0
    if name == "ddpm_cifar10":  # Ho et al. (2020): 35.7 M parameters
        assert config.diffusion.T == 1000 and config.optim.lr == 2e-4
        assert config.data.batch_size == 128 and config.train.num_steps == 800_000
        assert config.optim.ema_decay == 0.9999 and config.model.dropout == 0.1
        assert abs(n - 35.7e6) < 0.1e6, n
    if name == "vae_binarized_mnist":
        assert config.model.decoder == "bernoulli" and config.model.latent_dim == 50


def test_gaussian_model_exact_elbo_matches_monte_carlo():
    """The closed-form ELBO of a linear-Gaussian reverse model equals the ddpm-form estimate."""
    data = GaussianData(0.3, 0.5)
    sched = dj.linear_schedule(20, beta_1=1e-3, beta_T=0.2)
    x0 = np.repeat(np.array([[-0.4], [0.8]], np.float32), 4000, axis=0)
    for variance in ("exact", "fixed_beta"):
        model = LinearGaussianReverse.optimal(data, sched, variance)
        exact = model.exact_elbo(sched, x0[[0, -1]])
        est = dj.diffusion_elbo(model.reverse_fn(), sched, jnp.asarray(x0), jax.random.key(3),
                                form="ddpm")["total"].reshape(2, -1)
        se = np.asarray(est).std(axis=1) / math.sqrt(est.shape[1])
        np.testing.assert_array_less(np.abs(np.asarray(est).mean(1) - exact), 4 * se + 1e-4)
        # ELBO ≤ log p(x), with equality of the data average only for the exact model.
        assert np.all(model.exact_log_likelihood(x0[[0, -1]]) >= exact - 1e-9)


def _run(module_name, tmp_path, *extra):
    module = importlib.import_module(f"experiments.{module_name}")
    out, runs = tmp_path / "out", tmp_path / "runs"
    data = module.main(["--quick", "--out_dir", str(out), "--run_dir", str(runs),
                        "--no-progress", *extra])
    text = (out / "results.md").read_text()
    assert f"python -m experiments.{module_name}" in text and "wall time" in text
    assert "seed: 0" in text
    for fig in data["figures"]:
        assert Path(fig).stat().st_size > 1000, fig
    json.loads((out / "results.json").read_text())
    return data


def test_chain_variance_quick(tmp_path):
    data = _run("chain_variance", tmp_path)
    assert data["worst_abs_z"] < 6.0  # the closed form matches the simulated chain
    res = data["results"]
    for key, r in res.items():
        alpha = float(key.split("/")[0].split("=")[1])
        expected = 1.0 if "correct" in key else 1.0 - alpha
        assert r["limit"] == pytest.approx(expected, rel=1e-6)


def test_latent_spaces_quick(tmp_path):
    data = _run("latent_spaces", tmp_path)
    assert data["classifier_test_accuracy"] > 0.8
    for s in data["scores"].values():
        assert 0.1 <= s["confidence"] <= 1.0 and 0.0 <= s["entropy"] <= math.log(10) + 1e-6


def test_elbo_estimators_quick(tmp_path):
    data = _run("elbo_estimators", tmp_path)
    for setting in ("gaussian_exact", "gaussian_beta"):
        (T, res), = data["results"][setting].items()
        for form in ("ddpm", "consistency", "monte_carlo"):
            assert abs(res[form]["bias"]) < 5 * res[form]["bias_se"] + 1e-3, (setting, form)
        printed = res["consistency_as_printed"]
        assert printed["bias"] < -5 * printed["bias_se"]  # the printed form is biased low
    ddpm = data["results"]["ddpm"]
    for res in ddpm.values():
        assert all(np.isfinite(res[f]["mean"]) for f in res)
    # Re-rendering from results.json reproduces the tables without recomputing.
    before = (tmp_path / "out" / "results.md").read_text()
    _run("elbo_estimators", tmp_path, "--rerender")
    after = (tmp_path / "out" / "results.md").read_text()
    assert "re-rendered" in after
    assert [ln for ln in before.splitlines() if ln.startswith("| ")] == [
        ln for ln in after.splitlines() if ln.startswith("| ")]


def test_posterior_collapse_quick(tmp_path):
    data = _run("posterior_collapse", tmp_path)
    for name, r in data["results"].items():
        iwae = [r["iwae_by_K"][K][0] for K in data["Ks"]]
        assert iwae[-1] > iwae[0], name  # L_K rises with K
        assert r["gap"] > 0 and 0 <= r["active_units"] <= 2
        assert r["kl"] >= 0
    before = (tmp_path / "out" / "results.md").read_text()
    _run("posterior_collapse", tmp_path, "--rerender")
    after = (tmp_path / "out" / "results.md").read_text()
    assert [ln for ln in before.splitlines() if ln.startswith("| ")] == [
        ln for ln in after.splitlines() if ln.startswith("| ")]


def test_ddpm_objectives_quick(tmp_path):
    data = _run("ddpm_objectives", tmp_path)
    for run in data["runs"].values():
        assert np.isfinite(run["summary"]["eval"]["bpd"]) and run["summary"]["eval"]["bpd"] > 0


def test_run_all_rejects_unknown_names():
    run_all = importlib.import_module("experiments.run_all")
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_experiment"])


def test_run_all_quick_one(tmp_path):
    run_all = importlib.import_module("experiments.run_all")
    out = run_all.main(["--quick", "--only", "chain_variance", "--out_dir", str(tmp_path),
                        "--no-progress"])
    assert out["results"]["chain_variance"]["ok"]
    assert (tmp_path / "chain_variance" / "results.md").exists()
