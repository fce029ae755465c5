"""Helpers the ``fsl-xai`` commands share: threads, loading images, fitting them to a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:  # the library is imported inside each command, to keep `fsl-xai --help` quick
    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet

#: what ``--data-file`` accepts, for the commands' help texts
DATA_FILE_HELP = ("your own images: a MedMNIST-format .npz file, an image folder (class sub-folders, or a CSV "
                  "with path and label columns) or a folder of DICOM files")


def set_torch_threads(n: int | None) -> None:
    """Use ``n`` torch threads (None: torch's choice)."""
    from ..training import set_threads

    set_threads(n)


def _is_path(text: str) -> bool:
    """A dataset argument that names a file or folder on this machine rather than a registered set."""
    from ..data.registry import list_datasets

    path = Path(text).expanduser()
    if not path.exists():
        return False
    known = {i.name for i in list_datasets()}
    return text.strip().lower().replace("_", "-") not in known or path.suffix.lower() == ".npz"


def load_images(dataset: str | None, data_file: str | None, split: str, progress: bool,
                labels: str | None = None) -> ImageSet:
    """One split of a registered dataset (``--dataset``) or of your own images (``--data-file``: a
    MedMNIST-format npz, an image folder with or without a CSV, or a DICOM folder; see
    :func:`fsl_xai.data.open.open_images`). A ``--dataset`` that is a path on this machine is opened
    the same way. ``labels`` is the CSV of a folder (default: the folder's only CSV)."""
    from ..data.open import open_images

    if data_file is not None:
        return open_images(data_file, split=split, labels_csv=labels, progress=progress)
    if dataset is None:
        raise DataError("no images to load: give a dataset name (--dataset) or your own images (--data-file: "
                        "an .npz file, an image folder or a DICOM folder)")
    if _is_path(dataset):
        return open_images(dataset, split=split, labels_csv=labels, progress=progress)
    if labels is not None:
        raise DataError(f"--labels is for your own folders; {dataset!r} is a registered dataset with its own labels")
    from ..data.registry import load_dataset

    return load_dataset(dataset, split=split, progress=progress)


def images_for_checkpoint(images: ImageSet, info: CheckpointInfo, convert: bool) -> ImageSet:
    """The images at the checkpoint's channels and size, converted only when ``convert`` is set."""
    want_c, want_hw = info.in_channels, info.image_size
    if images.n_channels == want_c and images.image_size == want_hw:
        return images
    if not convert:
        from ..errors import CheckpointError

        raise CheckpointError(
            f"the checkpoint expects {want_c}-channel {want_hw[0]}x{want_hw[1]} images but {images.name} has "
            f"{images.n_channels}-channel {images.image_size[0]}x{images.image_size[1]} images; "
            "pass --convert to convert them, or use a checkpoint trained on such images")
    return images.convert(channels=want_c, size=want_hw)


def format_ci(ci: Sequence[float | None] | None) -> str:
    """``low-high`` with three decimals; "undefined" when an end is missing (None, one episode)."""
    if ci is None or ci[0] is None or ci[1] is None:
        return "undefined"
    return f"{ci[0]:.3f}-{ci[1]:.3f}"
