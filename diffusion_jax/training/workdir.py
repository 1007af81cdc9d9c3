"""A run's workdir kept trustworthy: one trainer at a time, atomic records, each step logged once.

- ``RunLock``: an exclusive ``fcntl.flock`` on ``<workdir>/run.lock``. The kernel drops it when
  the holder exits, however it exits (``kill -9`` included), so a crashed run never blocks its
  restart; the holder's pid, host, start time and command are written into the file for the
  message a second trainer gets.
- ``write_json_atomic``: temp file + fsync + ``os.replace``; a failure leaves the old file as it was.
- ``MetricsLog``: ``metrics.jsonl`` (and TensorBoard scalars) that hold each step once across
  resumes: rows after the restored checkpoint are dropped on open, because those steps run again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import numbers
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another live process holds the workdir's run lock; the message names it."""


class RunLock:
    """``with RunLock(workdir):`` holds ``<workdir>/run.lock`` exclusively, across processes.

    Raises ``WorkdirLocked`` if a live process holds it. A second ``RunLock`` on the same workdir
    in the same process is refused too (flock locks belong to the open file, not the process).
    """

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirLocked(f"workdir {self.workdir} is in use by {holder}; wait for it to "
                                f"finish or stop it, or use another --workdir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, f"cannot write the lock file {self.path}: {e.strerror}; free "
                                   f"space or fix permissions there, or use another --workdir") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the file stays (unlinking a flock file races); only its record goes
        finally:
            os.close(fd)  # closing the only descriptor releases the lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return (f"process {info['pid']} on {info['host']} since {info['started']} "
                f"(command: {info['command']})")
    except (OSError, ValueError, KeyError, TypeError):  # written a moment ago, not yet readable
        return "another process (its details are not written yet)"


def write_json_atomic(path, obj, *, indent: int | None = 2, default=None) -> None:
    """Writes ``obj`` as JSON to ``path`` so that readers see the old file or the new one, never a
    part: serialize first, then temp file in the same directory, fsync, ``os.replace``."""
    _write_text_atomic(Path(path), json.dumps(obj, indent=indent, default=default) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; records are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` ([] if it does not exist). A line that is not JSON (cut
    short by a crash mid-write) is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("%s line %d is not JSON (cut short by a crash?); skipped", path, number)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def row_kind(record: dict) -> tuple[str, ...]:
    """The kind of a metrics row: the sorted prefixes of its ``prefix/name`` keys, e.g. ("train",)
    for a training row, ("eval",) for a periodic evaluation. A step holds at most one row per kind."""
    return tuple(sorted({k.split("/", 1)[0] for k in record if "/" in k}))


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard scalars, holding each (step, kind) once across resumes.

    On open, rows with ``step > resume_step`` are dropped (the file is rewritten atomically), as
    are repeats of an earlier (step, kind) left by older versions; the latest repeat is kept.
    ``write`` then appends one flushed JSON line per row and refuses (``ValueError``) a second row
    of the same (step, kind) — see ``row_kind``. Every numeric scalar other than "step" and "time"
    also goes to TensorBoard under its key as tag, at global step ``record["step"]``; the writer
    is opened with ``purge_step=resume_step + 1`` so TensorBoard hides the dropped steps of earlier
    sessions. ``enabled=False`` (a non-main process) writes nothing and touches no file.
    """

    def __init__(self, path, *, resume_step: int, tensorboard_dir=None, enabled: bool = True):
        self.path = Path(path)
        self.resume_step = int(resume_step)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._seen: set[tuple[int, tuple[str, ...]]] = set()

    def __enter__(self) -> MetricsLog:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = self._kept_rows(read_metrics(self.path))
            _write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")
        if self.tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            # A unique file name: two sessions started within one second must not share a file.
            self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=self.resume_step + 1,
                                     filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        return self

    def _kept_rows(self, rows) -> list[dict]:
        latest = {}
        for i, row in enumerate(rows):
            step = row.get("step")
            if isinstance(step, numbers.Number) and step <= self.resume_step:
                latest[(step, row_kind(row))] = i
        dropped = len(rows) - len(latest)
        if dropped:
            log.info("%s: dropped %d rows logged after checkpoint %d (or repeated); those steps "
                     "run again", self.path, dropped, self.resume_step)
        self._seen = set(latest)
        return [rows[i] for i in sorted(latest.values())]

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError("MetricsLog.write outside its `with` block")
        step = int(record["step"])
        key = (step, row_kind(record))
        if key in self._seen:
            raise ValueError(f"{self.path} already holds a {'/'.join(key[1]) or 'plain'} row for "
                             f"step {step}; each (step, kind) is logged once")
        line = json.dumps(record, default=_to_json) + "\n"
        self._file.write(line)
        self._file.flush()
        self._seen.add(key)
        if self._tb is not None:
            for tag, value in record.items():
                if tag in ("step", "time") or isinstance(value, bool | np.bool_):
                    continue
                if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and value.ndim == 0
                                                       and np.issubdtype(value.dtype, np.number)):
                    self._tb.add_scalar(tag, float(value), global_step=step)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __exit__(self, *exc) -> None:
        self.close()


def _to_json(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
