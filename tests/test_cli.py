"""The command line answers every mistake with one short message and a meaningful exit code.

Most cases run ``cli.main`` in-process (no JAX start-up per case); one real tiny run goes
train -> evaluate -> sample through the CLI with the run's own ``config.json``, and one
subprocess is stopped by SIGINT.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from diffusion_jax import cli
from diffusion_jax.training import trainer
from diffusion_jax.training.checkpoint import Checkpointer
from diffusion_jax.training.workdir import RunLock, write_json_atomic
from tests.training.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
DDPM = "experiments/configs/ddpm_digits.py"
VAE = "experiments/configs/vae_digits.py"
TINY = ["--config.model.ch=8", "--config.model.ch_mult=(1,)", "--config.model.num_groups=4",
        "--config.diffusion.T=20", "--config.eval.fd_samples=0", "--config.eval.ode_examples=0",
        "--config.eval.nfe=10",
        "--config.model.mid_attention=false", "--config.data.batch_size=8",
        "--config.optim.warmup_steps=1", "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.eval.max_examples=8", "--config.eval.batch_size=8",
        "--config.eval.elbo_chunk_size=20", "--config.eval.num_samples=2",
        "--config.eval.ddim_steps=5", "--progress=false"]


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    """``cli.main`` adds its CPU flag to XLA_FLAGS (no effect once JAX runs); undo it after."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.delenv("DIFFUSION_JAX_VERBOSE", raising=False)


def _cli(capfd, *args):
    """(exit code, stdout, stderr) of ``python -m diffusion_jax *args``, in-process."""
    capfd.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def _short(err, *needles, lines=3):
    assert "Traceback" not in err, err
    assert 1 <= len(err.strip().splitlines()) <= lines, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def _ddpm_workdir(path):
    """A workdir that looks trained by a DDPM run: its config.json and a checkpoint folder."""
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / "config.json", tiny_config("ddpm").to_dict())
    (path / "checkpoints" / "2").mkdir(parents=True)
    return path


def test_unknown_command_and_flags(capfd):
    code, _, err = _cli(capfd, "trian")
    assert code == 2
    _short(err, "did you mean 'train'")
    code, _, err = _cli(capfd)
    assert code == 2 and "usage:" in err
    code, out, _ = _cli(capfd, "sample", "--help")
    assert code == 0 and "--batch_size" in out and "--config.<key>" in out
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdri", "x")
    assert code == 2
    _short(err, "--workdri", "did you mean --workdir?")
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", "x", "--num_samples=3")
    assert code == 2
    _short(err, "--num_samples is a flag of sample")
    code, _, err = _cli(capfd, "sample", "--config", DDPM, "--workdir", "x", "--num_samples=lots")
    assert code == 2
    _short(err, "--num_samples expects an int")
    code, _, err = _cli(capfd, "evaluate", "--config", DDPM)
    assert code == 2
    _short(err, "--workdir")


def test_typo_in_a_config_key_names_the_nearest_key(capfd, tmp_path):
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, "--config.optim.lrr=1e-3")
    assert code == 2
    _short(err, "unknown config key optim.lrr", "did you mean optim.lr?", lines=1)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, "--config.optimm.lr", "1")
    assert code == 2
    _short(err, "unknown config key optimm.lr", "did you mean optim.lr?", lines=1)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path,
                        "--config.train.num_steps=many")
    assert code == 2
    _short(err, "train.num_steps", "expects an int", "'many'", lines=1)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, "--config.optim.lr=-1")
    assert code == 2
    _short(err, "config.optim.lr must be a finite number > 0", "--config.optim.lr=", lines=1)
    assert not (tmp_path / "config.json").exists()


