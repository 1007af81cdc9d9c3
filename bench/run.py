"""``make bench``: train-step, sampling, ELBO, FLOP/s and memory benchmarks of diffusion_jax on CPU.

Usage (from the repository root):

    .venv/bin/python bench/run.py                 # full bench -> bench/results.{json,md}
    .venv/bin/python bench/run.py --quick         # tiny sizes, < 1 min -> bench/results_quick.*
    .venv/bin/python bench/run.py --skip-variants # without the "what moves the number" section
    .venv/bin/python bench/run.py --worker train --devices 2 --mode sharding   # one measurement

Every measurement runs in its own worker subprocess (this same script with ``--worker``) because
XLA flags, including the forced host device count, are read once when JAX starts. A worker sets
``XLA_FLAGS`` itself from its arguments (the inherited value is replaced, so runs are
reproducible), prints one ``BENCH_RESULT {json}`` line per measurement and exits. In the full
bench each measurement has its own process, so its peak RSS is its own; ``--quick`` shares one
process between measurements whose flags differ only in the device count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "BENCH_RESULT "

# Sends convolutions and dots to XLA's multi-threaded Eigen path instead of single-threaded
# YNNPACK fusions (PLATFORM.md: the biggest single lever on this CPU). On for every worker
# unless --no-ynn.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"

# --quick only: LLVM -O0 cuts XLA compile time ~2.5× (the smoke test's numbers mean nothing).
QUICK_FLAG = "--xla_backend_optimization_level=0"

BENCH_SHAPE = (28, 28, 1)
DIGITS_SHAPE = (8, 8, 1)

SIZES = {
    "full": {
        "train": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=64, steps=5, warmup=1),
        "sample": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=16, T=1000, steps=100,
                       reps=3),
        "elbo": {
            "benchmark": dict(net="benchmark", image_shape=BENCH_SHAPE, batch=16, T=1000,
                              T_timed=101, chunks=(25, 50), reps=2, loop_reps=2),
            # The small-network target: digits as flat 64-vectors (an MLP's natural layout) ...
            "mlp": dict(net="mlp", image_shape=(64,), batch=16, T=1000, T_timed=1000,
                        chunks=(250, 1000), reps=9, loop_reps=5, floor_parts=True),
            "mlp32": dict(net="mlp32", image_shape=(64,), batch=16, T=1000, T_timed=1000,
                          chunks=(250, 1000), reps=9, loop_reps=5, floor_parts=True),
            # ... and the same network on 8×8×1 images: XLA CPU elementwise ops are far slower
            # on arrays whose minor dimension is 1.
            "mlp_8x8x1": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=16, T=1000, T_timed=1000,
                              chunks=(1000,), reps=3, loop_reps=3),
            "digits": dict(net="digits", image_shape=DIGITS_SHAPE, batch=16, T=1000,
                           T_timed=201, chunks=(50,), reps=1, loop_reps=1),
        },
        "peak": dict(n=2048, reps=10),
        "train_configs": [("none", 1), ("sharding", 2), ("pmap", 2), ("sharding", 8)],
    },
    # The smoke test: every code path, the small MLP instead of the U-Net (fast compiles).
    "quick": {
        "train": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=8, steps=2, warmup=1),
        "sample": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=2, T=1000, steps=4, reps=2),
        "elbo": {
            "benchmark": dict(net="mlp", image_shape=DIGITS_SHAPE, batch=2, T=1000, T_timed=9,
                              chunks=(8,), reps=1, loop_reps=1),
            "mlp": dict(net="mlp", image_shape=(64,), batch=4, T=50, T_timed=50,
                        chunks=(25, 49), reps=2, loop_reps=2, floor_parts=True),
        },
        "peak": dict(n=256, reps=3),
        "train_configs": [("none", 1), ("sharding", 2), ("pmap", 2)],
    },
}

# Train-step variants of the "what moves the number" section (1 device, YNN flag on, float32,
# no remat unless a field says otherwise). The "extra" ones run only with --all-variants.
VARIANTS = {
    "full": [
        dict(name="no YNN flag (jaxlib default)", ynn=False),
        dict(name="no YNN flag, 2 devices, sharding", ynn=False, devices=2, mode="sharding"),
        dict(name="bf16 compute (UNet dtype=bfloat16)", dtype="bfloat16"),
        dict(name="remat ResBlocks (jax.checkpoint)", remat=True),
        dict(name="opt preset FAST_RUNTIME", optional=True,
             extra="--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME"),
        dict(name="memory-optimized scheduler", optional=True,
             extra="--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"),
    ],
    "quick": [dict(name="no YNN flag (jaxlib default)", ynn=False)],
}


# --------------------------------------------------------------------------- worker side


def xla_flags(job: dict, quick: bool) -> str:
    """The XLA_FLAGS a job runs under: the YNN flag, the forced device count, extra flags."""
    flags = [YNN_FLAG] if job.get("ynn", True) else []
    if quick:
        flags.append(QUICK_FLAG)
    if job.get("devices", 1) > 1:
        flags.append(f"--xla_force_host_platform_device_count={job['devices']}")
    flags += job.get("extra", "").split()
    return " ".join(flags)


def run_worker(jobs: list[dict], quick: bool) -> None:
    """Runs ``jobs`` (which share their XLA flags) in this process, one JSON line each."""
    flags = xla_flags(max(jobs, key=lambda j: j.get("devices", 1)), quick)
    os.environ["XLA_FLAGS"] = flags  # before the first JAX import, or it is ignored
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    import measure

    sizes = SIZES["quick" if quick else "full"]
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        task = job["worker"]
        if task == "train":
            out = measure.train_task(**sizes["train"], devices=job.get("devices", 1),
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
        out.update(task=task, index=index, xla_flags=flags, jax_devices=jax.device_count(),
                   peak_rss_mib=measure.peak_rss_mib(), rss_shared_with_other_jobs=len(jobs) > 1,
                   worker_wall_s=time.perf_counter() - start)
        print(RESULT_PREFIX + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- orchestrator


def build_jobs(quick: bool, variants: bool, all_variants: bool = False) -> list[dict]:
    key = "quick" if quick else "full"
    sizes = SIZES[key]
    jobs = [dict(group="peak", name="matmul peak, YNN flag", worker="peak")]
    if not quick:
        jobs.append(dict(group="peak", name="matmul peak, jaxlib default", worker="peak",
                         ynn=False))
    for mode, devices in sizes["train_configs"]:
        jobs.append(dict(group="train", name=f"{mode}, {devices} device{'s' * (devices > 1)}",
                         worker="train", mode=mode, devices=devices))
    jobs.append(dict(group="sample", name="sampling", worker="sample"))
    for net in sizes["elbo"]:
        jobs.append(dict(group="elbo", name=f"elbo {net}", worker="elbo", net=net))
    if variants:
        jobs += [dict(v, group="variant", worker="train") for v in VARIANTS[key]
                 if all_variants or not v.get("optional")]
    return jobs


def group_jobs(jobs: list[dict], quick: bool) -> list[list[dict]]:
    """One process per job (own peak RSS); --quick shares a process between jobs whose flags
    differ at most in the device count, to keep the smoke test short."""
    if not quick:
        return [[job] for job in jobs]
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        groups.setdefault((job.get("ynn", True), job.get("extra", "")), []).append(job)
    return list(groups.values())


def run_group(jobs: list[dict], quick: bool, timeout: float) -> list[dict]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker-jobs", json.dumps(jobs)]
    if quick:
        argv.append("--quick")
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
    for dist in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: bench/; --quick writes results_quick.*)")
    parser.add_argument("--skip-variants", action="store_true",
                        help="leave out the train-step variants section")
    parser.add_argument("--all-variants", action="store_true",
                        help="also the two XLA CPU option variants (~1 min more)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results.md from an existing results.json (no measuring)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per worker")
    parser.add_argument("--worker-jobs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("train", "sample", "elbo", "peak"), default=None,
                        help="run one measurement in this process and print its JSON")
    parser.add_argument("--devices", type=int, default=1, help="--worker: forced host devices")
    parser.add_argument("--mode", choices=("none", "sharding", "pmap"), default="none")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--net", default="benchmark", help="--worker elbo: benchmark, mlp, mlp32, mlp_8x8x1, digits")
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

    import report  # plain Python: the orchestrator never imports JAX

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
    jobs = build_jobs(args.quick, not args.skip_variants, args.all_variants)
    groups = group_jobs(jobs, args.quick)
    done = []
    for i, group in enumerate(groups, 1):
        names = ", ".join(f"{job['group']}: {job.get('name', job['worker'])}" for job in group)
        print(f"[bench {i}/{len(groups)}] {names} ...", file=sys.stderr, flush=True)
        records = run_group(group, args.quick, timeout * len(group))
        for record in records:
            status = "FAILED" if "error" in record else "ok"
            name = record.get("name", record["worker"])
            print(f"    {name}: {status} in {record['wall_s']:.1f} s", file=sys.stderr, flush=True)
        errors = {record["error"] for record in records if "error" in record}
        for error in errors:
            print(error, file=sys.stderr)
        done += records
    total = time.perf_counter() - t0
    meta = {
        "schema_version": 1,
        "mode": "quick" if args.quick else "full",
        "started_utc": started.isoformat(timespec="seconds"),
        "total_runtime_s": total,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "machine": machine_info(),
        "base_xla_flags": YNN_FLAG + (" " + QUICK_FLAG if args.quick else ""),
        "sizes": SIZES["quick" if args.quick else "full"],
    }
    results = report.build_results(meta, done)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(report.markdown(results))
    print(f"wrote {out_dir / (stem + '.json')} and {stem}.md in {total:.0f} s", file=sys.stderr)
    print(report.targets_table(results))  # the headline on stdout; the details are in the .md
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
