"""Experiment: which sampler at which NFE — FD-digits and wall-clock per sample against NFE.

The trained DDPM of ``make train`` (``--run_dir``, default ``runs/ddpm_digits``; nothing is
trained here) sampled with five samplers at NFE = 5, 10, 20, 50, 100, 250, 1,000 network
evaluations, ``--num_samples`` digits each, all from the same key (so every sampler starts from
the same x_T ~ N(0, I)); every sampler clips x̂_0 to [−1, 1], as the model kind's ``sample``.

- ancestral: at NFE = T the true ``samplers.ddpm_sample`` (the run's ``diffusion.variance``,
  σ_t² = β_t for ``make train``): the reference. Below T the library has no respaced ancestral
  chain, so it is ``ddim_sample(eta=1.0)`` over the same ``ddim_timesteps(T, NFE)``: with η = 1
  a DDIM step τ_i → τ_{i−1} draws from the posterior q(x_{τ_{i−1}} | x_{τ_i}, x̂_0), i.e. the
  respaced ancestral chain of Nichol & Dhariwal (2021) with the small variance β̃ of each jump
  (η = 1 with NFE = T is ``ddpm_sample(variance="beta_tilde")``). Its variance therefore
  differs from the reference's β_t; the row "ancestral η=1 at T" (on unless ``--no-eta1_at_T``)
  separates that choice from the number of steps.
- DDIM (η = 0) over ``ddim_timesteps(T, NFE)``.
- DPM-Solver++(2M), log-SNR spacing, exactly NFE evaluations.
- SDE-DPM-Solver++(2M) (``sde_dpm_solver_pp_sample``): its stochastic counterpart on the same
  timesteps, which samples the reverse SDE (like the ancestral sampler) rather than the ODE.
- Heun (Karras et al. 2022, ρ = 7): NFE must be odd (2N − 1 for N noise levels), so it runs at
  the nearest odd NFE ≤ the nominal one (5, 9, 19, 49, 99, 249, 999); tables give the NFE used.

Numbers: FD-digits against the 300 test digits ± its bootstrap SE (``quality.fd_digits``; FD
is biased upward at small N, so compare only at this N), precision and recall, and the
wall-clock per sample: one compiled call (compiled ahead of time, so compilation is excluded)
on all N samples as one batch, divided by N. The goal check: the smallest NFE at which each
sampler's FD-digits is within 10 % of (or below) the T-step ancestral FD-digits, and whether
that NFE is ≤ 25.

    python -m experiments.sampler_nfe [--run_dir runs/ddpm_digits] [--num_samples 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax import quality, samplers
from diffusion_jax.data import pipeline
from diffusion_jax.training.config import load_config_json
from experiments import common

NAME = "sampler_nfe"
DEFAULT_RUN_DIR = "runs/ddpm_digits"
NFES = (5, 10, 20, 50, 100, 250, 1000)
SAMPLERS = ("ancestral", "ddim", "dpm_solver++", "heun", "sde_dpm_solver++")
LABELS = {"ancestral": "ancestral (DDPM)", "ddim": "DDIM (η = 0)",
          "dpm_solver++": "DPM-Solver++(2M)", "heun": "Heun (odd NFE)",
          "sde_dpm_solver++": "SDE-DPM-Solver++(2M)",
          "ancestral_eta1": "ancestral η = 1 (β̃) at T"}
QUICK_NFES = (5, 10)
QUICK_SAMPLERS = ("ddim", "heun")  # with the T-step ancestral reference: 5 compilations
TOLERANCE = 0.10  # "within 10 %" of the reference FD-digits
GOAL_NFE = 25


class MissingRun(FileNotFoundError):
    """The trained DDPM workdir does not exist (or holds no config)."""


def _add_args(parser):
    parser.set_defaults(run_dir=DEFAULT_RUN_DIR)
    for action in parser._actions:  # the common flag's help names the common default
        if action.dest == "run_dir":
            action.help = (f"the trained DDPM workdir (default {DEFAULT_RUN_DIR}, the run of "
                           f"`make train`); nothing is trained here")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="samples per (sampler, NFE), > 64 (default 500; --quick 80)")
    parser.add_argument("--nfes", default=None,
                        help="comma-separated nominal NFEs (default 5,10,20,50,100,250,1000; "
                             "values above the run's T are dropped; the T-step ancestral "
                             "reference always runs)")
    parser.add_argument("--samplers", default=None,
                        help=f"comma-separated, from {','.join(SAMPLERS)} (default all; "
                             f"--quick {','.join(QUICK_SAMPLERS)})")
    parser.add_argument("--num_bootstrap", type=int, default=None,
                        help="bootstrap resamples of the FD standard error (default 50; --quick 10)")
    parser.add_argument("--eta1_at_T", action=argparse.BooleanOptionalAction, default=None,
                        help="also run ancestral η = 1 (β̃ variance) at NFE = T (default on; "
                             "off with --quick)")
    parser.add_argument("--rerender", action="store_true",
                        help="rebuild the tables and figure from out_dir/results.json (no sampling)")
    parser.add_argument("--extend", action="store_true",
                        help="sample only the --samplers missing from out_dir/results.json (same "
                             "checkpoint, N, NFEs and key; refused otherwise) and re-render")


def settings(args) -> dict:
    """The grid and sizes, from the flags (``--quick``: tiny settings for the smoke test)."""
    def csv(text, cast):
        return tuple(cast(v) for v in text.split(",") if v.strip())

    nfes = csv(args.nfes, int) if args.nfes else (QUICK_NFES if args.quick else NFES)
    names = csv(args.samplers, str.strip) if args.samplers else (
        QUICK_SAMPLERS if args.quick else SAMPLERS)
    unknown = sorted(set(names) - set(SAMPLERS))
    if unknown:
        raise ValueError(f"--samplers: unknown {unknown}; choose from {list(SAMPLERS)}.")
    if any(n < 1 for n in nfes):
        raise ValueError(f"--nfes must be positive ints, got {nfes}.")
    num_samples = args.num_samples or (80 if args.quick else 500)
    if num_samples <= 64:
        raise ValueError(f"--num_samples must exceed 64 (FD-digits fits a 64-dim Gaussian), "
                         f"got {num_samples}.")
    return {"nfes": tuple(sorted(set(nfes))), "samplers": names, "num_samples": num_samples,
            "num_bootstrap": args.num_bootstrap or (10 if args.quick else 50),
            "eta1_at_T": (not args.quick) if args.eta1_at_T is None else args.eta1_at_T}


def actual_nfe(sampler: str, nominal: int) -> int:
    """The NFE a sampler runs at for a nominal NFE: Heun's nearest odd NFE ≤ nominal."""
    if sampler == "heun" and nominal % 2 == 0:
        return nominal - 1
    return nominal


