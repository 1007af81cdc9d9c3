"""Experiment 2: the seed's boxed variance argument for x_t = √α x_{t−1} + b ε.

With a constant a = √α the iterated chain started at x_0 has
    Var[x_t] = a^{2t} Var[x_0] + b² (1 − a^{2t}) / (1 − a²)  →  b² / (1 − a²)   (t → ∞),
which is 1 only for b = √(1 − a²) = √(1 − α). The seed prints b = 1 − α, whose limit is
(1 − α)² / (1 − α) = 1 − α. We iterate the chain (``dj.constant_coefficient_chain``, a
``lax.scan``) for many independent samples at once and compare the empirical variance with
``dj.constant_coefficient_chain_variance`` for both values of b, from x_0 = 0 and from digits
pixels (Var[x_0] ≠ 0).

    python -m experiments.chain_variance [--quick]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import diffusion_jax as dj
from diffusion_jax.data import pipeline
from experiments import common

NAME = "chain_variance"
ALPHAS = (0.9, 0.98, 0.995)
TABLE_TS = (1, 10, 100, 1000)


def _add_args(parser):
    parser.add_argument("--num_chains", type=int, default=20_000, help="independent samples")
    parser.add_argument("--num_steps", type=int, default=2000, help="t = 1..num_steps")


def b_choices(alpha: float) -> dict[str, float]:
    """b = √(1 − α) (correct) and b = 1 − α (printed in the seed)."""
    return {"b = √(1−α)  (correct)": math.sqrt(1.0 - alpha),
            "b = 1 − α  (seed, printed)": 1.0 - alpha}


def empirical_variance(key, a, b, x0, num_steps: int):
    """Sample variance of x_t over the chains, its standard error and the sample mean.

    x_0: (N,) starts; returns three (num_steps,) arrays for t = 1..num_steps. The SE uses the
    fourth central moment, Var(s²) ≈ (m_4 − s⁴)/N, valid for non-Gaussian x_t too.
    """
    xs = dj.constant_coefficient_chain(key, a, b, x0, num_steps)  # (num_steps, N)
    n = xs.shape[1]
    mean = jnp.mean(xs, axis=1)
    centred = xs - mean[:, None]
    var = jnp.sum(jnp.square(centred), axis=1) / (n - 1)
    m4 = jnp.mean(centred**4, axis=1)
    return var, jnp.sqrt(jnp.maximum(m4 - var**2, 0.0) / n), mean


def theory_variance(a, b, t, var_x0=0.0):
    """a^{2t} Var[x_0] + b² (1 − a^{2t}) / (1 − a²)."""
    return a ** (2 * t) * var_x0 + dj.constant_coefficient_chain_variance(a, b, t)


def main(argv=None) -> dict:
    args = common.parse_args(NAME, __doc__.splitlines()[0], argv, _add_args)
    if args.quick:
        args.num_chains, args.num_steps = min(args.num_chains, 2000), min(args.num_steps, 100)
    report = common.Report(args, "Experiment 2 — the variance of the iterated forward chain")
    n, steps = args.num_chains, args.num_steps
    key = jax.random.key(args.seed)
    ts = np.arange(1, steps + 1)
    var_fn = jax.jit(empirical_variance, static_argnums=4)

    # Digits pixels as x_0 (values in [−1, 1]), one random pixel of a random image per chain.
    train = pipeline.full_split("digits", "train").reshape(-1)
    x0_digits = jnp.asarray(np.random.default_rng(args.seed).choice(train, size=n), jnp.float32)
    var_x0 = float(np.var(np.asarray(x0_digits), ddof=1))
    starts = {"x_0 = 0": jnp.zeros((n,), jnp.float32), "x_0 = digits pixels": x0_digits}

    results, rows = {}, []
    fig, axes = plt.subplots(2, len(ALPHAS), figsize=(4.2 * len(ALPHAS), 7), squeeze=False,
                             layout="constrained")
    for j, alpha in enumerate(ALPHAS):
        a = math.sqrt(alpha)
        for i, (start_name, x0) in enumerate(starts.items()):
            v0 = 0.0 if i == 0 else var_x0
            ax = axes[i, j]
            for k, (b_name, b) in enumerate(b_choices(alpha).items()):
                sub = jax.random.fold_in(key, 100 * j + 10 * i + k)
                emp, se, mean = map(np.asarray, var_fn(sub, a, b, x0, steps))
                theo = np.asarray(theory_variance(a, b, ts.astype(np.float64), v0))
                z = np.abs(emp - theo) / np.maximum(se, 1e-30)
                idx = np.unique(np.geomspace(1, steps, 40).astype(int)) - 1  # plotted points
                results[f"alpha={alpha}/{start_name}/{b_name}"] = {
                    "t": ts[idx], "empirical_var": emp[idx], "empirical_se": se[idx],
                    "theory_var": theo[idx], "limit": b**2 / (1 - a**2),
                    "max_abs_z": float(z.max()), "final_mean": float(mean[-1]),
                }
                color = f"C{k}"
                ax.plot(ts, theo, color=color, lw=1.5, label=f"{b_name}: theory")
                ax.errorbar(ts[idx], emp[idx], yerr=2 * se[idx], fmt="o", ms=3, color=color,
                            alpha=0.8, label=f"{b_name}: empirical ±2 SE")
                ax.axhline(b**2 / (1 - a**2), color=color, ls=":", lw=1)
                for t in TABLE_TS:
                    if t <= steps:
                        rows.append([alpha, start_name, b_name, t, common.fmt(emp[t - 1], 4),
                                     common.fmt(se[t - 1], 4), common.fmt(theo[t - 1], 4),
                                     common.fmt(z[t - 1], 2)])
                limit = common.fmt(b**2 / (1 - a**2), 4)
                rows.append([alpha, start_name, b_name, "∞", "", "", limit,
                             ""])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("t")
            ax.set_ylabel("Var[x_t]")
            ax.set_title(f"α = {alpha}, {start_name}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("x_t = √α x_{t−1} + b ε: only b = √(1−α) keeps Var[x_t] → 1 "
                 "(dotted: the limits b²/(1−α))", fontsize=11)
    path = common.save_figure(fig, args.out_dir / "chain_variance.png")

    worst = max(r["max_abs_z"] for r in results.values())
    report.data.update(num_chains=n, num_steps=steps, var_x0_digits=var_x0, results=results,
                       worst_abs_z=worst)
    report.add(
        f"{n} independent chains per curve, t = 1..{steps}, iterated with `lax.scan` "
        "(`dj.constant_coefficient_chain`); theory `dj.constant_coefficient_chain_variance` "
        "plus a^{2t} Var[x_0]. SE of a sample variance: √((m₄ − s⁴)/N) (m₄ the fourth "
        "central moment). Digits pixels "
        f"(scaled to [−1, 1]) have Var[x_0] = {var_x0:.4f}.")
    report.figure(path, "Empirical variance of the chain (markers) against "
                        "b²(1 − a^{2t})/(1 − a²) + a^{2t}Var[x_0] (lines)")
    report.table(["α", "start", "b", "t", "empirical Var", "SE", "theory", "|z|"], rows,
                 "Empirical vs theoretical variance (|z| = |emp − theory| / SE)")
    report.add(
        "**Conclusion.** The closed form b²(1 − a^{2t})/(1 − a²) "
        + ("matches the simulated chains at every t" if worst < 5 else
           "deviates from the simulated chains by more than sampling noise")
        + f" (largest |z| over all {len(results) * steps} points: {worst:.1f}; the points are "
        "correlated along t, and |z| < 5 is what sampling noise alone gives). With the "
        "correct b = √(1 − α) the variance tends to 1 from any start (the data variance is "
        "forgotten at rate α^t), so x_T ≈ N(0, I) as the prior assumes. With the seed's "
        "printed b = 1 − α the variance tends to 1 − α (e.g. 0.02 for α = 0.98): the chain "
        "collapses towards 0 and x_T would not match N(0, I). The seed's boxed conclusion "
        "(b = √(1 − α)) is right; the printed b = 1 − α is an erratum.")
    return report.write()


if __name__ == "__main__":
    main()
