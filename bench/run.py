"""``make bench``: train-step, sampling, ELBO, FLOP/s and memory benchmarks of diffusion_jax on CPU.

Usage (from the repository root):

    .venv/bin/python bench/run.py                 # full bench -> bench/results.{json,md}
    .venv/bin/python bench/run.py --quick         # tiny sizes, < 1 min -> bench/results_quick.*
    .venv/bin/python bench/run.py --skip-variants # without the "what moves the number" section
    .venv/bin/python bench/run.py --worker train --devices 2 --mode sharding   # one measurement
    .venv/bin/python bench/run.py --worker torch_train --net digits             # one peer measurement
    .venv/bin/python bench/run.py --peer off      # without the PyTorch peer (ratios "unavailable")

Every measurement runs in its own worker subprocess (this same script with ``--worker``) because
XLA flags, including the forced host device count, are read once when JAX starts. A worker sets
``XLA_FLAGS`` itself from its arguments (the inherited value is replaced, so runs are
reproducible), prints one ``BENCH_RESULT {json}`` line per measurement and exits. In the full
bench each measurement has its own process, so its peak RSS is its own; ``--quick`` shares one
process between measurements whose flags differ only in the device count.

The peer (``--peer auto``, the default, when torch and diffusers are installed: ``pip install -e
'.[bench-peer]'``): PyTorch + diffusers ``UNet2DModel``s of the same networks (``peer_torch.py``),
measured in the same run in their own worker processes (``--worker torch_train``/``torch_sample``;
they import torch, never jax), alternating with ours in rounds: the digits train step ours,
torch, ours, torch, ...; the benchmark train step (1 device, 2-device sharding) and torch
likewise, each measurement in one long-lived worker that runs one timed repetition per round
when told (``run_paced``); sampling ours then torch. Every ratio to the peer is ours ÷ the peer's
median over the rounds of this run.
Without the peer (not installed, or ``--peer off``) those ratios are reported as unavailable and
the bench still succeeds. This orchestrator imports neither jax nor torch.

Platform: a worker decides before JAX starts whether it runs on a GPU (``detect_platform``:
``JAX_PLATFORMS``, else an installed jax CUDA plugin and an NVIDIA GPU listed by ``nvidia-smi``);
the CPU-only XLA flags (the YNN flag, the forced host device count, ``--xla_cpu_*``) are set only
on CPU, and on a GPU the measurements that need them are skipped with the reason stated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "BENCH_RESULT "
# The paced worker's lines (``StdinPace``): ready for a timed repetition / done with it.
PACE_READY = "BENCH_PACE ready"
PACE_DONE = "BENCH_PACE done"
# Seconds between one worker's repetition and the next worker's (lets the last one's threads
# go idle: torch's OpenMP workers spin for a while after a parallel region).
PACE_GAP_S = 0.2

# Sends convolutions and dots to XLA's multi-threaded Eigen path instead of single-threaded
# YNNPACK fusions (PLATFORM.md: the biggest single lever on this CPU). On for every worker
# unless --no-ynn.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"

# --quick only: LLVM -O0 cuts XLA compile time ~2.5× (the smoke test's numbers mean nothing).
QUICK_FLAG = "--xla_backend_optimization_level=0"

BENCH_SHAPE = (28, 28, 1)
DIGITS_SHAPE = (8, 8, 1)
DIGITS_CONFIG = "experiments/configs/ddpm_digits.py"  # what `make train` runs

PEER_INSTALL = "pip install -e '.[bench-peer]'"
PEER_MISSING = f"unavailable (install the peer: `{PEER_INSTALL}`)"
PEER_OFF = "unavailable (not measured: --peer off)"
PEER_FAILED = "unavailable (the peer's measurement failed in this run: see the failures)"
GPU_SKIP_DEVICES = ("skipped on {platform}: forcing N host devices "
                    "(--xla_force_host_platform_device_count) is a CPU-only setting")
GPU_SKIP_FLAGS = "skipped on {platform}: a CPU-only XLA flag variant"

SIZES = {
    "full": {
        # Rounds of the alternating comparisons (ours, peer, ours, peer, ...): one round = one
        # timed repetition of each long-lived worker of the group (``run_paced``).
        "rounds": 8,
        # The digits train step of `make train` (built from DIGITS_CONFIG), ~0.06 s per step:
        # repetitions of 40 steps after 10 warm-up steps (one per round; 3 for a lone worker).
        "digits": dict(config=DIGITS_CONFIG, steps=40, reps=3, warmup=10),
        # The benchmark U-Net, ~0.9 s per step: repetitions of 2 steps (each timed) after 1.
        "train": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=64, steps=2, reps=3,
                      warmup=1),
        "sample": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=16, T=1000, steps=100,
                       reps=3),
        # The peer, timed as our side of each comparison.
        "peer_train": {
            "digits": dict(net="digits", batch=64, steps=40, reps=3, warmup=10),
            "benchmark": dict(net="benchmark", batch=64, steps=2, reps=3, warmup=1),
        },
        "peer_sample": dict(net="benchmark", batch=16, T=1000, steps=100, reps=3),
        "elbo": {
            # Chunk 25 only (chunk 50 was never faster; dropped for the time budget).
            "benchmark": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=16, T=1000,
                              T_timed=101, chunks=(25,), reps=2, loop_reps=2),
            # The small-network target: digits as flat 64-vectors (an MLP's natural layout).
            "mlp": dict(net="mlp", image_shape=(64,), batch=16, T=1000, T_timed=1000,
                        chunks=(250, 1000), reps=9, loop_reps=5, floor_parts=True),
            "mlp32": dict(net="mlp32", image_shape=(64,), batch=16, T=1000, T_timed=1000,
                          chunks=(250, 1000), reps=9, loop_reps=5, floor_parts=True),
            "digits": dict(net="digits", image_shape=DIGITS_SHAPE, batch=16, T=1000,
                           T_timed=201, chunks=(50,), reps=1, loop_reps=1),
        },
        "peak": dict(n=2048, reps=10),
        # Benchmark train-step configurations measured in every round, alternating with the
        # peer; then those measured once, and those measured once only with --all-variants
        # (left out of `make bench` for its time budget: see README).
        "train_configs": [("none", 1), ("sharding", 2)],
        "train_configs_once": [],
        "train_configs_extra": [("pmap", 2), ("sharding", 8)],
    },
    # The smoke test: every code path, the small MLP instead of the U-Net (fast compiles), a
    # tiny U-Net in the digits config, the peer (when on) on the digits network.
    "quick": {
        "rounds": 1,  # one round keeps the smoke test short (aggregation: tests/test_bench_smoke.py)
        "digits": dict(config=DIGITS_CONFIG, steps=2, reps=1, warmup=1,
                       model_overrides=dict(ch=8, ch_mult=(1,), num_groups=2,
                                            mid_attention=False)),
        "train": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=8, steps=2, reps=1, warmup=1),
        "sample": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=2, T=1000, steps=4, reps=2),
        "peer_train": {
            "digits": dict(net="digits", batch=8, steps=2, reps=1, warmup=1),
            "benchmark": dict(net="digits", batch=8, steps=1, reps=2, warmup=0),
        },
        "peer_sample": dict(net="digits", batch=2, T=1000, steps=4, reps=2),
        "elbo": {
            "benchmark": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=2, T=1000, T_timed=9,
                              chunks=(8,), reps=1, loop_reps=1),
            "mlp": dict(net="mlp", image_shape=(64,), batch=4, T=50, T_timed=50,
                        chunks=(25, 49), reps=2, loop_reps=2, floor_parts=True),
        },
        "peak": dict(n=256, reps=3),
        "train_configs": [("none", 1), ("sharding", 2)],
        "train_configs_once": [("pmap", 2)],
        "train_configs_extra": [],
    },
}

# Train-step variants of the "what moves the number" section (1 device, YNN flag on, float32,
# no remat unless a field says otherwise). The "extra" ones run only with --all-variants.
VARIANTS = {
    "full": [
        dict(name="no YNN flag (jaxlib default)", ynn=False),
        dict(name="no YNN flag, 2 devices, sharding", ynn=False, devices=2, mode="sharding",
             optional=True),
        dict(name="bf16 compute (UNet dtype=bfloat16)", dtype="bfloat16"),
        dict(name="remat ResBlocks (jax.checkpoint)", remat=True),
        dict(name="opt preset FAST_RUNTIME", optional=True,
             extra="--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME"),
        dict(name="memory-optimized scheduler", optional=True,
             extra="--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"),
    ],
    "quick": [dict(name="no YNN flag (jaxlib default)", ynn=False)],
}


# --------------------------------------------------------------------------- platform


def _nvidia_gpu_listed() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def detect_platform() -> str:
    """The platform JAX will start on, decided without importing jax: "cpu", "gpu" or another
    accelerator's name. ``JAX_PLATFORMS`` (its first entry) decides when set; otherwise "gpu"
    when a jax CUDA plugin is installed and ``nvidia-smi -L`` lists a GPU, else "cpu"."""
    requested = os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if requested:
        return "gpu" if requested in ("cuda", "gpu", "rocm") else requested
    plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin")
    if any(importlib.util.find_spec(name) for name in plugins) and _nvidia_gpu_listed():
        return "gpu"
    return "cpu"


def peer_installed() -> bool:
    """Whether torch and diffusers can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers"))


