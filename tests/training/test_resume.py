"""Checkpoints that survive preemption, through the real CLI in subprocesses.

* SIGKILL between two checkpoints, then the same command again: the final checkpoint equals
  the one of an uninterrupted run bit for bit (parameters, EMA, Adam moments, step, key).
* SIGTERM: the trainer saves, prints how to resume and exits with code 0; the run resumes on
  another device count (8 devices "sharding" -> 1 device "none" -> 8 devices "sharding")
  and ends with the uninterrupted run's parameters up to float32 reduction order.

The subprocesses share a persistent XLA compilation cache, so only the first run of each
device layout pays for compiling.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.training import parallel_tiny as tiny

# With `pytest --dist loadgroup` one worker runs this file, so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("resume")

REPO = Path(__file__).resolve().parents[2]
NUM_STEPS, EVERY = 40, 8
WAIT_S = 180  # generous: the first run compiles, and the 2 cores are shared
OVERRIDES = {
    "model.ch": 8, "model.ch_mult": "(1,)", "model.num_res_blocks": 1,
    "model.attn_resolutions": "()", "model.mid_attention": False, "model.num_groups": 4,
    "diffusion.T": 50, "data.batch_size": 16, "train.num_steps": NUM_STEPS,
    "train.checkpoint_every": EVERY, "train.eval_every": 0, "train.log_every": 1,
    "eval.max_examples": 20, "eval.num_samples": 4, "eval.ddim_steps": 10,
    "eval.fd_samples": 0, "eval.ode_examples": 0,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


class Run:
    """One ``python -m diffusion_jax train`` subprocess writing to ``workdir``."""

    def __init__(self, workdir: Path, cache_dir: Path, *, parallel: str, devices: int):
        self.workdir = Path(workdir)
        self.ckpt_dir = self.workdir / "checkpoints"
        args = [sys.executable, "-m", "diffusion_jax", "train",
                "--config", str(REPO / "experiments/configs/ddpm_digits.py"),
                "--workdir", str(self.workdir), "--progress=false",
                f"--config.train.parallel={parallel}"]
        args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices > 1
                   else "",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir.parent / f"{self.workdir.name}_{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def _fail(self, what: str):
        self.proc.kill()
        self.proc.wait()
        pytest.fail(f"{what}; output:\n{self.output()[-4000:]}")

    def steps(self) -> list[int]:
        """Committed checkpoint steps (orbax renames a finished save to its step number)."""
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.ckpt_dir.iterdir() if p.name.isdigit())

    def logged_steps(self) -> list[int]:
        path = self.workdir / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                continue
        return [r["step"] for r in records if "train/loss" in r]

    def wait_until(self, predicate, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            if self.proc.poll() is not None:
                self._fail(f"the run exited ({self.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                self._fail(f"no {what} after {WAIT_S} s")
            time.sleep(0.02)

    def wait_for_checkpoint_after(self, step: int) -> int:
        self.wait_until(lambda: any(s > step for s in self.steps()), f"checkpoint after {step}")
        return min(s for s in self.steps() if s > step)

    def signal(self, sig) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self._fail(f"the run did not exit within {WAIT_S} s of {sig!r}")
        finally:
            self._log.close()

    def finish_training(self) -> None:
        """Waits for the last checkpoint, then kills the run (the final evaluation is not tested
        here)."""
        self.wait_for_checkpoint_after(NUM_STEPS - 1)
        self.signal(signal.SIGKILL)


def restore(workdir: Path, step: int):
    manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints",
                                    item_names=("state", "data", "meta"))
    try:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    finally:
        manager.close()
    return tiny.flat(out["state"]), out["data"]


def losses_by_step(workdir: Path) -> dict[int, float]:
    """The logged training loss of every step."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r:
            out[r["step"]] = r["train/loss"]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run = Run(workdir, cache_dir, parallel="none", devices=1)
    run.finish_training()
    state, data = restore(workdir, NUM_STEPS)
    assert data["step"] == NUM_STEPS and int(state["['step']"]) == NUM_STEPS
    return workdir, state


def test_sigkill_between_checkpoints_then_restart_gives_the_uninterrupted_run(
        tmp_path, cache_dir, uninterrupted):
    ref_dir, ref_state = uninterrupted
    workdir = tmp_path / "run"
    first = Run(workdir, cache_dir, parallel="none", devices=1)
    saved = first.wait_for_checkpoint_after(0)
    first.wait_until(lambda: max(first.logged_steps(), default=0) > saved, "a step after it")
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    killed_at = max(first.logged_steps())
    latest = max(first.steps())
    assert latest < killed_at < NUM_STEPS, "the kill must land between two checkpoints"

    kept = [line for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["step"] <= latest]
    again = Run(workdir, cache_dir, parallel="none", devices=1)
    again.finish_training()
    # The restart resumed from the latest checkpoint: the rows up to it are kept as they were,
    # the rows of the steps after it (run again) are replaced, and every step is logged once.
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert lines[:len(kept)] == kept
    assert again.logged_steps() == list(range(1, NUM_STEPS + 1))
    # ... and retraced the uninterrupted run exactly: same losses, same final state, bitwise.
    ref_losses, losses = losses_by_step(ref_dir), losses_by_step(workdir)
    assert losses == ref_losses and sorted(losses) == list(range(1, NUM_STEPS + 1))
    state, data = restore(workdir, NUM_STEPS)
    assert data["step"] == NUM_STEPS
    assert state.keys() == ref_state.keys()
    for key in ref_state:
        np.testing.assert_array_equal(state[key], ref_state[key], err_msg=key)


def test_sigterm_saves_and_exits_cleanly_and_resumes_on_another_device_count(
        tmp_path, cache_dir, uninterrupted):
    _, ref_state = uninterrupted
    workdir = tmp_path / "run"
    stops = []
    for parallel, devices in (("sharding", 8), ("none", 1)):
        run = Run(workdir, cache_dir, parallel=parallel, devices=devices)
        previous = stops[-1] if stops else 0
        saved = run.wait_for_checkpoint_after(previous)
        # Signal once the loop is past that checkpoint (the handler is installed by then).
        run.wait_until(lambda run=run, saved=saved: max(run.logged_steps(), default=0) > saved,
                       "a step after the checkpoint")
        assert run.signal(signal.SIGTERM) == 143, run.output()[-4000:]
        out = run.output()
        assert "stopped by SIGTERM at step" in out, out[-4000:]
        step = int(out.split("stopped by SIGTERM at step")[1].split(";")[0])
        assert max(run.steps()) == step and previous < step < NUM_STEPS
        if stops:  # the 1-device run resumed where the 8-device run stopped
            logged = run.logged_steps()
            assert logged[logged.index(previous) + 1] == previous + 1
        stops.append(step)

    last = Run(workdir, cache_dir, parallel="sharding", devices=8)  # 1 -> 8 devices
    last.finish_training()
    state, data = restore(workdir, NUM_STEPS)
    assert data["step"] == NUM_STEPS
    for key in ref_state:  # counters and keys exactly, floats up to reduction order
        if not np.issubdtype(ref_state[key].dtype, np.floating):
            np.testing.assert_array_equal(state[key], ref_state[key], err_msg=key)
    assert tiny.max_rel_diff(state, ref_state) <= 1e-5
