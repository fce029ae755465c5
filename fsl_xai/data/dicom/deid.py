"""De-identification: keyed pseudonyms, the safe metadata of a dataset, and de-identified copies.

:func:`safe_metadata` keeps only fields that do not identify the patient (sex, age, modality,
manufacturer, model, keyed site pseudonym, body part, study year, pseudonymous case id, ...), never
a name, ID, date or UID. :func:`deidentify_dataset` / :func:`deidentify_file` apply the PS3.15
Annex E basic profile of :mod:`fsl_xai.data.dicom.profile` recursively (sequences included).

Keys: every pseudonym is an HMAC-SHA256 under a project secret. Set it with
``FSL_XAI_DEID_SECRET`` (or pass ``secret=``); without one, the documented default
:data:`DEFAULT_SECRET` is used and a warning is logged once, because anyone who knows the default
and a patient's ID can recompute that patient's pseudonym.

Burned-in text in the pixels cannot be removed here: files that declare ``BurnedInAnnotation = YES``
are flagged in the metadata (``burned_in_annotation``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from ...errors import DataError
from . import profile
from .loading import first_number, load_dataset, quiet_pydicom, text_value

log = logging.getLogger(__name__)

SECRET_ENV = "FSL_XAI_DEID_SECRET"
#: the documented default salt; set FSL_XAI_DEID_SECRET (or pass secret=) for real patient data
DEFAULT_SECRET = "fsl-xai-default-deid-salt-v1"
#: oldest age reported; HIPAA Safe Harbor groups ages over 89 as "90 or older"
MAX_AGE = 90.0
#: ``age_source`` of an age read from a PatientAge without a unit ("81"), taken as years
AGE_NO_UNIT = "PatientAge without unit (years)"
_SEX = {"M": "male", "F": "female", "O": "other"}


@dataclass(frozen=True)
class DeidConfig:
    """How to de-identify.

    Attributes:
        secret: the key of every pseudonym (HMAC-SHA256). None: ``FSL_XAI_DEID_SECRET``, else
            :data:`DEFAULT_SECRET` (with a warning logged once).
        date_mode: "shift" (a keyed per-patient offset of 1..max_shift_days days back) or "remove".
        max_shift_days: the largest date shift.
    """

    secret: str | bytes | None = None
    date_mode: str = "shift"
    max_shift_days: int = 365

    def __post_init__(self) -> None:
        if self.date_mode not in ("shift", "remove"):
            raise DataError(f"date_mode must be 'shift' or 'remove', got {self.date_mode!r}")
        if self.max_shift_days < 1:
            raise DataError(f"max_shift_days must be at least 1, got {self.max_shift_days}")

    def key(self) -> bytes:
        """The HMAC key: ``secret``, else ``FSL_XAI_DEID_SECRET``, else the documented default."""
        secret = self.secret if self.secret is not None else os.environ.get(SECRET_ENV)
        if not secret:
            _warn_default_secret()
            secret = DEFAULT_SECRET
        return secret.encode() if isinstance(secret, str) else bytes(secret)


_warned = False


def _warn_default_secret() -> None:
    global _warned
    if not _warned:
        log.warning("de-identification uses the documented default secret; set %s (or pass secret=) so that "
                    "pseudonyms cannot be recomputed by others", SECRET_ENV)
        _warned = True


def keyed_digest(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of the parts (joined by a separator that cannot occur in DICOM text)."""
    return hmac.new(key, "\x1f".join(parts).encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


def pseudonym(key: bytes, prefix: str, *parts: str, length: int = 12) -> str:
    """A short stable pseudonym like ``case-3fa91c0d2b7e``."""
    return f"{prefix}-{keyed_digest(key, prefix, *parts).hex()[:length]}"


def case_id(key: bytes, patient_id: str, study_uid: str) -> str:
    """The pseudonymous case id: keyed HMAC of PatientID and StudyInstanceUID."""
    return pseudonym(key, "case", patient_id, study_uid)


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    """The keyed patient pseudonym written into PatientID, like ``patient-3fa91c0d2b7e``."""
    return pseudonym(key, "patient", patient_id)


def replace_uid(key: bytes, uid: str) -> str:
    """A keyed replacement UID under the UUID-derived root 2.25 (PS3.5 B.2): ``2.25.<int>``."""
    uid = str(uid).strip().rstrip("\x00")
    if not uid or uid.startswith(profile.DICOM_UID_ROOT):
        return uid
    value = int.from_bytes(keyed_digest(key, "uid", uid)[:16], "big")
    return f"2.25.{value}"


def date_offset_days(key: bytes, patient_id: str, max_shift_days: int = 365) -> int:
    """The per-patient date shift in days (negative: dates move into the past), 1..max days."""
    value = int.from_bytes(keyed_digest(key, "date-shift", patient_id)[:8], "big")
    return -(1 + value % max_shift_days)


def parse_da(value: str) -> _dt.date | None:
    """The date of a DA value (YYYYMMDD...), or None when it does not parse."""
    value = str(value).strip()
    try:
        return _dt.datetime.strptime(value[:8], "%Y%m%d").date() if len(value) >= 8 else None
    except ValueError:
        return None


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD); unparsable values become empty."""
    d = parse_da(value)
    return (d + _dt.timedelta(days=days)).strftime("%Y%m%d") if d else ""


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of a DT value (YYYYMMDDHHMMSS.FFFFFF&ZZXX), keeping the time."""
    value = str(value).strip()
    d = parse_da(value[:8])
    return (d + _dt.timedelta(days=days)).strftime("%Y%m%d") + value[8:] if d else ""


