"""Generators for the DICOM tests: files with identifying values and a corpus of broken files.

Everything is written under pytest's tmp folders from pydicom's bundled test files (shipped in
its wheel, so offline), and the shared WG04 files where a test asks for them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID


def bundled(name: str) -> Path:
    """A test file shipped in pydicom's wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom's bundled test file {name} is missing; reinstall pydicom 3")
    return Path(path)


def bundled_monochrome1() -> Path:
    # next to the other bundled files (get_testdata_files would try the network for its index)
    path = bundled("CT_small.dcm").parent / "dicomdirtests" / "77654033" / "CR1" / "6154"
    if path.is_file():
        return path
    pytest.fail("pydicom's bundled MONOCHROME1 file dicomdirtests/77654033/CR1/6154 is missing")


# Identifying values written into the test files; none of them may appear in any output.
PATIENTS = {
    "p1": {
        "PatientName": "Doe^Johnathan^Quentin", "PatientID": "PID-98765-X", "PatientBirthDate": "19610423",
        "PatientAddress": "221B Baker Street, Marylebone", "PatientTelephoneNumbers": "+44-20-7946-0958",
        "OtherPatientIDs": "OTHERID-4242", "PatientMotherBirthName": "Maidenname^Rosalind",
        "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.9.111", "StudyDate": "20210315",
        "PatientSex": "F",
    },
    "p2": {
        "PatientName": "Roe^Maximilian", "PatientID": "PID-11223-Z", "PatientBirthDate": "19900102",
        "PatientAddress": "42 Wallaby Way, Sydney", "PatientTelephoneNumbers": "+61-2-5550-1234",
        "OtherPatientIDs": "OTHERID-7777", "PatientMotherBirthName": "Oldname^Beatrix",
        "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.9.222", "StudyDate": "20190701",
        "PatientSex": "M",
    },
}
SITE = {
    "InstitutionName": "St Elsewhere Memorial Hospital", "InstitutionAddress": "1 Hospital Road, Springfield",
    "ReferringPhysicianName": "Quincy^Harland", "PerformingPhysicianName": "Zebedee^Ignatius",
    "OperatorsName": "Operatorina^Vex", "StationName": "SCANROOM-ZX9", "DeviceSerialNumber": "SERIAL-31337",
}
PRIVATE_VALUE = "PRIVATE-SECRET-ABC"
NESTED_NAME = "Nestedreader^Wilhelmina"


def identifying_values() -> list[str]:
    """Every identifying string written by :func:`write_identified` (and the dash-formatted dates)."""
    values = []
    for p in PATIENTS.values():
        for key, v in p.items():
            if key == "PatientSex":
                continue
            values.append(v)
            if key == "PatientName" or key == "PatientMotherBirthName":
                values.extend(part for part in v.split("^") if len(part) > 3)
            if key.endswith("Date"):
                values.append(f"{v[:4]}-{v[4:6]}-{v[6:]}")
    for v in SITE.values():
        values.append(v)
        if "^" in v:
            values.extend(part for part in v.split("^") if len(part) > 3)
    values += [PRIVATE_VALUE, NESTED_NAME, "Nestedreader", "Wilhelmina"]
    values += [f"ACC-{i}" for i in range(1000, 1004)] + [f"STUDYID-{i}" for i in range(10, 14)]
    values += [uid for uid in _all_uids()]
    return values


def _all_uids() -> list[str]:
    out = []
    for i in range(4):
        out += [f"1.2.826.0.1.3680043.2.1125.9.{500 + i}", f"1.2.826.0.1.3680043.2.1125.9.{600 + i}",
                f"1.2.826.0.1.3680043.2.1125.9.{700 + i}"]
    return out + [p["StudyInstanceUID"] for p in PATIENTS.values()]


