"""Experiment: VDM's fixed against learned noise schedule on the digits, and L_T against T.

Two runs of ``experiments/configs/vdm_digits.py`` (``train_and_evaluate``): the schedule linear
in γ with learned endpoints (the config's) and the same schedule with its endpoints fixed
(``diffusion.schedule="fixed"``). Numbers: the test bound in bits/dim ± standard error
(``eval.vdm_draws`` stratified draws per test digit) of each, with its three terms. Figure 1:
the learned γ(t) beside the fixed ones (VDM's linear γ from −13.3 to 5, the digits' fixed
−10 to 5, DDPM's linear β and the cosine schedule, read as γ = −log SNR). Figure 2: the T-step
bound L_T of the trained learned-schedule model against T, with the continuous-time L_∞ (the
same network; common random numbers across T). Loss-estimate variance: for each trained
run, the variance (and std) across ``--var_draws`` draws of the batch-mean bits/dim the trainer
optimises (the kind's ``make_loss``, one (t, ε) draw per example, antithetic t, with the run's
EMA parameters) (a) on independent batches of 64 training digits, each with fresh (t, ε), and
(b) on one fixed batch of 64 training digits with only (t, ε) redrawn. A learned monotone
network schedule (``learned_nnet``) is included only where a finished run of it exists in
``run_dir/learned_nnet``; none is trained here.

    python -m experiments.vdm_schedules [--quick]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from diffusion_jax import vdm as vdm_lib
from diffusion_jax.data import pipeline
from diffusion_jax.training import kinds
from diffusion_jax.training.config import load_config_json
from diffusion_jax.training.kinds import vdm as vdm_kind
from experiments import common
from experiments.configs import vdm_digits

NAME = "vdm_schedules"
T_VALUES = (2, 5, 10, 20, 50, 100, 1000)


def _add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    parser.add_argument("--lt_draws", type=int, default=20,
                        help="stratified draws per test example for each L_T")
    parser.add_argument("--var_draws", type=int, default=200,
                        help="batches (and (t, ε) redraws) for the loss-estimate variance")
    parser.add_argument("--var_batch", type=int, default=64,
                        help="batch size of the loss-estimate variance")


def configs(args):
    out = {}
    for schedule in ("learned_linear", "fixed"):
        c = vdm_digits.get_config()
        c.seed = args.seed
        c.diffusion.schedule = schedule
        if args.steps:
            c.train.num_steps = args.steps
        if args.quick:
            c.model.ch, c.model.num_groups = 8, 4
            c.model.ch_mult, c.model.mid_attention = (1,), False  # one level: fast compiles
            c.train.num_steps, c.train.eval_every, c.train.log_every = 20, 0, 10
            c.train.checkpoint_every = 20
            c.eval.max_examples, c.eval.vdm_draws = 20, 4
            c.eval.num_samples, c.eval.sample_steps = 4, 10
        out[schedule] = c
    return out


def loss_estimate_variance(cfg, run, train_images, key, *, draws: int, batch: int) -> dict:
    """Variance of the trainer's batch-mean bits/dim over ``draws`` draws: (a) a fresh batch of
    ``batch`` training digits (without replacement within it) and fresh (t, ε) each draw; (b) one
    fixed batch, only (t, ε) redrawn. The kind's ``make_loss`` with the run's (EMA) parameters."""
    loss_fn = kinds.get("vdm").make_loss(run.model, cfg, num_levels=run.num_levels)
    fn = jax.jit(lambda p, x, k: loss_fn(p, {"image": x}, jax.random.split(k, x.shape[0]),
                                         train=False)[0])
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    fixed = jnp.asarray(train_images[rng.choice(len(train_images), batch, replace=False)])
    k_a, k_b = jax.random.split(key)
    out = {}
    for label, k in (("batches", k_a), ("fixed_batch", k_b)):
        vals = []
        for kk in jax.random.split(k, draws):
            x = (jnp.asarray(train_images[rng.choice(len(train_images), batch, replace=False)])
                 if label == "batches" else fixed)
            vals.append(float(fn(run.params, x, kk)))
        v = np.asarray(vals)
        out[label] = {"mean": float(v.mean()), "var": float(v.var(ddof=1)),
                      "std": float(v.std(ddof=1)), "draws": draws, "batch": batch}
    return out


def main(argv=None) -> dict:
    args = common.parse_args(NAME, __doc__.splitlines()[0], argv, _add_args)
    report = common.Report(args, "VDM — fixed against learned schedule, and L_T against T")
    out = args.out_dir
    cfgs = configs(args)
    runs, summaries = {}, {}
    for name, cfg in cfgs.items():
        workdir = args.run_dir / name
        summaries[name] = common.train_or_reuse(cfg, workdir, progress=args.progress,
                                                retrain=args.retrain)
        runs[name] = common.load_run(cfg, workdir)

    # Variance of the training loss estimate (batch-mean bits/dim) per batch.
    train_images = np.asarray(pipeline.full_split("digits", "train"), np.float32)
    var_draws = 10 if args.quick else args.var_draws
    var_runs = dict(runs)
    nnet_dir = args.run_dir / "learned_nnet"
    if (nnet_dir / "summary.json").exists() and (nnet_dir / "config.json").exists():
        nnet_cfg = load_config_json(nnet_dir / "config.json")
        var_runs["learned_nnet"] = common.load_run(nnet_cfg, nnet_dir)
        cfgs = {**cfgs, "learned_nnet": nnet_cfg}
    var_rows, variance = [], {}
    for name, run in var_runs.items():
        variance[name] = loss_estimate_variance(cfgs[name], run, train_images,
                                                jax.random.key(args.seed + 2),
                                                draws=var_draws, batch=args.var_batch)
        a, b = variance[name]["batches"], variance[name]["fixed_batch"]
        var_rows.append([name, f"{a['mean']:.3f}", f"{a['var']:.2e}", f"{a['std']:.4f}",
                         f"{b['mean']:.3f}", f"{b['var']:.2e}", f"{b['std']:.4f}"])
    report.data["loss_variance"] = variance

    rows, results = [], {}
    for name, s in summaries.items():
        ev = s["eval"]
        results[name] = {k: ev[k] for k in ("bpd", "bpd_se", "reconstruction_nats", "prior_nats",
                                            "diffusion_nats", "gamma_0", "gamma_1", "draws",
                                            "num_examples")}
        results[name]["train_seconds"] = s["train_seconds"]
        results[name]["steps"] = s["step"]
        results[name]["loss_variance"] = variance[name]
        lv = variance[name]["batches"]
        rows.append([name, common.pm(ev["bpd"], ev["bpd_se"]), common.fmt(ev["reconstruction_nats"]),
                     common.fmt(ev["prior_nats"]), common.fmt(ev["diffusion_nats"]),
                     f"{ev['gamma_0']:.2f} .. {ev['gamma_1']:.2f}", s["step"],
                     f"{lv['var']:.4f} ({lv['std']:.3f})", f"{s['train_seconds']:.0f}"])
    report.table(["schedule", "test bits/dim", "recon (nats)", "prior (nats)", "diffusion (nats)",
                  "γ(0) .. γ(1)", "steps", "train-loss var (std) per batch", "train s"], rows,
                 caption=f"Test bound on {results['fixed']['num_examples']} test digits "
                         f"(17 levels), L_∞ with {results['fixed']['draws']} stratified (t, ε) "
                         f"draws per example; ± one standard error over examples. Train-loss "
                         f"var (std): of the batch-mean bits/dim over {var_draws} independent "
                         f"batches of {args.var_batch} training digits (next table).")
    report.data["results"] = results
    missing = "" if "learned_nnet" in var_runs else (
        " No run of the learned monotone-network schedule (learned_nnet) exists, so it has no row.")
    report.table(["schedule", "mean bpd (batches)", "var (batches)", "std (batches)",
                  "mean bpd (fixed batch)", "var (fixed batch)", "std (fixed batch)"], var_rows,
                 caption=f"Variance of the training loss estimate per batch: the batch-mean "
                         f"bits/dim of the trainer's loss (L_∞, one antithetic (t, ε) draw per "
                         f"example, EMA parameters) over {var_draws} independent draws of "
                         f"{args.var_batch} training digits with fresh (t, ε) ('batches'), and "
                         f"over {var_draws} (t, ε) redraws on one fixed batch of {args.var_batch} "
                         f"('fixed batch'); unbiased sample variance (its relative standard "
                         f"error is about √(2/{var_draws - 1}) = "
                         f"{100 * np.sqrt(2 / (var_draws - 1)):.0f}% for near-normal values)."
                         f"{missing}")

    # Figure 1: γ(t) of the learned schedule beside the fixed ones.
    t = jnp.linspace(0.0, 1.0, 201)
    learned = runs["learned_linear"]
    curves = {
        "learned (trained endpoints)": vdm_kind.gamma_fn_of(learned.model.schedule, learned.params)(t),
        "fixed, digits (−10 .. 5)": vdm_lib.LinearGamma(-10.0, 5.0)(t),
        "fixed, VDM (−13.3 .. 5)": vdm_lib.LinearGamma()(t),
        "DDPM linear β": vdm_lib.DDPMLinearGamma()(t),
        "cosine": vdm_lib.CosineGamma()(t),
    }
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, g in curves.items():
        ax.plot(np.asarray(t), np.asarray(g), label=label, lw=2.5 if "learned" in label else 1.2)
    ax.set_xlabel("t")
    ax.set_ylabel("γ(t) = −log SNR(t)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    p_gamma = common.save_figure(fig, out / "gamma_schedules.png")
    report.figure(p_gamma, "The learned γ(t) (linear, trained endpoints) beside fixed schedules")

    # Figure 2: L_T against T for the trained learned-schedule model (common random numbers).
    images = np.asarray(pipeline.full_split("digits", "test"), np.float32)
    cfg = cfgs["learned_linear"]
    if cfg.eval.max_examples:
        images = images[: cfg.eval.max_examples]
    t_values = (2,) if args.quick else T_VALUES
    draws = 2 if args.quick else args.lt_draws
    key = jax.random.key(args.seed + 1)
    lt = {}
    for T in (*t_values, 0):
        c = cfg.copy_and_resolve_references()
        c.diffusion.T, c.eval.vdm_draws = T, draws
        ev = vdm_kind.evaluate(c, learned.model, learned.params, images, key,
                               num_levels=learned.num_levels, progress=False)
        lt["inf" if T == 0 else str(T)] = (ev["bpd"], ev["bpd_se"])
    report.data["L_T"] = lt
    report.table(["T", "test bits/dim"], [[k, common.pm(*v)] for k, v in lt.items()],
                 caption=f"L_T of the trained learned-schedule model ({draws} draws per example, "
                         f"the same draws for every T; 'inf' is L_∞).")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ts = np.array(t_values, float)
    means = np.array([lt[str(T)][0] for T in t_values])
    ses = np.array([lt[str(T)][1] for T in t_values])
    ax.errorbar(ts, means, yerr=ses, marker="o", capsize=3, label="L_T")
    ax.axhline(lt["inf"][0], color="k", ls="--", label=f"L_∞ = {lt['inf'][0]:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("T (steps of the discrete bound)")
    ax.set_ylabel("test bound (bits/dim)")
    ax.legend()
    ax.grid(alpha=0.3)
    p_lt = common.save_figure(fig, out / "lt_against_T.png")
    report.figure(p_lt, "L_T against T for the trained model, with L_∞")
    return report.write()


if __name__ == "__main__":
    main()
