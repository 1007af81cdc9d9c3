"""Runs every experiment in turn (``make experiments``) and writes an index of their results.

    python -m experiments.run_all [--quick] [--only chain_variance,elbo_estimators] [--skip ...]

Each experiment writes ``experiments/results/<name>/results.md`` (figures, tables, the command,
seed and wall time); this writes ``experiments/results/README.md`` with one line per experiment.
Flags ``--quick``, ``--seed``, ``--progress`` and ``--retrain`` are passed on; with ``--out_dir D``
experiment <name> writes to ``D/<name>`` and trains in ``D/runs/<name>``. Measured on a shared
2-core CPU, the full suite takes about 35–45 minutes (see the index for the times of the last run).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

from experiments import (
    chain_variance,
    common,
    ddpm_objectives,
    elbo_estimators,
    latent_spaces,
    posterior_collapse,
    sampler_nfe,
    vdm_schedules,
)

# Cheap first, so a failure in a long one does not hide the quick results.
EXPERIMENTS = {
    "chain_variance": (chain_variance, "2. The iterated chain's variance: b = √(1−α), not 1 − α"),
    "latent_spaces": (latent_spaces, "1. AE vs VAE latent spaces"),
    "posterior_collapse": (posterior_collapse, "4. ELBO gap (IWAE) and posterior collapse"),
    "elbo_estimators": (elbo_estimators, "3. Three ways to write the diffusion ELBO"),
    "ddpm_objectives": (ddpm_objectives, "5. DDPM on digits: L_simple vs the full ELBO"),
    "vdm_schedules": (vdm_schedules, "6. VDM on digits: fixed vs learned schedule, L_T vs T"),
    # Samples the run of `make train` (runs/ddpm_digits); trains nothing.
    "sampler_nfe": (sampler_nfe, "7. Samplers against NFE: FD-digits and time per sample"),
}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.run_all", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", default=None,
                   help="root of the results (default experiments/results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--only", default="", help="comma-separated experiment names")
    p.add_argument("--skip", default="", help="comma-separated experiment names")
    p.add_argument("--keep_going", action=argparse.BooleanOptionalAction, default=True,
                   help="run the remaining experiments when one fails")
    args = p.parse_args(argv)
    for flag in ("only", "skip"):
        names = [n for n in getattr(args, flag).split(",") if n]
        unknown = sorted(set(names) - set(EXPERIMENTS))
        if unknown:
            p.error(f"--{flag}: unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
        setattr(args, flag, names)
    return args


def experiment_argv(name: str, args) -> list[str]:
    argv = ["--seed", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    if not args.progress:
        argv.append("--no-progress")
    if args.retrain:
        argv.append("--retrain")
    if args.out_dir:
        root = Path(args.out_dir)
        argv += ["--out_dir", str(root / name)]
        if name != "sampler_nfe":  # it samples the run of `make train` (its own --run_dir default)
            argv += ["--run_dir", str(root / "runs" / name)]
    return argv


def main(argv=None) -> dict:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    names = [n for n in (args.only or EXPERIMENTS) if n not in args.skip]
    root = Path(args.out_dir) if args.out_dir else common.RESULTS_ROOT
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {}
    for name in names:
        module, title = EXPERIMENTS[name]
        sub_argv = experiment_argv(name, args)
        print(f"\n=== {title}: python -m experiments.{name} {shlex.join(sub_argv)}", flush=True)
        t0 = time.time()
        try:
            data = module.main(sub_argv)
            results[name] = {"ok": True, "seconds": time.time() - t0, "command": data["command"]}
        except Exception as e:  # report and continue: one failure should not lose the rest
            traceback.print_exc()
            results[name] = {"ok": False, "seconds": time.time() - t0, "error": repr(e),
                             "command": f"python -m experiments.{name} {shlex.join(sub_argv)}"}
            if not args.keep_going:
                break
    total = time.time() - start
    lines = ["# Experiment results", "",
             f"Produced by `{shlex.join(['python', '-m', 'experiments.run_all', *(argv or [])])}` "
             f"in {total / 60:.1f} min (seed {args.seed}"
             f"{', QUICK settings' if args.quick else ''}; git {common.git_commit()}).", "",
             "| experiment | status | wall time | command | report |", "|---|---|---|---|---|"]
    for name, r in results.items():
        title = EXPERIMENTS[name][1]
        status = "ok" if r["ok"] else f"FAILED: {r['error'][:80]}"
        lines.append(f"| {title} | {status} | {r['seconds'] / 60:.1f} min | `{r['command']}` | "
                     f"[{name}/results.md]({name}/results.md) |")
    index = root / "README.md"
    if not args.only and not args.skip:
        index.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {index}")
    print(f"total {total / 60:.1f} min")
    failed = [n for n, r in results.items() if not r["ok"]]
    if failed:
        raise SystemExit(f"failed: {failed}")
    return {"total_seconds": total, "results": results}


if __name__ == "__main__":
    main()