def cpu_only_skip(job: dict, platform_name: str) -> str | None:
    """Why ``job`` cannot run on a non-CPU platform (it needs a CPU-only XLA setting), or None."""
    if platform_name == "cpu" or job["worker"].startswith("torch"):
        return None
    if job.get("devices", 1) > 1:
        return GPU_SKIP_DEVICES.format(platform=platform_name)
    if not job.get("ynn", True) or "xla_cpu" in job.get("extra", ""):
        return GPU_SKIP_FLAGS.format(platform=platform_name)
    return None


# --------------------------------------------------------------------------- worker side


def xla_flags(job: dict, quick: bool, platform_name: str = "cpu") -> str:
    """The XLA_FLAGS a job runs under. On CPU: the YNN flag, the quick flag, the forced device
    count, extra flags; elsewhere only the job's extra flags that are not CPU-only."""
    extra = job.get("extra", "").split()
    if platform_name != "cpu":
        return " ".join(f for f in extra if not f.startswith("--xla_cpu"))
    flags = [YNN_FLAG] if job.get("ynn", True) else []
    if quick:
        flags.append(QUICK_FLAG)
    if job.get("devices", 1) > 1:
        flags.append(f"--xla_force_host_platform_device_count={job['devices']}")
    return " ".join(flags + extra)


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _emit(out: dict, job: dict, index: int, jobs: list[dict], start: float, paced: dict) -> None:
    out.update(task=job["worker"], index=index, peak_rss_mib=_peak_rss_mib(),
               rss_shared_with_other_jobs=len(jobs) > 1,
               worker_wall_s=time.perf_counter() - start)
    if paced:
        out["rep_started_unix"] = paced["pace"].started
    print(RESULT_PREFIX + json.dumps(out), flush=True)


