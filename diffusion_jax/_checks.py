"""Argument checks shared by the pure core: clear errors at trace time, never a silent NaN.

Two kinds of check. Static ones (dtypes, shapes, choices) and checks of concrete values raise at
once. A value that is only known at run time (a traced ``t``, data under ``jit``, a variance a
network returns) is checked with ``runtime_check``: a no-op in ordinary (unchecked) code, which
therefore jits and runs unchanged, and a reported error under ``diffusion_jax.checked`` (which is
``jax.experimental.checkify`` with the user checks switched on).

Checks belong at public entry points; inner helpers (per-t terms inside a ``vmap``, table lookups)
trust their callers.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def is_concrete(x) -> bool:
    """True when ``x`` has a value now (not an abstract tracer under jit/vmap/grad)."""
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return True


def is_int(value) -> bool:
    """True for a Python or numpy integer; False for bools (an int subclass) and everything else."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_choice(name: str, value, choices: Iterable[str]) -> None:
    """Raises ValueError naming ``name`` when ``value`` is not one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.{extra}")


def runtime_check(pred, message: str, **values) -> None:
    """Checks ``pred`` when run under ``diffusion_jax.checked``; a no-op otherwise.

    ``message`` may name ``values`` as ``{name}`` fields, filled in with their run-time values.
    Built on ``checkify.debug_check``, so unchecked code (plain ``jit``, ``grad``, ``pmap``)
    compiles to the same program as without the check.
    """
    checkify.debug_check(pred, message, **values)


def check_timestep(t, T: int, *, name: str = "t", lowest: int = 1):
    """Validates an integer timestep (scalar or shape (B,)) and returns it as a jnp int array.

    Dtype and rank are checked at trace time; the range lowest..T is checked whenever ``t`` is
    concrete, and for a traced ``t`` under ``diffusion_jax.checked`` (``runtime_check``).
    """
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer timestep in {lowest}..{T}, got dtype {t.dtype}.")
    if t.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (batch,), got shape {t.shape}.")
    if is_concrete(t):
        values = np.asarray(t)
        if values.size and (values.min() < lowest or values.max() > T):
            raise ValueError(
                f"{name} must lie in {lowest}..{T}, got values in "
                f"{int(values.min())}..{int(values.max())}."
            )
    elif t.size:
        runtime_check(jnp.all((t >= lowest) & (t <= T)),
                      f"{name} must lie in {lowest}..{T}, got values in {{lo}}..{{hi}}.",
                      lo=jnp.min(t), hi=jnp.max(t))
    return t


def check_same_shape(**arrays) -> None:
    """Raises ValueError when the named arrays do not all have the same shape."""
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"shapes must match: {described}.")


def check_floating(name: str, x) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}.")


def check_finite(name: str, x) -> None:
    """Rejects NaN or Inf in ``x``: at once when concrete, under ``checked`` when traced."""
    if is_concrete(x):
        values = np.asarray(x)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} holds {int(np.size(values) - np.isfinite(values).sum())} "
                             f"NaN or Inf values.")
    else:
        runtime_check(jnp.all(jnp.isfinite(x)), f"{name} holds NaN or Inf values.")


def check_num_levels(num_levels, *, what: str = 'decoder="discretized"') -> int:
    """``num_levels`` L of L-level data: a required int >= 2 (no silent default of 256)."""
    if num_levels is None:
        raise ValueError(
            f"{what} needs num_levels, the number of data levels L (data on the grid "
            f"2k/(L-1) - 1, k = 0..L-1; 256 for 8-bit images, 17 for the embedded digits)."
        )
    if not is_int(num_levels):
        raise TypeError(f"num_levels must be an int, got {num_levels!r}.")
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}.")
    return int(num_levels)


def level_grid_error(x, num_levels: int):
    """max over x of |x − nearest level|, in units of the level spacing 2/(L−1) (jnp or numpy)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    k = (x + 1.0) * (0.5 * (num_levels - 1))
    return xp.max(xp.abs(k - xp.round(k)))


LEVEL_TOLERANCE = 1e-3  # of a level spacing: float32 rounding of 2k/(L−1) − 1 is far below it


def check_on_level_grid(name: str, x, num_levels: int) -> None:
    """Rejects data off the grid {2k/(L−1) − 1 : k = 0..L−1} (e.g. [0, 255] pixels, or the
    wrong L): at once when concrete, under ``checked`` when traced."""
    expected = (f"{name} must lie on the {num_levels}-level grid 2k/{num_levels - 1} - 1 "
                f"(k = 0..{num_levels - 1}) in [-1, 1]")
    if is_concrete(x):
        values = np.asarray(x, np.float64)
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(f"{expected}; got values in [{lo:g}, {hi:g}]. Map L-level data "
                             f"with diffusion_jax.data.pipeline.to_model_range(images, L).")
        off = float(level_grid_error(values, num_levels))
        if off > LEVEL_TOLERANCE:
            raise ValueError(f"{expected}; a value lies {off:.3g} level spacings off it (is "
                             f"num_levels right, or are the data dequantized/continuous? then "
                             f'use decoder="gaussian").')
    else:
        runtime_check((jnp.min(x) >= -1.0 - 1e-6) & (jnp.max(x) <= 1.0 + 1e-6)
                      & (level_grid_error(x, num_levels) <= LEVEL_TOLERANCE),
                      expected + "; got values in [{lo}, {hi}].", lo=jnp.min(x), hi=jnp.max(x))
