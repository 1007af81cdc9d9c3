"""Test session set-up: 8 forced host CPU devices (must be set before JAX starts) and a persistent
compilation cache, so identical programs compiled by several tests (and by the CLI subprocesses
they start) compile once."""

import os
from pathlib import Path

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The tests check values, not speed, and most of their time is XLA compiling tiny programs:
# LLVM at -O0 compiles ~40 % faster (measured on tests/test_experiments_smoke.py: 88 -> 52 s of
# CPU) and changes no result beyond float32 round-off. Set the flag yourself to override it.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Several workers share 2 cores: a threaded BLAS per worker only oversubscribes them (a 64×64
# eigendecomposition in quality.py ran 70× slower under load with OpenBLAS threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_cache = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_compilation_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
