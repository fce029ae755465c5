"""Helpers the ``fsl-xai`` commands share: threads, loading images, fitting them to a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:  # the library is imported inside each command, to keep `fsl-xai --help` quick
    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet


def set_torch_threads(n: int | None) -> None:
    """Use ``n`` torch threads (None: torch's choice)."""
    from ..training import set_threads

    set_threads(n)


def load_images(dataset: str | None, data_file: str | None, split: str, progress: bool) -> ImageSet:
    """One split of a registered dataset (``--dataset``) or of a MedMNIST-format file (``--data-file``)."""
    if data_file is not None:
        from ..data import read_npz

        return read_npz(data_file, split=split)
    if dataset is None:
        raise DataError("no images to load: give a dataset name (--dataset) or a .npz file (--data-file)")
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
