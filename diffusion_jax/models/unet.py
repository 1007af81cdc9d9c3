"""The DDPM U-Net (Ho et al. 2020, ``diffusion_tf/models/unet.py``) as a Flax Linen module.

Layout is NHWC throughout. The network maps a noisy image x_t of shape (B, H, W, C) and an
integer timestep t to a prediction of shape (B, H, W, C) (ε, x̂_0 or v, see ``prediction``) or
(B, H, W, 2C) with ``learned_variance=True``.

Architecture (identical wiring to DDPM and to diffusers' ``UNet2DModel``):

    temb  = Dense(4ch) ∘ SiLU ∘ Dense(4ch) ∘ sinusoidal(t, ch)
    hs    = [conv_in(x)]
    down  : per level ℓ, ``num_res_blocks`` × ResBlock(ch·ch_mult[ℓ]) (+ attention at the
            resolutions in ``attn_resolutions``), each output pushed to hs; then a stride-2
            3×3 conv (all levels but the last), also pushed to hs
    mid   : ResBlock, attention (``mid_attention``), ResBlock
    up    : per level in reverse, (``num_res_blocks`` + 1) × ResBlock(concat[h, hs.pop()])
            (+ attention), then nearest ×2 + 3×3 conv (all levels but the first)
    out   : GroupNorm, SiLU, 3×3 conv

ResBlock(x, temb) = shortcut(x) + conv2(dropout(SiLU(GN(conv1(SiLU(GN(x))) + W·SiLU(temb)))))
where the shortcut is a 1×1 conv ("NIN") when the channel count changes.

Initialisation follows DDPM: ``variance_scaling(1, "fan_avg", "uniform")`` kernels, zero
biases, and the layers that DDPM marks ``init_scale=0`` (each ResBlock's conv2, each attention
output projection and conv_out) use scale 1e-10 rather than exact zeros, as ``diffusion_tf`` did;
every residual branch then starts near the identity while all gradients stay non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from diffusion_jax._checks import check_choice

PREDICTIONS = ("eps", "x0", "v")

# DDPM's default_init(scale): variance scaling over fan_avg, uniform; scale 0 means 1e-10.
_default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_tiny_init = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")

Dtype = Any


def num_params(params) -> int:
    """Total number of scalars in a parameter pytree (also works on ``jax.eval_shape`` output)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def timestep_embedding(t, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """DDPM's sinusoidal timestep embedding, shape (*t.shape, dim), float32.

    With h = dim // 2 and ω_i = max_period^(−i/(h−1)) for i = 0..h−1:
        emb[..., i] = sin(t ω_i),   emb[..., h + i] = cos(t ω_i),
    and a trailing zero column when ``dim`` is odd. ``t`` is embedded exactly as given (our
    timesteps are 1..T; DDPM's code fed 0..T−1 — a shift the network absorbs).
    """
    if dim < 4:
        raise ValueError(f"dim must be at least 4 for the sinusoidal embedding, got {dim}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = jnp.asarray(t, jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def group_count(channels: int, requested: int) -> int:
    """The largest number of groups ≤ ``requested`` that divides ``channels``."""
    groups = max(1, min(requested, channels))
    while channels % groups:
        groups -= 1
    return groups


def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-6):
    """GroupNorm of NHWC ``x`` (B, H, W, C) with per-channel ``scale`` and ``bias`` (C,), float32.

    y = (x − μ) / √(σ² + ε) · scale + bias, with μ and σ² = E[x²] − μ² over the H·W positions
    and the C/G channels of each group of each example: the function of
    ``flax.linen.GroupNorm`` (which also uses E[x²] − μ²). The group statistics are two dots of
    the (B, H·W, C) activations with a (C, G) group-membership matrix, and the normalisation is
    one affine map per (b, c): on CPU XLA then runs dots instead of reduction fusions that it
    re-evaluates per consumer (the ddpm_digits train step 1.07× faster, bench/README.md).
    """
    x = x.astype(jnp.float32)
    member, mean, rstd = group_statistics(x, num_groups, epsilon)
    a = (rstd @ member.T) * scale.astype(jnp.float32)  # (B, C)
    b = bias.astype(jnp.float32) - (mean @ member.T) * a
    return x * a[:, None, None, :] + b[:, None, None, :]


def group_statistics(x, num_groups: int, epsilon: float = 1e-6):
    """The (C, G) group-membership matrix and each group's μ and 1/√(σ² + ε), (B, G), of NHWC
    float32 ``x``, σ² = E[x²] − μ² (see :func:`group_norm`)."""
    B, H, W, C = x.shape
    per_group = C // num_groups
    member = (jnp.arange(C)[:, None] // per_group == jnp.arange(num_groups)[None, :]).astype(
        jnp.float32)
    n = H * W * per_group
    flat = x.reshape(B, H * W, C)
    mean = jnp.einsum("bpc,cg->bg", flat, member) / n
    mean_sq = jnp.einsum("bpc,cg->bg", flat * flat, member) / n
    rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + epsilon)
    return member, mean, rstd