class StdinPace:
    """Lets the orchestrator alternate timed repetitions between long-lived worker processes.

    Before each repetition the worker prints ``PACE_READY`` and blocks on stdin until the line
    ``go`` (a blocked worker uses no CPU); after it, it prints ``PACE_DONE``. ``started``: the
    Unix time each repetition began (the worker reports them as ``rep_started_unix``)."""

    def __init__(self) -> None:
        self.started: list[float] = []

    def before(self) -> None:
        print(PACE_READY, flush=True)
        line = sys.stdin.readline()
        if line.strip() != "go":
            raise RuntimeError(f"paced worker: expected 'go' on stdin, got {line!r}")
        self.started.append(time.time())

    def after(self) -> None:
        print(PACE_DONE, flush=True)


def _paced(job: dict) -> dict:
    """A paced job's keyword arguments: its repetitions and the pace (none for a lone job)."""
    if "paced_reps" not in job:
        return {}
    return {"reps": job["paced_reps"], "pace": StdinPace()}


def run_torch_worker(jobs: list[dict], quick: bool) -> None:
    """Runs peer ``jobs`` in this process (torch and diffusers; jax is never imported)."""
    import peer_torch

    sizes = SIZES["quick" if quick else "full"]
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        paced = _paced(job)
        if job["worker"] == "torch_train":
            out = peer_torch.train_task_torch(**{**sizes["peer_train"][job.get("net", "benchmark")],
                                                 **paced})
        elif job["worker"] == "torch_sample":
            out = peer_torch.sample_task_torch(**sizes["peer_sample"])
        else:
            raise ValueError(f"unknown torch worker task {job['worker']!r}")
        _emit(out, job, index, jobs, start, paced)


