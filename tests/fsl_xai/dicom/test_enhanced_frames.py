"""Enhanced multi-frame DICOM (rescale and window per frame in the functional groups), every frame
importable, PatientAge without a unit, and the MedMNIST-format npz the batch import writes."""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
import pandas as pd
import pydicom
import pytest

from fsl_xai.data import read_npz
from fsl_xai.data.dicom import (
    WINDOW_PRESETS,
    frame_levels,
    import_dicom_folder,
    read_dicom,
    read_dicom_frames,
    write_medmnist_npz,
)
from fsl_xai.data.dicom.deid import AGE_NO_UNIT, age_without_unit
from fsl_xai.errors import DataError

from .conftest import (
    ENHANCED_INTERCEPT,
    ENHANCED_SHARED_WINDOW,
    ENHANCED_WINDOWS,
    bundled,
    enhanced_stored,
    linear_window,
    write_enhanced_ct,
)


@pytest.fixture
def enhanced(tmp_path):
    return write_enhanced_ct(tmp_path / "dicom" / "enhanced_ct.dcm")


def test_per_frame_rescale_and_window_are_applied(enhanced):
    stored = enhanced_stored(len(ENHANCED_WINDOWS)).astype(np.float64)
    ds = pydicom.dcmread(enhanced)
    assert "RescaleIntercept" not in ds and "WindowCenter" not in ds  # only the functional groups have them
    for k, window in enumerate(ENHANCED_WINDOWS):
        img = read_dicom(enhanced, frame=k, keep_raw=True)
        hu = stored[k] + ENHANCED_INTERCEPT
        np.testing.assert_array_equal(img.raw, hu)  # -1024..172 HU, not the stored 0..1196
        expected_window = window if window is not None else ENHANCED_SHARED_WINDOW
        assert img.window == expected_window and img.window_source == "tags"
        np.testing.assert_allclose(img.pixels[0], linear_window(hu, *expected_window), atol=1e-6)
        assert img.frame == k and img.n_frames == 3 and img.metadata["frame"] == k
        assert (img.metadata["window_center"], img.metadata["window_width"]) == expected_window
    # the lung preset shows air (-1024 HU) dark, as on any CT; unrescaled (0) it would be near white
    lung = read_dicom(enhanced, frame=0, window="lung")
    np.testing.assert_allclose(lung.pixels[0], linear_window(stored[0] + ENHANCED_INTERCEPT,
                                                             *WINDOW_PRESETS["lung"]), atol=1e-6)
    assert lung.pixels[0][:, 0].max() < 0.25


def test_levels_from_the_shared_group_and_classic_files(tmp_path):
    shared = write_enhanced_ct(tmp_path / "shared.dcm", shared_only=True)
    ds = pydicom.dcmread(shared)
    for k in range(3):
        levels = frame_levels(ds, k)
        assert (levels.slope, levels.intercept, levels.source) == (1.0, ENHANCED_INTERCEPT, "shared")
        assert levels.window == ENHANCED_SHARED_WINDOW and levels.function == "LINEAR"
    img = read_dicom(shared, frame=2, keep_raw=True)
    np.testing.assert_array_equal(img.raw, enhanced_stored(3)[2] + ENHANCED_INTERCEPT)
    per_frame = frame_levels(pydicom.dcmread(write_enhanced_ct(tmp_path / "pf.dcm")), 1)
    assert per_frame.source == "per-frame" and per_frame.window == ENHANCED_WINDOWS[1]
    ct = pydicom.dcmread(bundled("CT_small.dcm"))
    ct.WindowCenter, ct.WindowWidth, ct.VOILUTFunction = [40, -600], [400, 1500], "SIGMOID"
    classic = frame_levels(ct, 0)  # top-level tags; the rescale is left to pydicom's modality LUT
    assert (classic.source, classic.slope, classic.window, classic.function) == ("top level", None, (40, 400),
                                                                                 "SIGMOID")


def test_every_frame_reads_and_imports(enhanced, tmp_path):
    frames = read_dicom_frames(enhanced, size=8)
    assert [f.frame for f in frames] == [0, 1, 2]
    for f in frames:
        np.testing.assert_array_equal(f.pixels, read_dicom(enhanced, frame=f.frame, size=8).pixels)
    assert len({f.metadata["sample_id"] for f in frames}) == 3
    assert [f.frame for f in read_dicom_frames(enhanced, frames=[2, 0])] == [2, 0]
    with pytest.raises(DataError, match="frame 3 is out of range"):
        read_dicom_frames(enhanced, frames=[0, 3])
    folder = enhanced.parent
    (folder / "mr.dcm").write_bytes(bundled("MR_small.dcm").read_bytes())
    every = import_dicom_folder(folder, frame="all", size=8, progress=False)
    assert len(every.images) == 4 and not every.bad_files
    meta = every.images.metadata
    assert sorted(meta.loc[meta.modality == "CT", "frame"]) == [0, 1, 2]
    assert meta.loc[meta.modality == "MR", "frame"].tolist() == [0]
    assert sorted(every.sources) == ["enhanced_ct.dcm"] * 3 + ["mr.dcm"]
    one = import_dicom_folder(folder, frame=1, size=8, progress=False)
    assert len(one.images) == 1 and one.bad_files[0][0] == "mr.dcm" and "bad frame" in one.bad_files[0][1]
    with pytest.raises(DataError, match="frame must be a frame index"):
        import_dicom_folder(folder, frame="first", progress=False)


