"""Faults lose nothing: skipped non-finite updates, corrupt checkpoints, failed saves, reruns."""

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.config_validation import base_config
from diffusion_jax.training import trainer
from diffusion_jax.training.checkpoint import Checkpointer, CheckpointError
from diffusion_jax.training.optim import make_optimizer
from diffusion_jax.training.step import ParallelStep, create_train_state, make_train_step
from tests.training.tiny import tiny_config


def _toy_step():
    """A 2-parameter regression whose loss is NaN whenever the batch's flag says so."""

    def loss_fn(params, batch, keys, train):
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
    real_make_loss = trainer.make_loss

    def poisoned(*args, **kwargs):
        loss_fn = real_make_loss(*args, **kwargs)

        def wrapped(params, batch, keys, train, **kw):
            loss, metrics = loss_fn(params, batch, keys, train, **kw)
            return loss * jnp.nan, metrics

        return wrapped

    monkeypatch.setattr(trainer, "make_loss", poisoned)
    config = tiny_config("ddpm", train__num_steps=10, train__max_consecutive_skips=3,
                         train__eval_every=0)
    with pytest.raises(trainer.TrainingStopped,
                       match=r"3 consecutive non-finite updates were skipped at step 3.*"
                             r"last good checkpoint is step 2"):
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