def age_from_string(value: str) -> float | None:
    """Years from a DICOM AS value: "058Y" -> 58, "006M" -> 0.5, "010W", "003D"."""
    value = str(value).strip().upper()
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    n = float(value[:-1])
    return {"Y": n, "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}.get(value[-1])


def age_without_unit(value: str) -> float | None:
    """Years from a PatientAge written without its unit ("81", "81.5"), which DICOM does not allow
    but some exports write; None for anything else (an AS value with a unit included)."""
    value = str(value).strip()
    return float(value) if value.replace(".", "", 1).isdigit() else None


def age_from_dates(birth: str, study: str) -> float | None:
    """Whole years between a birth date and a study date (DA strings), or None."""
    b, s = parse_da(birth), parse_da(study)
    if not b or not s or s < b:
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    return float(years)


def safe_age(years: float | None) -> float:
    """Age for the metadata table: NaN when unknown, capped at :data:`MAX_AGE` (90 = "90 or older")."""
    if years is None or not (years == years) or years < 0 or years > 150:
        return float("nan")
    return float(min(round(years, 2), MAX_AGE))


# ---------------------------------------------------------------------------------------- metadata
def _identity(ds: Dataset) -> tuple[str, str]:
    """(patient key, study key) for pseudonyms; falls back when PatientID is empty."""
    pid = (text_value(ds, "PatientID")
           or "|".join((text_value(ds, "PatientName"), text_value(ds, "PatientBirthDate"))).strip("|"))
    study = text_value(ds, "StudyInstanceUID")
    if not pid:
        pid = f"no-patient-id:{study or text_value(ds, 'SOPInstanceUID')}"
    return pid, study


def _study_year(ds: Dataset) -> float:
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        d = parse_da(text_value(ds, kw))
        if d:
            return float(d.year)
    return float("nan")


def safe_metadata(ds: Dataset, config: DeidConfig | None = None) -> dict:
    """The de-identified metadata of a dataset: only fields that do not identify the patient.

    Fields: ``sample_id`` (keyed image pseudonym), ``case_id`` (keyed HMAC of PatientID and
    StudyInstanceUID), ``patient_pseudo``, ``sex`` (male/female/other or None), ``age`` (years,
    from PatientAge, else birth and study date, else a PatientAge without a unit taken as years;
    capped at 90; NaN when unknown), ``age_source`` (which of these, or "missing"),
    ``modality``, ``manufacturer``, ``model``, ``institution`` (a keyed site pseudonym, never the
    name), ``body_part``, ``study_year``, ``photometric``, ``rows``, ``columns``, ``n_frames``,
    ``bits_stored``, ``transfer_syntax``, ``pixel_spacing_mm``, ``burned_in_annotation``.
    """
    config = config or DeidConfig()
    key = config.key()
    pid, study = _identity(ds)
    stated = text_value(ds, "PatientAge")
    age = age_from_string(stated)
    source = "PatientAge" if age is not None else "missing"
    if age is None:
        study_date = text_value(ds, "StudyDate") or text_value(ds, "AcquisitionDate") or text_value(ds, "ContentDate")
        age = age_from_dates(text_value(ds, "PatientBirthDate"), study_date)
        source = "birth and study date" if age is not None else "missing"
    if age is None:
        # a unit-less PatientAge ("81") is taken as years, after the dates, and says so
        age = age_without_unit(stated)
        source = AGE_NO_UNIT if age is not None else "missing"
    institution = text_value(ds, "InstitutionName")
    spacing = first_number(ds.get("PixelSpacing")) if "PixelSpacing" in ds else None
    burned = text_value(ds, "BurnedInAnnotation").upper()
    ts = getattr(ds, "file_meta", FileMetaDataset()).get("TransferSyntaxUID")
    return {
        "sample_id": pseudonym(key, "img", text_value(ds, "SOPInstanceUID") or pid + study),
        "case_id": case_id(key, pid, study),
        "patient_pseudo": patient_pseudonym(key, pid),
        "sex": _SEX.get(text_value(ds, "PatientSex").upper()),
        "age": safe_age(age),
        "age_source": source,
        "modality": text_value(ds, "Modality") or None,
        "manufacturer": text_value(ds, "Manufacturer") or None,
        "model": text_value(ds, "ManufacturerModelName") or None,
        "institution": pseudonym(key, "site", institution.lower(), length=8) if institution else None,
        "body_part": text_value(ds, "BodyPartExamined") or None,
        "study_year": _study_year(ds),
        "photometric": text_value(ds, "PhotometricInterpretation") or None,
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "n_frames": int(first_number(ds.get("NumberOfFrames")) or 1),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax": ts.name if ts else None,
        "pixel_spacing_mm": spacing,
        "burned_in_annotation": True if burned == "YES" else (False if burned == "NO" else None),
    }


# ---------------------------------------------------------------------------------------- datasets and files
def _shift_value(value: Any, days: int, vr: str) -> Any:
    shift = shift_da if vr == "DA" else shift_dt
    if isinstance(value, (list, tuple, MultiValue)):
        return [shift(str(v), days) for v in value]
    return shift(str(value), days) if value not in (None, "") else value


def _replace_uids(value: Any, key: bytes) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return [replace_uid(key, str(v)) for v in value]
    return replace_uid(key, str(value)) if value not in (None, "") else value


def _apply(dataset: Dataset, key: bytes, days: int | None, patient: str, config: DeidConfig) -> None:
    shift = config.date_mode == "shift"
    for elem in list(dataset):
        tag = (elem.tag.group, elem.tag.element)
        group = elem.tag.group
        vr = elem.VR
        action = profile.BASIC_PROFILE.get(tag, (None, None))[1]
        if action is None:
            if group == 0x0010 and tag not in profile.RETAINED_PATIENT_TAGS:
                action = profile.X
            elif 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and elem.tag.element in (0x3000, 0x4000)):
                action = profile.X  # curves; overlay data and comments (may hold burned-in identity)
            elif vr == "PN":
                action = profile.Z
            elif vr in ("DA", "DT"):
                action = "shift" if shift else profile.X
            elif vr == "UI":
                action = profile.U
            else:
                action = profile.K
        elif shift and tag in profile.SHIFTED_DATES:
            action = "shift"
        elif shift and tag in profile.KEPT_TIMES:
            action = profile.K
        if action == profile.X:
            del dataset[elem.tag]
        elif action == profile.Z:
            dataset[elem.tag].value = None if vr == "SQ" else ""
        elif action == profile.D:
            dataset[elem.tag].value = patient if tag == (0x0010, 0x0020) else "ANONYMOUS"
        elif action == profile.U:
            dataset[elem.tag].value = _replace_uids(elem.value, key)
        elif action == "shift":
            assert days is not None  # "shift" arises only in date_mode "shift", which sets days
            dataset[elem.tag].value = _shift_value(elem.value, days, vr) if vr in ("DA", "DT") else elem.value
        if action == profile.K and vr == "SQ":
            for item in elem.value:
                _apply(item, key, days, patient, config)


