"""The input pipeline the trainer uses: scaling to [-1, 1] and deterministic, resumable batches.

Scaling (SPEC §1): a data set with L levels stores k ∈ {0..L-1} and the model sees
    x = 2k/(L-1) - 1 ∈ [-1, 1],   bins of width Δ = 2/(L-1) centred on these points.

Batch order (:class:`ImageDataset`). For a seed, epoch e visits the examples in the order
    order_e = np.random.default_rng([seed, e]).permutation(N)        (arange(N) if not shuffled)
and global step s is batch b = s mod S of epoch e = s // S (S = steps per epoch) holding
    order_e[b·B : (b+1)·B]                                            (B = global batch size).
So ``batch_at(step)`` is a pure function of (seed, step): the pipeline's whole position is one
integer, saved as the plain dict ``{"step": s, ...}`` (JSON, so orbax can store it next to the
parameters), and a restart resumes exactly. This is simpler and more robust than checkpointing
a sampler's internal state, and it makes the global batch independent of the number of
processes: with ``shard_count = n`` process i takes positions [i·B/n, (i+1)·B/n) of every
global batch, so concatenating the n shards gives the ``shard_count = 1`` batch. grain
(``grain.MapDataset`` over step numbers) reads batches ahead in background threads.

Randomness in the pipeline (stochastic binarization, dequantization) is keyed by
(seed, stream, epoch, example index), so it is as deterministic and shard-independent as the
order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping

import jax
import numpy as np

from diffusion_jax import _checks
from diffusion_jax.data import digits as digits_lib
from diffusion_jax.data import tfds_data
from diffusion_jax.data.tfds_data import DatasetSpec

DIGITS_SPEC = DatasetSpec(
    digits_lib.NAME,
    digits_lib.IMAGE_SHAPE,
    digits_lib.NUM_LEVELS,
    splits=digits_lib.SPLITS,
    source="embedded",
)
DATASETS: dict[str, DatasetSpec] = {"digits": DIGITS_SPEC, **tfds_data.TFDS_DATASETS}

BINARIZE_CHOICES = (False, True, "threshold", "stochastic")
_BINARIZE_STREAM = 1
_DEQUANTIZE_STREAM = 2


# --------------------------------------------------------------------------------------------
# Scaling. These work on numpy arrays (host pipeline) and on jax arrays (also under jit).


def _check_num_levels(num_levels) -> int:
    return _check_int("num_levels", num_levels, 2)


def _xp(x):
    return jax.numpy if isinstance(x, jax.Array) else np


def _check_levels_array(name: str, images, num_levels: int) -> None:
    if not np.issubdtype(images.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integer levels 0..{num_levels - 1}, got dtype {images.dtype}."
        )
    if _checks.is_concrete(images) and images.size:
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > num_levels - 1:
            raise ValueError(
                f"{name} must lie in 0..{num_levels - 1} (num_levels={num_levels}), "
                f"got values in {lo}..{hi}."
            )


def to_model_range(images, num_levels: int):
    """Maps integer levels k ∈ {0..L-1} to x = 2k/(L-1) - 1 in [-1, 1] (SPEC §1).

    Args:
      images: integer array of any shape, e.g. uint8 (N, H, W, C).
      num_levels: L.

    Returns:
      float32 array of the same shape: 0 -> -1, L-1 -> 1, neighbouring levels 2/(L-1) apart.
    """
    num_levels = _check_num_levels(num_levels)
    _check_levels_array("images", images, num_levels)
    # (2k - (L-1)) / (L-1): exact integers over an exact integer, so ±1 come out exactly and
    # levels k and L-1-k map to exact negatives.
    top = num_levels - 1
    return (2 * images.astype(np.int32) - top).astype(np.float32) / np.float32(top)


def from_model_range(x, num_levels: int):
    """Inverse of :func:`to_model_range`: k = round((x + 1)(L-1)/2), clipped to 0..L-1.

    Args:
      x: float array in [-1, 1] (values outside are clipped, e.g. model samples).
      num_levels: L.

    Returns:
      uint8 array (int32 when L > 256) of x's shape.
    """
    num_levels = _check_num_levels(num_levels)
    _checks.check_floating("x", x)
    xp = _xp(x)
    k = xp.clip(xp.round((x + 1.0) * (0.5 * (num_levels - 1))), 0, num_levels - 1)
    return k.astype(np.uint8 if num_levels <= 256 else np.int32)


def _uniform(rng, shape):
    """U[0, 1) of ``shape`` from a numpy Generator or a JAX PRNG key."""
    if isinstance(rng, np.random.Generator):
        return rng.random(shape, dtype=np.float32)
    if isinstance(rng, jax.Array):
        return jax.random.uniform(rng, shape, dtype=np.float32)
    raise TypeError(
        f"rng must be a numpy Generator (np.random.default_rng(...)) or a JAX PRNG key, got "
        f"{type(rng).__name__}."
    )


def binarize(images, num_levels: int, *, rng=None):
    """Maps integer levels k ∈ {0..L-1} to {0, 1} (for Bernoulli decoders).

    Deterministic (``rng=None``): 1 where k/(L-1) >= 1/2. Stochastic (``rng`` a numpy Generator
    or a JAX key, never a default): 1 with probability k/(L-1), i.e. "dynamic binarization".
    The result has 2 levels: ``to_model_range(binarize(k, L), 2)`` is in {-1, 1}.

    Returns:
      uint8 array of ``images``' shape.
    """
    num_levels = _check_num_levels(num_levels)
    _check_levels_array("images", images, num_levels)
    if rng is None:
        return (2 * images.astype(np.int32) >= num_levels - 1).astype(np.uint8)
    p = images.astype(np.float32) / np.float32(num_levels - 1)
    return (_uniform(rng, images.shape) < p).astype(np.uint8)


_binarize = binarize  # for functions whose ``binarize`` argument shadows the name


def dequantize(x, num_levels: int, rng):
    """Uniform dequantization: y = x + (u - 1/2)·Δ, u ~ U[0, 1), Δ = 2/(L-1).

    For continuous-density models trained on discrete data (RealNVP, VDM-style likelihoods):
    y is uniform on the bin of x, so for any density p, log P(k) >= E_u[log p(y)] + D log Δ
    (D dimensions) and bits/dim stay comparable with discrete models. Discrete decoders
    (``decoder="discretized"``) must NOT be given dequantized data. y lies in
    [-1 - Δ/2, 1 + Δ/2]: the edge bins are centred on ±1, as in the discretized decoder.

    Args:
      x: float array in model range (levels 2k/(L-1) - 1).
      num_levels: L.
      rng: a numpy Generator or a JAX PRNG key (explicit; there is no default).

    Returns:
      float32 array of x's shape.
    """
    num_levels = _check_num_levels(num_levels)
    _checks.check_floating("x", x)
    if rng is None:
        raise TypeError("dequantize needs an explicit rng (numpy Generator or JAX key).")
    width = np.float32(2.0 / (num_levels - 1))
    return (x + (_uniform(rng, x.shape) - np.float32(0.5)) * width).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Data sets.


def dataset_spec(name: str) -> DatasetSpec:
    """Static metadata (image shape, levels, splits) of a supported data set; reads no data."""
    _checks.check_choice("name", name, DATASETS)
    return DATASETS[name]


class _ArraySource:
    """In-memory images (N, H, W, C) uint8 and labels (N,) int32."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def read(self, indices: np.ndarray):
        return self.images[indices], self.labels[indices]


