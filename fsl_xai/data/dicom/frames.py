"""The grey levels of one frame: rescale and window, from the enhanced multi-frame functional groups.

Enhanced multi-frame objects (Enhanced CT/MR/XA, ...) keep the modality LUT and the display window
not at the top level but per frame, in the functional groups (PS3.3 C.7.6.16):
``PerFrameFunctionalGroupsSequence[frame]`` and ``SharedFunctionalGroupsSequence[0]`` hold
``PixelValueTransformationSequence`` (RescaleSlope, RescaleIntercept) and ``FrameVOILUTSequence``
(WindowCenter, WindowWidth, VOILUTFunction). :func:`frame_levels` looks there first (the per-frame
item, then the shared one) and falls back to the top-level tags of classic objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from .loading import first_number, text_value

_PIXEL_TRANSFORM = "PixelValueTransformationSequence"
_FRAME_VOI = "FrameVOILUTSequence"


@dataclass(frozen=True)
class FrameLevels:
    """How one frame's stored values become display values.

    Attributes:
        slope, intercept: the linear modality LUT from the functional groups, or None when they do
            not give one (then the top-level Modality LUT module applies, through pydicom).
        window: the stored (centre, width), first value when several, or None.
        function: the VOI LUT function ("LINEAR", "LINEAR_EXACT" or "SIGMOID").
        source: where the levels came from: "per-frame", "shared" or "top level" (for the rescale;
            the window's source is the same or an earlier one in that order).
    """

    slope: float | None
    intercept: float | None
    window: tuple[float, float] | None
    function: str
    source: str


def _macro(ds: Dataset, frame: int, macro: str) -> tuple[Dataset | None, str]:
    """The first item of ``macro`` in the per-frame item of ``frame``, else in the shared item."""
    for seq_name, index, where in (("PerFrameFunctionalGroupsSequence", frame, "per-frame"),
                                   ("SharedFunctionalGroupsSequence", 0, "shared")):
        seq = ds.get(seq_name)
        if not seq or index >= len(seq):
            continue
        inner = seq[index].get(macro)
        if inner:
            return inner[0], where
    return None, ""


def frame_levels(ds: Dataset, frame: int) -> FrameLevels:
    """The rescale and window of ``frame`` (0-based): functional groups first, else the top-level tags."""
    slope = intercept = None
    source = "top level"
    transform, where = _macro(ds, frame, _PIXEL_TRANSFORM)
    if transform is not None:
        s, i = first_number(transform.get("RescaleSlope")), first_number(transform.get("RescaleIntercept"))
        if s is not None and i is not None:
            slope, intercept, source = s, i, where
    voi, _ = _macro(ds, frame, _FRAME_VOI)
    holder = voi if voi is not None else ds
    c, w = first_number(holder.get("WindowCenter")), first_number(holder.get("WindowWidth"))
    window = (c, w) if c is not None and w is not None and w > 0 else None
    function = (text_value(holder, "VOILUTFunction") or "LINEAR").upper()
    return FrameLevels(slope, intercept, window, function, source)