def load_ddpm_run(run_dir):
    """(config, ``trainer.Trained``) of a finished DDPM digits workdir; MissingRun if absent."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise MissingRun(f"no trained DDPM run in {run_dir} (no config.json): run `make train` "
                         f"first, or pass --run_dir DIR of a finished DDPM run.")
    config = load_config_json(config_path)
    if config.model_kind != "ddpm" or config.data.name != "digits":
        raise ValueError(f"{run_dir} holds a {config.model_kind!r} run on {config.data.name!r}; "
                         f"this experiment needs a DDPM on the digits (`make train`).")
    return config, common.load_run(config, run_dir)


def make_sampler(config, run, sampler: str, nfe: int, shape):
    """jit((params, key) -> x_0 of ``shape``) of ``sampler`` with ``nfe`` network evaluations.

    "ancestral" at nfe = T is ``ddpm_sample`` (the run's variance), below T ``ddim_sample``
    with η = 1; "ancestral_eta1" is η = 1 at any nfe (β̃ of each jump). All clip x̂_0.
    """
    kind, model = run.kind, run.model
    sched = kind.build_schedule(config.diffusion)
    kw = {"prediction": model.prediction, "clip_x0": True}

    def run_sampler(params, key):
        net = kind.network_fn(model, params)
        if sampler == "ancestral" and nfe == sched.T:
            return samplers.ddpm_sample(net, sched, key, shape, variance=config.diffusion.variance,
                                        **kw)
        if sampler in ("ancestral", "ancestral_eta1", "ddim"):
            return samplers.ddim_sample(net, sched, key, shape, num_steps=nfe,
                                        eta=0.0 if sampler == "ddim" else 1.0,
                                        variance_output=model.learned_variance, **kw)
        return kind.NFE_SAMPLER_FNS[sampler](net, sched, key, shape, nfe=nfe,
                                variance_output=model.learned_variance, **kw)

    return jax.jit(run_sampler)


def timed_samples(fn, params, key) -> tuple[np.ndarray, float, float]:
    """(samples, seconds of one compiled call, seconds of compilation): compiled ahead of
    time, so the timed call runs only the sampler (until ``block_until_ready``)."""
    t0 = time.perf_counter()
    compiled = fn.lower(params, key).compile()
    t1 = time.perf_counter()
    x = compiled(params, key)
    x.block_until_ready()
    t2 = time.perf_counter()
    return np.asarray(x), t2 - t1, t1 - t0


def score(x: np.ndarray, *, num_bootstrap: int, seed: int) -> dict:
    """FD-digits ± bootstrap SE, precision, recall against the test split (NaN if not finite)."""
    if not np.all(np.isfinite(x)):
        nan = float("nan")
        return {"fd": nan, "fd_se": nan, "precision": nan, "recall": nan, "finite": False}
    q = quality.fd_digits(x, reference="test", num_bootstrap=num_bootstrap, seed=seed)
    return {"fd": q.fd, "fd_se": q.fd_se, "precision": q.precision, "recall": q.recall,
            "finite": True, "num_reference": q.num_reference}


def goal_check(rows: list[dict], reference_fd: float, samplers_run) -> dict:
    """Per sampler: the smallest NFE used whose FD-digits ≤ (1 + TOLERANCE) · reference, and
    the smallest from which every larger NFE of the grid is within too (less noise-prone)."""
    out = {}
    for name in samplers_run:
        within = [(r["nfe"], r["finite"] and r["fd"] <= (1 + TOLERANCE) * reference_fd)
                  for r in sorted((r for r in rows if r["sampler"] == name),
                                  key=lambda r: r["nfe"])]
        ok = [nfe for nfe, w in within if w]
        nfe = ok[0] if ok else None
        from_on = None
        for nfe_i, w in reversed(within):
            if not w:
                break
            from_on = nfe_i
        out[name] = {"smallest_nfe_within": nfe, "within_from_nfe_on": from_on,
                     "within_goal": nfe is not None and nfe <= GOAL_NFE}
    return out


def main(argv=None) -> dict:
    args = common.parse_args(NAME, __doc__.splitlines()[0], argv, _add_args)
    report = common.Report(args, "Samplers against NFE: FD-digits and wall-clock per sample")
    if args.rerender:  # the numbers of an earlier run, new tables, figure and text
        previous = json.loads((args.out_dir / "results.json").read_text())
        report.restore(previous)
        data = {k: previous[k] for k in ("settings", "results", "reference", "real_digits")}
    elif args.extend:
        data = extend(args, json.loads((args.out_dir / "results.json").read_text()), report)
    else:
        data = compute(args, settings(args))
    return render(report, data, args)


def extend(args, previous: dict, report) -> dict:
    """``previous`` (a results.json) with rows for the samplers it lacks, sampled with its own
    settings; an error if the run's checkpoint is no longer the one it sampled."""
    report.restore(previous)
    s = dict(previous["settings"])
    wanted = settings(args)["samplers"]
    new = [name for name in wanted if name not in s["samplers"]]
    if not new:
        raise ValueError(f"--extend: {list(wanted)} are all in {args.out_dir}/results.json already.")
    run_step = load_ddpm_run(args.run_dir)[1].step
    if run_step != s["checkpoint_step"] or str(args.run_dir) != s["run_dir"]:
        raise ValueError(f"--extend: results.json sampled {s['run_dir']} at step "
                         f"{s['checkpoint_step']}, but {args.run_dir} is at step {run_step}; "
                         f"rerun the whole grid instead.")
    added = compute(args, {**s, "samplers": tuple(new), "eta1_at_T": False})
    if added["reference"]["fd"] != previous["reference"]["fd"]:
        raise ValueError("--extend: the T-step ancestral reference changed "
                         f"({previous['reference']['fd']} -> {added['reference']['fd']}); "
                         "rerun the whole grid.")
    s["samplers"] = tuple(s["samplers"]) + tuple(new)
    s["extended_with"] = list(new)
    rows = previous["results"] + [r for r in added["results"][1:]]
    return {"settings": s, "results": rows, "reference": previous["reference"],
            "real_digits": previous["real_digits"]}


def compute(args, s: dict) -> dict:
    """Samples and scores every (sampler, NFE) of the grid; the T-step ancestral run first."""
    config, run = load_ddpm_run(args.run_dir)
    T = int(config.diffusion.T)
    n = s["num_samples"]
    shape = (n, *run.image_shape)
    key = jax.random.key(args.seed)  # the same key, hence the same x_T, for every sampler

    grid = [("ancestral", T, T)]  # the reference first
    if s["eta1_at_T"]:
        grid.append(("ancestral_eta1", T, T))
    grid += [(name, nominal, actual_nfe(name, nominal)) for name in s["samplers"]
             for nominal in s["nfes"] if nominal <= T
             and not (name == "ancestral" and nominal == T)]
    rows = []
    bar = tqdm(grid, desc="sampler × NFE", unit="run", disable=not args.progress)
    for name, nominal, nfe in bar:
        bar.set_postfix_str(f"{name} NFE {nfe}")
        fn = make_sampler(config, run, name, nfe, shape)
        x, seconds, compile_seconds = timed_samples(fn, run.params, key)
        row = {"sampler": name, "nominal_nfe": nominal, "nfe": nfe, "num_samples": n,
               "seconds": seconds, "ms_per_sample": 1e3 * seconds / n,
               "compile_seconds": compile_seconds,
               **score(x, num_bootstrap=s["num_bootstrap"], seed=args.seed)}
        rows.append(row)
        bar.set_postfix_str(f"{name} NFE {nfe}: FD {row['fd']:.2f}")
    bar.close()

    # Real digits at the same N: the FD floor of this N (train images against the test split).
    train = np.asarray(pipeline.full_split("digits", "train"), np.float32)
    rng = np.random.default_rng(args.seed)
    real = score(train[rng.choice(len(train), min(n, len(train)), replace=False)],
                 num_bootstrap=s["num_bootstrap"], seed=args.seed)
    real["num_samples"] = min(n, len(train))
    return {"settings": {**s, "T": T, "run_dir": str(args.run_dir), "checkpoint_step": run.step,
                         "variance": config.diffusion.variance,
                         "backend": jax.default_backend()},
            "results": rows, "reference": rows[0], "real_digits": real}


def render(report, data: dict, args) -> dict:
    """Tables, goal check and figure of ``data`` (from ``compute`` or a saved results.json)."""
    s, rows, ref, real = data["settings"], data["results"], data["reference"], data["real_digits"]
    T, n, reference_fd = s["T"], s["num_samples"], ref["fd"]
    goal = goal_check(rows, reference_fd, s["samplers"])
    met = [LABELS[k] for k, v in goal.items() if v["within_goal"]]
    report.data.update(data)
    report.data.update({"goal": goal, "goal_met_by": met})
    report.add(
        f"Model: `{s['run_dir']}` (checkpoint step {s['checkpoint_step']}, T = {T}, EMA "
        f"parameters, {s['variance']!r} variance). {n} samples per row from one key (the same "
        f"x_T for every sampler); FD-digits against the {real['num_reference']} test digits ± "
        f"its bootstrap SE ({s['num_bootstrap']} resamples of the samples); precision/recall "
        f"with k = 3. Reference: the {T}-step ancestral sampler (`ddpm_sample`), FD-digits "
        f"{common.pm(reference_fd, ref['fd_se'])}. For scale, {real['num_samples']} real "
        f"training digits give FD-digits {common.pm(real['fd'], real['fd_se'])} (the floor at "
        f"this N). Ancestral below T is `ddim_sample(eta=1.0)` on the same timesteps: the "
        f"respaced ancestral chain with the posterior variance β̃ of each jump (the library has "
        f"no respaced chain with the β_t variance of the reference).")
    report.table(*wide_table(rows, s["samplers"]), caption=(
        "FD-digits ± SE · wall-clock per sample, by nominal NFE (the NFE actually used in "
        "brackets where it differs: Heun takes odd NFE only). Lower is better for both."))
    report.table(*long_table(rows, reference_fd), caption=(
        f"Every run. ms/sample: one compiled call on all {n} samples as one batch on "
        f"{s['backend']} (compilation excluded; compile s is listed apart), divided by {n}; "
        f"wall-clock depends on the machine and its load. 'within 10 %': FD-digits ≤ "
        f"{1 + TOLERANCE:.2f} × the reference's."))
    goal_rows = [[LABELS[k], v["smallest_nfe_within"] or "not reached",
                  "yes" if v["within_goal"] else "no", v["within_from_nfe_on"] or "–"]
                 for k, v in goal.items()]
    report.table(["sampler", "smallest NFE within 10 % of the reference", f"≤ {GOAL_NFE}?",
                  "within at every NFE from"],
                 goal_rows, caption=(
                     f"Goal check: the smallest NFE of the grid at which each sampler's FD-digits "
                     f"is within 10 % of (or below) the {T}-step ancestral FD-digits "
                     f"{common.fmt(reference_fd)} (point estimates; see the SEs above). "
                     f"Within 10 % at NFE ≤ {GOAL_NFE}: {', '.join(met) if met else 'none'}."))

    p = plot(rows, ref, real, s["samplers"], args.out_dir / "fd_vs_nfe.png", T)
    report.figure(p, f"FD-digits against NFE (± bootstrap SE), with the {T}-step ancestral "
                     f"FD-digits ± 10 % as a band")
    if report.data.get("quick"):
        report.add("QUICK settings: a smoke test of the plumbing, not a result.")
    return report.write()


def _cell(r) -> str:
    """'FD ± SE · ms/sample', with the NFE used in brackets where it is not the nominal one."""
    nfe = f" [NFE {r['nfe']}]" if r["nfe"] != r["nominal_nfe"] else ""
    return f"{common.pm(r['fd'], r['fd_se'], 2)} · {common.fmt(r['ms_per_sample'], 2)} ms{nfe}"


def wide_table(rows, names):
    names = list(names)
    headers = ["NFE", *(LABELS[k] for k in names)]
    out = []
    for nominal in sorted({r["nominal_nfe"] for r in rows}):
        by = {r["sampler"]: r for r in rows if r["nominal_nfe"] == nominal}
        out.append([nominal, *(_cell(by[k]) if k in by else "–" for k in names)])
    return headers, out


def long_table(rows, reference_fd):
    headers = ["sampler", "NFE (nominal)", "NFE used", "FD-digits ± SE", "precision", "recall",
               "ms/sample", "compile s", "within 10 %"]
    order = {k: i for i, k in enumerate((*SAMPLERS, "ancestral_eta1"))}
    out = []
    for r in sorted(rows, key=lambda r: (order[r["sampler"]], r["nfe"])):
        within = r["finite"] and r["fd"] <= (1 + TOLERANCE) * reference_fd
        out.append([LABELS[r["sampler"]], r["nominal_nfe"], r["nfe"],
                    common.pm(r["fd"], r["fd_se"], 2), common.fmt(r["precision"]),
                    common.fmt(r["recall"]), common.fmt(r["ms_per_sample"], 3),
                    common.fmt(r["compile_seconds"], 1), "yes" if within else "no"])
    return headers, out


def plot(rows, ref, real, names, path, T):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fd = ref["fd"]
    ax.axhspan((1 - TOLERANCE) * fd, (1 + TOLERANCE) * fd, color="0.85",
               label=f"{T}-step ancestral ± 10 %")
    ax.axhline(fd, color="0.4", lw=1)
    if np.isfinite(real["fd"]):
        ax.axhline(real["fd"], color="k", ls=":", lw=1, label="real digits (same N)")
    markers = {"ancestral": "o", "ddim": "s", "dpm_solver++": "^", "heun": "D",
               "sde_dpm_solver++": "v"}
    for name in names:
        rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        if name == "ancestral":
            rs = [r for r in rs if r["nfe"] != T] + [ref]
        if not rs:
            continue
        ax.errorbar([r["nfe"] for r in rs], [r["fd"] for r in rs],
                    yerr=[r["fd_se"] for r in rs], marker=markers[name], capsize=3, ms=4,
                    label=LABELS[name])
    eta1 = [r for r in rows if r["sampler"] == "ancestral_eta1"]
    if eta1:
        ax.errorbar([r["nfe"] for r in eta1], [r["fd"] for r in eta1],
                    yerr=[r["fd_se"] for r in eta1], marker="x", ls="none", color="C0",
                    capsize=3, label=LABELS["ancestral_eta1"])
    ax.axvline(GOAL_NFE, color="C3", ls="--", lw=0.8, label=f"NFE = {GOAL_NFE}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("FD-digits vs test split (log)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return common.save_figure(fig, path)


if __name__ == "__main__":
    try:
        main()
    except MissingRun as e:
        raise SystemExit(f"error: {e}") from None
