"""Writing imported images as a MedMNIST-format npz file (what ``fsl-xai dicom import`` writes).

The file holds ``{split}_images`` (uint8, N x H x W, or N x H x W x 3 for colour),
``{split}_labels`` (uint8, N x 1), ``class_names`` and one ``{split}_{column}`` array per metadata
column: numbers as float64 (NaN when missing), text as fixed-width unicode (empty when missing),
so that it loads with ``numpy.load(allow_pickle=False)`` and reads back through
:func:`fsl_xai.data.read_npz` with the class names and the metadata. It is written to a temporary
file beside the target and renamed into place, so nothing half-written is ever left at the target.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ...files import atomic_write
from ..imageset import ImageSet
from ..npz import SPLITS

#: metadata columns not written: read_npz sets ``split`` from the split it reads
_NOT_WRITTEN = ("split",)


def _column_array(values: pd.Series) -> np.ndarray:
    """A metadata column as float64 (all values numbers or missing) or fixed-width unicode."""
    present = [v for v in values.tolist() if v is not None and not (isinstance(v, float) and np.isnan(v))]
    if present and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values.tolist()], dtype=np.float64)
    text = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).lower()
            if isinstance(v, (bool, np.bool_)) else str(v) for v in values.tolist()]
    return np.array(text, dtype=str) if text else np.zeros(0, dtype="<U1")


def medmnist_arrays(images: ImageSet, split: str = "test") -> dict[str, np.ndarray]:
    """The arrays of a MedMNIST-format file holding ``images`` as one split (no object arrays)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if images.n_classes > 256:
        raise DataError(f"{images.name} has {images.n_classes} classes; a MedMNIST-format file stores labels as "
                        "uint8, so at most 256 classes")
    pixels = np.round(np.clip(images.images, 0.0, 1.0) * 255.0).astype(np.uint8)  # (N, C, H, W)
    pixels = pixels[:, 0] if pixels.shape[1] == 1 else np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    arrays = {f"{split}_images": pixels,
              f"{split}_labels": images.labels.astype(np.uint8).reshape(-1, 1),
              "class_names": np.array(list(images.class_names), dtype=str)}
    for column in images.metadata.columns:
        if column in _NOT_WRITTEN:
            continue
        arrays[f"{split}_{column}"] = _column_array(images.metadata[column])
    return arrays


def write_medmnist_npz(images: ImageSet, path: str | os.PathLike, split: str = "test") -> Path:
    """Write ``images`` as one split of a MedMNIST-format npz file, atomically.

    Args:
        images: the images (float32 (N, C, H, W) in [0, 1], stored as uint8 0..255), labels,
            class names and metadata.
        path: the npz file to write (parent folders are created; an existing file is replaced only
            once the new one is complete).
        split: the split the images form: "train", "val" or "test".

    Returns:
        The path written.
    """
    arrays = medmnist_arrays(images, split)
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as one ArrayLike
    return Path(path)