def test_patient_age_without_unit(enhanced, tmp_path):
    meta = read_dicom(enhanced).metadata
    assert meta["age"] == 81.0 and meta["age_source"] == AGE_NO_UNIT
    assert age_without_unit("81") == 81.0 and age_without_unit(" 81.5 ") == 81.5
    assert age_without_unit("081Y") is None and age_without_unit("") is None and age_without_unit("old") is None
    with_unit = read_dicom(write_enhanced_ct(tmp_path / "unit.dcm", patient_age="058Y")).metadata
    assert with_unit["age"] == 58.0 and with_unit["age_source"] == "PatientAge"
    junk = read_dicom(write_enhanced_ct(tmp_path / "junk.dcm", patient_age="old")).metadata
    assert np.isnan(junk["age"]) and junk["age_source"] == "missing"
    # birth and study date are exact; a unit-less age is only taken when they are missing
    with warnings.catch_warnings():  # pydicom warns about the unit-less AS value it reads back
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(enhanced)
        ds.PatientBirthDate, ds.StudyDate = "19500610", "20210315"
        ds.save_as(tmp_path / "dated.dcm", enforce_file_format=False)
    dated = read_dicom(tmp_path / "dated.dcm").metadata
    assert dated["age"] == 70.0 and dated["age_source"] == "birth and study date"
    old = read_dicom(write_enhanced_ct(tmp_path / "old.dcm", patient_age="97")).metadata
    assert old["age"] == 90.0  # capped as every other age ("90 or older")


def test_npz_round_trip_with_class_names_and_metadata(enhanced, tmp_path):
    folder = enhanced.parent
    (folder / "mr.dcm").write_bytes(bundled("MR_small.dcm").read_bytes())
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": ["enhanced_ct.dcm", "mr.dcm"], "label": ["lung", "knee"]}).to_csv(labels, index=False)
    imp = import_dicom_folder(folder, labels=labels, frame="all", size=16, progress=False)
    out = imp.to_npz(tmp_path / "out" / "set.npz", split="test")
    with np.load(out, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert all(a.dtype.kind in "fiuU" for a in arrays.values())
    assert arrays["test_images"].dtype == np.uint8 and arrays["test_images"].shape == (4, 16, 16)
    assert arrays["test_labels"].shape == (4, 1) and arrays["class_names"].tolist() == ["knee", "lung"]
    back = read_npz(out, split="test")
    assert back.class_names == ("knee", "lung")
    assert back.sample_ids.tolist() == imp.images.sample_ids.tolist()
    np.testing.assert_array_equal(back.labels, imp.images.labels)
    assert np.abs(back.images - imp.images.images).max() <= 0.5 / 255 + 1e-6
    assert back.metadata["frame"].tolist() == imp.images.metadata["frame"].astype(float).tolist()
    assert back.metadata["age"].tolist()[:3] == [81.0] * 3 and back.metadata["modality"].tolist()[:3] == ["CT"] * 3
    assert set(back.metadata["burned_in_annotation"]) <= {"", "true", "false"}
    with pytest.raises(DataError, match="unknown split"):
        imp.to_npz(tmp_path / "x.npz", split="holdout")
    # colour images are stored N x H x W x 3
    rgb = import_dicom_folder(folder, frame=0, size=8, channels=3, progress=False).to_npz(tmp_path / "rgb.npz")
    with np.load(rgb, allow_pickle=False) as npz:
        assert npz["test_images"].shape == (2, 8, 8, 3)


def test_npz_is_written_atomically(enhanced, tmp_path, monkeypatch):
    imp = import_dicom_folder(enhanced.parent, frame="all", size=8, progress=False)
    target = tmp_path / "set.npz"
    target.write_bytes(b"the previous file")

    def fail_halfway(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_medmnist_npz(imp.images, target)
    assert target.read_bytes() == b"the previous file"  # the old file stays whole
    assert sorted(os.listdir(tmp_path)) == ["dicom", "set.npz"]  # no temporary file left behind
    monkeypatch.undo()
    write_medmnist_npz(imp.images, target)
    assert zipfile.is_zipfile(target) and len(read_npz(target)) == 3
