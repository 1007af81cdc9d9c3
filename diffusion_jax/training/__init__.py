"""Training: optax steps (single device, pmap, sharding), checkpoints, evaluation, the loop."""
