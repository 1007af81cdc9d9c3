"""Orbax checkpoints that survive preemption: keep the last N, atomic saves, skip corrupt ones.

A checkpoint that cannot be read is moved aside to ``<directory>_quarantine/<step>-<UTC time>``
(never deleted) once an older one has been read, so the run can save that step again. A save
that fails (a full disk) raises one short ``CheckpointError`` naming the directory, the cause
and what to do; orbax's background-thread tracebacks for it are held back, not printed.

A checkpoint holds the host copy of the TrainState (parameters, optimizer state, EMA, step, key),
the data iterator position and run metadata (a fingerprint of the config that shaped the
parameters). Saving from pmap-replicated or sharded state goes through one host copy, so a run
can be restored onto any device count.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import time
import traceback
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
        self.quarantine_dir = self.directory.parent / f"{self.directory.name}_quarantine"
        self.quarantined: list[tuple[int, Path]] = []  # (step, where it went) in this session
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Saves synchronously; the previous checkpoint stays until this one is committed.

        On failure raises one ``CheckpointError`` (cause, directory, what to do); the half-written
        temporary directory is removed so that it does not hold the space a retry needs.
        """
        state = jax.device_get(state)
        _quiet_stray_write_errors()
        with _held_back_orbax_logs() as held:
            try:
                self.manager.save(int(step), args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(meta),
                ), force=True)
                self.manager.wait_until_finished()
                error = None
            except Exception as e:  # noqa: BLE001 - any I/O failure: name it, keep the old one
                error = e
        if error is None:
            held.replay()  # a successful save's warnings are shown as usual
            return
        log.debug("checkpoint %d: orbax reported %d errors while failing", step, len(held.records),
                  exc_info=error)
        self._remove_partial_save(int(step))
        raise CheckpointError(self._save_failure_message(int(step), error)) from None

    def _save_failure_message(self, step: int, error: BaseException) -> str:
        code, cause = _failure_cause(error)
        previous = self.previous_good(step)
        resume = (f"checkpoint {previous} is intact and the run resumes from it" if previous is not None
                  else "there is no earlier checkpoint, so the run starts from step 0")
        if code in (errno.ENOSPC, errno.EDQUOT):
            todo = "free space there (or use a --workdir on a larger disk) and rerun the same command"
        elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
            todo = "make that directory writable and rerun the same command"
        else:
            todo = "fix the cause and rerun the same command"
        return f"saving checkpoint {step} to {self.directory} failed: {cause}. To continue, {todo}; {resume}."

    def _remove_partial_save(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        for _ in range(20):  # tensorstore writes still in flight may re-create files for a moment
            leftovers = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            if not leftovers:
                return
            for tmp in leftovers:
                shutil.rmtree(tmp, ignore_errors=True)
            time.sleep(0.05)
        log.warning("could not remove the partial checkpoint %s; delete it to free its space", leftovers)

    def previous_good(self, step) -> int | None:
        earlier = [s for s in self.all_steps() if s < step]
        return earlier[-1] if earlier else None

    def restore_latest(self, abstract_state, *, quarantine: bool = True):
        """Restores the newest readable checkpoint: (step, state, data_state, meta) or None.

        A checkpoint that fails to read (truncated or half-written files, non-finite values) is
        skipped with a warning and the one before it is used. Once an older one has been read,
        the unreadable newer ones are moved to ``quarantine_dir`` (listed in ``self.quarantined``)
        so that their steps can be saved again; if none can be read, nothing is moved (the cause
        may be a different config, not damage) and ``CheckpointError`` says so.
        ``quarantine=False`` (a read-only user such as ``evaluate``) only skips them.
        """
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype)
                                if not isinstance(x, jax.ShapeDtypeStruct) else x, abstract_state)
        unreadable = []
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
                unreadable.append(step)
                continue
            if unreadable and quarantine:
                self._quarantine(unreadable)
            return step, restored["state"], restored["data"], restored["meta"]
        if self.all_steps():
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} (tried steps {self.all_steps()}). "
                f"If the config changed, run with the run's own config ({self.directory.parent}/"
                f"config.json); if the files are damaged, move them aside and start again.")
        return None

    def _quarantine(self, steps) -> None:
        """Moves the step directories aside (a rename; nothing is deleted) and makes orbax forget
        them. One process renames; the others wait for it before re-reading the directory."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = self.quarantine_dir / f"{step}-{stamp}"
                n = 1
                while target.exists():
                    n += 1
                    target = self.quarantine_dir / f"{step}-{stamp}-{n}"
                try:
                    self.quarantine_dir.mkdir(parents=True, exist_ok=True)
                    os.rename(source, target)
                except OSError as e:
                    log.warning("could not move unreadable checkpoint %s aside to %s (%s); move it "
                                "by hand, or saving step %d again will fail", source, target, e, step)
                    continue
                self.quarantined.append((step, target))
                log.warning("moved unreadable checkpoint %d from %s to %s (kept for inspection; "
                            "delete it when no longer needed)", step, source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("diffusion_jax_checkpoint_quarantine")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


def _check_finite_tree(tree, step) -> None:
    for leaf in jax.tree.leaves(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"checkpoint {step} holds non-finite values")


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def _failure_cause(error: BaseException) -> tuple[int | None, str]:
    """(errno or None, a one-line cause) of a failed save, looking through chained exceptions
    and tensorstore's messages ("... No space left on device [os_error_code='28']")."""
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno, os.strerror(e.errno)
        match = _OS_ERROR_CODE.search(str(e))
        if match:
            return int(match.group(1)), os.strerror(int(match.group(1)))
        e = e.__cause__ or e.__context__
    first_line = (str(error).strip().splitlines() or [""])[0]
    return None, f"{type(error).__name__}: {first_line[:300]}"


class _HeldBack(logging.Filter):
    """Holds back the WARNING+ records orbax's threads log while a save runs: a failed write
    would otherwise print one traceback per array and per commit thread."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            self.records.append(record)
            return False
        return True

    def replay(self):
        for record in self.records:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def _held_back_orbax_logs():
    held = _HeldBack()
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]  # orbax logs through absl
    for logger in loggers:
        logger.addFilter(held)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(held)


def _is_closed_loop_callback(unraisable) -> bool:
    """A tensorstore write that finished after orbax closed its event loop (the save had already
    failed) reports "Event loop is closed" from ``call_soon_threadsafe``: noise, one per array."""
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        return False
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    return any(f.name == "call_soon_threadsafe" and "asyncio" in f.filename for f in frames)


class _OrbaxOrphanTasks(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" for orbax's own writes: after a
    failed save the ones it abandoned report their copy of the error when garbage-collected."""

    def filter(self, record):
        message = record.getMessage()
        if "exception was never retrieved" not in message:
            return True
        frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info and record.exc_info[2] else []
        return not ("orbax" in message or any("orbax" in f.filename for f in frames))


def _quiet_stray_write_errors() -> None:
    """A failed save's stray writes keep reporting after ``save`` returned: "Event loop is closed"
    through ``sys.unraisablehook``, never-retrieved task errors through the "asyncio" logger,
    one traceback per array. Drops exactly those; everything else passes to the previous hook and
    the usual handlers. Installed by a save unless already in place."""
    previous = sys.unraisablehook
    if not getattr(previous, "drops_orbax_stray_writes", False):

        def hook(unraisable):
            if not _is_closed_loop_callback(unraisable):
                previous(unraisable)

        hook.drops_orbax_stray_writes = True
        sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxOrphanTasks) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrbaxOrphanTasks())
