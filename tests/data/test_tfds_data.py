"""tfds data sets, offline: a real tiny prepared copy, tfds' mock, and the fast failures."""

import json
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data import pipeline, tfds_data
from diffusion_jax.data.pipeline import full_split, make_dataset
from diffusion_jax.data.tfds_data import DatasetNotPreparedError

NUM_TRAIN, NUM_TEST = 24, 7


def _image(i: int) -> np.ndarray:
    """Example i: a distinct 28×28 uint8 image whose pixel (0, 0) is i."""
    image = ((np.arange(28 * 28) * 13 + 101 * i) % 256).astype(np.uint8).reshape(28, 28)
    image[0, 0] = i
    return image


class MNIST(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes a tiny 'mnist' (same name, version and features) without TensorFlow."""

    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(NUM_TRAIN, NUM_TRAIN + NUM_TEST),
        }

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            # A PIL image: tfds encodes it to PNG with PIL (TensorFlow would be needed for numpy).
            yield i, {"image": PIL.Image.fromarray(_image(i)), "label": i % 10}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    MNIST(data_dir=str(data_dir)).download_and_prepare(file_format="array_record")
    return data_dir


def test_real_prepared_mnist_gives_exactly_scaled_batches(prepared_dir):
    assert tfds_data.is_prepared("mnist", prepared_dir)
    ds = make_dataset("mnist", "train", batch_size=8, seed=0, data_dir=prepared_dir)
    assert (ds.image_shape, ds.num_levels, ds.num_examples) == ((28, 28, 1), 256, NUM_TRAIN)
    seen = []
    for step in range(ds.steps_per_epoch):
        batch = ds.batch_at(step)
        assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32
        k = np.round((batch["image"] + 1) * 127.5).astype(int)
        np.testing.assert_allclose(batch["image"], 2 * k / 255 - 1, atol=1e-7)  # on the grid
        for image, label, ki in zip(batch["image"], batch["label"], k, strict=True):
            i = int(ki[0, 0, 0])
            np.testing.assert_allclose(image[..., 0], _image(i) / 127.5 - 1, atol=1e-6)
            assert label == i % 10
            seen.append(i)
    assert sorted(seen) == list(range(NUM_TRAIN))  # one epoch visits every example once


def test_real_prepared_mnist_is_deterministic_resumable_and_shardable(prepared_dir):
    def make(**kw):
        return make_dataset("mnist", "train", batch_size=4, seed=11, data_dir=prepared_dir, **kw)

    ds = make()
    with ds.iterator() as it:
        first = [next(it)["image"] for _ in range(9)]  # rolls over (6 steps per epoch)
        state = it.get_state()
    again = make()
    with again.iterator() as it:
        np.testing.assert_array_equal(next(it)["image"], first[0])
    with make().iterator(state) as it:
        assert it.step == 9
        np.testing.assert_array_equal(next(it)["image"], ds.batch_at(9)["image"])
    halves = [make(shard_index=i, shard_count=2).batch_at(7)["image"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), ds.batch_at(7)["image"])


def test_full_split_and_slices_of_real_data(prepared_dir):
    x = full_split("mnist", "test", prepared_dir)
    assert x.shape == (NUM_TEST, 28, 28, 1) and x.dtype == np.float32
    ids = sorted(int(round((v + 1) * 127.5)) for v in x[:, 0, 0, 0])
    assert ids == list(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))
    part = make_dataset("mnist", "train[:50%]", batch_size=4, seed=0, data_dir=prepared_dir)
    assert part.num_examples == NUM_TRAIN // 2


def test_missing_dataset_fails_fast_with_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as info:
        make_dataset("mnist", "train", batch_size=8, seed=0, data_dir=tmp_path)
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "make data DATASET=mnist" in message
    assert f"python -m diffusion_jax prepare --dataset mnist --data_dir {tmp_path}" in message
    assert "'digits'" in message
    assert str(tmp_path) in message
    with pytest.raises(DatasetNotPreparedError, match="make data DATASET=cifar10"):
        full_split("cifar10", "test", tmp_path)


def test_dataset_prepared_in_another_format_is_refused(prepared_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    info_path = copy / "mnist" / "3.0.1" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetNotPreparedError, match="'tfrecord'.*'array_record'"):
        make_dataset("mnist", "train", batch_size=4, seed=0, data_dir=copy)


def test_unknown_names_and_splits_fail_clearly(prepared_dir):
    with pytest.raises(ValueError, match="must be one of.*Did you mean 'fashion_mnist'"):
        make_dataset("fashion-mnist", "train", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="split of 'mnist'.*Did you mean 'train'"):
        make_dataset("mnist", "trian", batch_size=8, seed=0, data_dir=prepared_dir)


def test_prepare_without_tensorflow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(tfds_data, "_tensorflow_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[prepare\]'.*make data"):
        tfds_data.prepare_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="embedded"):
        tfds_data.prepare_dataset("digits", tmp_path)
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        tfds_data.prepare_dataset("cifar_10", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


def test_specs_match_the_tfds_features(tmp_path):
    # Builder metadata comes from the installed code: offline and fast.
    for name, spec in tfds_data.TFDS_DATASETS.items():
        features = tfds.builder(name, data_dir=str(tmp_path)).info.features
        assert tuple(features[spec.image_key].shape) == spec.image_shape, name
        assert (spec.label_key in features) == (spec.label_key is not None), name
        if spec.label_key is not None:
            assert features[spec.label_key].num_classes == spec.num_classes, name


@pytest.fixture
def mocked_tfds(monkeypatch):
    """tfds.testing.mock_data random records; its data dir has no prepared files, so the
    preparedness check (tested above on real files) is bypassed."""
    monkeypatch.setattr(
        tfds_data, "check_prepared", lambda name, data_dir: tfds_data.check_tfds_name(name)
    )
    return tfds.testing.mock_data


def test_mock_mnist_batches(mocked_tfds):
    with mocked_tfds(num_examples=20):
        ds = make_dataset("mnist", "train", batch_size=8, seed=0, data_dir=None)
        assert (ds.num_examples, ds.steps_per_epoch, ds.num_levels) == (20, 2, 256)
        source = tfds.data_source("mnist", split="train", download=False)
        with ds.iterator() as it:
            batches = [next(it) for _ in range(3)]
        for step, batch in enumerate(batches):
            assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
            assert batch["image"].min() >= -1 and batch["image"].max() <= 1
            indices = ds.indices_at(step)
            raw = np.stack([source[int(i)]["image"] for i in indices])
            np.testing.assert_allclose(batch["image"], raw / 127.5 - 1, atol=1e-6)
            labels = [source[int(i)]["label"] for i in indices]
            np.testing.assert_array_equal(batch["label"], labels)
            np.testing.assert_array_equal(
                indices,
                np.random.default_rng([0, step // 2]).permutation(20)[
                    8 * (step % 2) : 8 * (step % 2 + 1)
                ],
            )
        again = make_dataset("mnist", "train", batch_size=8, seed=0)
        np.testing.assert_array_equal(again.batch_at(2)["image"], batches[2]["image"])


def test_mock_binarized_mnist_has_two_levels_and_no_labels(mocked_tfds):
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 2, (28, 28, 1), dtype=np.uint8)} for _ in range(10)]
    with mocked_tfds(as_data_source_fn=lambda builder, split, **kwargs: records):
        ds = make_dataset("binarized_mnist", "validation", batch_size=5, seed=0)
        assert (ds.num_levels, ds.num_examples) == (2, 10)
        batch = ds.batch_at(1)
        want = np.stack([records[i]["image"] for i in ds.indices_at(1)]) * 2.0 - 1.0
        np.testing.assert_array_equal(batch["image"], want)
        np.testing.assert_array_equal(batch["label"], np.full(5, -1))


def test_levels_outside_the_declared_range_are_caught(mocked_tfds):
    with mocked_tfds(num_examples=10):  # values up to 255, but binarized_mnist declares 2 levels
        ds = make_dataset("binarized_mnist", "train", batch_size=5, seed=0)
        with pytest.raises(ValueError, match=r"0\.\.1 \(num_levels=2\)"):
            ds.batch_at(0)


def test_dataset_registry_lists_digits_and_tfds():
    assert set(pipeline.DATASETS) >= {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "binarized_mnist",
    }