def test_missing_or_wrong_config_file(capfd, tmp_path):
    code, _, err = _cli(capfd, "train", "--config", "nope.py", "--workdir", tmp_path)
    assert code == 2
    _short(err, "config file nope.py not found", "experiments/configs/ddpm_digits.py", lines=1)
    code, _, err = _cli(capfd, "train", "--config", "experiments/configs/ddpm_digit.py", "--workdir", tmp_path)
    assert code == 2
    _short(err, "Did you mean experiments/configs/ddpm_digits.py?")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    code, _, err = _cli(capfd, "train", "--config", broken, "--workdir", tmp_path / "w")
    assert code == 2
    _short(err, f"cannot load config file {broken}", "SyntaxError")
    code, _, err = _cli(capfd, "train", "--config", tmp_path, "--workdir", tmp_path / "w")
    assert code == 2
    _short(err, "is a directory")
    bad_json = tmp_path / "config.json"
    bad_json.write_text("{not json")
    code, _, err = _cli(capfd, "evaluate", "--config", bad_json, "--workdir", tmp_path)
    assert code == 2
    _short(err, str(bad_json), "not valid JSON")


def test_workdir_that_is_a_file_or_cannot_be_created(capfd, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", afile, *TINY)
    assert code == 1
    _short(err, f"--workdir {afile} is a file", "rerun with --verbose")
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", afile / "sub", *TINY)
    assert code == 1
    _short(err, f"cannot create --workdir {afile / 'sub'}")


def test_workdir_in_use_is_refused(capfd, tmp_path):
    with RunLock(tmp_path):
        code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, *TINY)
    assert code == 1
    _short(err, f"workdir {tmp_path} is in use")


def test_vae_config_on_a_ddpm_workdir_names_the_differing_keys(capfd, tmp_path):
    workdir = _ddpm_workdir(tmp_path / "ddpm")
    for command in ("train", "evaluate", "sample"):
        code, _, err = _cli(capfd, command, "--config", VAE, "--workdir", workdir, "--progress=false")
        assert code == 2, (command, err)
        _short(err, "does not match the run", f"--config {workdir / 'config.json'}", lines=1)
        assert "no readable checkpoint" not in err


def test_no_checkpoints_is_a_short_error(capfd, tmp_path):
    for command in ("evaluate", "sample"):
        code, _, err = _cli(capfd, command, "--config", DDPM, "--workdir", tmp_path / "empty")
        assert code == 1
        _short(err, f"no checkpoints in {tmp_path / 'empty' / 'checkpoints'}", "train first")


def test_sampler_choices_and_ddim_steps(capfd, tmp_path):
    code, _, err = _cli(capfd, "sample", "--config", DDPM, "--workdir", tmp_path, "--sampler", "ddmi")
    assert code == 2
    _short(err, "--sampler 'ddmi'", "ddpm, ddim", lines=1)
    code, _, err = _cli(capfd, "sample", "--config", DDPM, "--workdir", tmp_path, "--sampler=ddim",
                        "--config.diffusion.T=50", "--config.eval.ddim_steps=100")
    assert code == 2
    _short(err, "config.eval.ddim_steps (100)", "diffusion.T (50)", lines=1)
    code, _, err = _cli(capfd, "sample", "--config", VAE, "--workdir", tmp_path, "--sampler=ddpm")
    assert code == 2
    _short(err, "--sampler", "drop --sampler", lines=1)
    code, _, err = _cli(capfd, "sample", "--config", "experiments/configs/ae_digits.py",
                        "--workdir", tmp_path)
    assert code == 2
    _short(err, "cannot draw samples", lines=1)
    code, _, err = _cli(capfd, "sample", "--config", DDPM, "--workdir", tmp_path, "--batch_size=0")
    assert code == 2
    _short(err, "--batch_size must be a positive int", lines=1)


def test_full_disk_during_a_save_is_one_short_error(capfd, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    leaves = {"w": np.arange(4, dtype=np.float32), "step": np.int32(0)}

    async def disk_full(self, value, tspec, ts_context):
        raise OSError(28, "No space left on device")

    def train_until_the_disk_fills(config, workdir, *, progress):
        ckpt = Checkpointer(Path(workdir) / "checkpoints")
        ckpt.save(1, leaves, {"step": 1}, {})
        monkeypatch.setattr(ocp.type_handlers.NumpyHandler, "_open_and_write", disk_full)
        try:
            ckpt.save(2, leaves, {"step": 2}, {})
        finally:
            ckpt.close()

    monkeypatch.setattr(trainer, "train_and_evaluate", train_until_the_disk_fills)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, *TINY)
    assert code == 1
    _short(err, "No space left on device", str(tmp_path / "checkpoints"), "rerun with --verbose", lines=2)


