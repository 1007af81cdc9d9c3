"""The embedded default data set: scikit-learn's 8×8 handwritten digits, shipped in the package.

``digits.npz`` (next to this file) holds all 1,797 images of ``sklearn.datasets.load_digits``
as uint8 arrays of shape (N, 8, 8, 1) with values 0..16 (17 grey levels), their labels 0..9,
and a FIXED train/test split (1,497 / 300, stratified by label, seed 0). The file, not
scikit-learn, is the source of truth: training and evaluation never need the network or
scikit-learn, and the split cannot drift with a scikit-learn release.

Arrays in the file:
    train_images (1497, 8, 8, 1) uint8, train_labels (1497,) int64,
    test_images (300, 8, 8, 1) uint8,   test_labels (300,) int64,
    train_indices (1497,), test_indices (300,) int64: the rows of ``load_digits().images``
    each example came from (sorted, disjoint, together 0..1796).

To regenerate it (once, by a maintainer; needs scikit-learn, works offline):

    python -c "from diffusion_jax.data.digits import build_digits_npz, DIGITS_PATH; \
build_digits_npz(DIGITS_PATH)"
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from diffusion_jax._checks import check_choice

NAME = "digits"
NUM_LEVELS = 17  # pixel values 0..16
num_levels = NUM_LEVELS  # alias
IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
SPLITS = ("train", "test")
NUM_EXAMPLES = {"train": 1497, "test": 300}
SPLIT_SEED = 0

DIGITS_PATH = str(importlib.resources.files("diffusion_jax.data").joinpath("digits.npz"))


def build_digits_npz(path: str | os.PathLike, *, test_size: int = 300, seed: int = SPLIT_SEED):
    """Writes the embedded digits file from scikit-learn's bundled copy (no network needed).

    The test split is drawn stratified by label (``train_test_split(..., stratify=labels,
    random_state=seed)``); both splits are then sorted by their row in scikit-learn's order.
    Returns the path written.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    # sklearn gives float64 values that are exact integers 0..16.
    images = bunch.images.astype(np.uint8)[..., None]
    if not np.array_equal(images[..., 0], bunch.images):
        raise ValueError("scikit-learn digits are expected to hold integers 0..16.")
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    np.savez_compressed(
        path,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        train_indices=train_idx.astype(np.int64),
        test_indices=test_idx.astype(np.int64),
    )
    return str(path)


def load_digits(split: str, *, path: str | os.PathLike = DIGITS_PATH):
    """Loads one split of the embedded digits.

    Args:
      split: "train" (1,497 examples) or "test" (300 examples).
      path: the npz file; the copy inside the package by default.

    Returns:
      (images, labels): uint8 array (N, 8, 8, 1) with values in 0..16 (``NUM_LEVELS`` = 17
      levels) and int32 array (N,) with values in 0..9.
    """
    check_choice("split", split, SPLITS)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Embedded digits file {path} is missing; regenerate it with "
            "diffusion_jax.data.digits.build_digits_npz(path)."
        )
    with np.load(path) as f:
        images = f[f"{split}_images"]
        labels = f[f"{split}_labels"].astype(np.int32)
    return images, labels
