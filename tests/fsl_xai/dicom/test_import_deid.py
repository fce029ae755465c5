"""Folder import (bad files reported, never fatal) and de-identification (no identity in any output)."""

import datetime as dt
import hashlib
import hmac
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from fsl_xai.data import read_npz
from fsl_xai.data.dicom import DicomReadError, deidentify_file, import_dicom_folder, read_dicom
from fsl_xai.data.dicom.deid import DeidConfig, date_offset_days
from fsl_xai.data.imageset import ImageSet
from fsl_xai.errors import DataError

from .conftest import PATIENTS, bundled, identifying_values, npz_text, write_identified

SECRET = "test-project-secret"


# ---------------------------------------------------------------------------------------- import
def test_folder_import_reports_every_bad_file_and_keeps_the_rest(mixed_dir):
    root, expected, good = mixed_dir
    imp = import_dicom_folder(root, labels="folders", size=32, channels=1, progress=False)
    assert isinstance(imp.images, ImageSet)
    assert len(imp.images) == len(good) and sorted(imp.sources) == sorted(good)
    assert imp.images.images.shape[1:] == (1, 32, 32)
    assert imp.images.class_names == ("ct", "mr")
    for src, label in zip(imp.sources, imp.images.labels, strict=True):
        assert src.split("/")[0] == imp.images.class_names[label]
    reasons = dict(imp.bad_files)
    assert set(reasons) == set(expected)
    for file, prefix in expected.items():
        assert reasons[file].startswith(prefix + ":"), (file, reasons[file])
    assert imp.n_files == len(good) + len(expected)
    assert list(imp.bad_table().columns) == ["file", "reason"] and len(imp.bad_table()) == len(expected)
    images, bad = imp  # unpacks as the (ImageSet, bad files) pair of docs/CONTRACTS.md
    assert images is imp.images and bad is imp.bad_files
    text = repr(imp)
    assert f"{len(good)} images" in text and f"{len(expected)} bad" in text and "truncated" in text