class _TfdsSource:
    def __init__(self, source, spec: DatasetSpec):
        self.source, self.spec = source, spec
        self._len = len(source)

    def __len__(self) -> int:
        return self._len

    def read(self, indices: np.ndarray):
        return tfds_data.read_records(self.source, indices, self.spec)


def _open_source(name: str, split: str, data_dir):
    spec = dataset_spec(name)
    if spec.source == "embedded":
        _checks.check_choice(f"split of {name!r}", split, spec.splits)
        return spec, _ArraySource(*digits_lib.load_digits(split))
    return spec, _TfdsSource(tfds_data.load_source(name, split, data_dir), spec)


def full_split(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, binarize: bool = False
) -> np.ndarray:
    """Every image of a split, in stored order, as float32 (N, H, W, C) in [-1, 1].

    For evaluating small data sets in one go (digits: 300 test images). ``binarize=True``
    applies the deterministic threshold of :func:`binarize` (values in {-1, 1}). ``data_dir``
    is ignored for the embedded "digits".
    """
    if binarize is not True and binarize is not False:
        raise ValueError(f"binarize must be True or False here, got {binarize!r}.")
    spec, source = _open_source(name, split, data_dir)
    images, _ = source.read(np.arange(len(source)))
    levels = spec.num_levels
    if binarize:
        images, levels = _binarize(images, levels), 2
    return to_model_range(images, levels)