def run_worker(jobs: list[dict], quick: bool) -> None:
    """Runs ``jobs`` (which share their XLA flags, or are all peer jobs) in this process, one
    JSON line each."""
    if all(job["worker"].startswith("torch") for job in jobs):
        run_torch_worker(jobs, quick)
        return
    platform_name = detect_platform()
    flags = xla_flags(max(jobs, key=lambda j: j.get("devices", 1)), quick, platform_name)
    os.environ["XLA_FLAGS"] = flags  # before the first JAX import, or it is ignored
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    import measure

    sizes = SIZES["quick" if quick else "full"]
    device = jax.devices()[0]
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        task = job["worker"]
        paced = _paced(job)
        if task == "train" and job.get("net") == "digits_main":
            out = measure.train_main_task(**{**sizes["digits"], **paced})
        elif task == "train":
            out = measure.train_task(**{**sizes["train"], **paced},
                                     devices=job.get("devices", 1),
                                     mode=job.get("mode", "none"),
                                     dtype=job.get("dtype", "float32"),
                                     remat=job.get("remat", False))
        elif task == "sample":
            out = measure.sample_task(**sizes["sample"])
        elif task == "elbo":
            out = measure.elbo_task(**sizes["elbo"][job["net"]])
        elif task == "peak":
            out = measure.peak_task(**sizes["peak"])
        else:
            raise ValueError(f"unknown worker task {task!r}")
        out.update(xla_flags=flags, jax_devices=jax.device_count(), platform=jax.default_backend(),
                   platform_detected=platform_name, device_kind=device.device_kind)
        _emit(out, job, index, jobs, start, paced)


# --------------------------------------------------------------------------- orchestrator


def build_jobs(quick: bool, variants: bool, all_variants: bool = False, *, peer: bool = False,
               platform_name: str = "cpu") -> list[dict]:
    """Every measurement of one bench run, in the order they run.

    With ``peer`` the comparisons alternate, ``rounds`` times: the digits train step (ours,
    torch), the benchmark train step (our configs of ``train_configs``, torch); then sampling
    (ours, torch). Each job has ``side`` ("ours" or "peer") and, in the alternating groups,
    ``round`` and ``paced``: the rounds of one measurement are the timed repetitions of one
    long-lived worker, run in the order of this list (``run_paced``). On a non-CPU platform a
    job that needs a CPU-only XLA setting carries ``skip`` (the reason) and is not run.
    """
    key = "quick" if quick else "full"
    sizes = SIZES[key]
    rounds = sizes["rounds"]
    on_cpu = platform_name == "cpu"
    jobs = [dict(group="peak", name="matmul peak, YNN flag" if on_cpu else "matmul peak",
                 worker="peak")]
    if not quick:
        jobs.append(dict(group="peak", name="matmul peak, jaxlib default", worker="peak",
                         ynn=False))
    for r in range(1, rounds + 1):
        jobs.append(dict(group="digits", side="ours", round=r, paced=True, worker="train",
                         net="digits_main", name="digits train step (make train)"))
        if peer:
            jobs.append(dict(group="digits", side="peer", round=r, paced=True,
                             worker="torch_train", net="digits", name="torch digits train step"))
    for r in range(1, rounds + 1):
        for mode, devices in sizes["train_configs"]:
            jobs.append(dict(group="train", side="ours", round=r, alternated=True, paced=True,
                             name=f"{mode}, {devices} device{'s' * (devices > 1)}",
                             worker="train", net="benchmark", mode=mode, devices=devices))
        if peer:
            jobs.append(dict(group="train", side="peer", round=r, paced=True,
                             worker="torch_train", net="benchmark",
                             name="torch benchmark train step"))
    once = sizes["train_configs_once"] + (sizes["train_configs_extra"] if all_variants else [])
    for mode, devices in once:
        jobs.append(dict(group="train", side="ours", round=1, alternated=False,
                         name=f"{mode}, {devices} device{'s' * (devices > 1)}",
                         worker="train", net="benchmark", mode=mode, devices=devices))
    jobs.append(dict(group="sample", side="ours", name="sampling", worker="sample"))
    if peer:
        jobs.append(dict(group="sample", side="peer", name="torch sampling",
                         worker="torch_sample", net="benchmark"))
    for net in sizes["elbo"]:
        jobs.append(dict(group="elbo", name=f"elbo {net}", worker="elbo", net=net))
    if variants:
        jobs += [dict(v, group="variant", worker="train", net="benchmark") for v in VARIANTS[key]
                 if all_variants or not v.get("optional")]
    for job in jobs:
        job.setdefault("side", "ours")
        reason = cpu_only_skip(job, platform_name)
        if reason:
            job["skip"] = reason
    return jobs