def write_identified(dst: Path, patient: str, index: int, source: str = "MR_small.dcm",
                     study_date: str | None = None, with_age: bool = False) -> Path:
    """A copy of a bundled image with identifying values everywhere the basic profile looks.

    ``index`` (0..3) picks unique accession number, study ID and instance/series/reference UIDs.
    """
    ds = pydicom.dcmread(bundled(source))
    p = dict(PATIENTS[patient])
    if study_date:
        p["StudyDate"] = study_date
    for key, value in {**p, **SITE}.items():
        setattr(ds, key, value)
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = p["StudyDate"]
    if with_age:
        ds.PatientAge = "058Y"
    elif "PatientAge" in ds:
        del ds.PatientAge
    ds.AccessionNumber = f"ACC-{1000 + index}"
    ds.StudyID = f"STUDYID-{10 + index}"
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.9.{500 + index}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.2.1125.9.{600 + index}"
    ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.2.1125.9.{700 + index}"
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "Scanomatic 3000"
    ds.BodyPartExamined = "KNEE"
    # a kept sequence whose item holds a UID, a person name and a date (generic rules must catch them)
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.9.{700 + index}"
    ref.add_new(0x00700084, "PN", NESTED_NAME)  # ContentCreatorName, not in the profile table
    ref.add_new(0x00080023, "DA", p["StudyDate"])
    ds.ReferencedImageSequence = Sequence([ref])
    ds.add_new(0x00091010, "LO", "ACME private block")
    ds.add_new(0x00091011, "LO", PRIVATE_VALUE)
    ds.add_new(0x00091012, "SH", "ACC-1000")
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=False)
    return dst


# ---------------------------------------------------------------------------------------- broken files
def _dataset(name: str = "CT_small.dcm") -> Dataset:
    return pydicom.dcmread(bundled(name))


