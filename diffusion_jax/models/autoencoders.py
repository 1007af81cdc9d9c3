"""Autoencoders and VAEs for images of shape (..., H, W, C) in [−1, 1] (Flax Linen).

Two families of encoder/decoder, chosen with ``kind``:

- ``"mlp"``: flatten → Dense(h_1) → SiLU → … → Dense(out); works for any image size.
- ``"conv"``: per stage a stride-2 3×3 conv (channels ``hidden[i]``) + SiLU, then flatten →
  Dense(out). The decoder mirrors it: Dense → reshape to (H/2^n, W/2^n, hidden[-1]), per stage
  nearest ×2 upsampling + 3×3 conv + SiLU, then a 3×3 conv to C channels. H and W must be
  divisible by 2^n, n = len(hidden): the default n = 2 handles 8×8, 28×28 and 32×32.

All modules accept any number of leading batch dims (including none, so a per-example
function can be ``jax.vmap``-ed, and (K, B, latent) samples decode in one call).

The VAE holds no loss: it exposes q_φ(z|x) and p_θ(x|z) as methods so that a pure loss can take
closures ``encode_fn(x) -> (mean, var)`` and ``decode_fn(z) -> (mean, var) or logits`` (the
interface of ``diffusion_jax.vae``); see ``vae_fns``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from diffusion_jax._checks import check_choice
from diffusion_jax.gaussians import Gaussian

KINDS = ("mlp", "conv")
DECODERS = ("gaussian", "bernoulli")
DECODER_VARS = ("scalar", "pixel")

DEFAULT_HIDDEN = {"mlp": (512, 256), "conv": (32, 64)}


def _hidden(kind: str, hidden: Sequence[int] | None) -> tuple[int, ...]:
    hidden = DEFAULT_HIDDEN[kind] if hidden is None else tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden) or (kind == "conv" and not hidden):
        raise ValueError(f"hidden must be positive ints (non-empty for kind='conv'), got "
                         f"{hidden!r}.")
    return hidden


def check_autoencoder_image_shape(
    image_shape, kind: str, hidden: Sequence[int] | None = None
) -> None:
    """Raises ValueError when ``kind``/``hidden`` cannot handle images of ``image_shape``."""
    check_choice("kind", kind, KINDS)
    shape = tuple(image_shape)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape!r}.")
    if kind == "conv":
        stages = len(_hidden(kind, hidden))
        factor = 2**stages
        H, W, _ = shape
        if H % factor or W % factor:
            raise ValueError(
                f"kind='conv' with {stages} stride-2 stages (hidden={_hidden(kind, hidden)}) "
                f"needs H and W divisible by {factor}, got image size {H}x{W}; use fewer "
                "stages or kind='mlp'."
            )


def _check_config(image_shape, kind, hidden, latent_dim) -> None:
    check_autoencoder_image_shape(image_shape, kind, hidden)
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}.")


def _check_input(x, image_shape) -> None:
    if tuple(x.shape[-3:]) != tuple(image_shape):
        raise ValueError(f"x must have shape (..., {', '.join(map(str, image_shape))}), "
                         f"got shape {x.shape}.")


def _check_latent(z, latent_dim: int) -> None:
    if z.ndim < 1 or z.shape[-1] != latent_dim:
        raise ValueError(f"z must have shape (..., {latent_dim}), got shape {z.shape}.")


class Encoder(nn.Module):
    """Image (..., H, W, C) → features (..., out_dim); MLP or strided conv (see module doc)."""

    image_shape: tuple[int, int, int]
    out_dim: int
    kind: str = "mlp"
    hidden: Sequence[int] | None = None

    def __post_init__(self):
        check_autoencoder_image_shape(self.image_shape, self.kind, self.hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        _check_input(x, self.image_shape)
        batch = x.shape[:-3]
        h = x.reshape((-1, *self.image_shape))
        if self.kind == "conv":
            for i, features in enumerate(_hidden(self.kind, self.hidden)):
                h = nn.silu(nn.Conv(features, (3, 3), strides=(2, 2), name=f"conv{i}")(h))
            h = h.reshape(h.shape[0], -1)
        else:
            h = h.reshape(h.shape[0], -1)
            for i, features in enumerate(_hidden(self.kind, self.hidden)):
                h = nn.silu(nn.Dense(features, name=f"dense{i}")(h))
        out = nn.Dense(self.out_dim, name="out")(h)
        return out.reshape((*batch, self.out_dim))


class Decoder(nn.Module):
    """Latent (..., latent) → image-shaped output (..., H, W, out_channels), linear output."""

    image_shape: tuple[int, int, int]
    out_channels: int | None = None  # default: C of image_shape
    kind: str = "mlp"
    hidden: Sequence[int] | None = None

    def __post_init__(self):
        check_autoencoder_image_shape(self.image_shape, self.kind, self.hidden)
        super().__post_init__()

    @nn.compact
    def __call__(self, z):
        H, W, C = self.image_shape
        out_ch = C if self.out_channels is None else self.out_channels
        batch = z.shape[:-1]
        h = z.reshape(-1, z.shape[-1])
        hidden = _hidden(self.kind, self.hidden)
        if self.kind == "conv":
            stages = len(hidden)
            h_lo, w_lo = H // 2**stages, W // 2**stages
            h = nn.silu(nn.Dense(h_lo * w_lo * hidden[-1], name="dense_in")(h))
            h = h.reshape(-1, h_lo, w_lo, hidden[-1])
            for i, features in enumerate(reversed(hidden)):
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest ×2
                h = nn.silu(nn.Conv(features, (3, 3), name=f"conv{i}")(h))
            h = nn.Conv(out_ch, (3, 3), name="conv_out")(h)
        else:
            for i, features in enumerate(reversed(hidden)):
                h = nn.silu(nn.Dense(features, name=f"dense{i}")(h))
            h = nn.Dense(H * W * out_ch, name="out")(h).reshape(-1, H, W, out_ch)
        return h.reshape((*batch, H, W, out_ch))


class AutoEncoder(nn.Module):
    """Deterministic AE: z = enc(x), x̂ = dec(z), trained with ‖x̂ − x‖² by the caller.

    Fields: ``image_shape`` (H, W, C); ``latent_dim``; ``kind`` "mlp" | "conv"; ``hidden``
    (MLP widths or conv stage channels, decoder mirrored; None → (512, 256) or (32, 64)).
    x̂ is linear (unbounded), not squashed to [−1, 1].
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 16
    kind: str = "mlp"
    hidden: Sequence[int] | None = None

    def __post_init__(self):
        _check_config(self.image_shape, self.kind, self.hidden, self.latent_dim)
        super().__post_init__()

    def setup(self):
        shape = tuple(self.image_shape)
        self.encoder = Encoder(shape, self.latent_dim, self.kind, self.hidden)
        self.decoder = Decoder(shape, None, self.kind, self.hidden)

    def encode(self, x):
        """x (..., H, W, C) → z (..., latent_dim)."""
        return self.encoder(x)

    def decode(self, z):
        """z (..., latent_dim) → x̂ (..., H, W, C)."""
        _check_latent(z, self.latent_dim)
        return self.decoder(z)

    def __call__(self, x):
        """x (..., H, W, C) → x̂ = dec(enc(x)), same shape."""
        return self.decode(self.encode(x))