def deidentify_dataset(ds: Dataset, config: DeidConfig | None = None) -> Dataset:
    """A de-identified copy of a dataset (the input is not changed).

    Applies :data:`~fsl_xai.data.dicom.profile.BASIC_PROFILE` and the generic rules described in
    :mod:`~fsl_xai.data.dicom.profile` recursively (sequences included), removes every private tag, shifts
    dates per patient (or removes them), replaces UIDs by keyed ``2.25.<int>`` UIDs (the same
    input UID always gives the same output under one secret, so studies and series stay linked),
    puts the patient pseudonym into PatientID, and records the profile in PatientIdentityRemoved,
    DeidentificationMethod and DeidentificationMethodCodeSequence.
    """
    config = config or DeidConfig()
    key = config.key()
    pid, _ = _identity(ds)
    patient = patient_pseudonym(key, pid)
    days = date_offset_days(key, pid, config.max_shift_days) if config.date_mode == "shift" else None
    with quiet_pydicom():
        out = copy.deepcopy(ds)
        out.remove_private_tags()
        _apply(out, key, days, patient, config)
        if getattr(out, "file_meta", None) is not None:
            fm = out.file_meta
            if "MediaStorageSOPInstanceUID" in fm:
                fm.MediaStorageSOPInstanceUID = UID(replace_uid(key, str(fm.MediaStorageSOPInstanceUID)))
        out.PatientIdentityRemoved = "YES"
        # LO: at most 64 characters; the code sequence below names the profile and options fully
        out.DeidentificationMethod = ("fsl-xai: PS3.15 E basic; retain pt. chars.; "
                                      + ("dates shifted" if days is not None else "dates removed"))
        codes = DicomSequence()
        for value, meaning in profile.METHOD_CODES:
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
    ds, _ = load_dataset(src)
    config = config or DeidConfig()
    meta = safe_metadata(ds, config)
    out = deidentify_dataset(ds, config)
    with quiet_pydicom():
        out.save_as(Path(dst), enforce_file_format=False)
    return meta