def _check_int(name: str, value, lowest: int) -> int:
    if not _checks.is_int(value):
        raise TypeError(f"{name} must be an int >= {lowest}, got {value!r}.")
    if value < lowest:
        raise ValueError(f"{name} must be >= {lowest}, got {value}.")
    return int(value)


class ImageDataset:
    """Deterministic batches of one split; see the module docstring for the order.

    Attributes:
      name, split: what is read.
      image_shape: (H, W, C).
      num_levels: levels of the data the model sees (2 when binarized). With dequantization the
        data are continuous but num_levels still gives the bin width 2/(L-1) for bpd.
      num_examples: N, examples in the split.
      global_batch_size: B, examples per step over all processes.
      batch_size: B / shard_count, examples per step in this process.
      steps_per_epoch: floor(N/B) (drop_remainder) or ceil(N/B).
      num_steps: total steps when ``num_epochs`` is given, else None (infinite).

    Batches are dicts ``{"image": float32 (b, H, W, C), "label": int32 (b,)}`` of numpy
    arrays (labels are -1 for unlabelled data sets); b = batch_size except for the last batch
    of an epoch when drop_remainder=False.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        source,
        *,
        split: str,
        batch_size: int,
        seed: int,
        binarize=False,
        dequantize: bool = False,
        shuffle: bool = True,
        drop_remainder: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
        num_epochs: int | None = None,
        prefetch: int = 2,
    ):
        if not any(
            binarize is c or (isinstance(binarize, str) and binarize == c) for c in BINARIZE_CHOICES
        ):
            raise ValueError(f"binarize must be one of {BINARIZE_CHOICES}, got {binarize!r}.")
        self._spec, self._source = spec, source
        self.name, self.split = spec.name, split
        self.seed = _check_int("seed", seed, 0)
        self.global_batch_size = _check_int("batch_size", batch_size, 1)
        self.shard_count = _check_int("shard_count", shard_count, 1)
        self.shard_index = _check_int("shard_index", shard_index, 0)
        if self.shard_index >= self.shard_count:
            raise ValueError(
                f"shard_index must be in 0..{self.shard_count - 1}, got {self.shard_index}."
            )
        if self.global_batch_size % self.shard_count:
            raise ValueError(
                f"batch_size (the global batch, {batch_size}) must be divisible by "
                f"shard_count ({shard_count})."
            )
        self.batch_size = self.global_batch_size // self.shard_count
        self._binarize = {True: "threshold"}.get(binarize, binarize)
        self._dequantize = bool(dequantize)
        self._shuffle = bool(shuffle)
        self._drop_remainder = bool(drop_remainder)
        self._prefetch = _check_int("prefetch", prefetch, 0)
        self.num_examples = len(source)
        full, rest = divmod(self.num_examples, self.global_batch_size)
        self.steps_per_epoch = full if drop_remainder else full + (rest > 0)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{spec.name}/{split} has {self.num_examples} examples, fewer than one batch of "
                f"{self.global_batch_size} with drop_remainder=True."
            )
        if num_epochs is None:
            self.num_steps = None
        else:
            self.num_steps = _check_int("num_epochs", num_epochs, 1) * self.steps_per_epoch
        self._orders: dict[int, np.ndarray] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._spec.image_shape

    @property
    def num_levels(self) -> int:
        return 2 if self._binarize else self._spec.num_levels

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            if self._shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            else:
                order = np.arange(self.num_examples)
            self._orders = {epoch: order}  # keep one epoch; rebinding is thread-safe
        return order

    def _check_step(self, step) -> int:
        step = _check_int("step", step, 0)
        if self.num_steps is not None and step >= self.num_steps:
            raise ValueError(f"step must be < num_steps = {self.num_steps}, got {step}.")
        return step

    def global_indices_at(self, step: int) -> np.ndarray:
        """Dataset indices of the GLOBAL batch of ``step`` (all shards), int64 (B,)."""
        epoch, b = divmod(self._check_step(step), self.steps_per_epoch)
        return self._order(epoch)[b * self.global_batch_size : (b + 1) * self.global_batch_size]

    def indices_at(self, step: int) -> np.ndarray:
        """Dataset indices of this process's slice of the global batch of ``step``."""
        glob = self.global_indices_at(step)
        n, i = self.shard_count, self.shard_index
        return glob[i * len(glob) // n : (i + 1) * len(glob) // n]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch at global step ``step`` (a pure function of seed and step)."""
        epoch = self._check_step(step) // self.steps_per_epoch
        indices = self.indices_at(step)
        images, labels = self._source.read(indices)
        levels = self._spec.num_levels
        if self._binarize == "threshold":
            images, levels = binarize(images, levels), 2
        elif self._binarize == "stochastic":
            images = (
                np.stack(
                    [
                        binarize(im, levels, rng=self._example_rng(_BINARIZE_STREAM, epoch, idx))
                        for im, idx in zip(images, indices, strict=True)
                    ]
                )
                if len(images)
                else images
            )
            levels = 2
        x = to_model_range(images, levels)
        if self._dequantize and len(x):
            x = np.stack(
                [
                    dequantize(xi, levels, self._example_rng(_DEQUANTIZE_STREAM, epoch, idx))
                    for xi, idx in zip(x, indices, strict=True)
                ]
            )
        return {"image": x, "label": np.asarray(labels, np.int32)}

    def _example_rng(self, stream: int, epoch: int, index) -> np.random.Generator:
        # Keyed by the example, not by its shard or position: identical for any shard_count.
        return np.random.default_rng([self.seed, stream, epoch, int(index)])

    def iterator(self, state: Mapping[str, int] | None = None) -> BatchIterator:
        """A fresh iterator, at step 0 or at ``state`` (from ``BatchIterator.get_state``)."""
        it = BatchIterator(self)
        if state is not None:
            it.set_state(state)
        return it

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iterator()

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name}/{self.split}, N={self.num_examples}, "
            f"image_shape={self.image_shape}, num_levels={self.num_levels}, "
            f"batch={self.batch_size}/{self.global_batch_size}, "
            f"shard={self.shard_index}/{self.shard_count}, seed={self.seed})"
        )