class VAE(nn.Module):
    """VAE with a Gaussian encoder q_φ(z|x) = N(μ_φ(x), diag σ²_φ(x)) and prior N(0, I).

    ``encode(x) -> (mean, var)``, both (..., latent_dim); var = exp(clip(log σ², log_var_min,
    log_var_max)) > 0, the encoder outputs the log-variance.

    ``decode(z)`` returns the parameters of p_θ(x|z) in the form ``diffusion_jax.vae`` takes:
      - ``decoder="gaussian"``: ``Gaussian(mean, var)`` (a NamedTuple, unpacks as a pair), both
        (..., H, W, C). The mean is a function of z; the variance is a learned parameter
        independent of z: ``decoder_var="scalar"`` (one log-variance for all pixels, the
        default) or ``"pixel"`` (one per pixel and channel, a parameter of shape (H, W, C)),
        clipped like the encoder's and broadcast to the mean's shape.
      - ``decoder="bernoulli"``: one array of Bernoulli logits, (..., H, W, C); the caller maps
        the data to [0, 1] (e.g. (x + 1)/2) before taking the likelihood.

    ``__call__(x, key=None)`` runs both halves (for ``init``): z is a reparameterized sample
    μ + σ ⊙ ε with ε ~ N(0, I) drawn with ``key``, or the mean when ``key`` is None; it returns
    ``((mean, var), decoder_params)``. No loss lives here (see ``diffusion_jax.vae``).
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 16
    kind: str = "mlp"
    hidden: Sequence[int] | None = None
    decoder: str = "gaussian"
    decoder_var: str = "scalar"
    log_var_min: float = -10.0
    log_var_max: float = 10.0
    init_decoder_log_var: float = 0.0

    def __post_init__(self):
        _check_config(self.image_shape, self.kind, self.hidden, self.latent_dim)
        check_choice("decoder", self.decoder, DECODERS)
        check_choice("decoder_var", self.decoder_var, DECODER_VARS)
        if not self.log_var_min < self.log_var_max:
            raise ValueError(f"log_var_min must be < log_var_max, got {self.log_var_min} and "
                             f"{self.log_var_max}.")
        super().__post_init__()

    def setup(self):
        shape = tuple(self.image_shape)
        self.encoder = Encoder(shape, 2 * self.latent_dim, self.kind, self.hidden)
        self.decoder_net = Decoder(shape, None, self.kind, self.hidden)
        if self.decoder == "gaussian":
            var_shape = () if self.decoder_var == "scalar" else shape
            self.decoder_log_var = self.param(
                "decoder_log_var", nn.initializers.constant(self.init_decoder_log_var), var_shape
            )

    def _var(self, log_var):
        return jnp.exp(jnp.clip(log_var, self.log_var_min, self.log_var_max))

    def encode(self, x):
        """x (..., H, W, C) → Gaussian(mean, var) of q(z|x), each (..., latent_dim), var > 0."""
        out = self.encoder(x)
        mean, log_var = jnp.split(out, 2, axis=-1)
        return Gaussian(mean, self._var(log_var))

    def decode(self, z):
        """z (..., latent_dim) → Gaussian(mean, var) or logits, arrays (..., H, W, C)."""
        _check_latent(z, self.latent_dim)
        out = self.decoder_net(z)
        if self.decoder == "bernoulli":
            return out
        return Gaussian(out, jnp.broadcast_to(self._var(self.decoder_log_var), out.shape))

    def __call__(self, x, key: jax.Array | None = None):
        mean, var = self.encode(x)
        z = mean if key is None else mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape)
        return (mean, var), self.decode(z)


def vae_fns(model: VAE, params):
    """Closures for ``diffusion_jax.vae``: ``encode_fn(x) -> (mean, var)``, ``decode_fn(z)``.

    Equivalent to ``model.apply(params, x, method=VAE.encode)`` and
    ``model.apply(params, z, method=VAE.decode)``; differentiate w.r.t. ``params`` by building
    the closures inside the loss.
    """

    def encode_fn(x):
        return model.apply(params, x, method=VAE.encode)

    def decode_fn(z):
        return model.apply(params, z, method=VAE.decode)

    return encode_fn, decode_fn

