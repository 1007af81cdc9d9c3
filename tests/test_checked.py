"""The checked mode: run-time faults are reported under jit; unchecked code runs unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj

SCHED = dj.linear_schedule(10)
KEY = jax.random.key(0)
X0 = jax.random.uniform(jax.random.key(1), (4, 3), minval=-1, maxval=1)


def _reverse(var_scale=1.0):
    return lambda x_t, t: (0.9 * x_t, var_scale * dj.schedules.at(SCHED.betas, t, x_t))


def _run(fn, *args):
    """(error message or None, output) of jit(checked(fn)), and the unchecked jit's output."""
    err, out = jax.jit(dj.checked(fn))(*args)
    return err.get(), out, jax.jit(fn)(*args)


def test_good_inputs_pass_and_give_the_unchecked_numbers():
    x0 = 2 * jnp.round((X0 + 1) * 8) / 16 - 1  # on the 17-level grid

    def everything(x):  # one program, so one compilation checked and one unchecked
        out = {form: dj.diffusion_elbo(_reverse(), SCHED, x, KEY, form=form)["total"]
               for form in ("ddpm", "monte_carlo")}
        out["discretized"] = dj.diffusion_elbo(_reverse(), SCHED, x, KEY, decoder="discretized",
                                               num_levels=17)["total"]
        out["vlb_estimate"] = dj.vlb_estimate(_reverse(), SCHED, x, KEY,
                                              decoder="gaussian")["neg_elbo"]
        out["l_simple"] = dj.l_simple(lambda x_t, t: 0.5 * x_t, SCHED, x, KEY, t=jnp.full((4,), 3))
        return out

    message, out, unchecked = _run(everything, x0)
    assert message is None, message
    for name in out:
        np.testing.assert_array_equal(out[name], unchecked[name], err_msg=name)


@pytest.mark.parametrize("bad_t", [0, 11])
def test_traced_t_out_of_range(bad_t):
    l_simple = lambda t: dj.l_simple(lambda x_t, tt: 0.5 * x_t, SCHED, X0, KEY, t=t)
    message, _, unchecked = _run(l_simple, jnp.full((4,), bad_t, jnp.int32))
    assert f"t must lie in 1..10, got values in {bad_t}..{bad_t}" in message
    assert unchecked.shape == (4,)  # the unchecked program still runs (garbage in, as before)
    vlb = lambda t: dj.vlb_term(_reverse(), SCHED, X0, t, KEY, decoder="gaussian")
    message, _, _ = _run(vlb, jnp.array([1, 2, bad_t, 3], jnp.int32))
    assert "t must lie in 1..10" in message


def test_nan_data():
    x = X0.at[1, 2].set(jnp.nan)
    elbo = lambda x: dj.diffusion_elbo(_reverse(), SCHED, x, KEY)["total"]
    message, _, unchecked = _run(elbo, x)
    assert message.startswith("x0 holds NaN or Inf")
    assert np.isnan(unchecked[1])
    message, _, _ = _run(lambda x: dj.l_simple(lambda x_t, t: x_t, SCHED, x, KEY), x)
    assert message.startswith("x0 holds NaN or Inf")


def test_reverse_fn_variance_not_positive():
    def elbos(x, scale):  # the variance scale is traced: one program for every scale
        return [dj.diffusion_elbo(_reverse(scale), SCHED, x, KEY, form=form)["total"]
                for form in ("ddpm", "monte_carlo")]

    checked = jax.jit(dj.checked(elbos))
    for scale in (-1.0, 0.0):
        err, _ = checked(X0, scale)
        assert "reverse_fn returned a variance that is not positive" in err.get(), err.get()
    assert checked(X0, 1.0)[0].get() is None
    assert all(v.shape == (4,) for v in jax.jit(elbos)(X0, -1.0))  # unchecked: runs as before
    # The same from vlb_term_at, the training loss's entry point (only t >= 2 bad: the last
    # reverse steps, e.g. a network's learned variance collapsing).
    t = jnp.array([1, 2, 3, 4], jnp.int32)
    var = jnp.where(t[:, None] >= 2, 0.0, 0.1) * jnp.ones_like(X0)
    at = lambda x, t, v: dj.vlb_term_at(SCHED, x, 0.9 * x, t, x, v, decoder="gaussian")
    message, _, _ = _run(at, X0, t, var)
    assert "vlb_term_at got a variance that is not positive (min 0.0) at t in 1..4" in message


def test_data_off_the_level_grid_under_jit():
    elbo = lambda x: dj.diffusion_elbo(_reverse(), SCHED, x, KEY, decoder="discretized",
                                       num_levels=17)["total"]
    checked = jax.jit(dj.checked(elbo))
    message = checked(jnp.round((X0 + 1) * 127.5))[0].get()  # [0, 255] pixels
    assert "x0 must lie on the 17-level grid" in message and "got values in [61.0, 251.0]" in message
    message = checked(X0)[0].get()  # continuous values in [-1, 1]
    assert "x0 must lie on the 17-level grid" in message


def test_traced_schedule_values():
    message, _, _ = _run(lambda b: dj.schedule_from_betas(b).alpha_bars, jnp.array([0.1, 1.2]))
    assert "open interval (0, 1)" in message
    message, _, _ = _run(lambda s: dj.schedule_from_log_snr(s).betas, jnp.array([1.0, 2.0]))
    assert "strictly decreasing" in message


def test_unchecked_program_holds_no_checks():
    """The checks compile away: the unchecked HLO equals that of the same math without them."""
    elbo = lambda x: dj.diffusion_elbo(_reverse(), SCHED, x, KEY)["total"]
    hlo = jax.jit(elbo).lower(X0).as_text()
    assert "callback" not in hlo and "check" not in hlo.lower()
