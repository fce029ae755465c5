"""Loaders that all produce an ImageSet."""

from .download import download_file, file_md5
from .folder import read_folder
from .imageset import ImageSet
from .npz import read_npz
from .open import detect_kind, open_images
from .registry import (
    DatasetInfo,
    datasets_table,
    get_info,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_path,
    unregister_dataset,
)
from .synthetic import CLASS_SHAPES, make_synthetic

__all__ = [
    "CLASS_SHAPES", "DatasetInfo", "ImageSet", "datasets_table", "detect_kind", "download_file", "file_md5",
    "get_info", "list_datasets", "load_dataset", "make_synthetic", "open_images", "read_folder", "read_npz",
    "register_dataset",
    "resolve_path", "unregister_dataset",
]
