"""Reading one DICOM image: checks, decoding, colour and grey levels, and the model's input size.

:func:`read_dicom` reads one file: pixel data through pydicom (compressed transfer syntaxes
through the pylibjpeg plugins and Pillow), the modality LUT (rescale slope/intercept), a window
(from the file's tags, a preset, the user, or the value range), each taken per frame from the
functional groups of an enhanced multi-frame object (:mod:`.frames`), MONOCHROME1 inverted, any
frame of a multi-frame file (:func:`read_dicom_frames` reads several with one parse), RGB/YBR
(converted to RGB) and PALETTE COLOR (LUT applied), then resized or cropped to the model's input:
float32 (C, H, W) in [0, 1]. The metadata it returns is already de-identified
(:func:`~fsl_xai.data.dicom.deid.safe_metadata`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset

from ...errors import DataError
from .deid import DeidConfig, safe_metadata
from .frames import frame_levels
from .loading import DicomReadError, first_number, load_dataset, quiet_pydicom
from .pixels import Window, fit_image, resolve_window

log = logging.getLogger(__name__)

_VALID_BITS = (1, 8, 16, 32, 64)


@dataclass
class DicomImage:
    """One decoded, de-identified DICOM image.

    Attributes:
        pixels: float32 (channels, height, width) in [0, 1].
        metadata: the de-identified metadata (safe fields only).
        window: the (centre, width) applied to a monochrome image, or None for colour images.
        window_source: "tags", "preset:<name>", "user", "voi_lut" or "minmax" ("none" for colour).
        raw: the frame's values after the modality LUT (Hounsfield units for CT), float32
            (height, width) or (height, width, 3), before windowing and resizing; None unless
            ``keep_raw=True``.
        frame: the frame index; n_frames: frames in the file.
    """

    pixels: np.ndarray
    metadata: dict
    window: tuple[float, float] | None
    window_source: str
    raw: np.ndarray | None = field(default=None, repr=False)
    frame: int = 0
    n_frames: int = 1

    def __iter__(self) -> Iterator[object]:
        """``pixels, metadata = read_dicom(...)`` (the pair named in docs/CONTRACTS.md)."""
        return iter((self.pixels, self.metadata))

    def __repr__(self) -> str:
        c, h, w = self.pixels.shape
        win = "none" if self.window is None else f"({self.window[0]:g}, {self.window[1]:g})"
        return (f"DicomImage({self.metadata.get('case_id')}: {c}x{h}x{w}, {self.metadata.get('modality')}, "
                f"frame {self.frame}/{self.n_frames}, window {win} from {self.window_source})")


def _check_image_module(ds: Dataset, path: Path) -> None:
    pixel_keys = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(k in ds for k in pixel_keys):
        sop_name = str(ds.SOPClassUID.name) if "SOPClassUID" in ds else ""
        if "Rows" in ds or "BitsAllocated" in ds or "Image Storage" in sop_name:
            raise DicomReadError("no pixel data", "the file is an image object but has no Pixel Data element: it is "
                                 "truncated or was stored without pixels; copy it again from the source", path)
        kind = f" (a {sop_name} object)" if sop_name else ""
        raise DicomReadError("no pixel data", f"the file holds no image{kind}; only image files can be imported",
                             path)
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation") if k not in ds]
    if "PixelData" in ds and missing:
        raise DicomReadError("missing image attributes", f"the image lacks {missing}; the file is incomplete", path)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in _VALID_BITS:
        raise DicomReadError("wrong bits allocated", f"BitsAllocated is {bits}, but DICOM allows only "
                             f"{list(_VALID_BITS)}; the header is corrupt", path)
    stored = int(ds.get("BitsStored", bits) or bits)
    if not 1 <= stored <= bits:
        raise DicomReadError("wrong bits stored", f"BitsStored is {stored} with BitsAllocated {bits}; "
                             "BitsStored must lie in 1..BitsAllocated", path)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", FileMetaDataset()):
        raise DicomReadError("missing transfer syntax", "the file meta header has no Transfer Syntax UID, so the "
                             "pixel encoding is unknown; rewrite the file with a DICOM tool (e.g. dcmconv)", path)


def _check_length(ds: Dataset, path: Path) -> None:
    """Native (uncompressed) pixel data must hold rows x columns x samples x frames values."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed or "PixelData" not in ds:
        return
    item = ds.get_item("PixelData")
    declared = getattr(item, "length", None)
    actual = len(ds.PixelData)
    if declared is not None and declared != 0xFFFFFFFF and declared > actual:
        raise DicomReadError("truncated", f"the file ends inside the pixel data ({actual} of {declared} bytes); "
                             "copy it again from the source", path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, frames = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated)
    n = rows * cols * spp * frames
    expected = (n + 7) // 8 if bits == 1 else n * bits // 8
    if "YBR_FULL_422" == str(ds.PhotometricInterpretation) and bits == 8:
        expected = expected * 2 // 3
    if actual < expected:
        raise DicomReadError("wrong pixel data length", f"the pixel data has {actual} bytes but Rows x Columns x "
                             f"SamplesPerPixel x frames x BitsAllocated ({rows} x {cols} x {spp} x {frames} x {bits} "
                             f"bits) needs {expected}; the header or the pixel data is wrong", path)
    if actual > expected + 1:
        log.warning("%s: the pixel data has %d bytes, %d more than the image needs; extra bytes ignored",
                    path, actual, actual - expected)


