"""Opening DICOM files: the parse itself, the error every DICOM reader here raises, and pydicom kept quiet.

Identity safety: while a file is read, pydicom's warnings and log records (which can quote element
values, e.g. a malformed birth date) are suppressed (:func:`quiet_pydicom`); our own messages and
logs name only the file path the caller gave and the kind of problem.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from ...errors import DataError

_reading = contextvars.ContextVar("fsl_xai_dicom_reading", default=False)


class _DropWhileReading(logging.Filter):
    """Drops pydicom's records while a file is read here: they can quote element values."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _reading.get()


_pydicom_logger = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileReading) for f in _pydicom_logger.filters):
    _pydicom_logger.addFilter(_DropWhileReading())


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Within this block pydicom's warnings and log records are dropped (they can quote values)."""
    token = _reading.set(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _reading.reset(token)


class DicomReadError(DataError):
    """A DICOM file that cannot be used; ``reason`` is a short category (e.g. "truncated")."""

    def __init__(self, reason: str, detail: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.detail = detail
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{reason}: {detail}")


def load_dataset(path: Path) -> tuple[Dataset, int]:
    """Parse a DICOM file (pixel data included, not decoded) quietly.

    Files without the 128-byte preamble and 'DICM' marker are accepted when they parse to a
    dataset that names its SOP class, modality or pixel data; their transfer syntax is then the
    encoding pydicom read them with.

    Returns:
        (dataset, file size in bytes).

    Raises:
        DicomReadError: not found, not a file, empty file, unreadable header or not DICOM.
    """
    if not path.exists():
        raise DicomReadError("not found", "no such file; check the path", path)
    if path.is_dir():
        raise DicomReadError("not a file", "this is a folder; use import_dicom_folder() for folders", path)
    size = path.stat().st_size
    if size == 0:
        raise DicomReadError("empty file", "the file has 0 bytes; copy it again from the source", path)
    with quiet_pydicom():
        ds: Dataset | None
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = None
        except Exception as exc:  # pydicom raises many types on damaged headers
            raise DicomReadError("unreadable header", f"the DICOM header cannot be parsed ({type(exc).__name__}); "
                                 "the file is damaged or truncated: copy it again", path) from None
        if ds is None:
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


def text_value(ds: Dataset, keyword: str) -> str:
    """The element's value as stripped text (the first of several values); "" when absent or unreadable."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    return str(value).strip().replace("\x00", "")


def first_number(value: Any) -> float | None:
    """An element value as a number (the first of several values); None when empty or not numeric."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
