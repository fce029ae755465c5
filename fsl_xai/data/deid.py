"""De-identification policy and keyed pseudonyms (no pydicom here; :mod:`fsl_xai.data.dicom`
applies the policy to DICOM datasets).

The policy follows the Basic Application Level Confidentiality Profile of DICOM PS3.15 Annex E
(Table E.1-1) with two of its options, both declared in the de-identified file:

- *Retain Patient Characteristics* (sex, age, size, weight are kept; subgroup analysis needs them);
- *Retain Longitudinal Temporal Information with Modified Dates* (dates are shifted by a keyed,
  per-patient offset, so intervals within a patient stay true; ``date_mode="remove"`` removes them).

Actions, as in the standard: ``D`` replace with a dummy value, ``Z`` replace with an empty value,
``X`` remove, ``U`` replace a UID by a keyed one (the same input UID always gives the same output
UID under the same secret), ``K`` keep. On top of the table, :mod:`fsl_xai.data.dicom` removes every
private tag, every curve (50xx) and overlay data/comment (60xx,3000/4000) element, every remaining
person name (VR PN), every element of the patient group (0010) that is not retained, shifts or
removes every remaining date (DA, DT), and replaces every remaining non-standard UID (VR UI).

Keys: every pseudonym is an HMAC-SHA256 under a project secret. Set it with
``FSL_XAI_DEID_SECRET`` (or pass ``secret=``); without one, the documented default
:data:`DEFAULT_SECRET` is used and a warning is logged once, because anyone who knows the default
and a patient's ID can recompute that patient's pseudonym.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from ..errors import DataError

log = logging.getLogger(__name__)

SECRET_ENV = "FSL_XAI_DEID_SECRET"
#: the documented default salt; set FSL_XAI_DEID_SECRET (or pass secret=) for real patient data
DEFAULT_SECRET = "fsl-xai-default-deid-salt-v1"
#: oldest age reported; HIPAA Safe Harbor groups ages over 89 as "90 or older"
MAX_AGE = 90.0

D, Z, X, U, K = "D", "Z", "X", "U", "K"

# (group, element): (keyword, action) -- the Basic Profile entries this library handles, with the
# Retain Patient Characteristics option applied (K on sex, age, size, weight).
BASIC_PROFILE: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x0012): ("InstanceCreationDate", X),
    (0x0008, 0x0013): ("InstanceCreationTime", X),
    (0x0008, 0x0014): ("InstanceCreatorUID", U),
    (0x0008, 0x0018): ("SOPInstanceUID", U),
    (0x0008, 0x0020): ("StudyDate", Z),
    (0x0008, 0x0021): ("SeriesDate", X),
    (0x0008, 0x0022): ("AcquisitionDate", X),
    (0x0008, 0x0023): ("ContentDate", Z),
    (0x0008, 0x002A): ("AcquisitionDateTime", X),
    (0x0008, 0x0030): ("StudyTime", Z),
    (0x0008, 0x0031): ("SeriesTime", X),
    (0x0008, 0x0032): ("AcquisitionTime", X),
    (0x0008, 0x0033): ("ContentTime", Z),
    (0x0008, 0x0050): ("AccessionNumber", Z),
    (0x0008, 0x0058): ("FailedSOPInstanceUIDList", U),
    (0x0008, 0x0080): ("InstitutionName", X),
    (0x0008, 0x0081): ("InstitutionAddress", X),
    (0x0008, 0x0082): ("InstitutionCodeSequence", X),
    (0x0008, 0x0090): ("ReferringPhysicianName", Z),
    (0x0008, 0x0092): ("ReferringPhysicianAddress", X),
    (0x0008, 0x0094): ("ReferringPhysicianTelephoneNumbers", X),
    (0x0008, 0x0096): ("ReferringPhysicianIdentificationSequence", X),
    (0x0008, 0x0201): ("TimezoneOffsetFromUTC", X),
    (0x0008, 0x1010): ("StationName", X),
    (0x0008, 0x1030): ("StudyDescription", X),
    (0x0008, 0x103E): ("SeriesDescription", X),
    (0x0008, 0x1040): ("InstitutionalDepartmentName", X),
    (0x0008, 0x1048): ("PhysiciansOfRecord", X),
    (0x0008, 0x1049): ("PhysiciansOfRecordIdentificationSequence", X),
    (0x0008, 0x1050): ("PerformingPhysicianName", X),
    (0x0008, 0x1052): ("PerformingPhysicianIdentificationSequence", X),
    (0x0008, 0x1060): ("NameOfPhysiciansReadingStudy", X),
    (0x0008, 0x1062): ("PhysiciansReadingStudyIdentificationSequence", X),
    (0x0008, 0x1070): ("OperatorsName", X),
    (0x0008, 0x1072): ("OperatorIdentificationSequence", X),
    (0x0008, 0x1080): ("AdmittingDiagnosesDescription", X),
    (0x0008, 0x1084): ("AdmittingDiagnosesCodeSequence", X),
    (0x0008, 0x1110): ("ReferencedStudySequence", X),
    (0x0008, 0x1111): ("ReferencedPerformedProcedureStepSequence", X),
    (0x0008, 0x1120): ("ReferencedPatientSequence", X),
    (0x0008, 0x1155): ("ReferencedSOPInstanceUID", U),
    (0x0008, 0x2111): ("DerivationDescription", X),
    (0x0008, 0x3010): ("IrradiationEventUID", U),
    (0x0010, 0x0010): ("PatientName", D),
    (0x0010, 0x0020): ("PatientID", D),
    (0x0010, 0x0021): ("IssuerOfPatientID", X),
    (0x0010, 0x0030): ("PatientBirthDate", Z),
    (0x0010, 0x0032): ("PatientBirthTime", X),
    (0x0010, 0x0040): ("PatientSex", K),
    (0x0010, 0x0050): ("PatientInsurancePlanCodeSequence", X),
    (0x0010, 0x0101): ("PatientPrimaryLanguageCodeSequence", X),
    (0x0010, 0x1000): ("OtherPatientIDs", X),
    (0x0010, 0x1001): ("OtherPatientNames", X),
    (0x0010, 0x1002): ("OtherPatientIDsSequence", X),
    (0x0010, 0x1005): ("PatientBirthName", X),
    (0x0010, 0x1010): ("PatientAge", K),
    (0x0010, 0x1020): ("PatientSize", K),
    (0x0010, 0x1030): ("PatientWeight", K),
    (0x0010, 0x1040): ("PatientAddress", X),
    (0x0010, 0x1050): ("InsurancePlanIdentification", X),
    (0x0010, 0x1060): ("PatientMotherBirthName", X),
    (0x0010, 0x1080): ("MilitaryRank", X),
    (0x0010, 0x1081): ("BranchOfService", X),
    (0x0010, 0x1090): ("MedicalRecordLocator", X),
    (0x0010, 0x2000): ("MedicalAlerts", X),
    (0x0010, 0x2110): ("Allergies", X),
    (0x0010, 0x2150): ("CountryOfResidence", X),
    (0x0010, 0x2152): ("RegionOfResidence", X),
    (0x0010, 0x2154): ("PatientTelephoneNumbers", X),
    (0x0010, 0x2160): ("EthnicGroup", X),
    (0x0010, 0x2180): ("Occupation", X),
    (0x0010, 0x21A0): ("SmokingStatus", X),
    (0x0010, 0x21B0): ("AdditionalPatientHistory", X),
    (0x0010, 0x21C0): ("PregnancyStatus", X),
    (0x0010, 0x21D0): ("LastMenstrualDate", X),
    (0x0010, 0x21F0): ("PatientReligiousPreference", X),
    (0x0010, 0x2203): ("PatientSexNeutered", X),
    (0x0010, 0x4000): ("PatientComments", X),
    (0x0018, 0x1000): ("DeviceSerialNumber", X),
    (0x0018, 0x1002): ("DeviceUID", U),
    (0x0018, 0x1030): ("ProtocolName", X),
    (0x0018, 0x1400): ("AcquisitionDeviceProcessingDescription", X),
    (0x0018, 0x700A): ("DetectorID", X),
    (0x0020, 0x000D): ("StudyInstanceUID", U),
    (0x0020, 0x000E): ("SeriesInstanceUID", U),
    (0x0020, 0x0010): ("StudyID", Z),
    (0x0020, 0x0052): ("FrameOfReferenceUID", U),
    (0x0020, 0x0200): ("SynchronizationFrameOfReferenceUID", U),
    (0x0020, 0x4000): ("ImageComments", X),
    (0x0020, 0x9161): ("ConcatenationUID", U),
    (0x0028, 0x1199): ("PaletteColorLookupTableUID", U),
    (0x0032, 0x1032): ("RequestingPhysician", X),
    (0x0032, 0x1033): ("RequestingService", X),
    (0x0032, 0x1060): ("RequestedProcedureDescription", X),
    (0x0032, 0x4000): ("StudyComments", X),
    (0x0038, 0x0010): ("AdmissionID", X),
    (0x0038, 0x0300): ("CurrentPatientLocation", X),
    (0x0038, 0x0400): ("PatientInstitutionResidence", X),
    (0x0038, 0x0500): ("PatientState", X),
    (0x0040, 0x0006): ("ScheduledPerformingPhysicianName", X),
    (0x0040, 0x0244): ("PerformedProcedureStepStartDate", X),
    (0x0040, 0x0245): ("PerformedProcedureStepStartTime", X),
    (0x0040, 0x0253): ("PerformedProcedureStepID", X),
    (0x0040, 0x0254): ("PerformedProcedureStepDescription", X),
    (0x0040, 0x0275): ("RequestAttributesSequence", X),
    (0x0040, 0x1001): ("RequestedProcedureID", X),
    (0x0040, 0x1400): ("RequestedProcedureComments", X),
    (0x0040, 0x2016): ("PlacerOrderNumberImagingServiceRequest", Z),
    (0x0040, 0x2017): ("FillerOrderNumberImagingServiceRequest", Z),
    (0x0040, 0x2400): ("ImagingServiceRequestComments", X),
    (0x0040, 0xA123): ("PersonName", X),
    (0x0040, 0xA124): ("UID", U),
    (0x0040, 0xA730): ("ContentSequence", X),
    (0x0088, 0x0140): ("StorageMediaFileSetUID", U),
    (0x3006, 0x0024): ("ReferencedFrameOfReferenceUID", U),
    (0x0400, 0x0561): ("OriginalAttributesSequence", X),
}

#: patient-group (0010) elements that survive de-identification (everything else in 0010 goes)
RETAINED_PATIENT_TAGS = frozenset({(0x0010, 0x0010), (0x0010, 0x0020), (0x0010, 0x0040), (0x0010, 0x1010),
                                   (0x0010, 0x1020), (0x0010, 0x1030)})
#: dates shifted (not emptied/removed) in "shift" mode, because they carry the timeline
SHIFTED_DATES = frozenset({(0x0008, 0x0020), (0x0008, 0x0021), (0x0008, 0x0022), (0x0008, 0x0023),
                           (0x0008, 0x002A), (0x0008, 0x0012), (0x0040, 0x0244)})
#: times kept in "shift" mode (the option keeps times; dates alone are shifted)
KEPT_TIMES = frozenset({(0x0008, 0x0013), (0x0008, 0x0030), (0x0008, 0x0031), (0x0008, 0x0032),
                        (0x0008, 0x0033), (0x0040, 0x0245)})
#: UIDs under this root are standard DICOM identifiers (SOP classes, transfer syntaxes, ...): kept
DICOM_UID_ROOT = "1.2.840.10008."
#: DICOM codes of the profile and options applied (CID 7050), written into the file
METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                ("113108", "Retain Patient Characteristics Option"),
                ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))


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
    return pseudonym(key, "patient", patient_id)


def replace_uid(key: bytes, uid: str) -> str:
    """A keyed replacement UID under the UUID-derived root 2.25 (PS3.5 B.2): ``2.25.<int>``."""
    uid = str(uid).strip().rstrip("\x00")
    if not uid or uid.startswith(DICOM_UID_ROOT):
        return uid
    value = int.from_bytes(keyed_digest(key, "uid", uid)[:16], "big")
    return f"2.25.{value}"


def date_offset_days(key: bytes, patient_id: str, max_shift_days: int = 365) -> int:
    """The per-patient date shift in days (negative: dates move into the past), 1..max days."""
    value = int.from_bytes(keyed_digest(key, "date-shift", patient_id)[:8], "big")
    return -(1 + value % max_shift_days)


def parse_da(value: str) -> _dt.date | None:
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