def group_jobs(jobs: list[dict], quick: bool) -> list[list[dict]]:
    """The units the orchestrator runs, in the order of their first job.

    The paced jobs of a group (the rounds of an alternating comparison) form one unit, run by
    ``run_paced`` (one process per measurement). Otherwise one process per job (own peak RSS);
    --quick shares a process between jobs whose flags differ at most in the device count (peer
    jobs: one process of their own), to keep the smoke test short."""
    first = {id(job): i for i, job in enumerate(jobs)}
    paced: dict[str, list[dict]] = {}
    for job in jobs:
        if job.get("paced"):
            paced.setdefault(job["group"], []).append(job)
    plain = [job for job in jobs if not job.get("paced")]
    if not quick:
        units = [[job] for job in plain]
    else:
        groups: dict[tuple, list[dict]] = {}
        for job in plain:
            peer = job["worker"].startswith("torch")
            groups.setdefault((peer, job.get("ynn", True), job.get("extra", "")), []).append(job)
        units = list(groups.values())
    return sorted([*paced.values(), *units], key=lambda unit: first[id(unit[0])])


def run_group(jobs: list[dict], quick: bool, timeout: float) -> list[dict]:
    argv = _worker_argv(jobs, quick)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=HERE.parent)
        stdout, error = proc.stdout, None
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        proc, error = None, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - start
    found = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            found[result["index"]] = result
    if error is None and len(found) < len(jobs):
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        error = f"worker exited with {proc.returncode}:\n{tail}"
    records = []
    for i, job in enumerate(jobs):
        if i in found:
            records.append(dict(job, result=found[i], wall_s=found[i]["worker_wall_s"]))
        else:
            records.append(dict(job, error=error, wall_s=wall))
    return records


def _worker_argv(jobs: list[dict], quick: bool) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker-jobs", json.dumps(jobs)]
    return argv + ["--quick"] if quick else argv


