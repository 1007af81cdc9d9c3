"""Loss functions for each model kind, built from the pure core and a Flax module.

Each factory returns ``loss_fn(params, batch, keys, train) -> (loss, metrics)`` where ``keys``
holds one PRNG key per example (shape (B,)): per-example randomness then does not depend on how
the global batch is split over devices. ``metrics`` are per-batch means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax import elbo as elbo_lib
from diffusion_jax import vae as vae_lib
from diffusion_jax._checks import check_choice
from diffusion_jax.forward import q_posterior, q_sample
from diffusion_jax.samplers import p_reverse, predict_x0_eps
from diffusion_jax.schedules import Schedule

DDPM_LOSSES = ("l_simple", "vlb", "hybrid")


def _split_keys(keys, n: int):
    """(B,) keys -> n arrays of (B,) keys, each derived per example."""
    split = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [split[:, i] for i in range(n)]


def model_output_to_reverse(output, sched: Schedule, x_t, t, *, prediction, variance, learned):
    """Network output at (x_t, t) -> p_θ(x_{t−1} | x_t) (and the ε̂ it implies)."""
    if learned:
        pred, v = jnp.split(output, 2, axis=-1)
        return p_reverse((pred, v), sched, x_t, t, prediction=prediction, variance="learned")
    return p_reverse(output, sched, x_t, t, prediction=prediction, variance=variance)


def make_ddpm_loss(model, sched: Schedule, diff_cfg, *, num_levels: int):
    """L_simple, the VLB (single-t unbiased estimate of −ELBO) or the hybrid of both.

    VLB estimate per example: KL(q(x_T|x_0) ‖ p(x_T)) + T · L_{t−1}, t ~ U{1..T}, with
    L_0 = −log p_θ(x_0|x_1) (discretized decoder) and L_{t−1} = KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) for t ≥ 2.
    Hybrid (Nichol & Dhariwal): L_simple + λ · VLB with the mean's gradient stopped in the VLB.
    """
    check_choice("diffusion.loss", diff_cfg.loss, DDPM_LOSSES)
    learned = bool(model.learned_variance)
    if diff_cfg.loss == "hybrid" and not learned:
        raise ValueError("diffusion.loss='hybrid' needs model.learned_variance=True.")
    if diff_cfg.variance == "learned" and not learned:
        raise ValueError("diffusion.variance='learned' needs model.learned_variance=True.")
    prediction = model.prediction
    T = sched.T

    def loss_fn(params, batch, keys, train: bool):
        x0 = batch["image"]
        key_noise, key_dropout = _split_keys(keys, 2)
        t, noise = elbo_lib.per_example_noise(key_noise, x0, T)
        x_t = q_sample(sched, x0, t, noise)
        rngs = {"dropout": key_dropout[0]} if train else {}
        output = model.apply({"params": params}, x_t, t, train=train, rngs=rngs)
        output = output.astype(jnp.float32)
        pred = jnp.split(output, 2, axis=-1)[0] if learned else output
        _, eps_hat = predict_x0_eps(pred, sched, x_t, t, prediction=prediction)
        mse = elbo_lib.sum_over_events(jnp.square(noise - eps_hat)) / x0[0].size

        # The VLB term at the sampled t (always computed: it is the bits/dim metric).
        vlb_output = output
        if diff_cfg.loss == "hybrid":
            pred_sg = jax.lax.stop_gradient(pred)
            vlb_output = jnp.concatenate([pred_sg, jnp.split(output, 2, axis=-1)[1]], axis=-1)
        p = model_output_to_reverse(vlb_output, sched, x_t, t, prediction=prediction,
                                    variance=diff_cfg.variance, learned=learned)
        q = q_posterior(sched, x0, x_t, jnp.maximum(t, 2))  # t = 1 handled by the decoder below
        kl = elbo_lib.summed_gaussian_kl(x0, q.mean, q.var, p.mean, p.var)
        nll0 = -elbo_lib.sum_over_events(elbo_lib.decoder_log_prob(
            x0, p.mean, p.var, decoder="discretized", num_levels=num_levels))
        term = jnp.where(t == 1, nll0, kl)
        vlb = elbo_lib.prior_kl(sched, x0) + T * term  # unbiased single-sample −ELBO (nats)
        vlb_bpd = elbo_lib.bits_per_dim(-vlb, x0[0].size)

        if diff_cfg.loss == "l_simple":
            loss = mse.mean()
        elif diff_cfg.loss == "vlb":
            loss = vlb_bpd.mean()
        else:
            loss = mse.mean() + diff_cfg.hybrid_weight * vlb_bpd.mean()
        return loss, {"loss": loss, "mse_eps": mse.mean(), "vlb_bpd": vlb_bpd.mean()}

    return loss_fn


def make_vae_loss(model, vae_cfg):
    """Negative ELBO per dimension (with optional KL warm-up and free bits)."""
    warmup = int(vae_cfg.kl_warmup_steps)

    def loss_fn(params, batch, keys, train: bool, step=0):
        x = batch["image"]
        if model.decoder == "bernoulli":
            x = (x + 1.0) / 2.0  # {−1, 1} -> {0, 1}
        encode_fn = lambda xb: model.apply({"params": params}, xb, method=type(model).encode)
        decode_fn = lambda z: model.apply({"params": params}, z, method=type(model).decode)
        kl_weight = jnp.minimum(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        # One key per example: vmap the per-example ELBO over the batch.
        out = jax.vmap(lambda xi, ki: jax.tree.map(lambda a: a[0], vae_lib.vae_elbo(
            encode_fn, decode_fn, xi[None], ki, decoder=model.decoder, kl_weight=kl_weight,
            free_bits=vae_cfg.free_bits)))(x, keys)
        dims = x[0].size
        loss = out["loss"].mean() / dims
        return loss, {
            "loss": loss,
            "neg_elbo_nats": -out["elbo"].mean(),
            "kl_nats": out["kl"].mean(),
            "elbo_bpd": elbo_lib.bits_per_dim(out["elbo"].mean(), dims),
        }

    return loss_fn


def make_ae_loss(model):
    """Mean squared reconstruction error ‖x̂ − x‖² per dimension."""

    def loss_fn(params, batch, keys, train: bool):
        x = batch["image"]
        x_hat = model.apply({"params": params}, x)
        per_example = vae_lib.ae_loss(x, x_hat)
        loss = per_example.mean() / x[0].size
        return loss, {"loss": loss, "sq_error": per_example.mean()}

    return loss_fn


def make_loss(model, config, sched=None, num_levels: int = 256):
    """The loss of ``config.model_kind`` ("ddpm", "vae" or "ae")."""
    check_choice("model_kind", config.model_kind, ("ddpm", "vae", "ae"))
    if config.model_kind == "ddpm":
        return make_ddpm_loss(model, sched, config.diffusion, num_levels=num_levels)
    if config.model_kind == "vae":
        return make_vae_loss(model, config.vae)
    return make_ae_loss(model)
