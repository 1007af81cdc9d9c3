"""Argument checks shared by the pure core: clear errors at trace time, never a silent NaN."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np


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


def check_timestep(t, T: int, *, name: str = "t", lowest: int = 1):
    """Validates an integer timestep (scalar or shape (B,)) and returns it as a jnp int array.

    Dtype and rank are checked at trace time; the range lowest..T is checked whenever ``t`` is
    concrete (under jit a traced ``t`` cannot be range-checked without checkify).
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
