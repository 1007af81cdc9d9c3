"""Orbax checkpoints that survive preemption: keep the last N, atomic saves, skip corrupt ones.

A checkpoint holds the host copy of the TrainState (parameters, optimizer state, EMA, step, key),
the data iterator position and run metadata (a fingerprint of the config that shaped the
parameters). Saving from pmap-replicated or sharded state goes through one host copy, so a run
can be restored onto any device count.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and what to do."""


class Checkpointer:
    def __init__(self, directory, *, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {e}") from e
        if not os.access(self.directory, os.W_OK):
            raise CheckpointError(f"checkpoint directory {self.directory} is not writable.")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Saves synchronously; the previous checkpoint stays until this one is committed."""
        state = jax.device_get(state)
        try:
            self.manager.save(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ), force=True)
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - any I/O failure: name it, keep the old one
            raise CheckpointError(
                f"saving checkpoint {step} to {self.directory} failed ({type(e).__name__}: {e}); "
                f"the previous checkpoint {self.previous_good(step)} is intact."
            ) from e

    def previous_good(self, step) -> int | None:
        earlier = [s for s in self.all_steps() if s < step]
        return earlier[-1] if earlier else None

    def restore_latest(self, abstract_state):
        """Restores the newest readable checkpoint: (step, state, data_state, meta) or None.

        A checkpoint that fails to read (truncated or half-written files) is skipped with a
        warning and the one before it is used.
        """
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype)
                                if not isinstance(x, jax.ShapeDtypeStruct) else x, abstract_state)
        for step in reversed(self.all_steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ))
                _check_finite_tree(restored["state"], step)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                log.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one",
                            step, self.directory, type(e).__name__, str(e)[:200])
                continue
            return step, restored["state"], restored["data"], restored["meta"]
        if self.all_steps():
            raise CheckpointError(f"no readable checkpoint in {self.directory} "
                                  f"(tried steps {self.all_steps()}).")
        return None

    def close(self) -> None:
        self.manager.close()


def _check_finite_tree(tree, step) -> None:
    for leaf in jax.tree.leaves(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"checkpoint {step} holds non-finite values")