def _decode(ds: Dataset, frame: int, path: Path) -> tuple[np.ndarray, str]:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomReadError("unsupported transfer syntax", f"pixel data encoded as {ts.name} ({ts}) cannot be "
                             "decoded here; convert the file to an uncompressed or JPEG/JPEG 2000 syntax "
                             "(e.g. with gdcmconv --raw)", path) from None
    if not decoder.is_available:
        raise DicomReadError("unsupported transfer syntax", f"no installed plugin decodes {ts.name}; install "
                             "pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg (or Pillow)", path)
    with quiet_pydicom():
        try:
            # pydicom types **kwargs as DecodeOptions without Unpack, so no single option type-checks
            arr, meta = decoder.as_array(ds, index=frame, as_rgb=True)  # type: ignore[arg-type]
        except Exception as exc:
            # pydicom lists one line per plugin tried; keep them all (they name no patient data)
            text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            text = re.sub(r"<_io\.[^>]*>", "the data", text)[:500]
            reason = "wrong pixel data length" if "bytes of pixel data" in text else "undecodable pixel data"
            raise DicomReadError(reason, f"pydicom could not decode the pixels ({type(exc).__name__}: {text}); "
                                 "the pixel data is corrupt or truncated", path) from None
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    return arr, photometric


def _check_frames(frames: Sequence[int], n_frames: int, path: Path) -> list[int]:
    for frame in frames:
        if not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < n_frames:
            raise DicomReadError("bad frame", f"frame {frame!r} is out of range: the file has {n_frames} frame(s) "
                                 f"(0..{n_frames - 1})", path)
    return [int(f) for f in frames]


def _unit_image(ds: Dataset, frame: int, path: Path, window: Window
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None, str]:
    """-> (values in [0, 1] (H, W) or (H, W, 3), the values after the modality LUT, window, its source)."""
    arr, photometric = _decode(ds, frame, path)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        with quiet_pydicom():
            try:
                rgb = apply_color_lut(arr, ds)
            except Exception as exc:
                raise DicomReadError("bad palette", f"the palette colour lookup table cannot be applied "
                                     f"({type(exc).__name__}); the file is incomplete", path) from None
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else float(rgb.max() or 1)
        return rgb.astype(np.float64) / top, rgb.astype(np.float32), None, "none"
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
            raise DicomReadError("unsupported photometric interpretation", f"{photometric} with 3 samples", path)
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        stored = int(ds.get("BitsStored", ds.BitsAllocated))
        return arr.astype(np.float64) / float(2 ** stored - 1), arr.astype(np.float32), None, "none"
    if arr.ndim != 2:
        raise DicomReadError("unsupported pixel layout", f"decoded array of shape {arr.shape}", path)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomReadError("unsupported photometric interpretation", f"{photometric} is not supported; "
                             "supported: MONOCHROME1/2, RGB, YBR_*, PALETTE COLOR", path)
    levels = frame_levels(ds, frame)
    if levels.slope is not None and levels.intercept is not None:
        # enhanced multi-frame: the frame's own rescale (pydicom reads only the top-level tags)
        values = arr.astype(np.float64) * levels.slope + levels.intercept
    else:
        from pydicom.pixels import apply_rescale

        with quiet_pydicom():
            values = apply_rescale(arr, ds).astype(np.float64)
    unit, win, source = resolve_window(window, levels, values, path)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: low values are white
    return unit, values.astype(np.float32), win, source