def test_labels_from_dict_csv_and_none(mixed_dir, tmp_path):
    root, expected, good = mixed_dir
    one = good[0]
    imp = import_dicom_folder(root, labels={one: "lesion"}, size=16, progress=False)
    assert len(imp.images) == 1 and imp.images.class_names == ("lesion",)
    no_label = [f for f, r in imp.bad_files if r.startswith("no label")]
    assert sorted(no_label) == sorted(set(good) - {one} | set(expected))
    csv = tmp_path / "labels.csv"
    names = ["a", "b"] * (len(good) // 2) + ["a"] * (len(good) % 2)
    pd.DataFrame({"file": [g.split("/")[-1] for g in good], "label": names}).to_csv(csv, index=False)
    imp = import_dicom_folder(root, labels=csv, size=16, progress=False)
    assert len(imp.images) == len(good) and set(imp.images.class_names) <= {"a", "b"}
    imp = import_dicom_folder(root, size=16, progress=False)
    assert imp.images.class_names == ("unlabelled",) and len(imp.bad_files) == len(expected)
    with pytest.raises(DataError, match="'file'"):
        pd.DataFrame({"name": ["x"], "label": ["y"]}).to_csv(tmp_path / "bad.csv", index=False)
        import_dicom_folder(root, labels=tmp_path / "bad.csv", progress=False)
    with pytest.raises(DataError, match="not a folder"):
        import_dicom_folder(tmp_path / "missing", progress=False)


def test_all_bad_folder_and_duplicates(broken_dir, tmp_path):
    root, expected = broken_dir
    imp = import_dicom_folder(root, progress=False)
    assert len(imp.images) == 0 and len(imp.bad_files) == len(expected)
    dup = tmp_path / "dup"
    dup.mkdir()
    shutil.copy(bundled("MR_small.dcm"), dup / "a.dcm")
    shutil.copy(bundled("MR_small.dcm"), dup / "b.dcm")
    imp = import_dicom_folder(dup, progress=False)
    assert len(imp.images) == 1 and imp.bad_files == [("b.dcm", "duplicate: the same image (SOP instance) as a.dcm")]


def test_multiframe_and_colour_in_one_import(tmp_path):
    for name in ("examples_ybr_color.dcm", "examples_palette.dcm", "MR_small.dcm"):
        shutil.copy(bundled(name), tmp_path / name)
    imp = import_dicom_folder(tmp_path, size=24, channels=3, frame=0, progress=False)
    assert len(imp.images) == 3 and imp.images.images.shape[1:] == (3, 24, 24)
    meta = imp.images.metadata.set_index("photometric")
    assert meta.loc["YBR_FULL_422", "n_frames"] == 30 and meta.loc["YBR_FULL_422", "frame"] == 0


# ---------------------------------------------------------------------------------------- de-identification
@pytest.fixture
def identified(tmp_path):
    root = tmp_path / "incoming"
    write_identified(root / "a" / "img1.dcm", "p1", 0)
    write_identified(root / "a" / "img2.dcm", "p1", 1, source="CT_small.dcm")
    write_identified(root / "b" / "img3.dcm", "p2", 2, with_age=True)
    return root


def _assert_clean(text: str, where: str) -> None:
    found = [v for v in identifying_values() if v.lower() in text.lower()]
    assert not found, f"identifying values {found} appear in {where}"


def _all_strings(ds: pydicom.Dataset) -> str:
    parts = []
    for elem in ds.iterall():
        if elem.VR not in ("OB", "OW", "OF", "OD", "UN", "SQ"):
            parts.append(str(elem.value))
    parts += [str(e.value) for e in ds.file_meta]
    return "\n".join(parts)


def test_identifying_values_never_reach_any_output(identified, tmp_path, caplog, capsys):
    raw = "\n".join(_all_strings(pydicom.dcmread(p)) for p in sorted(identified.rglob("*.dcm")))
    missing = [v for v in ("PID-98765-X", "221B Baker Street, Marylebone", "PRIVATE-SECRET-ABC",
                           "1 Hospital Road, Springfield", "ACC-1000", "Nestedreader^Wilhelmina") if v not in raw]
    assert not missing, f"the test files lack {missing}"  # the scan below must be able to fail

    # an identified file without pixels, written before pydicom's debug logging is switched on
    broken = tmp_path / "broken_identified.dcm"
    ds = pydicom.dcmread(identified / "b" / "img3.dcm")
    del ds.PixelData
    ds.save_as(broken, enforce_file_format=False)

    caplog.set_level(logging.DEBUG)
    pydicom.config.debug(True, default_handler=False)  # pydicom now logs every element it reads
    try:
        config = DeidConfig(secret=SECRET)
        outputs = {}
        img = read_dicom(identified / "a" / "img1.dcm", config=config, keep_raw=True)
        outputs["read_dicom metadata"] = json.dumps(img.metadata, default=str)
        outputs["repr(DicomImage)"] = repr(img)
        imp = import_dicom_folder(identified, labels="folders", size=32, config=config, progress=True)
        assert len(imp.images) == 3 and not imp.bad_files
        outputs["repr(DicomImport)"] = repr(imp)
        outputs["repr(ImageSet)"] = repr(imp.images)
        outputs["metadata table"] = imp.images.metadata.to_csv() + imp.table().to_string()
        outputs["to_csv"] = imp.to_csv(tmp_path / "export.csv").read_text()
        outputs["to_json"] = imp.to_json(tmp_path / "export.json").read_text()
        npz = imp.to_npz(tmp_path / "export.npz")  # what `fsl-xai dicom import` writes
        outputs["npz arrays"] = npz_text(npz)
        outputs["npz read back"] = read_npz(npz).metadata.to_csv()
        deid_path = tmp_path / "deid.dcm"
        meta = deidentify_file(identified / "a" / "img1.dcm", deid_path, config)
        outputs["deidentify_file metadata"] = json.dumps(meta, default=str)
        outputs["de-identified DICOM bytes"] = deid_path.read_bytes().decode("latin-1")
        outputs["de-identified DICOM values"] = _all_strings(pydicom.dcmread(deid_path))
        with pytest.raises(DicomReadError) as info:
            read_dicom(broken, config=config)
        outputs["error message"] = str(info.value)
    finally:
        pydicom.config.debug(False, default_handler=False)
    captured = capsys.readouterr()
    outputs["stdout/stderr"] = captured.out + captured.err
    outputs["log records"] = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    for where, text in outputs.items():
        _assert_clean(text, where)
    # the safe fields are there
    m = imp.images.metadata.set_index("sample_id")
    assert set(m["sex"]) == {"female", "male"}
    p1 = m[m.sex == "female"]
    assert (p1["age"] == 59).all() and (p1["age_source"] == "birth and study date").all()  # 1961-04-23 -> 2021-03-15
    assert (m[m.sex == "male"]["age"] == 58).all()
    assert set(m["study_year"]) == {2021.0, 2019.0}
    assert set(m["manufacturer"]) == {"ACME Imaging"} and set(m["body_part"]) == {"KNEE"}
    assert m["institution"].str.startswith("site-").all() and m["institution"].nunique() == 1


def test_pseudonyms_are_keyed_stable_and_distinct(identified, monkeypatch):
    config = DeidConfig(secret=SECRET)
    a = import_dicom_folder(identified, size=16, config=config, progress=False).images.metadata
    b = import_dicom_folder(identified, size=16, config=config, progress=False).images.metadata
    pd.testing.assert_frame_equal(a, b)
    by_sex = a.set_index("sex")
    assert by_sex.loc["female", "case_id"].nunique() == 1  # same patient, same study
    assert by_sex.loc["female", "sample_id"].nunique() == 2
    assert by_sex.loc["male", "case_id"] not in set(by_sex.loc["female", "case_id"])
    # the documented formula: HMAC-SHA256(secret, "case" US PatientID US StudyInstanceUID)
    p = PATIENTS["p1"]
    digest = hmac.new(SECRET.encode(), "\x1f".join(["case", p["PatientID"], p["StudyInstanceUID"]]).encode(),
                      hashlib.sha256).hexdigest()
    assert by_sex.loc["female", "case_id"].iloc[0] == f"case-{digest[:12]}"
    other = import_dicom_folder(identified, size=16, config=DeidConfig(secret="another"), progress=False)
    assert not set(other.images.metadata["case_id"]) & set(a["case_id"])
    monkeypatch.setenv("FSL_XAI_DEID_SECRET", SECRET)
    env = import_dicom_folder(identified, size=16, progress=False).images.metadata
    pd.testing.assert_frame_equal(env, a)


def test_deidentified_file_dates_uids_and_profile(tmp_path):
    config = DeidConfig(secret=SECRET)
    src = {k: write_identified(tmp_path / "in" / f"{k}.dcm", pat, i, study_date=d)
           for k, pat, i, d in (("x", "p1", 0, "20210315"), ("y", "p1", 1, "20210601"), ("z", "p2", 2, None))}
    out = {}
    for k, path in src.items():
        deidentify_file(path, tmp_path / f"{k}.deid.dcm", config)
        out[k] = pydicom.dcmread(tmp_path / f"{k}.deid.dcm")
    orig = {k: pydicom.dcmread(p) for k, p in src.items()}

    def day(v):
        return dt.datetime.strptime(v, "%Y%m%d").date()

    shift = {k: (day(out[k].StudyDate) - day(orig[k].StudyDate)).days for k in out}
    assert shift["x"] == shift["y"] == date_offset_days(SECRET.encode(), PATIENTS["p1"]["PatientID"])
    assert -365 <= shift["x"] <= -1 and shift["z"] != shift["x"]
    # the interval between a patient's studies is kept
    assert (day(out["y"].StudyDate) - day(out["x"].StudyDate)).days == (dt.date(2021, 6, 1) - dt.date(2021, 3, 15)).days
    nested = out["x"].ReferencedImageSequence[0]
    nested_orig = orig["x"].ReferencedImageSequence[0]
    assert (day(nested[0x00080023].value) - day(nested_orig[0x00080023].value)).days == shift["x"]
    assert nested[0x00700084].value in ("", None)  # a person name in a nested item is emptied
    # UIDs: keyed, consistent, valid; standard ones kept
    assert out["x"].StudyInstanceUID == out["y"].StudyInstanceUID != out["z"].StudyInstanceUID
    for ds in out.values():
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and uid.replace(".", "").isdigit()
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == "ANONYMOUS"
        assert ds.PatientID.startswith("patient-")
        assert not [e for e in ds.iterall() if e.tag.is_private]
        assert "InstitutionName" not in ds and "PatientBirthDate" not in ds or not ds.PatientBirthDate
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113108", "113107"]
    assert out["x"].SOPClassUID == orig["x"].SOPClassUID
    assert out["x"].PatientSex == "F"  # kept under the Retain Patient Characteristics option
    np.testing.assert_array_equal(out["x"].pixel_array, orig["x"].pixel_array)
    # dates removed instead of shifted
    deidentify_file(src["x"], tmp_path / "removed.dcm", DeidConfig(secret=SECRET, date_mode="remove"))
    removed = pydicom.dcmread(tmp_path / "removed.dcm")
    dates = [e for e in removed.iterall() if e.VR in ("DA", "DT") and e.value not in ("", None)]
    assert not dates and removed.LongitudinalTemporalInformationModified == "REMOVED"
    with pytest.raises(DataError, match="date_mode"):
        DeidConfig(date_mode="blur")
