"""From decoded DICOM values to model input: the display window and the fit to the model's size.

- :func:`resolve_window` maps monochrome values (after the modality LUT, e.g. Hounsfield units) to
  [0, 1] with a window from the frame's stored levels (:mod:`.frames`), a CT preset
  (:data:`WINDOW_PRESETS`), the user, or the value range.
- :func:`fit_image` brings a (C, H, W) image to the model's height and width by centre crop and/or
  antialiased resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..dicom_presets import WINDOW_PRESETS  # CT window presets (centre, width) in HU
from .frames import FrameLevels
from .loading import DicomReadError

#: how an image is brought to the requested size (see :func:`fit_image`)
FIT_MODES = ("resize", "stretch", "crop")

#: what ``window=`` accepts: "auto", None, a preset name or (centre, width)
Window = str | tuple[float, float] | None


def window_values(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]; same shape as ``x``."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT" or width <= 1:
        return np.clip((x - center) / max(width, 1e-12) + 0.5, 0.0, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def resolve_window(window: Window, levels: FrameLevels, values: np.ndarray, path: Path
                   ) -> tuple[np.ndarray, tuple[float, float], str]:
    """Window monochrome values (height, width).

    Args:
        window: "auto" (the frame's stored window, else the value range), None (the value
            range), a preset name of :data:`WINDOW_PRESETS`, or (centre, width).
        levels: the frame's stored window and VOI LUT function (:func:`frame_levels`: the
            functional groups of an enhanced multi-frame object, else the top-level tags).
        values: the frame after the modality LUT, float (height, width).
        path: the file, for error messages.

    Returns:
        (image in [0, 1] (height, width), (centre, width), where the window came from: "tags",
        "preset:<name>", "user" or "minmax").
    """
    if isinstance(window, str) and window != "auto":
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in WINDOW_PRESETS:
            raise DicomReadError("unknown window preset", f"{window!r}; choose 'auto', None, (centre, width) or one "
                                 f"of {sorted(WINDOW_PRESETS)}", path)
        c, w = WINDOW_PRESETS[key]
        return window_values(values, c, w), (c, w), f"preset:{key}"
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise DataError(f"window must be (centre, width), got {window!r}")
        c, w = float(window[0]), float(window[1])
        if not w > 0:
            raise DataError(f"the window width must be positive, got {w}; pass (centre, width)")
        return window_values(values, c, w), (c, w), "user"
    if window == "auto":
        if levels.window is not None:
            c, w = levels.window
            return window_values(values, c, w, levels.function), (c, w), "tags"
    elif window is not None:
        raise DataError(f"window must be None, 'auto', a preset name or (centre, width); got {window!r}")
    lo, hi = float(values.min()), float(values.max())
    unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return unit, ((lo + hi) / 2, max(hi - lo, 1.0)), "minmax"


def fit_image(img: np.ndarray, size: int | tuple[int, int] | None, fit: str) -> np.ndarray:
    """(C, H, W) -> (C, h, w) float32 for ``size`` = h (square) or (h, w); None keeps the size.

    ``fit``: "resize" (centre-crop to the target aspect, then antialiased bilinear resize),
    "stretch" (resize the whole image) or "crop" (centre crop at native resolution, zero padded
    when smaller).
    """
    if size is None:
        return img
    h, w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if fit not in FIT_MODES:
        raise DataError(f"fit must be one of {list(FIT_MODES)}, got {fit!r}")
    C, H, W = img.shape
    if fit == "crop":
        out = np.zeros((C, h, w), dtype=np.float32)
        top, left = (H - h) // 2, (W - w) // 2
        src = img[:, max(top, 0):max(top, 0) + min(h, H), max(left, 0):max(left, 0) + min(w, W)]
        dt, dl = max(-top, 0), max(-left, 0)
        out[:, dt:dt + src.shape[1], dl:dl + src.shape[2]] = src
        return out
    if fit == "resize":
        # keep the aspect ratio: centre square (or target-shaped) crop, then resize
        target = h / w
        if H / W > target:
            ch = int(round(W * target))
            top = (H - ch) // 2
            img = img[:, top:top + ch, :]
        elif H / W < target:
            cw = int(round(H / target))
            left = (W - cw) // 2
            img = img[:, :, left:left + cw]
    if img.shape[1:] == (h, w):
        return np.ascontiguousarray(img, dtype=np.float32)
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], size=(h, w),
                      mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp_(0, 1).numpy()
