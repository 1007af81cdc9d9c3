"""Faults lose nothing: skipped non-finite updates, corrupt checkpoints, failed saves, reruns."""

import gc
import json
import logging
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.training import trainer
from diffusion_jax.training.checkpoint import Checkpointer, CheckpointError
from diffusion_jax.training.config import base_config
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step
from tests.training.tiny import tiny_config


def _toy_step():
    """A 2-parameter regression whose loss is NaN whenever the batch's flag says so."""

    def loss_fn(params, batch, keys, *, train, step):
        err = batch["image"][:, 0] * params["w"] + params["b"] - 1.0
        loss = jnp.mean(err**2) * jnp.where(batch["label"][0] > 0, jnp.nan, 1.0)
        return loss, {"loss": loss}

    cfg = base_config("ddpm").optim
    optimizer = make_optimizer(cfg, 100)
    params = {"w": jnp.float32(0.5), "b": jnp.float32(0.0)}
    state = create_train_state(params, optimizer, jax.random.key(0))
    factory = lambda axis_name: make_train_step(loss_fn, optimizer, ema_decay=0.9, global_batch=4,
                                                axis_name=axis_name)
    return ParallelStep(factory, mode="none", global_batch=4), state


def test_non_finite_update_is_skipped_and_counted():
    step, state = _toy_step()
    state = step.put_state(state)
    good = {"image": np.ones((4, 1), np.float32), "label": np.zeros(4, np.int32)}
    bad = dict(good, label=np.ones(4, np.int32))
    state, m = step(state, good)
    before = jax.device_get(state)
    for expected in (1, 2):
        state, m = step(state, bad)
        assert int(m["skipped"]) == 1 and int(m["consecutive_skips"]) == expected
    after = jax.device_get(state)
    for a, b in zip(jax.tree.leaves(before.params) + jax.tree.leaves(before.ema_params),
                    jax.tree.leaves(after.params) + jax.tree.leaves(after.ema_params), strict=True):
        np.testing.assert_array_equal(a, b)  # parameters and EMA untouched
    state, m = step(state, good)
    assert int(m["skipped"]) == 0 and int(m["consecutive_skips"]) == 0


def test_run_stops_after_consecutive_skips(tmp_path, monkeypatch):
    from diffusion_jax.training.kinds import ddpm

    real_make_loss = ddpm.make_loss

    def poisoned(*args, **kwargs):
        loss_fn = real_make_loss(*args, **kwargs)

        def wrapped(params, batch, keys, **kw):
            loss, metrics = loss_fn(params, batch, keys, **kw)
            return loss * jnp.nan, metrics

        return wrapped

    monkeypatch.setattr(ddpm, "make_loss", poisoned)
    config = tiny_config("ddpm", train__num_steps=10, train__max_consecutive_skips=3,
                         train__eval_every=0)
    with pytest.raises(trainer.TrainingStopped,
                       match=r"3 consecutive non-finite updates were skipped at step 3.*"
                             r"last checkpoint saved without skipped updates is none"):
        trainer.train_and_evaluate(config, tmp_path, progress=False)


def _toy_state(value):
    return {"params": {"w": np.full((3,), value, np.float32)}, "step": np.int32(value)}


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=3)
    for step in (1, 2):
        ckpt.save(step, _toy_state(step), {"step": step}, {"config_fingerprint": "x"})
    # Truncate every data file of the newest checkpoint, as a crash mid-write would.
    newest = tmp_path / "ckpt" / "2"
    truncated = 0
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in f.parts:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
            truncated += 1
    assert truncated
    with caplog.at_level(logging.WARNING):
        step, state, data, meta = ckpt.restore_latest(_toy_state(0))
    assert step == 1 and data == {"step": 1}
    np.testing.assert_array_equal(state["params"]["w"], np.full((3,), 1.0, np.float32))
    assert "checkpoint 2" in caplog.text and "unreadable" in caplog.text


