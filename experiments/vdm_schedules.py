"""Experiment: VDM's fixed against learned noise schedule on the digits, and L_T against T.

Two runs of ``experiments/configs/vdm_digits.py`` (``train_and_evaluate``): the schedule linear
in γ with learned endpoints (the config's) and the same schedule with its endpoints fixed
(``diffusion.schedule="fixed"``). Numbers: the test bound in bits/dim ± standard error
(``eval.vdm_draws`` stratified draws per test digit) of each, with its three terms. Figure 1:
the learned γ(t) beside the fixed ones (VDM's linear γ from −13.3 to 5, the digits' fixed
−10 to 5, DDPM's linear β and the cosine schedule, read as γ = −log SNR). Figure 2: the T-step
bound L_T of the trained learned-schedule model against T, with the continuous-time L_∞ (the
same network; common random numbers across T).

    python -m experiments.vdm_schedules [--quick]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from diffusion_jax import vdm as vdm_lib
from diffusion_jax.data import pipeline
from diffusion_jax.training.kinds import vdm as vdm_kind
from experiments import common
from experiments.configs import vdm_digits

NAME = "vdm_schedules"
T_VALUES = (2, 5, 10, 20, 50, 100, 1000)


def _add_args(parser):
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    parser.add_argument("--lt_draws", type=int, default=20,
                        help="stratified draws per test example for each L_T")


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
            c.train.num_steps, c.train.eval_every, c.train.log_every = 20, 0, 10
            c.train.checkpoint_every = 20
            c.eval.max_examples, c.eval.vdm_draws = 20, 4
            c.eval.num_samples, c.eval.sample_steps = 4, 10
        out[schedule] = c
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

    rows, results = [], {}
    for name, s in summaries.items():
        ev = s["eval"]
        results[name] = {k: ev[k] for k in ("bpd", "bpd_se", "reconstruction_nats", "prior_nats",
                                            "diffusion_nats", "gamma_0", "gamma_1", "draws",
                                            "num_examples")}
        results[name]["train_seconds"] = s["train_seconds"]
        results[name]["steps"] = s["step"]
        rows.append([name, common.pm(ev["bpd"], ev["bpd_se"]), common.fmt(ev["reconstruction_nats"]),
                     common.fmt(ev["prior_nats"]), common.fmt(ev["diffusion_nats"]),
                     f"{ev['gamma_0']:.2f} .. {ev['gamma_1']:.2f}", s["step"],
                     f"{s['train_seconds']:.0f}"])
    report.table(["schedule", "test bits/dim", "recon (nats)", "prior (nats)", "diffusion (nats)",
                  "γ(0) .. γ(1)", "steps", "train s"], rows,
                 caption=f"Test bound on {results['fixed']['num_examples']} test digits "
                         f"(17 levels), L_∞ with {results['fixed']['draws']} stratified (t, ε) "
                         f"draws per example; ± one standard error over examples.")
    report.data["results"] = results

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
    t_values = (2, 10) if args.quick else T_VALUES
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
