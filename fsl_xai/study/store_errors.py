"""The errors of the study answer store, and the one translation of a SQLite failure into a
message that says what is wrong with the store's file and how to fix it.

The names are imported from :mod:`fsl_xai.study.store` (and ``fsl_xai.study``) by every caller."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import FslXaiError


class AccessDenied(FslXaiError, PermissionError):
    """The token is unknown or revoked, or asks for another rater's data."""


class StudyStoreError(FslXaiError, ValueError):
    """A request to the store is malformed (unknown item, not assigned, ...), or the store's file
    cannot be read or written."""


class AlreadyAnswered(StudyStoreError):
    """The rater already answered this item (in another tab or window, say) and the study does not
    allow changing answers; nothing was stored. The UI shows the message and moves on."""


def store_error(path: Path, exc: sqlite3.Error) -> StudyStoreError:
    """A one-line StudyStoreError that says what is wrong with the store's file and how to fix it."""
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return StudyStoreError(
            f"{path} cannot be written: the file or its folder is read-only ({text}); make both writable "
            "(exporting works on a read-only folder: fsl-xai study export)")
    if "not a database" in text or "malformed" in text or "disk image" in text or "corrupt" in text:
        return StudyStoreError(
            f"{path} is not a readable study store ({text}); it may be damaged or not a study file: restore it "
            "from a backup, or freeze the study again into a new folder")
    if "locked" in text or "busy" in text:
        return StudyStoreError(f"{path} is busy: another process held it locked for too long ({text}); try again")
    return StudyStoreError(f"{path}: the study store failed ({type(exc).__name__}: {text})")