def test_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, _toy_state(1), {"step": 1}, {})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"saving checkpoint 2 .*No space left.*checkpoint 1 is intact"):
        ckpt.save(2, _toy_state(2), {"step": 2}, {})
    monkeypatch.undo()
    step, state, _, _ = ckpt.restore_latest(_toy_state(0))
    assert step == 1


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        Checkpointer(blocker / "checkpoints")


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    config = tiny_config("ddpm", train__num_steps=3, train__eval_every=0, eval__max_examples=8)
    runs = []
    for name in ("a", "b"):
        trainer.train_and_evaluate(config, tmp_path / name, progress=False)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs.append([{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines])
        info = json.loads((tmp_path / name / "run_info.json").read_text())
        assert {"git_commit", "versions", "device_count", "config_fingerprint"} <= set(info)
    assert runs[0] == runs[1]
    assert json.loads(Path(tmp_path / "a" / "summary.json").read_text())["eval"]["bpd"] == \
        json.loads(Path(tmp_path / "b" / "summary.json").read_text())["eval"]["bpd"]


def _garble_newest(directory, step):
    garbled = 0
    for f in (directory / str(step)).rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in f.parts:
            f.write_bytes(b"\x00garbage" * 4)
            garbled += 1
    assert garbled


def test_corrupt_checkpoint_is_quarantined_and_its_step_can_be_saved_again(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path / "checkpoints", max_to_keep=3)
    for step in (1, 2):
        ckpt.save(step, _toy_state(step), {"step": step}, {})
    _garble_newest(ckpt.directory, 2)
    files_before = sorted(p.relative_to(ckpt.directory / "2") for p in (ckpt.directory / "2").rglob("*"))
    with caplog.at_level(logging.WARNING):
        step, _, data, _ = ckpt.restore_latest(_toy_state(0))
    assert step == 1 and data == {"step": 1}
    [(moved_step, moved_to)] = ckpt.quarantined
    assert moved_step == 2 and moved_to.parent == tmp_path / "checkpoints_quarantine"
    assert moved_to.name.startswith("2-") and moved_to.name.endswith("Z")
    assert sorted(p.relative_to(moved_to) for p in moved_to.rglob("*")) == files_before  # kept whole
    assert not (ckpt.directory / "2").exists() and ckpt.all_steps() == [1]
    assert str(ckpt.directory / "2") in caplog.text and str(moved_to) in caplog.text
    ckpt.save(2, _toy_state(7), {"step": 2}, {})  # was StepAlreadyExistsError on every rerun
    step, state, _, _ = ckpt.restore_latest(_toy_state(0))
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], np.full((3,), 7.0, np.float32))
    ckpt.close()
    rerun = Checkpointer(tmp_path / "checkpoints")  # a new run in the same workdir agrees
    assert rerun.restore_latest(_toy_state(0))[0] == 2 and rerun.quarantined == []
    rerun.close()


def test_nothing_is_quarantined_when_no_checkpoint_can_be_read(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    for step in (1, 2):
        ckpt.save(step, _toy_state(step), {"step": step}, {})
    other_model = {"params": {"v": np.zeros((3,), np.float32)}, "step": np.int32(0)}  # other tree
    with pytest.raises(CheckpointError, match=r"no readable checkpoint .*tried steps \[1, 2\]"):
        ckpt.restore_latest(other_model)
    assert ckpt.quarantined == [] and ckpt.all_steps() == [1, 2]  # perhaps the config, not the files
    assert not (tmp_path / "checkpoints_quarantine").exists()
    ckpt.close()


def _assert_one_short_error(excinfo, capfd, caplog, directory):
    message = str(excinfo.value)
    assert len(message.splitlines()) == 1 and len(message) < 400, message
    assert f"saving checkpoint 2 to {directory} failed: No space left on device" in message
    assert "free space there" in message and "checkpoint 1 is intact" in message
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__  # no chained traceback
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage()[:200] for r in noisy]
    err = capfd.readouterr().err
    assert len(err.splitlines()) < 5, err[:2000]
    assert not list(directory.glob("2.orbax-checkpoint-tmp*"))  # its space is given back


def _many_leaves(value, n):
    rng = np.random.default_rng(value)
    return {"params": {f"w{i}": rng.standard_normal(n).astype(np.float32) for i in range(20)},
            "step": np.int32(value)}


def test_full_disk_is_one_short_error_without_orbax_noise(tmp_path, monkeypatch, capfd, caplog):
    import orbax.checkpoint as ocp

    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, _many_leaves(1, 4), {"step": 1}, {})

    async def disk_full(self, value, tspec, ts_context):
        raise OSError(28, "No space left on device")

    # Fail where tensorstore writes, inside orbax's background threads: orbax then logs one
    # traceback per failing thread, as on a real full disk.
    monkeypatch.setattr(ocp.type_handlers.NumpyHandler, "_open_and_write", disk_full)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as excinfo:
        ckpt.save(2, _many_leaves(2, 4), {"step": 2}, {})
    _assert_one_short_error(excinfo, capfd, caplog, ckpt.directory)
    monkeypatch.undo()
    ckpt.save(2, _many_leaves(2, 4), {"step": 2}, {})  # space freed: the same step saves
    assert ckpt.restore_latest(_many_leaves(0, 4))[0] == 2
    ckpt.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # stray-write reports
def test_full_tmpfs_is_one_short_error_without_orbax_noise(tmp_path, capfd, caplog):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        ckpt = Checkpointer(disk / "ckpt")
        ckpt.save(1, _many_leaves(1, 4), {"step": 1}, {})
        capfd.readouterr()
        with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as excinfo:
            ckpt.save(2, _many_leaves(2, 4000), {"step": 2}, {})  # 320 kB of random floats
        gc.collect()  # orbax's abandoned write tasks report their errors when collected
        _assert_one_short_error(excinfo, capfd, caplog, ckpt.directory)
        ckpt.close()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
