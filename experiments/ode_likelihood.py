"""Bits/dim of a trained DDPM through the probability-flow ODE, beside its ELBO on the same images.

Loads a DDPM workdir (EMA parameters of its newest checkpoint, ``trainer.load_trained``) and, on
the first N test images, reports

* ODE bits/dim (``diffusion_jax.ode_likelihood.ode_bits_per_dim``: uniform dequantisation,
  exact divergence for D ≤ 64, Hutchinson–Skilling otherwise), with its NFE and wall-clock;
* the full-T ELBO bits/dim of the same images, computed as the trainer's evaluation does
  (``diffusion_elbo`` form "ddpm", discretized decoder, the run's decoder variance);
* their paired difference, each as a mean ± standard error over images.

    python -m experiments.ode_likelihood --workdir runs/ddpm_digits [--num_examples 256]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import ode_likelihood
from diffusion_jax.data import pipeline as data_pipeline
from diffusion_jax.training import trainer
from diffusion_jax.training.config import load_config_json
from diffusion_jax.training.evaluate import mean_and_stderr
from diffusion_jax.training.kinds import ddpm as ddpm_kind


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.ode_likelihood", description=__doc__.split(
        "\n")[0])
    p.add_argument("--workdir", required=True, help="a trained DDPM run (holds config.json)")
    p.add_argument("--num_examples", type=int, default=256, help="first N test images")
    p.add_argument("--batch_size", type=int, default=16, help="images per compiled ODE batch")
    p.add_argument("--divergence", default="auto", choices=ode_likelihood.DIVERGENCES)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--num_dequant", type=int, default=1, help="dequantisation draws per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    workdir = Path(args.workdir)
    config = load_config_json(workdir / "config.json")
    if config.model_kind != "ddpm":
        raise SystemExit(f"{workdir} holds a {config.model_kind!r} run; this script needs a ddpm run.")
    trained = trainer.load_trained(config, workdir)
    model, params, num_levels = trained.model, trained.params, trained.num_levels
    sched = ddpm_kind.build_schedule(config.diffusion)
    images = data_pipeline.full_split(config.data.name, config.data.test_split,
                                      data_dir=config.data.data_dir or None,
                                      binarize=config.data.binarize)[: args.num_examples]
    n, dims = images.shape[0], math.prod(images.shape[1:])
    key_ode, key_elbo = jax.random.split(jax.random.key(args.seed))

    @jax.jit
    def ode_batch(params, x0, keys):
        return ode_likelihood.ode_bits_per_dim(
            ddpm_kind.network_fn(model, params), sched, x0, keys, num_levels=num_levels,
            num_dequant=args.num_dequant, divergence=args.divergence, rtol=args.rtol,
            atol=args.atol, prediction=model.prediction, learned_variance=model.learned_variance)

    @jax.jit
    def elbo_batch(params, x0, key):  # as ddpm_kind.evaluate computes the bound
        rfn = ddpm_kind.reverse_fn(model, params, sched, variance=config.diffusion.variance)
        return elbo_lib.diffusion_elbo(rfn, sched, x0, key, form="ddpm", decoder="discretized",
                                       num_levels=num_levels,
                                       chunk_size=config.eval.elbo_chunk_size)["total"]

    example_keys = jax.random.split(key_ode, n)  # per image: independent of the batch size
    ode_bpd, nfe, elbo_nats, ode_seconds = [], [], [], 0.0
    starts = range(0, n, args.batch_size)
    for i in tqdm(starts, desc="ODE likelihood", unit="batch", disable=not args.progress):
        x0 = images[i:i + args.batch_size]
        tic = time.perf_counter()
        bpd, evals = jax.block_until_ready(ode_batch(params, x0, example_keys[i:i + len(x0)]))
        ode_seconds += time.perf_counter() - tic  # the first batch includes compilation
        ode_bpd.append(np.asarray(bpd))
        nfe.append(np.asarray(evals))
        elbo_nats.append(np.asarray(elbo_batch(params, x0, jax.random.fold_in(key_elbo, i))))
    ode_bpd, nfe = np.concatenate(ode_bpd), np.concatenate(nfe)
    elbo_bpd = np.asarray(elbo_lib.bits_per_dim(np.concatenate(elbo_nats), dims))
    exact = args.divergence == "exact" or (args.divergence == "auto"
                                           and dims <= ode_likelihood.AUTO_EXACT_MAX_DIMS)
    report = {
        "workdir": str(workdir), "checkpoint_step": trained.step, "num_examples": n,
        "num_levels": num_levels, "dims": dims, "T": sched.T,
        "divergence": "exact" if exact else "hutchinson", "rtol": args.rtol, "atol": args.atol,
        "num_dequant": args.num_dequant, "variance": config.diffusion.variance,
        "ode_bpd": mean_and_stderr(ode_bpd), "elbo_bpd": mean_and_stderr(elbo_bpd),
        "ode_minus_elbo_bpd": mean_and_stderr(ode_bpd - elbo_bpd),
        "nfe_mean": float(nfe.mean()), "nfe_range": [int(nfe.min()), int(nfe.max())],
        "ode_seconds": ode_seconds, "ode_seconds_per_image": ode_seconds / n,
        "command": "python -m experiments.ode_likelihood " + shlex.join(argv),
    }
    (m, se), (em, ese), (dm, dse) = report["ode_bpd"], report["elbo_bpd"], report["ode_minus_elbo_bpd"]
    print(f"{n} test images of {config.data.name} ({num_levels} levels, D = {dims}), checkpoint "
          f"step {trained.step}, T = {sched.T}")
    print(f"  ODE  (probability flow, {report['divergence']} divergence, rtol {args.rtol:g}, uniform "
          f"dequantisation x{args.num_dequant}): {m:.4f} ± {se:.4f} bits/dim")
    print(f"  ELBO (full T-term bound, discretized decoder, variance {config.diffusion.variance!r}): "
          f"{em:.4f} ± {ese:.4f} bits/dim")
    print(f"  ODE − ELBO (paired): {dm:+.4f} ± {dse:.4f} bits/dim")
    print(f"  NFE per image {report['nfe_mean']:.0f} (range {report['nfe_range'][0]}–"
          f"{report['nfe_range'][1]}); ODE wall-clock {ode_seconds:.1f} s, "
          f"{report['ode_seconds_per_image']:.2f} s/image (incl. compilation)")
    print(f"  reproduce: {report['command']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
