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
