"""The workdir keeps one trustworthy record: one trainer at a time, atomic JSON, each step once.

TensorBoard event files are read back without tensorboard: TFRecord framing (length, crc,
payload, crc) decoded with tensorboardX's own ``Event`` protobuf class.
"""

import json
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax.training.workdir import (
    MetricsLog,
    RunLock,
    WorkdirLocked,
    read_metrics,
    row_kind,
    write_json_atomic,
)

REPO = Path(__file__).resolve().parents[2]
HOLD_LOCK = ("import sys, time\n"
             "from diffusion_jax.training.workdir import RunLock\n"
             "RunLock(sys.argv[1]).acquire()\n"
             "print('locked', flush=True)\n"
             "time.sleep(120)\n")


@pytest.fixture
def lock_holder(tmp_path):
    """A separate process holding the run lock of tmp_path (killed at teardown if still alive)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path), "--holder-flag"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_lock_held_by_a_live_process_refuses_a_second_trainer(tmp_path, lock_holder):
    with pytest.raises(WorkdirLocked) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert f"workdir {tmp_path} is in use by process {lock_holder.pid} on {socket.gethostname()}" in message
    assert "since 20" in message and "--holder-flag" in message and "another --workdir" in message
    assert lock_holder.poll() is None  # refusing did not disturb the holder


def test_lock_of_a_killed_process_does_not_block_the_restart(tmp_path, lock_holder):
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead process's flock
        assert json.loads(lock.path.read_text())["pid"] != lock_holder.pid
    with RunLock(tmp_path):  # released on exit: can be taken again
        pass


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(WorkdirLocked, match=r"in use by process \d+"):
            RunLock(tmp_path).acquire()


def test_write_json_atomic_keeps_the_old_file_when_serializing_fails(tmp_path):
    path = tmp_path / "run_info.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": 2, "b": object()})  # json fails after writing "a"
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]  # no temp file left
    write_json_atomic(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}


def _train(step, loss):
    return {"step": step, "time": 0.1 * step, "train/loss": loss, "train/skipped": 0.0}


def _eval(step, bpd):
    return {"step": step, "eval/vlb_bpd": bpd, "sample_grid": f"samples_{step}.png"}


def test_metrics_log_drops_the_rows_after_the_restored_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [_train(1, 5.0), _train(2, 4.0), _eval(2, 9.0), _train(3, 3.0), _train(4, 2.0),
            _eval(4, 8.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "train/lo')  # cut short
    with MetricsLog(path, resume_step=2) as metrics:
        assert read_metrics(path) == rows[:3]
        metrics.write(_train(3, 3.5))
        metrics.write(_train(4, 2.5))
        metrics.write(_eval(4, 8.5))
    assert read_metrics(path) == rows[:3] + [_train(3, 3.5), _train(4, 2.5), _eval(4, 8.5)]
    assert all(len(json.loads(line)) for line in path.read_text().splitlines())  # every line whole


def test_metrics_log_collapses_repeats_left_by_earlier_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [_train(1, 5.0), _train(2, 4.0), _train(3, 3.0), _train(2, 4.1), _train(3, 3.1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with MetricsLog(path, resume_step=3):
        pass
    assert read_metrics(path) == [_train(1, 5.0), _train(2, 4.1), _train(3, 3.1)]


def test_metrics_log_refuses_a_second_row_of_one_step_and_kind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert row_kind(_train(1, 0.0)) == ("train",) and row_kind(_eval(1, 0.0)) == ("eval",)
    with MetricsLog(path, resume_step=0) as metrics:
        metrics.write(_train(1, 1.0))
        metrics.write(_eval(1, 2.0))  # another kind at the same step is fine
        with pytest.raises(ValueError, match="already holds a train row for step 1"):
            metrics.write(_train(1, 1.5))
    with MetricsLog(path, resume_step=1) as metrics:  # the kept rows count too
        with pytest.raises(ValueError, match="eval row for step 1"):
            metrics.write(_eval(1, 2.5))
    assert read_metrics(path) == [_train(1, 1.0), _eval(1, 2.0)]


def test_metrics_log_disabled_writes_nothing(tmp_path):
    with MetricsLog(tmp_path / "m" / "metrics.jsonl", resume_step=0, enabled=False,
                    tensorboard_dir=tmp_path / "tb") as metrics:
        metrics.write(_train(1, 1.0))
    assert list(tmp_path.iterdir()) == []


def _read_events(path):
    from tensorboardX.proto.event_pb2 import Event

    data, pos, events = Path(path).read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12  # length and its crc
        events.append(Event.FromString(data[pos:pos + length]))
        pos += length + 4  # payload and its crc
    return events


def _tensorboard_scalars(logdir) -> dict:
    """{tag: {step: value}} as TensorBoard shows it: files in name order, and a session start
    at step s (``purge_step``) hides the earlier files' events at steps >= s."""
    scalars = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in _read_events(path):
            if event.session_log.status == event.session_log.START:
                for by_step in scalars.values():
                    for step in [s for s in by_step if s >= event.step]:
                        del by_step[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_every_numeric_metric_goes_to_tensorboard_and_resumes_cleanly(tmp_path):
    path, tb = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
    with MetricsLog(path, resume_step=0, tensorboard_dir=tb) as metrics:
        for step, loss in [(1, 0.75), (2, 0.5), (3, 0.25)]:
            metrics.write(_train(step, loss))
        metrics.write({**_eval(2, 7.125), "eval/per_t": [1.0, 2.0], "eval/n": np.int64(9)})
    assert _tensorboard_scalars(tb) == {
        "train/loss": {1: 0.75, 2: 0.5, 3: 0.25}, "train/skipped": {1: 0.0, 2: 0.0, 3: 0.0},
        "eval/vlb_bpd": {2: 7.125}, "eval/n": {2: 9.0}}  # no step, time, strings or lists
    with MetricsLog(path, resume_step=1, tensorboard_dir=tb) as metrics:  # resumed at step 1
        metrics.write(_train(2, 0.375))
    assert _tensorboard_scalars(tb) == {"train/loss": {1: 0.75, 2: 0.375}, "train/skipped": {1: 0.0, 2: 0.0},
                                        "eval/vlb_bpd": {}, "eval/n": {}}
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
