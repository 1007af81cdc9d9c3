"""PNG figures a person looks at: sample grids, loss curves, per-timestep ELBO contributions."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def image_grid(images, *, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) images in [−1, 1] -> one uint8 grid (rows × cols), padded with white."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
    out = (grid * 255).round().astype(np.uint8)
    return out[..., 0] if c == 1 else out


def save_image_grid(images, path, *, ncols=None, scale: int = 4) -> Path:
    """Writes a PNG grid of images in [−1, 1], upscaled ``scale``× (nearest) for small images."""
    grid = image_grid(images, ncols=ncols)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path, out_path, *, keys=("loss",)) -> Path | None:
    """Loss (and other train/eval series) against step, log-scaled y when all positive."""
    records = read_metrics(metrics_path)
    series = {}
    for rec in records:
        for k in keys:
            for prefix in ("train", "eval"):
                name = f"{prefix}/{k}"
                if name in rec:
                    series.setdefault(name, []).append((rec["step"], rec[name]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in series.items():
        steps, values = zip(*pts, strict=True)
        ax.plot(steps, values, label=name, marker="." if name.startswith("eval") else None)
    if all(v > 0 for pts in series.values() for _, v in pts):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)


def plot_per_t(per_t_bpd, out_path, *, title="ELBO contribution per timestep") -> Path:
    """Bits/dim contributed by each term t = 1..T (L_0 at t = 1, the KLs after)."""
    per_t_bpd = np.asarray(per_t_bpd)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ts = np.arange(1, per_t_bpd.shape[0] + 1)
    ax.plot(ts, per_t_bpd)
    ax.set_xscale("log")
    if np.all(per_t_bpd > 0):
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("bits/dim")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)