class BatchIterator:
    """Iterates ``ImageDataset.batch_at(step)`` for step = s, s+1, ... (forever unless
    ``num_epochs`` was given), reading ahead with grain.

    ``get_state()`` returns a plain JSON-able dict of ints; ``set_state`` resumes exactly there
    and checks that the saved seed, global batch size and data set size match.
    """

    def __init__(self, dataset: ImageDataset):
        self._dataset = dataset
        self._step = 0
        self._inner = None

    @property
    def step(self) -> int:
        """The global step of the next batch."""
        return self._step

    def _make_inner(self):
        import grain  # imported lazily: ~1.5 s

        ds = self._dataset
        stop = ds.num_steps if ds.num_steps is not None else sys.maxsize
        threads = min(ds._prefetch, 4)
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ds._prefetch)
        return (
            grain.MapDataset.range(self._step, max(stop, self._step))
            .map(ds.batch_at)
            .to_iter_dataset(options)
            .__iter__()
        )

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._inner is None:
            self._inner = self._make_inner()
        batch = next(self._inner)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        ds = self._dataset
        return {
            "step": self._step,
            "seed": ds.seed,
            "global_batch_size": ds.global_batch_size,
            "num_examples": ds.num_examples,
        }

    def set_state(self, state: Mapping[str, int]) -> None:
        if "step" not in state:
            raise ValueError(f"state must contain 'step', got keys {sorted(state)}.")
        current = self.get_state()
        for key, config_key in (("seed", "config.seed"), ("global_batch_size", "config.data.batch_size"),
                                ("num_examples", "config.data.name / train_split")):
            if key in state and int(state[key]) != current[key]:
                raise ValueError(
                    f"cannot resume: the saved state has {key}={state[key]} but this dataset "
                    f"has {key}={current[key]} ({config_key}), so the batch order would differ; "
                    f"resume with the run's value, or use another --workdir."
                )
        step = _check_int("state['step']", state["step"], 0)
        self.close()
        self._step = step

    def close(self) -> None:
        """Stops the read-ahead threads (the iterator can still be used afterwards)."""
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_dataset(
    name: str,
    split: str,
    *,
    batch_size: int,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    binarize=False,
    dequantize: bool = False,
    shuffle: bool = True,
    drop_remainder: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    prefetch: int = 2,
) -> ImageDataset:
    """The one entry point of the trainer: deterministic, resumable batches in [-1, 1].

    Args:
      name: "digits" (embedded, no tfds, no network) or a tfds data set in ``DATASETS``
        (mnist, fashion_mnist, kmnist, cifar10, cifar100, svhn_cropped, binarized_mnist),
        which must have been prepared (``make data DATASET=<name>``); a missing one raises
        ``DatasetNotPreparedError`` at once.
      split: "train", "test", ... (tfds data sets also take slices like "train[:90%]").
      batch_size: GLOBAL batch size B, divisible by shard_count.
      seed: non-negative int; fixes the order (and any pipeline noise) of every epoch.
      data_dir: tfds data directory (None: tfds' default); ignored for "digits".
      binarize: False; True or "threshold" (deterministic, k/(L-1) >= 1/2); "stochastic"
        (Bernoulli(k/(L-1)), fresh each epoch). Images then lie in {-1, 1}, num_levels = 2.
      dequantize: add uniform noise of one bin width (:func:`dequantize`), for
        continuous-density models only.
      shuffle: a new permutation per epoch (False: stored order, e.g. for evaluation).
      drop_remainder: drop the last partial batch of each epoch.
      shard_index, shard_count: this process reads positions [i·B/n, (i+1)·B/n) of each
        global batch (n = shard_count; typically ``jax.process_index()/process_count()``).
      num_epochs: None iterates forever (training); an int stops after that many epochs.
      prefetch: batches read ahead by grain threads (0: read synchronously).

    Returns:
      An :class:`ImageDataset`; iterate it, or call ``batch_at(step)``; save
      ``iterator.get_state()`` in a checkpoint and resume with ``dataset.iterator(state)``.
    """
    spec, source = _open_source(name, split, data_dir)
    return ImageDataset(
        spec,
        source,
        split=split,
        batch_size=batch_size,
        seed=seed,
        binarize=binarize,
        dequantize=dequantize,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
        prefetch=prefetch,
    )