def test_other_errors_are_one_line_and_verbose_shows_the_traceback(capfd, tmp_path, monkeypatch):
    def boom(config, workdir, *, progress):
        raise RuntimeError("something deep failed\nwith a second line\nand a third")

    monkeypatch.setattr(trainer, "train_and_evaluate", boom)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, *TINY)
    assert code == 1
    assert err.splitlines() == ["error: RuntimeError: something deep failed", cli.HINT]

    def stopped(config, workdir, *, progress):
        raise trainer.TrainingStopped("20 consecutive non-finite updates were skipped at step 7")

    monkeypatch.setattr(trainer, "train_and_evaluate", stopped)
    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, *TINY)
    assert code == 1
    _short(err, "error: 20 consecutive non-finite updates", lines=2)

    code, _, err = _cli(capfd, "train", "--config", DDPM, "--workdir", tmp_path, *TINY, "--verbose")
    assert code == 1 and "Traceback" in err and "TrainingStopped" in err
    assert err.splitlines()[-1].startswith("error: 20 consecutive")
    monkeypatch.setenv("DIFFUSION_JAX_VERBOSE", "1")
    code, _, err = _cli(capfd, "evaluate", "--config", DDPM, "--workdir", tmp_path / "empty")
    assert code == 1 and "Traceback" in err and "FileNotFoundError" in err


def test_train_evaluate_sample_with_the_runs_config_json(capfd, tmp_path):
    workdir = tmp_path / "run"
    code, out, err = _cli(capfd, "train", "--config", DDPM, "--workdir", workdir, *TINY,
                          "--config.train.num_steps=2", "--config.train.checkpoint_every=2")
    assert code == 0, err
    assert "bits/dim" in out and "samples:" in out
    config_json = workdir / "config.json"
    code, out, err = _cli(capfd, "evaluate", "--config", config_json, "--workdir", workdir,
                          "--config.eval.batch_size=4", "--progress=false")
    assert code == 0, err
    assert "checkpoint step 2" in out
    report = json.loads(out[out.index("{"):])
    assert report["checkpoint_step"] == 2 and report["num_examples"] == 8 and np.isfinite(report["bpd"])

    # 5 samples in batches of 2: 3 batches, the last partial; batch b uses fold_in(key, b).
    code, out, err = _cli(capfd, "sample", "--config", config_json, "--workdir", workdir,
                          "--num_samples=5", "--batch_size=2", "--seed=3", "--sampler=ddim",
                          "--progress=false")
    assert code == 0, err
    npy = workdir / "samples" / "sample_step2_seed3_ddim5_n5_b2.npy"
    png = npy.with_suffix(".png")
    assert str(npy) in out and str(png) in out and png.is_file()
    samples = np.load(npy)
    assert samples.shape == (5, 8, 8, 1) and np.all(np.isfinite(samples))
    assert np.all(np.abs(samples) <= 1.0)
    assert not list((workdir / "samples").glob(".*partial"))
    config = cli.load_config(str(config_json))
    trained = trainer.load_trained(config, workdir)
    first = trained.kind.sample(config, trained.model, trained.params,
                                jax.random.fold_in(jax.random.key(3), 0), num_samples=2,
                                image_shape=trained.image_shape, sampler="ddim", progress=False)
    np.testing.assert_array_equal(samples[:2], np.asarray(first, np.float32))
    assert not np.array_equal(samples[2:4], samples[:2])


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "diffusion_jax", "train", "--config", DDPM, "--workdir", workdir,
            *TINY, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000"]
    proc = subprocess.Popen([str(a) for a in args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.is_file() and "train/loss" in metrics.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no step logged within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    lines = [line for line in err.splitlines() if line.startswith("stopped by SIGINT at step ")]
    assert lines and "checkpoint saved" in lines[0] and "run the same command again" in lines[0].lower()
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert step >= 1 and (workdir / "checkpoints" / str(step)).is_dir()