class GroupNorm(nn.Module):
    """:func:`group_norm` with ``flax.linen.GroupNorm``'s parameters (``scale`` ones, ``bias``
    zeros, shape (C,)): the same function and the same checkpoints."""

    num_groups: int
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (C,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (C,), self.param_dtype)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(self.dtype)


def _group_norm(channels: int, num_groups: int, dtype: Dtype, param_dtype: Dtype, name: str):
    # Statistics in float32 even for bf16 compute.
    return GroupNorm(group_count(channels, num_groups), 1e-6, dtype=dtype,
                     param_dtype=param_dtype, name=name)


class ResBlock(nn.Module):
    """DDPM residual block with a time-embedding projection; (B,H,W,C_in) → (B,H,W,out_ch)."""

    out_ch: int
    num_groups: int = 32
    dropout: float = 0.0
    deterministic: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        in_ch = x.shape[-1]
        h = nn.silu(_group_norm(in_ch, self.num_groups, name="norm1", **kw)(x))
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=_default_init, name="conv1", **kw)(h)
        proj = nn.Dense(self.out_ch, kernel_init=_default_init, name="temb_proj", **kw)
        h = h + proj(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_group_norm(self.out_ch, self.num_groups, name="norm2", **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=_tiny_init, name="conv2", **kw)(h)
        if in_ch != self.out_ch:
            # DDPM's "nin_shortcut": a 1×1 conv, i.e. a Dense over the channel axis.
            x = nn.Dense(self.out_ch, kernel_init=_default_init, name="nin_shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over the H·W positions with a residual; (B,H,W,C) → (B,H,W,C).

    h = GN(x); q, k, v = h W_q, h W_k, h W_v (one fused Dense);
    out = x + softmax(q kᵀ / √d) v W_o, per head with d = C / num_heads (DDPM: one head).
    """

    num_heads: int = 1
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        B, H, W, C = x.shape
        if C % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide the channel count {C} of the attention "
                "block."
            )
        h = _group_norm(C, self.num_groups, name="norm", **kw)(x)
        qkv = nn.Dense(3 * C, kernel_init=_default_init, name="qkv", **kw)(h)
        qkv = qkv.reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # Logits and softmax are computed in float32 by the XLA implementation.
        out = jax.nn.dot_product_attention(q, k, v).reshape(B, H, W, C)
        out = nn.Dense(C, kernel_init=_tiny_init, name="proj_out", **kw)(out)
        return x + out


def _upsample_nearest(x):
    """(B, H, W, C) → (B, 2H, 2W, C) by repeating each pixel 2×2."""
    B, H, W, C = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C))
    return x.reshape(B, 2 * H, 2 * W, C)


class UNet(nn.Module):
    """DDPM U-Net: ``__call__(x, t, *, train) -> prediction``.

    Args (fields):
      ch: base channel count; level ℓ has ``ch * ch_mult[ℓ]`` channels, temb has ``4 * ch``.
      ch_mult: channel multipliers, one per resolution level; there are len(ch_mult) − 1
        downsamplings, so H and W must be divisible by 2^(len(ch_mult) − 1).
      num_res_blocks: ResBlocks per level on the way down (the way up has one more).
      attn_resolutions: spatial sizes (image height at that level) that get an attention block
        after every ResBlock, e.g. (16,) for DDPM CIFAR-10; () for none.
      mid_attention: whether the middle block has attention between its two ResBlocks.
      num_heads: attention heads (DDPM: 1).
      dropout: dropout rate inside every ResBlock; active only with ``train=True``, where it
        draws from the ``'dropout'`` rng collection.
      num_groups: GroupNorm groups, clipped to the largest divisor of each channel count.
      prediction: what the output means, one of "eps", "x0", "v". Stored for the caller (the
        loss and samplers); it does not change the network.
      learned_variance: if True the output has 2C channels: ``out[..., :C]`` is the prediction
        and ``out[..., C:]`` is the raw interpolation coefficient v of Nichol & Dhariwal (2021),
        Σ = exp(v' log β_t + (1 − v') log β̃_t) with v' = (v + 1) / 2; the network does not
        squash it — the caller maps it.
      dtype: compute dtype (e.g. jnp.bfloat16); the output is always returned as float32.
      param_dtype: parameter dtype (float32).
      remat: rematerialise each ResBlock in the backward pass (saves memory, costs compute).
      out_channels: channels of the prediction; None (the default) means the input's C (a
        network whose input carries extra channels, e.g. Fourier features, sets it).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    mid_attention: bool = True
    num_heads: int = 1
    dropout: float = 0.1
    num_groups: int = 32
    prediction: str = "eps"
    learned_variance: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    out_channels: int | None = None

    def __post_init__(self):
        check_choice("prediction", self.prediction, PREDICTIONS)
        if self.ch < 4:
            raise ValueError(f"ch must be at least 4, got {self.ch}.")
        if len(self.ch_mult) == 0 or any(int(m) < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got "
                             f"{self.ch_mult!r}.")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}.")
        if self.out_channels is not None and (isinstance(self.out_channels, bool) or not isinstance(
                self.out_channels, int) or self.out_channels < 1):
            raise ValueError(f"out_channels must be None or a positive int, got "
                             f"{self.out_channels!r}.")
        if self.num_groups < 1 or self.num_heads < 1:
            raise ValueError(f"num_groups and num_heads must be >= 1, got {self.num_groups} and "
                             f"{self.num_heads}.")
        super().__post_init__()

    def check_image_shape(self, height: int, width: int) -> None:
        """Raises ValueError unless H and W halve evenly len(ch_mult) − 1 times."""
        factor = 2 ** (len(self.ch_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} cannot be downsampled {len(self.ch_mult) - 1} "
                f"times evenly (ch_mult={tuple(self.ch_mult)}): H and W must be multiples of "
                f"{factor}."
            )

    @nn.compact
    def __call__(self, x, t, *, train: bool):
        """x: (B, H, W, C) float; t: int (B,) or scalar → (B, H, W, C or 2C) float32."""
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must have shape (B, H, W, C), got shape {x.shape}.")
        B, H, W, C = x.shape
        self.check_image_shape(H, W)
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (B,))
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got shape {t.shape}.")

        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block_cls = nn.remat(ResBlock) if self.remat else ResBlock

        def res_block(h, out_ch, name):
            block = block_cls(out_ch, self.num_groups, self.dropout, not train, name=name, **kw)
            return block(h, temb)

        def attn_block(h, name):
            return AttnBlock(self.num_heads, self.num_groups, name=name, **kw)(h)

        temb = timestep_embedding(t, self.ch)
        temb = nn.Dense(4 * self.ch, kernel_init=_default_init, name="temb_dense0", **kw)(temb)
        temb = nn.Dense(4 * self.ch, kernel_init=_default_init, name="temb_dense1", **kw)(
            nn.silu(temb)
        )

        hs = [nn.Conv(self.ch, (3, 3), kernel_init=_default_init, name="conv_in", **kw)(x)]
        levels = len(self.ch_mult)
        for lvl, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = res_block(hs[-1], self.ch * mult, f"down{lvl}_block{i}")
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block(h, f"down{lvl}_attn{i}")
                hs.append(h)
            if lvl != levels - 1:
                h = hs[-1]
                down = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding="SAME",
                               kernel_init=_default_init, name=f"down{lvl}_downsample", **kw)
                hs.append(down(h))

        h = hs[-1]
        h = res_block(h, h.shape[-1], "mid_block1")
        if self.mid_attention:
            h = attn_block(h, "mid_attn")
        h = res_block(h, h.shape[-1], "mid_block2")

        for lvl in reversed(range(levels)):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = res_block(h, self.ch * self.ch_mult[lvl], f"up{lvl}_block{i}")
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block(h, f"up{lvl}_attn{i}")
            if lvl != 0:
                h = nn.Conv(h.shape[-1], (3, 3), kernel_init=_default_init,
                            name=f"up{lvl}_upsample", **kw)(_upsample_nearest(h))
        assert not hs, "every skip connection is consumed"

        h = nn.silu(_group_norm(h.shape[-1], self.num_groups, name="norm_out", **kw)(h))
        pred_ch = C if self.out_channels is None else self.out_channels
        out_ch = 2 * pred_ch if self.learned_variance else pred_ch
        h = nn.Conv(out_ch, (3, 3), kernel_init=_tiny_init, name="conv_out", **kw)(h)
        return h.astype(jnp.float32)


