"""The U-Net's GroupNorm (statistics as dots) computes flax's GroupNorm: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from diffusion_jax.models import UNet, unet
from diffusion_jax.models.unet import GroupNorm, group_norm


@pytest.mark.parametrize("shape,groups", [((4, 8, 8, 32), 8), ((3, 4, 4, 64), 32),
                                          ((2, 8, 8, 96), 32), ((2, 7, 5, 24), 8),
                                          ((2, 3, 3, 6), 1)])
def test_values_and_gradients_match_flax(shape, groups):
    k = jax.random.split(jax.random.key(0), 4)
    C = shape[-1]
    x = 2.0 * jax.random.normal(k[0], shape) + 0.5  # off-centre: the mean matters
    scale = 1.0 + 0.1 * jax.random.normal(k[1], (C,))
    bias = 0.1 * jax.random.normal(k[2], (C,))
    ct = jax.random.normal(k[3], shape)

    def flax_fn(x, scale, bias):
        y = nn.GroupNorm(num_groups=groups, epsilon=1e-6).apply(
            {"params": {"scale": scale, "bias": bias}}, x)
        return nn.silu(y)

    def ours(x, scale, bias):
        return nn.silu(group_norm(x, scale, bias, groups))

    y_ref, vjp_ref = jax.vjp(flax_fn, x, scale, bias)
    y, vjp = jax.vjp(ours, x, scale, bias)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(g_ref).max()))


def test_module_has_flax_parameters():
    x = jnp.ones((1, 4, 4, 8))
    ours = GroupNorm(4).init(jax.random.key(0), x)
    theirs = nn.GroupNorm(num_groups=4).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)


def test_unet_is_the_same_function_as_with_flax_group_norm(monkeypatch):
    """A ddpm_digits-shaped U-Net (mid attention included): the same parameters give the same
    output and parameter gradient as the same U-Net built with flax's GroupNorm."""
    model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 mid_attention=True, dropout=0.0, num_groups=8)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    t = jnp.array([1, 10, 100, 999])
    params = model.init(jax.random.key(0), x, t, train=False)["params"]
    # Perturb every leaf (scales, biases, and the 1e-10 init of the residual branches' last
    # layers) so that the output depends on every GroupNorm.
    params = jax.tree.map(
        lambda p: p + 0.05 * jnp.sin(jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)),
        params)

    def loss(p):
        return jnp.mean(jnp.square(model.apply({"params": p}, x, t, train=False) - x))

    # Jitted (op by op this test took ~45 s); each jit traces anew, so the patch below applies.
    value, grad = jax.jit(jax.value_and_grad(loss))(params)
    monkeypatch.setattr(unet, "_group_norm", lambda channels, num_groups, dtype, param_dtype,
                        name: nn.GroupNorm(num_groups=unet.group_count(channels, num_groups),
                                           epsilon=1e-6, name=name))
    value_ref, grad_ref = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(grad_ref),
                            strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()) + 1e-12,
                                   err_msg=jax.tree_util.keystr(path))
