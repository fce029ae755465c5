"""Helpers the ``fsl-xai`` commands share: threads, help texts, interval formatting.

Loading images and fitting them to a checkpoint are library functions each command imports when it
runs (keeping ``fsl-xai --help`` quick): :func:`fsl_xai.data.open.load_images`,
:func:`fsl_xai.checkpoints.images_for_checkpoint` and :func:`fsl_xai.checkpoints.untrained_classes`."""

from __future__ import annotations

from collections.abc import Sequence

#: what ``--data-file`` accepts, for the commands' help texts
DATA_FILE_HELP = ("your own images: a MedMNIST-format .npz file, an image folder (class sub-folders, or a CSV "
                  "with path and label columns) or a folder of DICOM files")


def set_torch_threads(n: int | None) -> None:
    """Use ``n`` torch threads (None: torch's choice)."""
    from ..training import set_threads

    set_threads(n)


def format_ci(ci: Sequence[float | None] | None) -> str:
    """``low-high`` with three decimals; "undefined" when an end is missing (None, one episode)."""
    if ci is None or ci[0] is None or ci[1] is None:
        return "undefined"
    return f"{ci[0]:.3f}-{ci[1]:.3f}"
