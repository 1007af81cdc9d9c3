"""Evaluation helpers shared by the model kinds: means with standard errors, and batched
evaluations that resume where they stopped without ever reusing a stale number.

A resumable evaluation keeps its finished batches in ``<cache_dir>/eval_partial.npz`` together
with a fingerprint of everything that determines them (the caller's settings — checkpoint step,
a digest of the parameters, the schedule tables, decoder, levels, form — and the images, the key
and the batch size). A file with another fingerprint is discarded, never reused; the file is
removed once the evaluation completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

PARTIAL_NAME = "eval_partial.npz"


def mean_and_stderr(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean()), float(se)


def array_digest(x) -> str:
    """A short sha256 of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def tree_digest(tree) -> str:
    """A short sha256 over every leaf of a pytree (e.g. parameters), with the leaf paths."""
    h = hashlib.sha256()
    for path, leaf in jax.tree.leaves_with_path(jax.device_get(tree)):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(array_digest(leaf).encode())
    return h.hexdigest()[:16]


def evaluate_in_batches(batch_fn, images, key, *, batch_size: int, settings: dict, cache_dir=None,
                        desc: str = "evaluate", progress: bool = True) -> dict[str, np.ndarray]:
    """Runs ``batch_fn(images[i·b:(i+1)·b], fold_in(key, i))`` over all batches; concatenates.

    ``batch_fn`` returns a dict of arrays with a leading example axis. With ``cache_dir``,
    finished batches are saved after each batch and a rerun with the same fingerprint
    (``settings`` + images + key + batch size) continues from them; the partial file is
    deleted at the end. Trailing examples that do not fill a batch form one smaller batch.
    """
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    starts = list(range(0, n, batch_size))
    fingerprint = _fingerprint(settings, images, key, batch_size)
    path = Path(cache_dir) / PARTIAL_NAME if cache_dir is not None else None
    done: dict[str, list] = {}
    num_done = 0
    if path is not None and path.exists():
        try:
            saved = dict(np.load(path, allow_pickle=False))
            same = str(saved.pop("fingerprint")) == fingerprint
        except Exception as e:  # noqa: BLE001 - an unreadable partial file is only discarded
            log.warning("discarding unreadable partial evaluation %s (%s)", path, e)
            saved, same = {}, False
        if same:
            num_done = int(saved.pop("batches")[0])
            done = {k: [v] for k, v in saved.items()}
            log.info("resuming evaluation from %s: %d of %d batches done", path, num_done,
                     len(starts))
        else:
            log.info("partial evaluation %s belongs to other settings or parameters; starting "
                     "afresh", path)
    with tqdm(total=len(starts), initial=num_done, desc=desc, unit="batch",
              disable=not progress) as bar:
        for i, start in enumerate(starts):
            if i < num_done:
                continue
            out = jax.device_get(batch_fn(images[start:start + batch_size], jax.random.fold_in(key, i)))
            for k, v in out.items():
                done.setdefault(k, []).append(np.asarray(v))
            if path is not None and i + 1 < len(starts):
                _save_partial(path, fingerprint, done, i + 1)
            bar.update(1)
    if path is not None and path.exists():
        path.unlink()  # closed: a finished evaluation leaves no partial state behind
    return {k: np.concatenate(v) for k, v in done.items()}


def _save_partial(path: Path, fingerprint: str, done, num_batches: int) -> None:
    arrays = {k: np.concatenate(v) for k, v in done.items()}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, fingerprint=fingerprint, batches=np.array([num_batches]), **arrays)
    os.replace(tmp, path)


def _fingerprint(settings: dict, images, key, batch_size: int) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(array_digest(images).encode())
    h.update(json.dumps([np.asarray(jax.random.key_data(key)).tolist(), batch_size]).encode())
    return h.hexdigest()[:16]
