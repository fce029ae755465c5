"""DICOM import with de-identification (the only module that imports pydicom).

- :func:`read_dicom` reads one file: pixel data through pydicom (compressed transfer syntaxes
  through the pylibjpeg plugins and Pillow), the modality LUT (rescale slope/intercept), a window
  (from the file's tags, a preset, the user, or the value range), MONOCHROME1 inverted, one frame of
  a multi-frame file, RGB/YBR (converted to RGB) and PALETTE COLOR (LUT applied), then resized or
  cropped to the model's input: float32 (C, H, W) in [0, 1].
- :func:`import_dicom_folder` reads a folder into an :class:`~fsl_xai.data.imageset.ImageSet`,
  reporting every bad file with its reason and carrying on.
- :func:`deidentify_dataset` / :func:`deidentify_file` apply the PS3.15 Annex E basic profile
  (see :mod:`fsl_xai.data.deid`); the metadata of every image this module returns is already
  de-identified: only safe fields (sex, age, modality, manufacturer, model, keyed site pseudonym,
  body part, study year, pseudonymous case id, frame, ...) and never a name, ID, date or UID.

Identity safety: while a file is read, pydicom's warnings and log records (which can quote element
values, e.g. a malformed birth date) are suppressed; our own messages and logs name only the file
path the caller gave and the kind of problem. Burned-in text in the pixels cannot be removed here:
files that declare ``BurnedInAnnotation = YES`` are flagged in the metadata (``burned_in_annotation``).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pydicom
import pydicom.multival
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from ..errors import DataError
from . import deid as _deid
from .deid import DeidConfig
from .dicom_presets import WINDOW_PRESETS  # CT window presets (centre, width) in HU
from .imageset import ImageSet

log = logging.getLogger(__name__)

FIT_MODES = ("resize", "stretch", "crop")
_SEX = {"M": "male", "F": "female", "O": "other"}
_VALID_BITS = (1, 8, 16, 32, 64)

# ---------------------------------------------------------------------------------------- quiet pydicom
_reading = contextvars.ContextVar("fsl_xai_dicom_reading", default=False)


class _DropWhileReading(logging.Filter):
    """Drops pydicom's records while this module reads a file: they can quote element values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _reading.get()


_pydicom_logger = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileReading) for f in _pydicom_logger.filters):
    _pydicom_logger.addFilter(_DropWhileReading())


@contextlib.contextmanager
def _quiet():
    token = _reading.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _reading.reset(token)


