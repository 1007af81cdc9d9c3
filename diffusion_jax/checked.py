"""The checked mode: run-time checks of the pure core, reported through ``checkify``.

Static mistakes (dtypes, shapes, unknown options) and concrete values (a Python ``t = 0``, [0, 255]
data given eagerly) raise at once. Values known only at run time cannot raise inside ``jit``;
the core marks them with ``checkify.debug_check`` (``_checks.runtime_check``), which ordinary code
compiles away — plain ``jit``, ``grad``, ``vmap`` and ``pmap`` programs are unchanged — and which
``checked`` turns on::

    err, out = jax.jit(dj.checked(fn))(*args)
    err.throw()          # raises the first failed check's message (err.get() -> str | None)

What the checked mode reports:

- a traced ``t`` outside its range (``q_*``, the parameterization conversions, ``l_simple``,
  ``vlb_term``, ``vlb_term_at``, ``vlb_estimate``, the per-t ELBO terms);
- NaN or Inf in the data ``x0`` (``diffusion_elbo``, ``l_simple``, the ``vlb_*`` functions);
- a reverse kernel whose variance is <= 0 or NaN (what ``reverse_fn`` returns inside
  ``diffusion_elbo`` / ``vlb_term`` / ``vlb_estimate``, or ``p_var`` given to ``vlb_term_at``);
- data off the ``num_levels`` grid with ``decoder="discretized"``;
- a traced schedule with β_t outside (0, 1) or a log-SNR that is not strictly decreasing.

Wrap the outermost function and jit the result (``jax.jit(checked(fn))``). A function that was
already jitted on its own and traced once without the checked mode keeps its cached, unchecked
program inside ``checked`` (its checks are then simply absent, never wrong).
"""

from __future__ import annotations

from jax.experimental import checkify


def checked(fn, *, errors=checkify.user_checks):
    """``fn`` -> ``checked_fn(*args, **kwargs) -> (error, out)`` with the core's run-time checks on.

    ``checkify.checkify(fn, errors=errors)``: by default the user checks (the core's own);
    add ``checkify.nan_checks`` or ``checkify.index_checks`` for every operation's NaNs or
    out-of-bounds indexing (noisier: a ``jnp.where`` branch that is discarded can hold a NaN).
    """
    return checkify.checkify(fn, errors=errors)