def _read_dataset(ds: Dataset, path: Path, window: Window, frames: Sequence[int] | None,
                  size: int | tuple[int, int] | None, channels: int | None, fit: str, keep_raw: bool,
                  config: DeidConfig) -> list[DicomImage]:
    _check_image_module(ds, path)
    _check_length(ds, path)
    n_frames = int(first_number(ds.get("NumberOfFrames")) or 1)
    chosen = list(range(n_frames)) if frames is None else _check_frames(frames, n_frames, path)
    base = safe_metadata(ds, config)
    out = []
    for frame in chosen:
        unit, values, win, source = _unit_image(ds, frame, path, window)
        img = unit[None] if unit.ndim == 2 else np.moveaxis(unit, -1, 0)
        img = np.clip(np.nan_to_num(img.astype(np.float32), nan=0.0), 0.0, 1.0)
        if channels is not None:
            if channels == 1 and img.shape[0] == 3:
                img = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), img, axes=1)[None]
            elif channels == 3 and img.shape[0] == 1:
                img = np.repeat(img, 3, axis=0)
            elif channels != img.shape[0]:
                raise DataError(f"channels must be 1 or 3, got {channels}")
        img = fit_image(img, size, fit)
        meta = dict(base)
        if n_frames > 1:
            meta["sample_id"] = f"{meta['sample_id']}-f{frame}"
        meta.update(frame=frame, window_center=None if win is None else float(win[0]),
                    window_width=None if win is None else float(win[1]), window_source=source)
        out.append(DicomImage(np.ascontiguousarray(img, dtype=np.float32), meta, win, source,
                              values if keep_raw else None, frame, n_frames))
    return out


def read_dicom(
    path: str | os.PathLike,
    window: Window = "auto",
    frame: int = 0,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    fit: str = "resize",
    keep_raw: bool = False,
    config: DeidConfig | None = None,
) -> DicomImage:
    """Read one DICOM image file, de-identified.

    Args:
        path: the file.
        window: monochrome display window. "auto": the frame's WindowCenter/WindowWidth (first
            value when several; an enhanced multi-frame object's per-frame or shared
            FrameVOILUTSequence, else the top-level tags), else the value range; None: the value
            range (min..max); a preset name (:data:`WINDOW_PRESETS`: lung, mediastinum,
            soft_tissue, abdomen, liver, bone, brain; in Hounsfield units, so meant for CT); or
            (centre, width). Ignored for colour.
        frame: which frame of a multi-frame file (0-based).
        size: output height and width (an int for square), or None for the native size.
        channels: 1 or 3 (grey <-> RGB by luminance / repetition), or None to keep the file's.
        fit: "resize" (centre-crop to the target aspect, then antialiased resize; default),
            "stretch" (resize the whole image) or "crop" (centre crop at native resolution, zero
            padded when smaller).
        keep_raw: also return the frame's values after the modality LUT (e.g. Hounsfield units).
        config: de-identification settings (secret, date mode); default :class:`DeidConfig`.

    Returns:
        A :class:`DicomImage`: pixels float32 (C, H, W) in [0, 1], de-identified metadata, window.

    Raises:
        DicomReadError (a DataError) with the reason: not found, empty file, not DICOM, truncated,
        no pixel data, unsupported transfer syntax, wrong bits allocated, wrong pixel data length,
        undecodable pixel data, bad frame, ...
    """
    path = Path(path)
    config = config or DeidConfig()
    ds, _ = load_dataset(path)
    return _read_dataset(ds, path, window, [frame], size, channels, fit, keep_raw, config)[0]


def read_dicom_frames(
    path: str | os.PathLike,
    frames: Sequence[int] | None = None,
    window: Window = "auto",
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    fit: str = "resize",
    keep_raw: bool = False,
    config: DeidConfig | None = None,
) -> list[DicomImage]:
    """Read several frames of one DICOM file (parsed once), de-identified.

    Each frame is windowed and rescaled with its own levels (an enhanced multi-frame object's
    per-frame functional groups); the metadata of each names its ``frame``, and the ``sample_id``
    of a multi-frame file's frame ends in ``-f<frame>``.

    Args:
        path: the file.
        frames: frame indices (0-based), or None for every frame.
        window, size, channels, fit, keep_raw, config: as in :func:`read_dicom`.

    Returns:
        One :class:`DicomImage` per frame, in the order asked.

    Raises:
        DicomReadError: as :func:`read_dicom`; "bad frame" when an index is out of range.
    """
    path = Path(path)
    config = config or DeidConfig()
    ds, _ = load_dataset(path)
    return _read_dataset(ds, path, window, None if frames is None else list(frames), size, channels, fit,
                         keep_raw, config)
