"""Data: the embedded 8×8 digits, tfds data sets read without TensorFlow, and the pipeline.

    from diffusion_jax import data
    ds = data.make_dataset("digits", "train", batch_size=64, seed=0)
    it = ds.iterator()            # infinite; next(it) -> {"image": (64, 8, 8, 1), "label": (64,)}
    state = it.get_state()        # {"step": ..., ...}: save it with the checkpoint
    it = ds.iterator(state)       # resumes exactly

Images are float32 in [-1, 1]: level k of L maps to 2k/(L-1) - 1 (SPEC §1).
"""

from diffusion_jax.data.digits import build_digits_npz, load_digits
from diffusion_jax.data.pipeline import (
    DATASETS,
    BatchIterator,
    ImageDataset,
    binarize,
    dataset_spec,
    dequantize,
    from_model_range,
    full_split,
    make_dataset,
    to_model_range,
)
from diffusion_jax.data.tfds_data import (
    TFDS_DATASETS,
    DatasetNotPreparedError,
    DatasetSpec,
    check_prepared,
    is_prepared,
    prepare_dataset,
)

__all__ = [
    "DATASETS",
    "TFDS_DATASETS",
    "BatchIterator",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "ImageDataset",
    "binarize",
    "build_digits_npz",
    "check_prepared",
    "dataset_spec",
    "dequantize",
    "from_model_range",
    "full_split",
    "is_prepared",
    "load_digits",
    "make_dataset",
    "prepare_dataset",
    "to_model_range",
]
