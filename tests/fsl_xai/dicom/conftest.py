"""Generators for the DICOM tests: files with identifying values and a corpus of broken files.

Everything is written under pytest's tmp folders from pydicom's bundled test files (shipped in
its wheel, so offline), and the shared WG04 files where a test asks for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


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
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video: no decoder here
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