def run_paced(jobs: list[dict], quick: bool, timeout: float) -> list[dict]:
    """The rounds of an alternating comparison, as repetitions of long-lived workers.

    ``jobs`` (one per round and measurement, in the order they should run) map to one worker
    process per measurement (side and name), asked for as many timed repetitions as it has
    rounds. The workers are started one after the other, each set up (compiled, warmed up)
    while the others wait, then told in the order of ``jobs`` to run one repetition each
    (``StdinPace``), ``PACE_GAP_S`` apart: a slow spell of the machine hits the rounds of
    every side alike instead of one side's whole process. Each job's record holds its worker's
    result with that repetition's step time (``rep_step_s[k]``) as the round's."""
    import tempfile
    import threading

    workers: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        workers.setdefault((job["side"], job["name"]), []).append(i)
    procs, logs, results, errors, ready = {}, {}, {}, {}, {}
    timed_out = threading.Event()

    def kill_all():
        timed_out.set()
        for proc in procs.values():
            proc.kill()

    def fail(key, what):
        proc = procs[key]
        proc.kill()
        proc.wait()
        logs[key].seek(0)
        tail = "\n".join(logs[key].read().strip().splitlines()[-15:])
        errors[key] = (f"timed out after {timeout:.0f} s" if timed_out.is_set()
                       else f"paced worker {what} (exit {proc.returncode}):\n{tail}")

    def read_until(key, marker) -> bool:
        for line in procs[key].stdout:
            if line.startswith(RESULT_PREFIX):
                results[key] = json.loads(line[len(RESULT_PREFIX):])
            if line.strip() == marker:
                return True
        return False

    watchdog = threading.Timer(timeout, kill_all)
    watchdog.start()
    start = time.perf_counter()
    try:
        for key, indices in workers.items():
            job = dict(jobs[indices[0]], paced_reps=len(indices))
            logs[key] = tempfile.TemporaryFile("w+")  # stderr: a file, never a full pipe
            procs[key] = subprocess.Popen(_worker_argv([job], quick), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=logs[key], text=True,
                                          cwd=HERE.parent, bufsize=1)
            ready[key] = read_until(key, PACE_READY)
            if not ready[key]:
                fail(key, "failed during its set-up")
        for job in jobs:
            key = (job["side"], job["name"])
            if key in errors:
                continue
            if not ready[key] and not read_until(key, PACE_READY):
                fail(key, f"stopped before round {job.get('round')}")
                continue
            procs[key].stdin.write("go\n")
            procs[key].stdin.flush()
            ready[key] = False
            if not read_until(key, PACE_DONE):
                fail(key, f"failed in round {job.get('round')}")
                continue
            time.sleep(PACE_GAP_S)
        for key, proc in procs.items():
            if key in errors:
                continue
            proc.stdin.close()
            read_until(key, None)  # to the end: the result line
            if proc.wait() != 0 or key not in results:
                fail(key, "exited without its result")
    finally:
        watchdog.cancel()
        for key, proc in procs.items():
            if proc.poll() is None:
                proc.kill()
            logs[key].close()
    wall = time.perf_counter() - start
    records = [None] * len(jobs)
    for key, indices in workers.items():
        for k, i in enumerate(indices):
            if key in errors:
                records[i] = dict(jobs[i], error=errors[key], wall_s=wall / len(jobs))
                continue
            result = results[key]
            step_s = result["rep_step_s"][k]
            records[i] = dict(jobs[i], wall_s=result["worker_wall_s"] / len(indices), result=dict(
                result, step_s_median=step_s, step_s_all=result["rep_step_s_all"][k],
                steps_per_s=1.0 / step_s, images_per_s=result["batch"] / step_s, rep=k + 1,
                started_unix=result["rep_started_unix"][k]))
    return records


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def peer_status(choice: str) -> dict:
    """Whether this run measures the peer, and if not, why (the text every peer ratio shows)."""
    if choice == "off":
        return {"status": "off", "measured": False, "reason": PEER_OFF}
    if not peer_installed():
        return {"status": "not installed", "measured": False, "reason": PEER_MISSING}
    return {"status": "measured", "measured": True, "reason": None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: bench/; --quick writes results_quick.*)")
    parser.add_argument("--skip-variants", action="store_true",
                        help="leave out the train-step variants section")
    parser.add_argument("--all-variants", action="store_true",
                        help="also the optional variants (no YNN flag with 2 devices, two XLA CPU "
                             "options) and train configs (pmap 2 devices, sharding 8); ~3 min more")
    parser.add_argument("--peer", choices=("auto", "off"), default="auto",
                        help="the PyTorch + diffusers peer: auto = measure it in this run when "
                             f"torch and diffusers are installed ({PEER_INSTALL}); off = never")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results.md from an existing results.json (no measuring)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per worker")
    parser.add_argument("--worker-jobs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None,
                        choices=("train", "sample", "elbo", "peak", "torch_train", "torch_sample"),
                        help="run one measurement in this process and print its JSON")
    parser.add_argument("--devices", type=int, default=1, help="--worker: forced host devices")
    parser.add_argument("--mode", choices=("none", "sharding", "pmap"), default="none")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--net", default="benchmark",
                        help="--worker train: benchmark or digits_main (the step of make train); "
                             "--worker elbo: benchmark, mlp, mlp32, digits; "
                             "--worker torch_train: benchmark or digits")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--no-ynn", action="store_true", help="--worker: without the YNN flag")
    parser.add_argument("--xla-extra", default="", help="--worker: more XLA flags")
    args = parser.parse_args(argv)
    if args.worker_jobs:
        run_worker(json.loads(args.worker_jobs), args.quick)
        return 0
    if args.worker:
        run_worker([dict(worker=args.worker, devices=args.devices, mode=args.mode,
                         dtype=args.dtype, net=args.net, remat=args.remat,
                         ynn=not args.no_ynn, extra=args.xla_extra)], args.quick)
        return 0

    import report  # plain Python: the orchestrator never imports JAX (nor torch)

    out_dir = args.out or HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "results_quick" if args.quick and args.out is None else "results"
    if args.render_only:
        results = json.loads((out_dir / f"{stem}.json").read_text())
        results["bounds"] = report.arithmetic_bounds(results)  # derived: refreshed with the text
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(report.markdown(results))
        return 0
    timeout = args.timeout or (120.0 if args.quick else 600.0)
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    platform_name = detect_platform()
    peer = peer_status(args.peer)
    jobs = build_jobs(args.quick, not args.skip_variants, args.all_variants,
                      peer=peer["measured"], platform_name=platform_name)
    for order, job in enumerate(jobs):
        job["order"] = order  # the records go back into this order (the report's row order)
    done = [dict(job, skipped=job["skip"], wall_s=0.0) for job in jobs if "skip" in job]
    groups = group_jobs([job for job in jobs if "skip" not in job], args.quick)
    if not peer["measured"]:
        print(f"[bench] PyTorch peer {peer['reason']}", file=sys.stderr, flush=True)
    for i, group in enumerate(groups, 1):
        names = ", ".join(f"{job['group']}: {job.get('name', job['worker'])}"
                          + (f" (round {job['round']})" if "round" in job else "")
                          for job in group)
        if group[0].get("paced"):
            names = ", ".join(dict.fromkeys(job["name"] for job in group))
            rounds = max(job.get("round", 1) for job in group)
            names = (f"{group[0]['group']}: {names}, alternating, "
                     f"{rounds} round{'s' * (rounds > 1)} (one worker each)")
        print(f"[bench {i}/{len(groups)}] {names} ...", file=sys.stderr, flush=True)
        if group[0].get("paced"):
            n_workers = len({(job["side"], job["name"]) for job in group})
            records = run_paced(group, args.quick, timeout * n_workers)
        else:
            records = run_group(group, args.quick, timeout * len(group))
        walls: dict[str, list] = {}
        for record in records:  # one line per measurement (paced: its rounds together)
            name = record.get("name", record["worker"])
            walls.setdefault(name, []).append(record)
        for name, recs in walls.items():
            status = "FAILED" if any("error" in r for r in recs) else "ok"
            wall = sum(r["wall_s"] for r in recs)
            print(f"    {name}: {status} in {wall:.1f} s", file=sys.stderr, flush=True)
        errors = {record["error"] for record in records if "error" in record}
        for error in errors:
            print(error, file=sys.stderr)
        done += records
    done.sort(key=lambda record: record["order"])
    total = time.perf_counter() - t0
    sizes = SIZES["quick" if args.quick else "full"]
    meta = {
        "schema_version": 2,
        "mode": "quick" if args.quick else "full",
        "started_utc": started.isoformat(timespec="seconds"),
        "total_runtime_s": total,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "machine": machine_info(),
        "platform_detected": platform_name,
        "base_xla_flags": (YNN_FLAG + (" " + QUICK_FLAG if args.quick else "")
                           if platform_name == "cpu" else ""),
        "peer_choice": args.peer,
        "peer_status": dict(peer, rounds=sizes["rounds"] if peer["measured"] else 0,
                            install=PEER_INSTALL),
        "sizes": sizes,
    }
    results = report.build_results(meta, done)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(report.markdown(results))
    print(f"wrote {out_dir / (stem + '.json')} and {stem}.md in {total:.0f} s", file=sys.stderr)
    print(report.targets_table(results))  # the headline on stdout; the details are in the .md
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
