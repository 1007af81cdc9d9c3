"""Shared plumbing of the experiments: flags, result tables, training runs, small plot helpers.

Each experiment module defines ``main(argv=None) -> dict`` and is run as
``python -m experiments.<name> [--quick] [--out_dir DIR] [--run_dir DIR] [--seed N]``.
Figures (PNG), ``results.md`` (a markdown report that states the command, seed and wall time
that produced it) and ``results.json`` go to ``out_dir``; training runs (checkpoints, metrics)
go to ``run_dir``, which is git-ignored.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion_jax.training import evaluate, plots, trainer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "experiments" / "results"
RUNS_ROOT = Path("runs") / "experiments"
# Mean and standard error (ddof = 1) of a sample, as the library's evaluations report them.
mean_se = evaluate.mean_and_stderr
REUSED_RUNS: list[str] = []  # finished runs reused by train_or_reuse (reported by Report.write)


def parse_args(name: str, description: str, argv: Sequence[str] | None,
               add_args: Callable[[argparse.ArgumentParser], None] | None = None):
    """Common flags (--quick, --out_dir, --run_dir, --seed, --progress) plus the experiment's own.

    Returns the parsed namespace with ``out_dir``/``run_dir`` as Paths and ``argv`` (the list
    actually parsed, for the reproduction command).
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings (seconds): for smoke tests, not for conclusions")
    parser.add_argument("--out_dir", default=None,
                        help=f"figures and tables (default experiments/results/{name})")
    parser.add_argument("--run_dir", default=None,
                        help=f"training runs and checkpoints (default runs/experiments/{name})")
    parser.add_argument("--seed", type=int, default=0, help="the PRNG seed of everything")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars")
    parser.add_argument("--retrain", action="store_true",
                        help="train again even if run_dir holds a finished run of this config")
    if add_args is not None:
        add_args(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    args.name = name
    args.out_dir = Path(args.out_dir) if args.out_dir else RESULTS_ROOT / name
    args.run_dir = Path(args.run_dir) if args.run_dir else RUNS_ROOT / name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    return args


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=REPO_ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() or None
    if commit:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "diffusion_jax", "experiments"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=10).stdout
        commit += " (with uncommitted changes)" if dirty.strip() else ""
    return commit


class Report:
    """Collects markdown sections and numbers; ``write()`` saves results.md and results.json."""

    def __init__(self, args, title: str):
        self.args, self.title = args, title
        self.start = time.time()
        self.sections: list[str] = []
        self.data: dict = {"experiment": args.name, "seed": args.seed, "quick": args.quick}
        self.figures: list[Path] = []
        self._reused_from = len(REUSED_RUNS)
        self._restored: dict | None = None

    @property
    def command(self) -> str:
        if self._restored:
            return self._restored["command"]
        return shlex.join(["python", "-m", f"experiments.{self.args.name}", *self.args.argv])

    def restore(self, previous: dict) -> None:
        """Re-render a report from a saved results.json: keep its command, wall time, date, git."""
        self._restored = previous
        self.data.update({k: v for k, v in previous.items()
                          if k in ("seed", "quick", "reused_runs", "date", "git")})

    def add(self, text: str) -> None:
        self.sections.append(text.strip("\n"))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> None:
        self.add((f"{caption}\n\n" if caption else "") + markdown_table(headers, rows))

    def figure(self, path: Path, caption: str) -> None:
        path = Path(path)
        self.figures.append(path)
        out = self.args.out_dir
        rel = path.relative_to(out) if path.is_relative_to(out) else path
        self.add(f"![{caption}]({rel})\n\n*{caption}* (`{rel}`)")

    def write(self) -> dict:
        old = self._restored
        wall = old["wall_seconds"] if old else time.time() - self.start
        self.data["wall_seconds"] = wall
        self.data["command"] = self.command
        self.data["figures"] = [str(p) for p in self.figures]
        self.data.setdefault("date", time.strftime("%Y-%m-%d %H:%M:%S"))
        self.data.setdefault("git", git_commit())
        quick = self.data.get("quick", self.args.quick)
        header = [
            f"# {self.title}",
            "",
            f"- command: `{self.command}`",
            f"- seed: {self.data.get('seed', self.args.seed)}"
            + ("  (QUICK settings: smoke test only)" if quick else ""),
            f"- wall time: {wall:.0f} s ({wall / 60:.1f} min)",
            f"- date: {self.data['date']}; git {self.data['git']}; jax "
            f"{jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s))",
        ]
        if old:
            header.append(f"- report re-rendered from results.json on "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')} (same numbers, updated text)")
        reused = self.data.get("reused_runs", []) if old else REUSED_RUNS[self._reused_from:]
        if reused:
            header.append(f"- reused finished training runs (their training time is not in the "
                          f"wall time): {', '.join(f'`{r}`' for r in reused)}")
        self.data["reused_runs"] = reused
        text = "\n".join(header) + "\n\n" + "\n\n".join(self.sections) + "\n"
        (self.args.out_dir / "results.md").write_text(text)
        (self.args.out_dir / "results.json").write_text(
            json.dumps(self.data, indent=2, default=_json_default))
        print(f"wrote {self.args.out_dir / 'results.md'} ({wall:.0f} s)")
        return self.data


def _json_default(o):
    if isinstance(o, np.ndarray | jax.Array):
        return np.asarray(o).tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def fmt(x, digits: int = 3) -> str:
    """A number for a table: fixed digits, scientific when tiny or huge."""
    if x is None:
        return "–"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 1e6):
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def pm(mean, se, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} ± {fmt(se, digits)}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Training runs


def train_or_reuse(config, workdir: Path, *, progress: bool, retrain: bool = False) -> dict:
    """``train_and_evaluate(config, workdir)``, or the summary of a finished identical run.

    A run is reused when ``workdir/summary.json`` exists and ``workdir/config.json`` equals this
    config; a workdir holding anything else (another config, an unfinished older run) is cleared
    first, since these run directories belong to the experiments.
    """
    workdir = Path(workdir)
    wanted = json.loads(json.dumps(config.to_dict(), default=str))
    summary_path, config_path = workdir / "summary.json", workdir / "config.json"
    if workdir.exists():
        same = config_path.exists() and json.loads(config_path.read_text()) == wanted
        if same and summary_path.exists() and not retrain:
            print(f"reusing the finished run in {workdir}")
            REUSED_RUNS.append(str(workdir))
            return json.loads(summary_path.read_text())
        if not same or retrain:
            shutil.rmtree(workdir)
    summary = trainer.train_and_evaluate(config, workdir, progress=progress)
    if summary.get("stopped"):
        raise RuntimeError(f"training in {workdir} stopped early ({summary['stopped']}).")
    return summary


def load_run(config, workdir: Path):
    """A finished run's ``trainer.Trained`` (kind, model, EMA params, image_shape, num_levels, step)."""
    return trainer.load_trained(config, workdir)


# ----------------------------------------------------------------------------------------------
# Plot helpers


def show_images(ax, images, *, ncols=None, title: str | None = None) -> None:
    """Draws (N, H, W, C) images in [−1, 1] as one grid on ``ax``."""
    grid = plots.image_grid(np.asarray(images), ncols=ncols)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def read_metrics(workdir: Path) -> list[dict]:
    return plots.read_metrics(Path(workdir) / "metrics.jsonl")
