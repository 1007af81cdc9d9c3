"""The embedded digits file: contents, fixed split, and agreement with scikit-learn."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_load_digits

from diffusion_jax.data import digits


def _file():
    with np.load(digits.DIGITS_PATH) as f:
        return {k: f[k] for k in f.files}


def test_file_holds_all_1797_images_with_17_levels():
    f = _file()
    assert f["train_images"].shape == (1497, 8, 8, 1)
    assert f["test_images"].shape == (300, 8, 8, 1)
    assert f["train_images"].dtype == f["test_images"].dtype == np.uint8
    images = np.concatenate([f["train_images"], f["test_images"]])
    assert len(images) == 1797
    assert images.min() == 0 and images.max() == 16
    assert len(np.unique(images)) == digits.NUM_LEVELS == digits.num_levels == 17


def test_split_is_disjoint_complete_and_matches_sklearn():
    f = _file()
    train_idx, test_idx = f["train_indices"], f["test_indices"]
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
    bunch = sklearn_load_digits()
    for split, idx in (("train", train_idx), ("test", test_idx)):
        np.testing.assert_array_equal(f[f"{split}_images"][..., 0], bunch.images[idx])
        np.testing.assert_array_equal(f[f"{split}_labels"], bunch.target[idx])


def test_split_is_stratified():
    f = _file()
    all_counts = np.bincount(np.concatenate([f["train_labels"], f["test_labels"]]), minlength=10)
    test_counts = np.bincount(f["test_labels"], minlength=10)
    expected = 300 * all_counts / all_counts.sum()
    assert np.all(np.abs(test_counts - expected) <= 1.0)


def test_load_digits_returns_uint8_images_and_int32_labels():
    for split, n in (("train", 1497), ("test", 300)):
        images, labels = digits.load_digits(split)
        assert images.shape == (n, 8, 8, 1) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int32
        assert set(np.unique(labels)) == set(range(10))
    # Golden pixel sums of the shipped split (sklearn digits, seed 0).
    assert int(digits.load_digits("train")[0].sum(dtype=np.int64)) == 468149
    assert int(digits.load_digits("test")[0].sum(dtype=np.int64)) == 93569


def test_load_digits_rejects_unknown_split():
    with pytest.raises(ValueError, match="split.*'train'.*Did you mean 'test'"):
        digits.load_digits("tests")


def test_build_digits_npz_regenerates_the_shipped_file(tmp_path):
    path = digits.build_digits_npz(tmp_path / "digits.npz")
    shipped = _file()
    with np.load(path) as rebuilt:
        assert sorted(rebuilt.files) == sorted(shipped)
        for key in shipped:
            np.testing.assert_array_equal(rebuilt[key], shipped[key])
