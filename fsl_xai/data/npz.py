"""Reader for MedMNIST-format ``.npz`` files (no pickles, no medmnist package)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, DatasetNotFoundError
from .imageset import ImageSet

SPLITS = ("train", "val", "test")
# columns that hold a stable per-image id, in order of preference
_ID_COLUMNS = ("image_id", "filenames", "filename", "sample_id")
# numeric metadata columns where this value means "missing"
_MISSING_NUMBER = -1


def read_npz(
    path: str | os.PathLike,
    split: str = "test",
    name: str | None = None,
    class_names: tuple[str, ...] | None = None,
) -> ImageSet:
    """Read one split of a MedMNIST-format npz file.

    The file holds ``{split}_images`` (uint8, N x H x W or N x H x W x C), ``{split}_labels``
    (N x 1 or N), optionally ``class_names`` and any per-image ``{split}_{column}`` arrays, which
    become metadata columns (``image_id`` or ``filenames`` becomes the sample id).

    Args:
        path: the npz file.
        split: ``train``, ``val`` or ``test``.
        name: display name (default: the file's stem).
        class_names: names to use when the file has none (default: "0", "1", ...).
    """
    path = Path(path)
    name = name or path.stem
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if not path.exists():
        raise DatasetNotFoundError(f"npz file not found: {path}; check the path or the data-directory setting")
    if not zipfile.is_zipfile(path):
        # np.load would try to read anything else as a pickle and blame "pickled data"
        raise DataError(
            f"{path} is not an npz (zip) file; it may be truncated, corrupt or another format: "
            "download it again, or delete it so that it is fetched again"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            # only this split's arrays and the class names: a 64 px file holds all three splits
            arrays = {k: npz[k] for k in npz.files
                      if k.startswith(f"{split}_") or k == "class_names" or k.endswith("_labels")}
            available = list(npz.files)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable npz file ({exc}); it may be truncated or corrupt: "
            "download it again or delete it so that it is fetched again"
        ) from exc
    except ValueError as exc:
        raise DataError(
            f"{path} holds pickled objects or unreadable arrays ({exc}); MedMNIST-format files must "
            "store plain arrays (strings as fixed-width unicode)"
        ) from exc

    key_images, key_labels = f"{split}_images", f"{split}_labels"
    for key in (key_images, key_labels):
        if key not in arrays:
            raise DataError(
                f"{path} has no array {key!r}; it holds {sorted(available)}. A MedMNIST-format file needs "
                "{split}_images and {split}_labels for each split"
            )
    images, labels = arrays[key_images], arrays[key_labels]
    if images.ndim not in (3, 4):
        raise DataError(f"{path}: {key_images} must be N x H x W or N x H x W x C, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {key_images} must be uint8 (0-255), got dtype {images.dtype}")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(
            f"{path}: {key_labels} has shape {labels.shape}; multi-label sets are not supported, "
            "give one class per image (N or N x 1)"
        )
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels in split {split!r}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key_labels} must be integers, got dtype {labels.dtype}")

    if class_names is None and "class_names" in arrays:
        class_names = tuple(str(c) for c in arrays["class_names"].tolist())
    if class_names is None:
        # from every split's labels, so that all splits of one file get the same class list
        maxima = [int(a.max()) for k, a in arrays.items()
                  if k.endswith("_labels") and a.size and np.issubdtype(a.dtype, np.integer)]
        n = max(maxima) + 1 if maxima else 0
        class_names = tuple(str(i) for i in range(n))

    metadata = {}
    prefix = f"{split}_"
    for key, arr in arrays.items():
        if not key.startswith(prefix) or key in (key_images, key_labels):
            continue
        if arr.ndim != 1 or len(arr) != len(images):
            continue
        column = key[len(prefix):]
        if np.issubdtype(arr.dtype, np.number):
            values = arr.astype(np.float64)
            values[values == _MISSING_NUMBER] = np.nan
            metadata[column] = values
        else:
            metadata[column] = arr.astype(str)
    table = pd.DataFrame(metadata)
    id_column = next((c for c in _ID_COLUMNS if c in table.columns and table[c].is_unique), None)
    ids = table[id_column] if id_column else pd.Series([f"{split}-{i:05d}" for i in range(len(images))])
    if id_column == "sample_id":
        table = table.drop(columns="sample_id")
    elif "sample_id" in table.columns:  # the file's own ids are not unique: keep them, under another name
        table = table.rename(columns={"sample_id": "sample_id_in_file"})
    table.insert(0, "sample_id", ids.astype(str).to_numpy())
    table["split"] = split
    return ImageSet.from_array(images, labels, class_names, table, name=name)
