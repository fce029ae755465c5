"""``fsl-xai dicom import``: a DICOM folder to a MedMNIST-format npz file, bad files reported, nothing
identifying in the file or on the console."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pydicom")

from fsl_xai.cli import main  # noqa: E402
from fsl_xai.data import read_npz  # noqa: E402

from .dicom.conftest import (  # noqa: E402
    ENHANCED_INTERCEPT,
    bundled,
    enhanced_stored,
    identifying_values,
    linear_window,
    npz_text,
    write_broken_corpus,
    write_enhanced_ct,
    write_identified,
)


@pytest.fixture
def folder(tmp_path):
    """An enhanced CT (3 frames, unit-less age), two identified single-frame images and broken files."""
    root = tmp_path / "incoming"
    write_enhanced_ct(root / "chest" / "enhanced_ct.dcm", patient="p2")
    write_identified(root / "knee" / "img1.dcm", "p1", 0)
    write_identified(root / "knee" / "img2.dcm", "p1", 1, source="CT_small.dcm")
    broken = write_broken_corpus(root / "broken")
    labels = tmp_path / "labels.csv"
    listed = {"chest/enhanced_ct.dcm": "pneumonia", "img1.dcm": "normal", "img2.dcm": "normal",
              **{f"broken/{k}": "normal" for k in broken}}  # labelled, so their read errors are reported
    pd.DataFrame({"file": list(listed), "label": list(listed.values())}).to_csv(labels, index=False)
    return root, labels, {f"broken/{k}": v for k, v in broken.items()}


def test_batch_import_writes_a_deidentified_medmnist_file(folder, tmp_path, capsys, caplog):
    root, labels, broken = folder
    out = tmp_path / "sets" / "mine.npz"
    caplog.set_level(logging.DEBUG)
    code = main(["dicom", "import", str(root), "--out", str(out), "--labels", str(labels), "--size", "16",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imported 5 image(s) from 3 of ")
    assert f"({len(broken)} skipped)" in lines[0] and "normal 2" in lines[0] and "pneumonia 3" in lines[0]
    for file, reason in broken.items():  # every bad file named with its reason, on stderr
        assert f"skipped {file}: {reason}:" in captured.err
    images = read_npz(out, split="test")
    assert images.class_names == ("normal", "pneumonia") and len(images) == 5
    meta = images.metadata
    ct = meta[meta["modality"] == "CT"].query("n_frames == 3").sort_values("frame")
    assert ct["frame"].tolist() == [0.0, 1.0, 2.0] and (ct["age"] == 81.0).all()
    assert [images.class_names[images.labels[i]] for i in ct.index] == ["pneumonia"] * 3
    # frame 0 stored with its own rescale (-1024) and window (-600, 1500): air is dark, not white
    hu = enhanced_stored(3)[0].astype(np.float64) + ENHANCED_INTERCEPT
    frame0 = read_npz(out, split="test").images[ct.index[0], 0]
    assert frame0[:, 0].max() < 0.25 and abs(float(frame0.mean()) - float(linear_window(hu, -600, 1500).mean())) < 0.02
    text = npz_text(out)
    assert "ACME Imaging" in text and "pneumonia" in text  # the scan below reads the stored strings
    outputs = {"npz": text, "metadata read back": meta.to_csv(), "stdout": captured.out, "stderr": captured.err,
               "logs": caplog.text}
    for where, value in outputs.items():
        found = [v for v in identifying_values() if v.lower() in value.lower()]
        assert not found, f"identifying values {found} appear in the {where}"


def test_frames_window_and_split_options(folder, tmp_path, capsys):
    root, _, _ = folder
    out = tmp_path / "first.npz"
    code = main(["dicom", "import", str(root / "chest"), "--out", str(out), "--frames", "0", "--window", "lung",
                 "--split", "train", "--channels", "3", "--size", "8", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    images = read_npz(out, split="train")
    assert len(images) == 1 and images.class_names == ("unlabelled",) and images.n_channels == 3
    assert images.metadata["window_source"].tolist() == ["preset:lung"]
    code = main(["dicom", "import", str(root / "chest"), "--out", str(out), "--window=-600,1500", "--size", "8",
                 "--no-progress"])
    assert code == 0
    assert read_npz(out, split="test").metadata["window_source"].tolist() == ["user"] * 3


@pytest.mark.parametrize("args, message", [
    (["--frames", "last"], "--frames 'last'"),
    (["--window", "1,2,3"], "CENTRE,WIDTH"),
    (["--labels", "missing.csv"], "no such file"),
    (["--size", "0"], "--size must be a positive"),
])
def test_bad_options_exit_2_with_a_clear_message(folder, tmp_path, capsys, args, message):
    root, _, _ = folder
    out = tmp_path / "x.npz"
    code = main(["dicom", "import", str(root), "--out", str(out), "--no-progress", *args])
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_nothing_importable_exits_2_and_writes_nothing(folder, tmp_path, capsys):
    root, _, broken = folder
    out = tmp_path / "none.npz"
    code = main(["dicom", "import", str(root / "broken"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no image could be imported" in err and "nothing was written" in err
    assert err.count("skipped ") == len(broken) and not out.exists()
    assert main(["dicom", "import", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dicom"])  # a subcommand is required
    assert bundled("MR_small.dcm").is_file()