def write_broken_corpus(root: Path) -> dict[str, str]:
    """Write broken files under ``root``; returns {relative path: expected reason prefix}."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    raw = bundled("CT_small.dcm").read_bytes()

    (root / "truncated.dcm").write_bytes(raw[: len(raw) - 5000])  # ends inside the pixel data
    expected["truncated.dcm"] = "truncated"
    (root / "truncated_header.dcm").write_bytes(raw[:700])  # ends inside the header
    expected["truncated_header.dcm"] = "no pixel data"
    (root / "empty.dcm").write_bytes(b"")
    expected["empty.dcm"] = "empty file"
    (root / "notes.txt").write_text("this is a text file, not an image\n" * 20)
    expected["notes.txt"] = "not DICOM"
    (root / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expected["random.bin"] = "not DICOM"

    ds = _dataset()
    del ds.PixelData
    ds.save_as(root / "no_pixels.dcm", enforce_file_format=False)
    expected["no_pixels.dcm"] = "no pixel data"

    ds = _dataset()
    ds.BitsAllocated = 12
    ds.save_as(root / "bits12.dcm", enforce_file_format=False)
    expected["bits12.dcm"] = "wrong bits allocated"

    ds = _dataset()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a consistent element, but half the image
    ds.save_as(root / "short_pixels.dcm", enforce_file_format=False)
    expected["short_pixels.dcm"] = "wrong pixel data length"

    ds = _dataset()
    ds.Rows = ds.Rows * 2  # header claims more pixels than stored
    ds.save_as(root / "rows_doubled.dcm", enforce_file_format=False)
    expected["rows_doubled.dcm"] = "wrong pixel data length"

    ds = pydicom.dcmread(bundled("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG-2 video: no decoder here
    ds.save_as(root / "mpeg2.dcm", enforce_file_format=False)
    expected["mpeg2.dcm"] = "unsupported transfer syntax"

    ds = pydicom.dcmread(bundled("JPEG2000.dcm"))
    frags = bytearray(ds.PixelData)
    start = 40  # past the item headers and the codestream markers
    frags[start:] = bytes(len(frags) - start)  # the rest of the codestream zeroed
    ds.PixelData = bytes(frags)
    ds.save_as(root / "corrupt_j2k.dcm", enforce_file_format=False)
    expected["corrupt_j2k.dcm"] = "undecodable pixel data"

    sr = pydicom.dcmread(bundled("test-SR.dcm"))
    sr.save_as(root / "report_sr.dcm", enforce_file_format=False)
    expected["report_sr.dcm"] = "no pixel data"
    return expected


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("broken")
    return root, write_broken_corpus(root)


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory) -> tuple[Path, dict[str, str], list[str]]:
    """Class folders ct/ and mr/ with good images, and every broken file inside ct/broken/."""
    root = tmp_path_factory.mktemp("mixed")
    good = []
    for cls, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm"), ("mr", "MR_small_RLE.dcm"),
                      ("ct", "JPEG2000.dcm"), ("mr", "emri_small.dcm")):
        src = get_testdata_file(name, download=False)
        if src is None:
            continue
        ds = pydicom.dcmread(src)
        dst = root / cls / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if name == "MR_small_RLE.dcm":
            ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"  # same image as MR_small otherwise
        ds.save_as(dst, enforce_file_format=False)
        good.append(f"{cls}/{name}")
    expected = {f"ct/broken/{k}": v for k, v in write_broken_corpus(root / "ct" / "broken").items()}
    return root, expected, good


def monochrome1_copy(dst: Path) -> Path:
    """MR_small rewritten as MONOCHROME1 (same values, inverted display)."""
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(dst, enforce_file_format=False)
    return dst



# ---------------------------------------------------------------------------------------- enhanced multi-frame
ENHANCED_CT_UID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
ENHANCED_INTERCEPT = -1024.0
#: the stored window of each frame of :func:`write_enhanced_ct` (None: the shared one applies)
ENHANCED_WINDOWS = [(-600.0, 1500.0), (40.0, 400.0), None]
ENHANCED_SHARED_WINDOW = (300.0, 1500.0)


def enhanced_stored(n_frames: int = 3, rows: int = 16, cols: int = 12) -> np.ndarray:
    """Stored values (n_frames, rows, cols), uint16 in 0..1196 as the enhanced CT of the finding:
    air (0 = -1024 HU after the rescale) on the left, tissue and bone to the right, per-frame offsets."""
    ramp = np.linspace(0, 1196, cols)[None, None, :] * np.ones((n_frames, rows, 1))
    offsets = np.arange(n_frames)[:, None, None] * 7 * np.arange(rows)[None, :, None] / rows
    return np.clip(np.round(ramp - offsets), 0, 1196).astype(np.uint16)


def write_enhanced_ct(dst: Path, shared_only: bool = False, patient_age: str | None = "81",
                      patient: str = "p1") -> Path:
    """An Enhanced CT object whose rescale and windows live only in the functional groups.

    Per frame: PixelValueTransformationSequence (slope 1, intercept -1024) and FrameVOILUTSequence
    (:data:`ENHANCED_WINDOWS`; the last frame has none, so the shared group's window applies).
    ``shared_only``: the rescale and one window sit in SharedFunctionalGroupsSequence only. The
    patient's identifying values (:data:`PATIENTS`) are written too; PatientAge has no unit.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    stored = enhanced_stored(len(ENHANCED_WINDOWS))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(ENHANCED_CT_UID)
    ds.SOPClassUID = UID(ENHANCED_CT_UID)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.2.1125.9.503")
    for key, value in {**PATIENTS[patient], **SITE}.items():
        setattr(ds, key, value)
    if patient_age is not None:
        with warnings.catch_warnings():  # pydicom warns that an AS value needs a unit: the point here
            warnings.simplefilter("ignore")
            ds.PatientAge = patient_age
    ds.PatientBirthDate = ""  # only the unit-less PatientAge tells the age
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.NumberOfFrames = len(stored)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0

    def transform() -> Dataset:
        item = Dataset()
        item.RescaleIntercept, item.RescaleSlope, item.RescaleType = ENHANCED_INTERCEPT, 1.0, "HU"
        return item

    def voi(window: tuple[float, float]) -> Dataset:
        item = Dataset()
        item.WindowCenter, item.WindowWidth = window
        return item

    shared = Dataset()
    shared.FrameVOILUTSequence = Sequence([voi(ENHANCED_SHARED_WINDOW)])
    if shared_only:
        shared.PixelValueTransformationSequence = Sequence([transform()])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for window in ENHANCED_WINDOWS:
        item = Dataset()
        if not shared_only:
            item.PixelValueTransformationSequence = Sequence([transform()])
            if window is not None:
                item.FrameVOILUTSequence = Sequence([voi(window)])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored.tobytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(dst, enforce_file_format=True)  # with the preamble and 'DICM', as scanners write
    return dst


def linear_window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The DICOM LINEAR window (PS3.3 C.11.2.1.2.1) into [0, 1], written out for the expected values."""
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def npz_text(path: Path) -> str:
    """Everything an npz file holds, as text to scan: member names, every string, every number."""
    with np.load(path, allow_pickle=False) as npz:
        parts = list(npz.files)
        for key in npz.files:
            arr = npz[key]
            parts.append("\n".join(map(str, arr.reshape(-1).tolist())) if arr.dtype.kind == "U" else
                         "\n".join(map(str, np.unique(arr).tolist())) if arr.dtype.kind == "f" else "")
    return "\n".join(parts)