# ---------------------------------------------------------------------------------------- errors
class DicomReadError(DataError):
    """A DICOM file that cannot be used; ``reason`` is a short category (e.g. "truncated")."""

    def __init__(self, reason: str, detail: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.detail = detail
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{reason}: {detail}")


# ---------------------------------------------------------------------------------------- results
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

    def __iter__(self):
        """``pixels, metadata = read_dicom(...)`` (the pair named in docs/CONTRACTS.md)."""
        return iter((self.pixels, self.metadata))

    def __repr__(self) -> str:
        c, h, w = self.pixels.shape
        win = "none" if self.window is None else f"({self.window[0]:g}, {self.window[1]:g})"
        return (f"DicomImage({self.metadata.get('case_id')}: {c}x{h}x{w}, {self.metadata.get('modality')}, "
                f"frame {self.frame}/{self.n_frames}, window {win} from {self.window_source})")


@dataclass
class DicomImport:
    """The result of :func:`import_dicom_folder`.

    Attributes:
        images: the imported images as an ImageSet (de-identified metadata; ``sample_id`` is a
            keyed image pseudonym).
        bad_files: (file relative to the root, reason) for every file that was not imported.
        sources: the relative path of each imported image (aligned with ``images``), for the
            caller's own display; never put into the metadata table or the exports.
        n_files: files looked at.
    """

    images: ImageSet
    bad_files: list[tuple[str, str]]
    sources: list[str] = field(default_factory=list, repr=False)
    n_files: int = 0

    def __iter__(self):
        """``images, bad_files = import_dicom_folder(...)`` (the pair named in docs/CONTRACTS.md)."""
        return iter((self.images, self.bad_files))

    def bad_table(self) -> pd.DataFrame:
        """The bad files as a table (file, reason)."""
        return pd.DataFrame(self.bad_files, columns=["file", "reason"])

    def table(self) -> pd.DataFrame:
        """The de-identified metadata with the label name of each image."""
        out = self.images.metadata.copy()
        out.insert(1, "label", [self.images.class_names[i] for i in self.images.labels])
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the de-identified metadata table (with labels) as CSV."""
        path = Path(path)
        self.table().to_csv(path, index=False)
        return path

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the de-identified metadata, the class names and the bad-file report as JSON."""
        path = Path(path)
        payload = {"class_names": list(self.images.class_names),
                   "images": json.loads(self.table().to_json(orient="records")),
                   "bad_files": [{"file": f, "reason": r} for f, r in self.bad_files]}
        path.write_text(json.dumps(payload, indent=1))
        return path

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for _, reason in self.bad_files:
            key = reason.split(":", 1)[0]
            kinds[key] = kinds.get(key, 0) + 1
        bad = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        return (f"DicomImport({len(self.images)} images from {self.n_files} files, "
                f"{len(self.bad_files)} bad ({bad}); {self.images!r})")


# ---------------------------------------------------------------------------------------- reading
def _load(path: Path) -> tuple[Dataset, int]:
    if not path.exists():
        raise DicomReadError("not found", "no such file; check the path", path)
    if path.is_dir():
        raise DicomReadError("not a file", "this is a folder; use import_dicom_folder() for folders", path)
    size = path.stat().st_size
    if size == 0:
        raise DicomReadError("empty file", "the file has 0 bytes; copy it again from the source", path)
    with _quiet():
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = None
        except Exception as exc:  # pydicom raises many types on damaged headers
            raise DicomReadError("unreadable header", f"the DICOM header cannot be parsed ({type(exc).__name__}); "
                                 "the file is damaged or truncated: copy it again", path) from None
        if ds is None:
            # files without the 128-byte preamble and 'DICM' are still DICOM when they parse to an image
            try:
                ds = pydicom.dcmread(path, force=True)
            except Exception:
                ds = None
            # a bare dataset still names its SOP class or modality; text or random bytes do not
            if ds is None or not ("SOPClassUID" in ds or "Modality" in ds or "PixelData" in ds):
                raise DicomReadError("not DICOM", "the file has no DICOM header ('DICM' marker) and does not parse "
                                     "as a DICOM image; is it a DICOM file?", path) from None
            _infer_transfer_syntax(ds)
    return ds, size


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A bare dataset (no file meta) is native: its syntax is the encoding pydicom read it with."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


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


def _check_length(ds: Dataset, raw_size: int, path: Path) -> None:
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
    with _quiet():
        try:
            arr, meta = decoder.as_array(ds, index=frame, as_rgb=True)
        except Exception as exc:
            # pydicom lists one line per plugin tried; keep them all (they name no patient data)
            text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            text = re.sub(r"<_io\.[^>]*>", "the data", text)[:500]
            reason = "wrong pixel data length" if "bytes of pixel data" in text else "undecodable pixel data"
            raise DicomReadError(reason, f"pydicom could not decode the pixels ({type(exc).__name__}: {text}); "
                                 "the pixel data is corrupt or truncated", path) from None
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    return arr, photometric


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _window_values(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT" or width <= 1:
        return np.clip((x - center) / max(width, 1e-12) + 0.5, 0.0, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _resolve_window(window, ds: Dataset, values: np.ndarray, path: Path):
    """-> (unit image, (centre, width), source)."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if isinstance(window, str) and window != "auto":
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in WINDOW_PRESETS:
            raise DicomReadError("unknown window preset", f"{window!r}; choose 'auto', None, (centre, width) or one "
                                 f"of {sorted(WINDOW_PRESETS)}", path)
        c, w = WINDOW_PRESETS[key]
        return _window_values(values, c, w), (c, w), f"preset:{key}"
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise DataError(f"window must be (centre, width), got {window!r}")
        c, w = float(window[0]), float(window[1])
        if not w > 0:
            raise DataError(f"the window width must be positive, got {w}; pass (centre, width)")
        return _window_values(values, c, w), (c, w), "user"
    if window == "auto":
        c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            return _window_values(values, c, w, function), (c, w), "tags"
    elif window is not None:
        raise DataError(f"window must be None, 'auto', a preset name or (centre, width); got {window!r}")
    lo, hi = float(values.min()), float(values.max())
    unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return unit, ((lo + hi) / 2, max(hi - lo, 1.0)), "minmax"


def _fit(img: np.ndarray, size, fit: str) -> np.ndarray:
    """(C, H, W) -> (C, h, w) by centre crop and/or antialiased bilinear resize."""
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


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip().replace("\x00", "")


def _identity(ds: Dataset) -> tuple[str, str]:
    """(patient key, study key) for pseudonyms; falls back when PatientID is empty."""
    pid = _text(ds, "PatientID") or "|".join((_text(ds, "PatientName"), _text(ds, "PatientBirthDate"))).strip("|")
    study = _text(ds, "StudyInstanceUID")
    if not pid:
        pid = f"no-patient-id:{study or _text(ds, 'SOPInstanceUID')}"
    return pid, study


def _study_year(ds: Dataset) -> float:
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        d = _deid.parse_da(_text(ds, kw))
        if d:
            return float(d.year)
    return float("nan")


def safe_metadata(ds: Dataset, config: DeidConfig | None = None) -> dict:
    """The de-identified metadata of a dataset: only fields that do not identify the patient.

    Fields: ``sample_id`` (keyed image pseudonym), ``case_id`` (keyed HMAC of PatientID and
    StudyInstanceUID), ``patient_pseudo``, ``sex`` (male/female/other or None), ``age`` (years,
    from PatientAge, else birth and study date; capped at 90; NaN when unknown), ``age_source``,
    ``modality``, ``manufacturer``, ``model``, ``institution`` (a keyed site pseudonym, never the
    name), ``body_part``, ``study_year``, ``photometric``, ``rows``, ``columns``, ``n_frames``,
    ``bits_stored``, ``transfer_syntax``, ``pixel_spacing_mm``, ``burned_in_annotation``.
    """
    config = config or DeidConfig()
    key = config.key()
    pid, study = _identity(ds)
    age = _deid.age_from_string(_text(ds, "PatientAge"))
    source = "PatientAge" if age is not None else "missing"
    if age is None:
        age = _deid.age_from_dates(_text(ds, "PatientBirthDate"),
                                   _text(ds, "StudyDate") or _text(ds, "AcquisitionDate") or _text(ds, "ContentDate"))
        source = "birth and study date" if age is not None else "missing"
    institution = _text(ds, "InstitutionName")
    spacing = _first(ds.get("PixelSpacing")) if "PixelSpacing" in ds else None
    burned = _text(ds, "BurnedInAnnotation").upper()
    ts = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    return {
        "sample_id": _deid.pseudonym(key, "img", _text(ds, "SOPInstanceUID") or pid + study),
        "case_id": _deid.case_id(key, pid, study),
        "patient_pseudo": _deid.patient_pseudonym(key, pid),
        "sex": _SEX.get(_text(ds, "PatientSex").upper()),
        "age": _deid.safe_age(age),
        "age_source": source,
        "modality": _text(ds, "Modality") or None,
        "manufacturer": _text(ds, "Manufacturer") or None,
        "model": _text(ds, "ManufacturerModelName") or None,
        "institution": _deid.pseudonym(key, "site", institution.lower(), length=8) if institution else None,
        "body_part": _text(ds, "BodyPartExamined") or None,
        "study_year": _study_year(ds),
        "photometric": _text(ds, "PhotometricInterpretation") or None,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "n_frames": int(_first(ds.get("NumberOfFrames")) or 1),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": ts.name if ts else None,
        "pixel_spacing_mm": spacing,
        "burned_in_annotation": True if burned == "YES" else (False if burned == "NO" else None),
    }


def _read_dataset(ds: Dataset, raw_size: int, path: Path, window, frame: int, size, channels: int | None,
                  fit: str, keep_raw: bool, config: DeidConfig) -> DicomImage:
    _check_image_module(ds, path)
    _check_length(ds, raw_size, path)
    n_frames = int(_first(ds.get("NumberOfFrames")) or 1)
    if not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < n_frames:
        raise DicomReadError("bad frame", f"frame {frame!r} is out of range: the file has {n_frames} frame(s) "
                             f"(0..{n_frames - 1})", path)
    arr, photometric = _decode(ds, int(frame), path)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        with _quiet():
            try:
                rgb = apply_color_lut(arr, ds)
            except Exception as exc:
                raise DicomReadError("bad palette", f"the palette colour lookup table cannot be applied "
                                     f"({type(exc).__name__}); the file is incomplete", path) from None
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else float(rgb.max() or 1)
        unit = rgb.astype(np.float64) / top
        values, win, source = rgb.astype(np.float32), None, "none"
    elif arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
            raise DicomReadError("unsupported photometric interpretation", f"{photometric} with 3 samples", path)
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        stored = int(ds.get("BitsStored", ds.BitsAllocated))
        unit = arr.astype(np.float64) / float(2 ** stored - 1)
        values, win, source = arr.astype(np.float32), None, "none"
    elif arr.ndim == 2:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise DicomReadError("unsupported photometric interpretation", f"{photometric} is not supported; "
                                 "supported: MONOCHROME1/2, RGB, YBR_*, PALETTE COLOR", path)
        from pydicom.pixels import apply_rescale

        with _quiet():
            values = apply_rescale(arr, ds).astype(np.float64)
        unit, win, source = _resolve_window(window, ds, values, path)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit  # MONOCHROME1: low values are white
    else:
        raise DicomReadError("unsupported pixel layout", f"decoded array of shape {arr.shape}", path)
    img = unit[None] if unit.ndim == 2 else np.moveaxis(unit, -1, 0)
    img = np.clip(np.nan_to_num(img.astype(np.float32), nan=0.0), 0.0, 1.0)
    if channels is not None:
        if channels == 1 and img.shape[0] == 3:
            img = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), img, axes=1)[None]
        elif channels == 3 and img.shape[0] == 1:
            img = np.repeat(img, 3, axis=0)
        elif channels != img.shape[0]:
            raise DataError(f"channels must be 1 or 3, got {channels}")
    img = _fit(img, size, fit)
    meta = safe_metadata(ds, config)
    if n_frames > 1:
        meta["sample_id"] = f"{meta['sample_id']}-f{int(frame)}"
    meta.update(frame=int(frame), window_center=None if win is None else float(win[0]),
                window_width=None if win is None else float(win[1]), window_source=source)
    return DicomImage(np.ascontiguousarray(img, dtype=np.float32), meta, win, source,
                      values.astype(np.float32) if keep_raw else None, int(frame), n_frames)


def read_dicom(
    path: str | os.PathLike,
    window: None | str | tuple[float, float] = "auto",
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
        window: monochrome display window. "auto": the file's WindowCenter/WindowWidth (first
            value when several), else the value range; None: the value range (min..max); a preset
            name (:data:`WINDOW_PRESETS`: lung, mediastinum, soft_tissue, abdomen, liver, bone,
            brain; in Hounsfield units, so meant for CT); or (centre, width). Ignored for colour.
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
    ds, size_bytes = _load(path)
    return _read_dataset(ds, size_bytes, path, window, frame, size, channels, fit, keep_raw, config)


# ---------------------------------------------------------------------------------------- folders
def _label_lookup(labels, root: Path) -> tuple[dict[str, str] | None, str | None]:
    """-> (mapping file key -> label, mode)."""
    if labels is None:
        return None, None
    if isinstance(labels, str) and labels == "folders":
        return None, "folders"
    if isinstance(labels, Mapping):
        return {str(k).replace("\\", "/"): str(v) for k, v in labels.items()}, "map"
    p = Path(labels)
    if not p.is_file():
        raise DataError(f"labels must be None, 'folders', a dict or a CSV file; {p} is not a file")
    table = pd.read_csv(p, dtype=str)
    file_col = next((c for c in ("file", "path", "filename") if c in table.columns), None)
    if file_col is None or "label" not in table.columns:
        raise DataError(f"the label CSV {p.name} needs a 'file' (or 'path'/'filename') column and a 'label' column; "
                        f"it has {list(table.columns)}")
    table = table.dropna(subset=[file_col, "label"])
    return {str(f).replace("\\", "/"): str(lab) for f, lab in zip(table[file_col], table["label"])}, "map"


def _find_label(rel: str, mapping: dict[str, str]) -> str | None:
    if rel in mapping:
        return mapping[rel]
    name = rel.rsplit("/", 1)[-1]
    return mapping.get(name)


def _files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(p)
    return out


def import_dicom_folder(
    root: str | os.PathLike,
    labels: None | str | os.PathLike | Mapping[str, str] = None,
    size: int | tuple[int, int] = 64,
    channels: int = 1,
    window: None | str | tuple[float, float] = "auto",
    frame: int = 0,
    fit: str = "resize",
    progress: bool = True,
    config: DeidConfig | None = None,
    name: str = "dicom",
    files: Iterable[str | os.PathLike] | None = None,
) -> DicomImport:
    """Import every DICOM image under a folder into an ImageSet; bad files are reported, not fatal.

    Args:
        root: the folder (searched recursively; hidden files and folders are skipped).
        labels: None (one class "unlabelled"), "folders" (the first sub-folder under ``root`` is
            the class), a dict {relative path or file name: label}, or a CSV file with columns
            ``file`` (relative path or file name) and ``label``. Files without a label are
            reported as bad files ("no label").
        size, channels, window, frame, fit: as in :func:`read_dicom`; every image gets the same
            shape so they form one set.
        progress: show a tqdm progress bar.
        config: de-identification settings.
        name: the image set's name.
        files: import only these files (paths under ``root``) instead of the whole folder.

    Returns:
        A :class:`DicomImport` (ImageSet, bad files with reasons, relative sources).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the folder that holds the DICOM files")
    config = config or DeidConfig()
    mapping, mode = _label_lookup(labels, root)
    paths = [Path(f) if Path(f).is_absolute() else root / f for f in files] if files is not None else _files(root)
    iterator = paths
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(paths, desc="DICOM import", unit="file")
    images, metas, names, sources, bad = [], [], [], [], []
    seen: dict[str, str] = {}
    for p in iterator:
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        label = "unlabelled"
        if mode == "folders":
            parts = rel.split("/")
            if len(parts) < 2:
                bad.append((rel, "no label: the file is not inside a class folder under the root"))
                continue
            label = parts[0]
        elif mode == "map":
            label = _find_label(rel, mapping)
            if label is None:
                bad.append((rel, "no label: the file is not listed in the labels"))
                continue
        try:
            img = read_dicom(p, window=window, frame=frame, size=size, channels=channels, fit=fit, config=config)
        except DicomReadError as exc:
            bad.append((rel, f"{exc.reason}: {exc.detail}"))
            continue
        except Exception as exc:  # one bad file must never lose the others
            bad.append((rel, f"unreadable: unexpected {type(exc).__name__} while reading"))
            continue
        sid = img.metadata["sample_id"]
        if sid in seen:
            bad.append((rel, f"duplicate: the same image (SOP instance) as {seen[sid]}"))
            continue
        seen[sid] = rel
        images.append(img.pixels)
        metas.append(img.metadata)
        names.append(label)
        sources.append(rel)
    for rel, reason in bad:
        log.warning("DICOM import skipped %s (%s)", rel, reason.split(":", 1)[0])
    class_names = tuple(sorted(set(names))) or ("unlabelled",)
    index = {c: i for i, c in enumerate(class_names)}
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    array = np.stack(images) if images else np.zeros((0, channels, h, w), dtype=np.float32)
    meta = pd.DataFrame(metas) if metas else pd.DataFrame({"sample_id": pd.Series([], dtype=str)})
    imageset = ImageSet(array, np.array([index[n] for n in names], dtype=np.int64), class_names, meta, name)
    log.info("DICOM import: %d images from %d files, %d bad", len(images), len(paths), len(bad))
    return DicomImport(imageset, bad, sources, len(paths))


#: the name used in docs/CONTRACTS.md
import_folder = import_dicom_folder


# ---------------------------------------------------------------------------------------- de-identification
def _shift_value(value, days: int, vr: str):
    shift = _deid.shift_da if vr == "DA" else _deid.shift_dt
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [shift(str(v), days) for v in value]
    return shift(str(value), days) if value not in (None, "") else value


def _replace_uids(value, key: bytes):
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [_deid.replace_uid(key, str(v)) for v in value]
    return _deid.replace_uid(key, str(value)) if value not in (None, "") else value


def _apply(dataset: Dataset, key: bytes, days: int | None, patient: str, config: DeidConfig) -> None:
    shift = config.date_mode == "shift"
    for elem in list(dataset):
        tag = (elem.tag.group, elem.tag.element)
        group = elem.tag.group
        vr = elem.VR
        action = _deid.BASIC_PROFILE.get(tag, (None, None))[1]
        if action is None:
            if group == 0x0010 and tag not in _deid.RETAINED_PATIENT_TAGS:
                action = _deid.X
            elif 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and elem.tag.element in (0x3000, 0x4000)):
                action = _deid.X  # curves; overlay data and comments (may hold burned-in identity)
            elif vr == "PN":
                action = _deid.Z
            elif vr in ("DA", "DT"):
                action = "shift" if shift else _deid.X
            elif vr == "UI":
                action = _deid.U
            else:
                action = _deid.K
        elif shift and tag in _deid.SHIFTED_DATES:
            action = "shift"
        elif shift and tag in _deid.KEPT_TIMES:
            action = _deid.K
        if action == _deid.X:
            del dataset[elem.tag]
        elif action == _deid.Z:
            dataset[elem.tag].value = None if vr == "SQ" else ""
        elif action == _deid.D:
            dataset[elem.tag].value = patient if tag == (0x0010, 0x0020) else "ANONYMOUS"
        elif action == _deid.U:
            dataset[elem.tag].value = _replace_uids(elem.value, key)
        elif action == "shift":
            dataset[elem.tag].value = _shift_value(elem.value, days, vr) if vr in ("DA", "DT") else elem.value
        if action == _deid.K and vr == "SQ":
            for item in elem.value:
                _apply(item, key, days, patient, config)


def deidentify_dataset(ds: Dataset, config: DeidConfig | None = None) -> Dataset:
    """A de-identified copy of a dataset (the input is not changed).

    Applies :data:`fsl_xai.data.deid.BASIC_PROFILE` and the generic rules described in
    :mod:`fsl_xai.data.deid` recursively (sequences included), removes every private tag, shifts
    dates per patient (or removes them), replaces UIDs by keyed ``2.25.<int>`` UIDs (the same
    input UID always gives the same output under one secret, so studies and series stay linked),
    puts the patient pseudonym into PatientID, and records the profile in PatientIdentityRemoved,
    DeidentificationMethod and DeidentificationMethodCodeSequence.
    """
    config = config or DeidConfig()
    key = config.key()
    pid, _ = _identity(ds)
    patient = _deid.patient_pseudonym(key, pid)
    days = _deid.date_offset_days(key, pid, config.max_shift_days) if config.date_mode == "shift" else None
    with _quiet():
        out = copy.deepcopy(ds)
        out.remove_private_tags()
        _apply(out, key, days, patient, config)
        if getattr(out, "file_meta", None) is not None:
            fm = out.file_meta
            if "MediaStorageSOPInstanceUID" in fm:
                fm.MediaStorageSOPInstanceUID = _deid.replace_uid(key, str(fm.MediaStorageSOPInstanceUID))
        out.PatientIdentityRemoved = "YES"
        # LO: at most 64 characters; the code sequence below names the profile and options fully
        out.DeidentificationMethod = ("fsl-xai: PS3.15 E basic; retain pt. chars.; "
                                      + ("dates shifted" if days is not None else "dates removed"))
        codes = DicomSequence()
        for value, meaning in _deid.METHOD_CODES:
            if value == "113107" and days is None:
                continue
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        out.DeidentificationMethodCodeSequence = codes
        out.LongitudinalTemporalInformationModified = "MODIFIED" if days is not None else "REMOVED"
    return out


def deidentify_file(src: str | os.PathLike, dst: str | os.PathLike, config: DeidConfig | None = None) -> dict:
    """Write a de-identified copy of a DICOM file; returns its safe metadata.

    The pixels are copied unchanged (burned-in text is not removed; check
    ``burned_in_annotation`` in the returned metadata).
    """
    src = Path(src)
    ds, _ = _load(src)
    config = config or DeidConfig()
    meta = safe_metadata(ds, config)
    out = deidentify_dataset(ds, config)
    with _quiet():
        out.save_as(Path(dst), enforce_file_format=False)
    return meta


__all__ = ["DicomImage", "DicomImport", "DicomReadError", "DeidConfig", "WINDOW_PRESETS", "deidentify_dataset",
           "deidentify_file", "import_dicom_folder", "import_folder", "read_dicom", "safe_metadata"]
