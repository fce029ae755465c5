"""The DICOM import view on pydicom's bundled test files plus a broken file: import, bad-file report,
preview, de-identified display, adding an image to the episode."""

from __future__ import annotations

import shutil

import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from widgets.dicom_import import CUSTOM, DicomImportView  # noqa: E402


@pytest.fixture
def dicom_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    identities = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        src = get_testdata_file(name)
        shutil.copy(src, folder / name)
        ds = pydicom.dcmread(src)
        identities += [str(ds.PatientName), str(ds.PatientID)]
    (folder / "broken.dcm").write_bytes(b"DICM" + b"\x00" * 50)
    return folder, [i for i in identities if i]


def test_import_preview_and_add(state, dicom_folder):
    folder, identities = dicom_folder
    view = DicomImportView(state)
    view.folder.value = str(folder)
    view.import_button.click()
    assert view.error_area.value == ""
    assert len(view.items.options) == 2
    assert "broken.dcm" in view.bad.value and "1 not imported" in view.bad.value
    assert view.image.value and "<table>" in view.meta.value
    shown = view.meta.value + view.bad.value + "".join(view.items.options)
    for value in identities:
        assert value not in shown, f"identifying value {value!r} is shown"
    view.window.value = CUSTOM
    view.centre.value, view.width.value = 100, 800
    assert "window centre 100, width 800" in view.meta.value
    n_query = state.episode.n_query
    view.label.value = state.episode.classes[1]
    view.add_query_button.click()
    assert view.error_area.value == "", view.error_area.value
    assert state.episode.n_query == n_query + 1
    assert state.episode.query_ids[-1].startswith("dicom:")
    assert state.episode.query_labels[-1] == 1 and state.query_index == n_query
    assert state.result.logits.shape[0] == n_query + 1
    view.items.value = view.items.options[1]
    view.add_support_button.click()
    assert state.episode.support_ids[-1].startswith("dicom:") and state.episode.support_labels[-1] == 1


def test_import_of_a_missing_folder_is_inline(state, tmp_path):
    view = DicomImportView(state)
    view.folder.value = str(tmp_path / "nope")
    view.import_button.click()
    assert "is not a folder" in view.error_area.value
    view.add_support_button.click()
    assert "import DICOM files" in view.error_area.value


def test_frame_picker_previews_and_adds_the_chosen_frame(state, tmp_path):
    from tests.fsl_xai.dicom.conftest import (
        ENHANCED_SHARED_WINDOW,
        ENHANCED_WINDOWS,
        identifying_values,
        write_enhanced_ct,
    )

    folder = tmp_path / "frames"
    write_enhanced_ct(folder / "enhanced_ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    view = DicomImportView(state)
    view.import_files(folder)
    assert view.error_area.value == "" and len(view.items.options) == 2
    ct = next(i for i in view.items.options if i.endswith("-f0"))
    mr = next(i for i in view.items.options if i != ct)
    view.items.value = mr
    assert view.frame.layout.visibility == "hidden" and view.frame.max == 0 and "frame 1 of" not in view.meta.value
    view.items.value = ct
    assert view.frame.layout.visibility == "visible" and (view.frame.min, view.frame.max, view.frame.value) == (0, 2, 0)
    c, w = ENHANCED_WINDOWS[0]
    assert "frame 1 of 3" in view.meta.value and f"window centre {c:.0f}, width {w:.0f} (tags)" in view.meta.value
    first = view.image.value
    view.frame.value = 2  # the last frame has no window of its own: the shared group's applies
    c, w = ENHANCED_SHARED_WINDOW
    assert "frame 3 of 3" in view.meta.value and f"window centre {c:.0f}, width {w:.0f} (tags)" in view.meta.value
    assert view.image.value != first
    shown = (view.meta.value + view.bad.value + "".join(view.items.options)).lower()
    assert not [v for v in identifying_values() if v.lower() in shown]
    view.label.value = state.episode.classes[0]
    view.add_query_button.click()
    assert view.error_area.value == "", view.error_area.value
    assert state.episode.query_ids[-1].startswith("dicom:") and state.episode.query_ids[-1].endswith("-f2")
    view.frame.value = 1
    view.add_support_button.click()
    assert view.error_area.value == "", view.error_area.value
    assert state.episode.support_ids[-1].endswith("-f1")
    images = state.loaded()[0]
    added = images.metadata.set_index("sample_id").loc[state.episode.support_ids[-1]]
    assert added["frame"] == 1 and added["n_frames"] == 3
    view.items.value = mr
    view.items.value = ct  # a new file starts at its first frame
    assert view.frame.value == 0 and "frame 1 of 3" in view.meta.value