def unet_ddpm_cifar10(**overrides) -> UNet:
    """DDPM's CIFAR-10 network (Ho et al. 2020, App. B): 35.7 M parameters on 32×32×3.

    ch 128, ch_mult (1, 2, 2, 2), 2 ResBlocks per level, attention at 16×16 and in the middle,
    dropout 0.1, GroupNorm with 32 groups.
    """
    config = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                  mid_attention=True, dropout=0.1, num_groups=32)
    return UNet(**{**config, **overrides})


def unet_benchmark(**overrides) -> UNet:
    """The benchmark network for 28×28×1 (1,539,329 parameters on one input channel).

    Same architecture as diffusers ``UNet2DModel(sample_size=28, in_channels=1,
    out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=3×"DownBlock2D", up_block_types=3×"UpBlock2D")`` (≈1.54 M parameters):
    ch 32, ch_mult (1, 2, 2), 2 ResBlocks per level (3 on the way up), GroupNorm with 8 groups,
    one single-head attention block in the 7×7 middle block only, no dropout (diffusers'
    default).
    """
    config = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(),
                  mid_attention=True, num_heads=1, dropout=0.0, num_groups=8)
    return UNet(**{**config, **overrides})


def unet_digits(**overrides) -> UNet:
    """A small network for the 8×8 sklearn digits: ch 32, ch_mult (1, 2), 2 ResBlocks per level,
    attention at 4×4 and in the middle, GroupNorm with 8 groups, dropout 0.1."""
    config = dict(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,),
                  mid_attention=True, dropout=0.1, num_groups=8)
    return UNet(**{**config, **overrides})
