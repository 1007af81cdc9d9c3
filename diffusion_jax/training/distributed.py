"""Multi-host set-up: ``jax.distributed.initialize`` from arguments, a config or the environment.

A multi-host job runs the same program in P processes (one per host, or several on one host).
Each must call :func:`maybe_initialize` before anything touches a JAX device. Then
``jax.devices()`` lists all P processes' devices, ``jax.process_index()`` is this process's
rank, each process reads rows [i·B/P, (i+1)·B/P) of every global batch
(``make_dataset(..., shard_index=i, shard_count=P)``) and ``ParallelStep(mode="sharding")``
assembles the global batch with ``jax.make_array_from_process_local_data``.

Settings come from the arguments, else from the environment variables

    JAX_COORDINATOR_ADDRESS   host:port of process 0's coordinator service, e.g. 10.0.0.1:1234
    JAX_NUM_PROCESSES         P
    JAX_PROCESS_ID            this process's rank i in 0..P-1

With none of them set (or P = 1) it does nothing: a single-process run. On CPU the
cross-process collectives are gloo (``jax_cpu_collectives_implementation``, jax's default).
For a cluster that jax detects by itself (Slurm, Open MPI, Cloud TPU), call
``jax.distributed.initialize()`` directly instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax

ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    coordinator_address: str
    num_processes: int
    process_id: int


def _int_setting(name: str, env_name: str, value, environ: Mapping[str, str]) -> int | None:
    if value is None:
        raw = environ.get(env_name, "").strip()
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ValueError(
                f"environment variable {env_name} must be an int, got {raw!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    return value


def resolve_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None,
                     environ: Mapping[str, str] | None = None) -> DistributedSettings | None:
    """The distributed settings from the arguments (first) or ``environ`` (default os.environ).

    Returns None for a single-process run (nothing set, or num_processes = 1). Raises
    ValueError naming what is missing or malformed when a multi-process run is half set up.
    """
    environ = os.environ if environ is None else environ
    if coordinator_address is None:
        coordinator_address = environ.get(ENV_COORDINATOR_ADDRESS, "").strip() or None
    num_processes = _int_setting("num_processes", ENV_NUM_PROCESSES, num_processes, environ)
    process_id = _int_setting("process_id", ENV_PROCESS_ID, process_id, environ)
    if num_processes is None and coordinator_address is None and process_id is None:
        return None
    if num_processes is None:
        raise ValueError(
            f"multi-host set-up needs the number of processes: pass num_processes or set "
            f"{ENV_NUM_PROCESSES} (got coordinator_address={coordinator_address!r}, "
            f"process_id={process_id!r}).")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
    if num_processes == 1:
        if process_id not in (None, 0):
            raise ValueError(f"process_id must be 0 with num_processes=1, got {process_id}.")
        return None
    missing = [f"{arg} (or {env})" for arg, env, value in (
        ("coordinator_address", ENV_COORDINATOR_ADDRESS, coordinator_address),
        ("process_id", ENV_PROCESS_ID, process_id)) if value is None]
    if missing:
        raise ValueError(f"num_processes={num_processes} needs {' and '.join(missing)}.")
    if not isinstance(coordinator_address, str) or ":" not in coordinator_address or not (
            coordinator_address.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"coordinator_address must be 'host:port' (e.g. '10.0.0.1:1234'), got "
                         f"{coordinator_address!r}.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in 0..{num_processes - 1}, got {process_id}.")
    return DistributedSettings(coordinator_address, num_processes, process_id)


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, initialization_timeout: int = 300) -> bool:
    """Calls ``jax.distributed.initialize`` for a multi-process run; a no-op for one process.

    Arguments win over the environment variables (module docstring). Must run before any
    JAX computation or ``jax.devices()`` call. Calling it again with the same settings after a
    successful initialization does nothing.

    Returns:
      True if this is a multi-process run (now initialized), False for a single process.
    """
    settings = resolve_settings(coordinator_address, num_processes, process_id)
    if settings is None:
        return False
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (settings.num_processes,
                                                          settings.process_id):
            raise RuntimeError(
                f"jax.distributed is already initialized as process {jax.process_index()} of "
                f"{jax.process_count()}, not {settings.process_id} of {settings.num_processes}.")
        return True
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id,
                               initialization_timeout=initialization_timeout)
    return True


def maybe_initialize_from_config(config) -> bool:
    """:func:`maybe_initialize` from an optional ``config.distributed`` section.

    Keys (all optional): ``coordinator_address`` ("" = from the environment),
    ``num_processes`` (0 = from the environment), ``process_id`` (-1 = from the environment).
    """
    section = config.get("distributed") if hasattr(config, "get") else None
    if section is None:
        return maybe_initialize()
    address = section.get("coordinator_address") or None
    num = section.get("num_processes") or None
    pid = section.get("process_id")
    pid = None if pid is None or pid < 0 else pid
    return maybe_initialize(address, num, pid)


def process_shard() -> tuple[int, int]:
    """(shard_index, shard_count) of this process's data: (process_index, process_count)."""
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True on process 0: the one that writes logs, metrics files and figures."""
    return jax.process_index() == 0


def use_cpu_devices(count: int) -> None:
    """Gives JAX's CPU backend ``count`` host devices (``config.train.cpu_devices``; 0: leave
    JAX's default). Must run before anything touches a JAX device; if the CPU backend is
    already running with another count, a ValueError says how to set it instead.

    Only the CPU backend is affected: on a GPU or TPU ``jax.devices()`` still lists those.
    """
    if not count:
        return
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
        return
    except RuntimeError:  # the backend already started: fine if it has the count asked for
        pass
    have = len(jax.devices("cpu"))
    if have != count:
        raise ValueError(
            f"config.train.cpu_devices={count}, but JAX's CPU backend already started with "
            f"{have} device{'s' * (have != 1)}. Set it before any JAX computation "
            f"(jax.config.update('jax_num_cpu_devices', {count}) or XLA_FLAGS="
            f"--xla_force_host_platform_device_count={count}), or set "
            f"config.train.cpu_devices=0.")
