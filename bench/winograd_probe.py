"""Probe: does less arithmetic help XLA:CPU? Winograd F(2×2, 3×3) convolutions written in JAX.

F(2×2, 3×3) computes each 2×2 output tile from a 4×4 input tile with 16 multiplies per channel
pair instead of 36 (2.25× fewer), at the price of elementwise tile transforms. This script times
it against ``lax.conv_general_dilated`` for the 3×3 convolutions of the benchmark U-Net, forward
and forward + backward (autodiff through the transforms), and prints a table:

    .venv/bin/python bench/winograd_probe.py

Run as a script it uses the benchmark's XLA_FLAGS (the YNN flag) unless XLA_FLAGS is set.
Not used by the library: on this CPU it does not pay (see bench/README.md).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

# G of F(2×2, 3×3): the filter transform U = G g Gᵀ.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _input_transform(d0, d1, d2, d3):
    """Bᵀ d along one tile axis (adds only)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def winograd_conv3x3(x, w):
    """A SAME, stride-1 3×3 convolution, NHWC input (B, H, W, C), HWIO kernel (3, 3, C, O)."""
    batch, height, width, _ = x.shape
    h_even, w_even = height + height % 2, width + width % 2
    xp = jnp.pad(x, ((0, 0), (1, 1 + h_even - height), (1, 1 + w_even - width), (0, 0)))
    tiles_h, tiles_w = h_even // 2, w_even // 2
    rows = _input_transform(*(xp[:, i:i + h_even:2] for i in range(4)))
    v = []
    for r in rows:
        v.extend(_input_transform(*(r[:, :, j:j + w_even:2] for j in range(4))))
    v = jnp.stack(v).reshape(16, batch * tiles_h * tiles_w, x.shape[-1])
    g = jnp.asarray(_G, w.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", g, w, g).reshape(16, x.shape[-1], w.shape[-1])
    m = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # 16 matmuls (N, C) × (C, O)
    m = m.reshape(4, 4, batch, tiles_h, tiles_w, -1)
    s = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])  # Aᵀ M along the first tile axis
    y = [(r[0] + r[1] + r[2], r[1] - r[2] - r[3]) for r in s]  # … and the second
    out = jnp.stack([jnp.stack(y[0], 3), jnp.stack(y[1], 3)], 2)  # (B, th, 2, tw, 2, O)
    return out.reshape(batch, h_even, w_even, -1)[:, :height, :width]


def direct_conv3x3(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _median_s(fn, *args, reps: int = 7) -> float:
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# The benchmark U-Net's 3×3 convolutions: (resolution, in channels, out channels).
LAYERS = ((28, 32, 32), (28, 96, 32), (14, 64, 64), (14, 128, 64), (7, 64, 64), (7, 128, 64))


def main() -> None:
    print("| batch | layer | forward direct ms | forward Winograd ms | speed-up | fwd+bwd direct ms "
          "| fwd+bwd Winograd ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (16, 64):
        for size, c_in, c_out in LAYERS:
            x = jax.random.normal(jax.random.key(0), (batch, size, size, c_in))
            w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out))
            direct, wino = jax.jit(direct_conv3x3), jax.jit(winograd_conv3x3)
            diff = float(jnp.max(jnp.abs(direct(x, w) - wino(x, w))))
            grad_direct = jax.jit(jax.grad(lambda x, w: jnp.sum(direct_conv3x3(x, w) ** 2), (0, 1)))
            grad_wino = jax.jit(jax.grad(lambda x, w: jnp.sum(winograd_conv3x3(x, w) ** 2), (0, 1)))
            fd, fw = _median_s(direct, x, w), _median_s(wino, x, w)
            bd, bw = _median_s(grad_direct, x, w), _median_s(grad_wino, x, w)
            print(f"| {batch} | {size}×{size}, {c_in} → {c_out} | {1e3 * fd:.2f} | {1e3 * fw:.2f} | "
                  f"{fd / fw:.2f}× | {1e3 * bd:.2f} | {1e3 * bw:.2f} | {bd / bw:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    # Read when the JAX backend starts (first computation), so setting it here still applies.
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot")
    main()
