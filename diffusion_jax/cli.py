"""The command line: ``python -m diffusion_jax {train,evaluate,sample,prepare}``.

    python -m diffusion_jax train --config experiments/configs/ddpm_digits.py --workdir runs/x \
        --config.train.num_steps=500
    python -m diffusion_jax evaluate --config ... --workdir runs/x
    python -m diffusion_jax sample --config ... --workdir runs/x --num_samples 64
    python -m diffusion_jax prepare --dataset mnist --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

COMMANDS = ("train", "evaluate", "sample", "prepare")


def _set_cpu_flags() -> None:
    """XLA CPU: send convolutions to the multi-threaded Eigen path, not a 1-thread YNN fusion.

    Measured on a 2-core CPU (PLATFORM.md): 1.5–1.8 s -> ~1.0 s per U-Net step, identical loss.
    Must be set before JAX starts; an explicit XLA_FLAGS entry of the user wins.
    """
    flag = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"
    current = os.environ.get("XLA_FLAGS", "")
    if "ynn_fusion_type" not in current:
        os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()


def run(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        import difflib

        given = argv[1] if len(argv) > 1 else ""
        hint = difflib.get_close_matches(given, COMMANDS, n=1)
        print(f"usage: python -m diffusion_jax {{{','.join(COMMANDS)}}} [flags]"
              + (f"\nunknown command {given!r}; did you mean {hint[0]!r}?" if hint else ""),
              file=sys.stderr)
        raise SystemExit(2)
    _set_cpu_flags()
    from absl import app, flags
    from ml_collections import config_flags

    command = argv.pop(1)
    config_flags.DEFINE_config_file("config", None, "Path to an experiment config (.py).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, figures.")
    flags.DEFINE_integer("num_samples", 64, "sample: how many images.")
    flags.DEFINE_integer("seed", 0, "sample: PRNG seed.")
    flags.DEFINE_string("sampler", None, "sample: ddpm or ddim (default: the config's).")
    flags.DEFINE_string("dataset", None, "prepare: a tfds dataset name.")
    flags.DEFINE_string("data_dir", None, "prepare: the tfds data_dir.")
    flags.DEFINE_bool("progress", True, "Show progress bars.")

    def main(_):
        FLAGS = flags.FLAGS
        logging.getLogger("absl").setLevel(logging.WARNING)
        logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'"
        if command == "prepare":
            from diffusion_jax.data import tfds_data

            if not FLAGS.dataset:
                raise app.UsageError("prepare needs --dataset (e.g. mnist).")
            tfds_data.prepare_dataset(FLAGS.dataset, FLAGS.data_dir)
            print(f"prepared {FLAGS.dataset} in {FLAGS.data_dir or 'the tfds default data_dir'}")
            return
        if FLAGS.config is None:
            raise app.UsageError(f"{command} needs --config experiments/configs/<name>.py")
        if not FLAGS.workdir:
            raise app.UsageError(f"{command} needs --workdir <dir>")
        _dispatch(command, FLAGS)

    try:
        app.run(main, argv=argv)
    except KeyError as e:  # config_flags: an override of a key that does not exist
        raise SystemExit(f"error: {e}") from None


def _dispatch(command, FLAGS) -> None:
    import jax

    from diffusion_jax.training import evaluate as eval_lib
    from diffusion_jax.training import plots, trainer

    config = FLAGS.config
    if command == "train":
        from diffusion_jax.training.distributed import maybe_initialize_from_config

        maybe_initialize_from_config(config)
        summary = trainer.train_and_evaluate(config, FLAGS.workdir, progress=FLAGS.progress)
        if summary.get("stopped"):
            print(f"stopped by {summary['stopped']} at step {summary['step']}; checkpoint saved. "
                  "Run the same command again to resume.")
            return
        print(trainer.format_summary(summary))
        return
    model, sched, params, image_shape, num_levels, step = trainer.load_trained(config, FLAGS.workdir)
    key = jax.random.key(FLAGS.seed)
    if command == "evaluate":
        from diffusion_jax.data import pipeline

        images = pipeline.full_split(config.data.name, config.data.test_split,
                                     data_dir=config.data.data_dir or None,
                                     binarize=config.data.binarize)
        report = trainer.evaluate_test_split(config, model, sched, params, np.asarray(images),
                                             key, num_levels, Path(FLAGS.workdir), FLAGS.progress)
        report["checkpoint_step"] = step
        print(json.dumps({k: v for k, v in report.items() if k != "per_t_bpd"}, indent=2))
        return
    if command == "sample":
        if FLAGS.num_samples < 1:
            raise SystemExit(f"error: --num_samples must be a positive int, got {FLAGS.num_samples}.")
        out_dir = Path(FLAGS.workdir) / "samples"
        if config.model_kind != "ddpm":
            raise SystemExit("error: sample supports model_kind 'ddpm'; VAE samples are in the "
                             "training sample grids.")
        x = eval_lib.sample_ddpm(model, params, sched, key, num_samples=FLAGS.num_samples,
                                 image_shape=image_shape, sampler=FLAGS.sampler or config.eval.sampler,
                                 variance=config.diffusion.variance, ddim_steps=config.eval.ddim_steps,
                                 progress=FLAGS.progress)
        stem = f"sample_step{step}_seed{FLAGS.seed}"
        np.savez(out_dir / f"{stem}.npz", samples=x)
        grid = plots.save_image_grid(x, out_dir / f"{stem}.png")
        print(f"wrote {grid} and {out_dir / (stem + '.npz')}")
