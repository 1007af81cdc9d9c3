"""Real image data sets read through tensorflow-datasets (tfds), without TensorFlow.

Datasets are prepared ONCE in ``array_record`` format (``make data DATASET=mnist``, which needs
the network and TensorFlow from the optional ``prepare`` extra) and then read with
``tfds.data_source(..., download=False)``: random access by index, no TensorFlow at training
time. Before tfds is asked for anything, :func:`check_prepared` looks for the prepared files
(``<data_dir>/<name>/<version>/dataset_info.json``) so that a missing data set fails in well
under a second with :class:`DatasetNotPreparedError`, instead of tfds retrying downloads for
minutes offline.

tensorflow_datasets is imported lazily (it costs ~0.5 s), so the embedded ``digits`` path
never imports it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np

from diffusion_jax._checks import check_choice


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static metadata of an image data set (known without reading any data).

    Attributes:
      name: the name used by this library (and by tfds for tfds data sets).
      image_shape: (H, W, C) of one image.
      num_levels: L, the number of grey levels per channel; stored values are 0..L-1 and map to
        2k/(L-1) - 1 in [-1, 1] (SPEC §1).
      splits: the split names the data set has.
      image_key: the feature holding the uint8 image.
      label_key: the feature holding the integer label, or None when there is none (then
        batches carry label -1).
      num_classes: number of label classes (0 when unlabelled).
      source: "tfds" (read with tfds.data_source) or "embedded" (shipped in the package).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_levels: int
    splits: tuple[str, ...] = ("train", "test")
    image_key: str = "image"
    label_key: str | None = "label"
    num_classes: int = 10
    source: str = "tfds"


TFDS_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", (28, 28, 1), 256),
        DatasetSpec("fashion_mnist", (28, 28, 1), 256),
        DatasetSpec("kmnist", (28, 28, 1), 256),
        DatasetSpec("cifar10", (32, 32, 3), 256),
        DatasetSpec("cifar100", (32, 32, 3), 256, num_classes=100),
        DatasetSpec("svhn_cropped", (32, 32, 3), 256, splits=("train", "test", "extra")),
        # Larochelle & Murray's fixed stochastic binarization of MNIST: values {0, 1}, no labels.
        DatasetSpec(
            "binarized_mnist",
            (28, 28, 1),
            2,
            splits=("train", "validation", "test"),
            label_key=None,
            num_classes=0,
        ),
    )
}


class DatasetNotPreparedError(ValueError):
    """The requested tfds data set has not been downloaded and prepared in ``data_dir``."""


def how_to_prepare(name: str, data_dir: str | os.PathLike | None) -> str:
    """The commands that prepare ``name`` (one line each), for error messages."""
    dir_arg = f" DATA_DIR={data_dir}" if data_dir is not None else ""
    dir_flag = f" --data_dir {data_dir}" if data_dir is not None else ""
    return (
        f"Prepare it once (needs the network; `make data` also installs TensorFlow):\n"
        f"    make data DATASET={name}{dir_arg}\n"
        f"or  python -m diffusion_jax prepare --dataset {name}{dir_flag}\n"
        f"or use the embedded default data set 'digits' (8x8 digits shipped in the package, "
        f"no download)."
    )


def check_tfds_name(name: str) -> DatasetSpec:
    """Returns the spec of a supported tfds data set; ValueError with the nearest match if not."""
    check_choice("dataset name (tfds)", name, TFDS_DATASETS)
    return TFDS_DATASETS[name]


def _builder(name: str, data_dir: str | os.PathLike | None):
    import tensorflow_datasets as tfds

    # A registered code builder is constructed from the installed package: no network
    # (try_gcs defaults to False). data_dir=None means tfds' default (~/tensorflow_datasets or
    # $TFDS_DATA_DIR).
    return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))


def is_prepared(name: str, data_dir: str | os.PathLike | None) -> bool:
    """True when ``<data_dir>/<name>/<version>/`` holds a prepared copy (dataset_info.json)."""
    return bool(_builder(name, data_dir).is_prepared())


def check_prepared(name: str, data_dir: str | os.PathLike | None) -> DatasetSpec:
    """Validates ``name`` and fails fast unless it is prepared in array_record format.

    Raises:
      ValueError: unknown name (message lists the supported names and the nearest match).
      DatasetNotPreparedError: not prepared in ``data_dir``, or prepared in a format
        ``tfds.data_source`` cannot read (the message says how to prepare it).
    """
    spec = check_tfds_name(name)
    if not is_prepared(name, data_dir):
        where = _builder(name, data_dir).data_dir
        raise DatasetNotPreparedError(
            f"Dataset '{name}' is not prepared: no dataset_info.json in {where}.\n"
            + how_to_prepare(name, data_dir)
        )
    builder = _builder(name, data_dir)
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise DatasetNotPreparedError(
            f"Dataset '{name}' in {builder.data_dir} was prepared as {file_format!r}; random "
            "access without TensorFlow needs 'array_record'. Delete that folder and prepare "
            "it again.\n" + how_to_prepare(name, data_dir)
        )
    return spec


def _check_split(spec: DatasetSpec, split: str) -> None:
    # tfds split syntax ("train[:90%]", "train+test") is passed through; check the base names.
    for part in split.split("+"):
        check_choice(f"split of {spec.name!r}", part.split("[")[0].strip(), spec.splits)


def load_source(name: str, split: str, data_dir: str | os.PathLike | None):
    """A random-access source of records: ``len(src)`` and ``src[i]`` -> dict of numpy arrays.

    Fails fast (see :func:`check_prepared`) instead of downloading. ``split`` may use tfds
    slicing syntax, e.g. "train[:90%]".
    """
    spec = check_prepared(name, data_dir)
    _check_split(spec, split)
    import tensorflow_datasets as tfds

    return tfds.data_source(
        name,
        split=split,
        data_dir=None if data_dir is None else os.fspath(data_dir),
        download=False,
    )


def read_records(source, indices: np.ndarray, spec: DatasetSpec):
    """Reads records ``indices`` of ``source``.

    Returns:
      (images, labels): uint8 (n, H, W, C) and int32 (n,) (-1 when the data set has no labels).
    """
    # One record at a time: the batch accessor of tfds.testing.mock_data sources is broken,
    # and decoding (PNG) dominates the cost either way.
    records = [source[int(i)] for i in indices]
    h, w, c = spec.image_shape
    images = np.empty((len(records), h, w, c), np.uint8)
    labels = np.full((len(records),), -1, np.int32)
    for j, record in enumerate(records):
        image = np.asarray(record[spec.image_key])
        if image.shape != spec.image_shape:
            raise ValueError(
                f"{spec.name}: expected images of shape {spec.image_shape}, got {image.shape}."
            )
        images[j] = image
        if spec.label_key is not None:
            labels[j] = record[spec.label_key]
    return images, labels


def _tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def prepare_dataset(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Downloads ``name`` and prepares it in ``array_record`` format under ``data_dir``.

    Needs the network and TensorFlow (the stock tfds builders use it to prepare):
    ``pip install -e '.[prepare]'``, or simply ``make data DATASET=<name>``. Training never
    needs TensorFlow afterwards. Returns the folder holding the prepared files.

    Raises:
      ValueError: unknown name, or "digits" (embedded: nothing to prepare).
      ImportError: TensorFlow is not installed.
    """
    if name == "digits":
        raise ValueError("'digits' is embedded in the package: there is nothing to prepare.")
    check_tfds_name(name)
    if not _tensorflow_available():
        raise ImportError(
            f"Preparing '{name}' needs TensorFlow, which is not installed (it is only needed "
            "once, to prepare data). Install it with: pip install -e '.[prepare]' "
            f"(or run: make data DATASET={name})."
        )
    builder = _builder(name, data_dir)
    builder.download_and_prepare(file_format="array_record")
    return os.fspath(builder.data_dir)
