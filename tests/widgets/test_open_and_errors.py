"""Opening your own data and model in the workbench, and failing clearly: one inline message per
failure (details folded away), status and progress never green on failure, controls disabled until
what they need is chosen. Driven through the views' own callbacks (button clicks), no browser."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.data.registry import DatasetInfo, register_dataset, unregister_dataset
from fsl_xai.testing import tiny_model
from widgets._base import View
from widgets.dataset_model import CHECKPOINT, DEFAULT, ON_SCREEN, DatasetModelPicker
from widgets.support_set import SupportSetView
from widgets.workbench import Workbench

CLASSES = ("cyst", "mass", "scar")
EPOCH = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


def _message_part(view: View) -> str:
    """The error box up to the folded details: what the user sees before unfolding anything."""
    return view.error_area.value.split("<details")[0]


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_set():
    name = "offline-test-set"
    register_dataset(DatasetInfo(name, "a downloadable set whose server is unreachable", ("a", "b"), 1, 28, "CC0",
                                 "none", "offline/offline-test-set.npz", url=f"http://127.0.0.1:{_closed_port()}/x.npz",
                                 kind="medmnist"), overwrite=True)
    yield name
    unregister_dataset(name)


def test_a_failed_download_is_one_message_with_a_red_bar_and_a_failed_status(state, offline_set, cache_dir):
    bench = Workbench(state, episodes=5, dicom=False)
    picker = bench.picker
    picker.dataset.value = offline_set
    picker.load_button.click()
    shown = _message_part(picker)
    assert "network error" in shown and "offline-test-set" in shown and "save it as" in shown  # what and how to fix
    assert shown.count("⚠") == 1 and "Traceback" not in shown
    assert "<details" in picker.error_area.value and "<details open" not in picker.error_area.value
    assert not [o for o in picker.output.outputs if o.get("output_type") == "error"]  # no raw traceback box
    assert picker.progress.bar_style == "danger" and picker.progress.description == "failed"
    assert state.status.startswith("failed") and "loading" in state.status
    assert "#a00" in bench.status.value and "failed" in bench.status.value
    assert state.dataset_name == "synthetic"  # the session on screen stays usable
    picker.load_button.click()  # a second failure replaces the message, never stacks a second one
    assert picker.error_area.value.count("⚠") == 1


def _png_folder(root: Path, size: int = 20, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            grey = np.clip(40 + 80 * k + rng.integers(-15, 15, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(grey).save(root / c / f"{i}.png")
    return root


def test_open_an_image_folder_with_the_model_on_screen(state, tmp_path):
    picker = DatasetModelPicker(state)
    folder = _png_folder(tmp_path / "clinic_scans")
    assert picker.model_source.value == ON_SCREEN  # a model is on screen: the sensible default
    fingerprint = state.fingerprint
    picker.data_path.value = str(folder)
    picker.open_button.click()
    assert picker.last_error == "", picker.error_area.value
    assert state.dataset_name == "clinic_scans" and state.images.class_names == CLASSES
    assert state.images.image_size == (32, 32) and state.fingerprint == fingerprint  # fitted to the model
    assert set(state.episode.classes) <= set(CLASSES) and state.result is not None
    assert picker.progress.bar_style == "success" and "opened" in picker.own_note.value
    assert "18 images, 3 classes (cyst, mass, scar)" in picker.own_note.value


def test_open_an_npz_with_a_checkpoint_file(state, tmp_path):
    picker = DatasetModelPicker(state)
    rng = np.random.default_rng(1)
    npz = tmp_path / "wards.npz"
    labels = np.repeat(np.arange(3), 8).astype(np.uint8)[:, None]
    np.savez(npz, test_images=rng.integers(0, 256, (24, 28, 28, 3), dtype=np.uint8), test_labels=labels,
             class_names=np.array(["ward a", "ward b", "ward c"]))
    model = tiny_model(channels=3, size=28, seed=3)
    ckpt = tmp_path / "mine.pt"
    save_checkpoint(ckpt, model, CheckpointInfo.for_model(model, dataset="elsewhere", classes=("x", "y"),
                                                          val_metrics={"best_val_accuracy": 0.5,
                                                                       "best_val_ci95": [0.4, 0.6],
                                                                       "val_episodes": 50}))
    picker.data_path.value = str(npz)
    picker.checkpoint_path.value = str(ckpt)
    assert picker.model_source.value == CHECKPOINT  # typing a checkpoint chooses it
    picker.open_button.click()
    assert picker.last_error == "", picker.error_area.value
    assert state.images.class_names == ("ward a", "ward b", "ward c")  # names from the file
    assert state.fingerprint == model.fingerprint() and state.images.n_channels == 3
    info = picker.info.value
    # the validation score is measured on the data on screen (not the checkpoint's data) and says so
    assert "validation accuracy" in info and "measured on other episodes of the wards test split" in info
    assert "classes the model was not trained on" in info


def test_a_bad_path_or_checkpoint_says_what_to_give(state, tmp_path):
    picker = DatasetModelPicker(state)
    picker.open_button.click()
    assert "type the path of your images first" in picker.last_error
    assert picker.progress.bar_style == "danger" and state.status.startswith("failed")
    picker.data_path.value = str(_png_folder(tmp_path / "scans"))
    picker.checkpoint_path.value = str(tmp_path / "missing.pt")
    picker.open_button.click()
    assert "missing.pt" in picker.last_error and "Traceback" not in _message_part(picker)
    assert state.dataset_name == "synthetic"


def test_a_default_model_that_is_not_cached_is_trained_only_on_request_and_can_be_cancelled(
        state, tmp_path, cache_dir, data_dir):
    picker = DatasetModelPicker(state)
    picker.data_path.value = str(_png_folder(tmp_path / "scans", size=28))
    picker.model_source.value = DEFAULT
    picker.open_button.click()
    assert picker.last_error == "" and picker._training is None  # nothing started by itself
    assert picker.train_button.layout.display == "" and "takes several" in picker.own_note.value
    assert picker.progress.bar_style == "danger" and state.dataset_name == "synthetic"
    picker.train_button.click()
    assert picker._training is not None and picker.cancel_button.layout.display == ""
    assert state.status.startswith("training the default protonet model")
    picker.cancel_button.click()
    picker.wait_training(timeout=120)
    assert picker._training is None, "the training did not stop on cancel"
    assert picker.progress.bar_style == "danger" and picker.progress.description == "cancelled"
    assert state.status.startswith("training cancelled") and state.dataset_name == "synthetic"
    picker.cancel_button.click()  # nothing running: a message, not an exception
    assert "no training is running" in picker.last_error


def test_dicom_label_has_a_default_and_add_waits_for_an_image(state, tmp_path):
    pytest.importorskip("pydicom")
    from tests.fsl_xai.dicom.conftest import write_identified
    from widgets.dicom_import import DicomImportView

    view = DicomImportView(state)
    assert view.label.value == state.episode.classes[0]  # never empty while an episode is shown
    assert view.add_query_button.disabled and view.add_support_button.disabled
    assert "import DICOM files" in view.add_query_button.tooltip
    view.folder.value = str(tmp_path / "nothing here")
    view.import_button.click()
    assert "not a folder" in view.last_error and view.progress.bar_style == "danger"
    write_identified(tmp_path / "in" / "a.dcm", "p1", 0)
    view.folder.value = str(tmp_path / "in")
    view.import_button.click()
    assert view.last_error == "" and view.progress.bar_style == "success"
    assert not view.add_query_button.disabled
    n_queries = len(state.episode.query_ids)
    view.add_query_button.click()
    assert view.last_error == "" and len(state.episode.query_ids) == n_queries + 1
    view.label.options = []  # no class to choose: disabled, and a direct call says what to do
    assert view.add_query_button.disabled
    view.guard(view.add)(True)
    assert "choose the image's class" in view.last_error and "None" not in view.last_error


def test_add_to_support_needs_a_pool_image_and_a_class(state):
    view = SupportSetView(state)
    assert view.as_class.value in state.episode.classes and view.pool_list.value
    assert not view.add_button.disabled
    assert view.remove_button.disabled and view.swap_button.disabled  # no support image selected yet
    view.as_class.options = []
    assert view.as_class.value is None and view.add_button.disabled
    view.guard(view.add)()
    assert "choose the class" in view.last_error and "TypeError" not in view.error_area.value
    view._on_episode()  # a new episode: the class default comes back
    assert view.as_class.value in state.episode.classes and not view.add_button.disabled
    view.select(0)
    assert not view.remove_button.disabled and not view.swap_button.disabled


def test_an_unexpected_error_is_called_a_bug_with_the_traceback_folded(state):
    view = SupportSetView(state)

    def broken():
        return None + 1  # type: ignore[operator]

    view.guard(broken)()
    assert view.last_error.startswith("unexpected TypeError") and "bug" in view.last_error
    assert "Traceback" not in _message_part(view) and "Traceback" in view.error_area.value
    view.guard(lambda: None)()
    assert view.error_area.value == "" and view.last_error == ""


def test_open_a_dicom_folder_from_the_dataset_view(state, tmp_path):
    pytest.importorskip("pydicom")
    from tests.fsl_xai.dicom.conftest import identifying_values, write_identified

    picker = DatasetModelPicker(state)
    root = tmp_path / "dicoms"
    for i in range(4):
        write_identified(root / f"{i}.dcm", "p1", i, source="MR_small.dcm" if i % 2 else "CT_small.dcm")
    picker.data_path.value = str(root)
    picker.open_button.click()  # no labels: one class, no episode possible; says how to label them
    assert "has one class (unlabelled)" in picker.last_error and "labels CSV" in picker.last_error
    assert picker.progress.bar_style == "danger" and state.dataset_name == "synthetic"
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\n0.dcm,ct\n1.dcm,mr\n2.dcm,ct\n3.dcm,mr\n")
    picker.labels_path.value = str(csv)
    picker.n_shot.value, picker.n_query.value = 1, 1
    picker.open_button.click()
    assert picker.last_error == "", picker.error_area.value
    assert state.dataset_name == "dicoms" and state.images.class_names == ("ct", "mr")
    assert state.images.image_size == (32, 32)  # read at the size of the model on screen
    assert "4 images, 2 classes" in picker.own_note.value
    shown = picker.own_note.value + picker.info.value + " ".join(state.images.sample_ids)
    assert not [v for v in identifying_values() if v and v in shown]


def test_a_checkpoint_with_no_path_opens_the_dataset_chosen_above(state, tmp_path):
    picker = DatasetModelPicker(state)
    model = tiny_model(channels=1, size=32, seed=5)
    ckpt = tmp_path / "synthetic32.pt"
    save_checkpoint(ckpt, model, CheckpointInfo.for_model(model, dataset="synthetic", classes=("round",)))
    picker.dataset.value = "synthetic-biased"
    picker.checkpoint_path.value = str(ckpt)
    picker.open_button.click()
    assert picker.last_error == "", picker.error_area.value
    assert state.dataset_name == "synthetic-biased" and state.fingerprint == model.fingerprint()
    assert "round" not in state.episode_classes  # the class the checkpoint says it was trained on


def test_an_uploaded_npz_and_checkpoint_fill_the_fields(state, tmp_path):
    picker = DatasetModelPicker(state)
    rng = np.random.default_rng(2)
    npz = tmp_path / "patient_jane_doe.npz"  # a name that must not survive the upload
    np.savez(npz, test_images=rng.integers(0, 256, (24, 28, 28), dtype=np.uint8),
             test_labels=np.repeat(np.arange(3), 8).astype(np.uint8)[:, None])
    picker.upload.value = ({"name": npz.name, "type": "application/octet-stream", "size": npz.stat().st_size,
                            "content": memoryview(npz.read_bytes()), "last_modified": EPOCH},)
    assert picker.data_path.value.endswith("uploaded-images.npz") and "jane" not in picker.data_path.value
    picker.upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 2, "content": memoryview(b"hi"),
                            "last_modified": EPOCH},)
    assert "an upload must be an .npz file" in picker.last_error
    picker.open_button.click()
    assert picker.last_error == "" and state.dataset_name == "uploaded-images"
    assert state.images.class_names == ("0", "1", "2")  # the file names no classes: its labels as they are


def test_without_a_model_on_screen_the_default_model_is_proposed(synthetic_images):
    from widgets.state import WorkbenchState

    picker = DatasetModelPicker(WorkbenchState())
    assert picker.model_source.options == (DEFAULT, CHECKPOINT) and picker.model_source.value == DEFAULT
    picker.checkpoint_path.value = "model.pt"
    assert picker.model_source.value == CHECKPOINT
