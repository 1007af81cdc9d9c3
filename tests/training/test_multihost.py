"""Multi-host: ``jax.distributed`` set-up, and two local processes that train like one.

The two-process test starts ``parallel_tiny.py`` twice on loopback (coordinator 127.0.0.1 on a
free port, gloo CPU collectives, 2 forced CPU devices per process: 4 global devices). Each
process reads only its half of every global batch of 16; the mesh's jit step assembles the
global batch with ``jax.make_array_from_process_local_data``. The final state must match a
single-process, single-device run of the same global batches.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from diffusion_jax.training import distributed
from diffusion_jax.training.distributed import DistributedSettings, resolve_settings
from tests.training import parallel_tiny as tiny

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("parallel_tiny.py")
NUM_STEPS, GLOBAL_BATCH, TIMEOUT_S = 20, 16, 120
ENV = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


def test_nothing_set_is_a_single_process_run():
    assert resolve_settings(environ={}) is None
    assert resolve_settings(num_processes=1, environ={}) is None
    assert resolve_settings(environ={"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None


def test_settings_come_from_the_environment_and_arguments_win():
    assert resolve_settings(environ=ENV) == DistributedSettings("10.0.0.1:1234", 4, 3)
    assert resolve_settings("h:1", 2, 0, environ=ENV) == DistributedSettings("h:1", 2, 0)
    assert resolve_settings(process_id=0, environ=ENV) == DistributedSettings("10.0.0.1:1234", 4, 0)


@pytest.mark.parametrize("kwargs,environ,match", [
    ({"num_processes": 2}, {}, r"coordinator_address \(or JAX_COORDINATOR_ADDRESS\) and "
                               r"process_id \(or JAX_PROCESS_ID\)"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1"}, "needs the number of processes"),
    ({}, dict(ENV, JAX_NUM_PROCESSES="four"), "JAX_NUM_PROCESSES must be an int, got 'four'"),
    ({}, dict(ENV, JAX_PROCESS_ID="4"), r"process_id must be in 0..3, got 4"),
    ({"coordinator_address": "10.0.0.1"}, ENV, "must be 'host:port'"),
    ({"num_processes": 0}, {}, "num_processes must be >= 1"),
    ({"num_processes": 1, "process_id": 2}, {}, "process_id must be 0 with num_processes=1"),
])
def test_half_set_up_runs_are_clear_errors(kwargs, environ, match):
    with pytest.raises(ValueError, match=match):
        resolve_settings(**kwargs, environ=environ)


def test_maybe_initialize_is_a_no_op_for_one_process(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.maybe_initialize() is False
    assert distributed.maybe_initialize_from_config({}) is False
    section = {"coordinator_address": "", "num_processes": 0, "process_id": -1}
    assert distributed.maybe_initialize_from_config(
        ml_collections.ConfigDict({"distributed": section})) is False
    assert jax.process_count() == 1 and distributed.process_shard() == (0, 1)
    assert distributed.is_main_process()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir: Path, num_processes: int) -> list[str]:
    env = dict(os.environ,
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
               JAX_NUM_PROCESSES=str(num_processes),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), str(out_dir), str(NUM_STEPS), str(GLOBAL_BATCH)],
        env=dict(env, JAX_PROCESS_ID=str(i)), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
    deadline = time.monotonic() + TIMEOUT_S
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = "\n".join(f"--- process {i}:\n{(p.communicate()[0] or '')[-3000:]}"
                         for i, p in enumerate(procs))
        pytest.fail(f"the {num_processes} workers did not finish in {TIMEOUT_S} s:\n{logs}")
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{out[-5000:]}"
    return outputs


def test_two_processes_train_like_one_process(tmp_path):
    ref_state, ref_losses = tiny.train_cached("none", 1, NUM_STEPS)
    tiny.save_state(tmp_path / "initial_state.npz", tiny.initial_state(NUM_STEPS))
    _run_workers(tmp_path, 2)

    for i in range(2):
        info = json.loads((tmp_path / f"info_{i}.json").read_text())
        assert info == {"process_index": i, "process_count": 2, "device_count": 4,
                        "local_device_count": 2, "local_batch": GLOBAL_BATCH // 2}
    states = [tiny.load_state(tmp_path / f"state_{i}.npz", NUM_STEPS) for i in range(2)]
    losses = [np.load(tmp_path / f"state_{i}.npz")["__losses__"] for i in range(2)]
    # Both processes hold the same replicated state and saw the same global-batch losses.
    assert tiny.max_rel_diff(states[1], states[0]) == 0.0
    np.testing.assert_array_equal(losses[0], losses[1])
    # ... equal to one process on one device, up to float32 reduction order.
    assert int(states[0].step) == NUM_STEPS
    np.testing.assert_allclose(losses[0], ref_losses, rtol=2e-6, atol=0)
    for name in ("params", "ema_params", "opt_state"):
        assert tiny.max_rel_diff(getattr(states[0], name), getattr(ref_state, name)) <= 1e-5, name
