"""DICOM import view: a folder or uploaded files, window/level with presets, preview with a frame
picker for multi-frame files, the de-identified metadata table, labels, and adding the images (the
chosen frame) to the support set or the queries.

Only de-identified data is shown: images are listed by their pseudonymous sample id, and the metadata
table is the one ``fsl_xai.data.dicom`` produced (no names, ids, birth dates or UIDs)."""

from __future__ import annotations

import html
import shutil
import tempfile
from pathlib import Path

import ipywidgets as w
import numpy as np
import pandas as pd

from fsl_xai.data.dicom_presets import WINDOW_PRESETS
from fsl_xai.data.imageset import ImageSet
from fsl_xai.embeddings import images_for_model
from fsl_xai.errors import DataError

from ._base import View, progress_done, progress_failed, progress_start
from .figures import png_bytes

AUTO, RANGE, CUSTOM = "from the file's tags", "full value range", "custom (sliders)"


class DicomImportView(View):
    title = "DICOM import"

    @property
    def _dicom(self):
        """fsl_xai.data.dicom, imported on first use (pydicom takes ~0.4 s to import)."""
        from fsl_xai.data import dicom

        return dicom

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        self.folder = w.Text(description="folder", placeholder="a folder of DICOM files",
                             layout=w.Layout(width="420px"), style={"description_width": "45px"})
        self.upload = w.FileUpload(accept=".dcm,application/dicom,*", multiple=True, description="upload files")
        self.import_button = w.Button(description="import", icon="upload", button_style="primary")
        self.import_button.on_click(self.guard(lambda _: self.import_files()))
        self.window = w.Dropdown(options=[AUTO, RANGE] + sorted(WINDOW_PRESETS) + [CUSTOM], value=AUTO,
                                 description="window", layout=w.Layout(width="260px"),
                                 style={"description_width": "50px"})
        self.centre = w.FloatSlider(value=40, min=-1500, max=3000, step=10, description="centre",
                                    layout=w.Layout(width="320px"), style={"description_width": "45px"})
        self.width = w.FloatSlider(value=400, min=1, max=5000, step=10, description="width",
                                   layout=w.Layout(width="320px"), style={"description_width": "45px"})
        for widget in (self.window, self.centre, self.width):
            widget.observe(self.guard(lambda _: self.preview()), names="value")
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="200px", visibility="hidden"))
        self.items = w.Select(rows=6, layout=w.Layout(width="300px"))
        self.items.observe(self.guard(lambda _: self._on_item()), names="value")
        # the frame picker: shown for multi-frame files; preview and "add" use the chosen frame
        self.frame = w.IntSlider(value=0, min=0, max=0, description="frame", continuous_update=False,
                                 layout=w.Layout(width="300px", visibility="hidden"),
                                 style={"description_width": "45px"})
        self.frame.observe(self.guard(lambda _: self._on_frame()), names="value")
        self._syncing = False
        self.image = w.Image(format="png", layout=w.Layout(width="160px", height="160px"))
        self.meta = w.HTML()
        self.bad = w.HTML()
        self.label = w.Dropdown(description="label", layout=w.Layout(width="260px"),
                                style={"description_width": "40px"},
                                tooltip="the class of the selected image (one of this episode's classes)")
        self.add_support_button = w.Button(description="add to support", icon="plus")
        self.add_query_button = w.Button(description="add as query", icon="question")
        self.add_support_button.on_click(self.guard(lambda _: self.add(as_query=False)))
        self.add_query_button.on_click(self.guard(lambda _: self.add(as_query=True)))
        self.result = w.HTML()
        self.imported = None
        self._root: Path | None = None
        self._tmp: Path | None = None
        self.children = [
            w.HTML("<b>DICOM import</b> (de-identified before display: pseudonymous ids, no identifying tags)"),
            w.HBox([self.folder, self.upload, self.import_button, self.progress]),
            w.HBox([self.window, self.centre, self.width]), self.error_area,
            w.HBox([w.VBox([self.items, self.frame]), self.image, self.meta]), self.bad,
            w.HBox([self.label, self.add_support_button, self.add_query_button]), self.result]
        self.label.observe(lambda _: self._sync_buttons(), names="value")
        self.items.observe(lambda _: self._sync_buttons(), names="value")
        state.observe(self._on_episode, names=["episode"])
        self._on_episode()

    def _on_episode(self, change=None) -> None:
        """The label choices are the episode's classes (an image can join only those), the current
        choice kept when still one of them, else the first: never empty while an episode is shown."""
        s = self.state
        classes = list(s.episode.classes) if s.episode is not None else []
        keep = self.label.value
        if tuple(self.label.options) != tuple(classes):
            self.label.options = classes
        self.label.value = keep if keep in classes else (classes[0] if classes else None)
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        """"add" works only with an imported image selected and a class chosen."""
        ready = self.imported is not None and bool(self.items.value) and self.label.value is not None
        why = ("" if ready else "import DICOM files and select one first" if not self.items.value
               else "choose the image's class (label) first")
        for button in (self.add_support_button, self.add_query_button):
            button.disabled = not ready
            button.tooltip = why or ("add the selected image as a " +
                                     ("query" if button is self.add_query_button else "support image") +
                                     f" of class {self.label.value}")

    def _window_arg(self):
        v = self.window.value
        if v == AUTO:
            return "auto"
        if v == RANGE:
            return None
        if v == CUSTOM:
            return (float(self.centre.value), float(self.width.value))
        return v

    def _target_shape(self) -> tuple[int, int]:
        model = self.state.model
        if model is None:
            return 64, 1
        size = getattr(model.backbone, "image_size", (64, 64))
        return int(size[0]), int(getattr(model.backbone, "in_channels", 1))

    def import_files(self, root: str | Path | None = None) -> None:
        """Import the folder (or the uploaded files); bad files are listed with their reason."""
        if root is None and self.upload.value:
            self._tmp = Path(tempfile.mkdtemp(prefix="fsl-xai-dicom-"))
            for item in self.upload.value:
                # uploaded names are replaced by numbers: a file name may carry a patient's name
                (self._tmp / f"upload-{len(list(self._tmp.iterdir())):04d}.dcm").write_bytes(bytes(item["content"]))
            root = self._tmp
        text = str(root or self.folder.value).strip()
        progress_start(self.progress)
        if not text or not Path(text).expanduser().is_dir():
            progress_failed(self.progress)
            fix = "type the folder that holds the DICOM files, or upload files"
            raise ValueError(f"{text} is not a folder; {fix}" if text else f"no folder given: {fix}")
        root = Path(text).expanduser()
        size, channels = self._target_shape()
        try:
            result = self._dicom.import_dicom_folder(root, size=size, channels=channels, window=self._window_arg(),
                                                     progress=False)
        except Exception:
            progress_failed(self.progress)
            raise
        self.progress.max = max(1, result.n_files)
        self.progress.value = result.n_files
        if len(result.images):
            progress_done(self.progress)
        else:
            progress_failed(self.progress, "none read")
        self.imported, self._root = result, root
        ids = result.images.sample_ids.tolist() if len(result.images) else []
        self.items.options = ids
        self.items.value = ids[0] if ids else None
        self._on_item()  # also when the first id is unchanged (a second import of the same folder)
        bad = "".join(f"<li><code>{html.escape(str(f))}</code>: {html.escape(str(r))}</li>"
                      for f, r in result.bad_files)
        self.bad.value = (f"{len(ids)} image(s) imported from {result.n_files} file(s)"
                          + (f"; {len(result.bad_files)} not imported:<ul>{bad}</ul>" if result.bad_files else ""))
        self._sync_buttons()
        if not ids:
            raise ValueError(f"no DICOM image could be imported from the {result.n_files} file(s) in this folder "
                             "(reasons listed below the preview); check that it holds DICOM files")

    def _n_frames(self) -> int:
        """Frames in the selected file (from its de-identified metadata)."""
        if self.imported is None or not self.items.value:
            return 1
        i = self.items.options.index(self.items.value)
        meta = self.imported.images.metadata
        return max(1, int(meta["n_frames"].iloc[i])) if "n_frames" in meta.columns else 1

    def _on_item(self) -> None:
        """A new file: the frame picker spans its frames, at the first; then the preview."""
        n = self._n_frames()
        self._syncing = True
        try:
            self.frame.value = 0
            self.frame.max = n - 1
        finally:
            self._syncing = False
        self.frame.layout.visibility = "visible" if n > 1 else "hidden"
        self.preview()

    def _on_frame(self) -> None:
        if not self._syncing:
            self.preview()

    def _read_selected(self):
        """The selected file's chosen frame, windowed and sized for the model."""
        i = self.items.options.index(self.items.value)
        size, channels = self._target_shape()
        return self._dicom.read_dicom(self._root / self.imported.sources[i], window=self._window_arg(),
                                      frame=int(self.frame.value), size=size, channels=channels)

    def preview(self) -> None:
        """Show the selected image with the current window, and its de-identified metadata."""
        self.centre.layout.visibility = self.width.layout.visibility = (
            "visible" if self.window.value == CUSTOM else "hidden")
        if self.imported is None or not self.items.value:
            return
        img = self._read_selected()
        self.image.value = png_bytes(img.pixels, 160)
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in img.metadata.items())
        win = ("" if img.window is None
               else f"window centre {img.window[0]:.0f}, width {img.window[1]:.0f} ({img.window_source})")
        frame = f"frame {img.frame + 1} of {img.n_frames}; " if img.n_frames > 1 else ""
        self.meta.value = f"<div style='font-size:85%'>{frame}{win}<table>{rows}</table></div>"

    def _selected_set(self) -> ImageSet:
        """The selected image (its chosen frame) as an ImageSet labelled with the chosen class
        (windowed as shown)."""
        img = self._read_selected()
        base = self.state.loaded()[0]
        meta = pd.DataFrame([img.metadata])  # this frame's own id, frame index and window
        meta["sample_id"] = "dicom:" + meta["sample_id"].astype(str)
        label = base.class_index(self.label.value)
        return ImageSet(img.pixels[None].astype(np.float32), np.array([label]), base.class_names, meta, "dicom")

    def add(self, as_query: bool) -> None:
        """Add the selected image to the support set (as the chosen class) or to the queries."""
        if self.imported is None or not self.items.value:
            raise ValueError("import DICOM files and select one first")
        s = self.state
        images, model, _ = s.loaded()
        classes = s.shown()[1].classes
        if self.label.value is None:
            raise ValueError(f"choose the image's class (label) first: one of {list(classes)}")
        if self.label.value not in classes:
            raise ValueError(f"class {self.label.value!r} is not in this episode ({list(classes)}); "
                             "choose one of its classes")
        one = self._selected_set()
        sid = one.sample_ids[0]
        if sid not in set(images.sample_ids):
            s.use_images(appended(images, images_for_model(one, model)))
        if as_query:
            s.add_query(sid, self.label.value)
        else:
            s.add_support(sid, self.label.value)
        if not s.error:
            self.result.value = f"added <code>{html.escape(sid)}</code> as {'query' if as_query else 'support'} " \
                                f"image of {html.escape(self.label.value)}"

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        super().close()


def appended(base: ImageSet, extra: ImageSet) -> ImageSet:
    """``base`` with the images of ``extra`` (same size and channels, labelled with classes of
    ``base``) appended, so that they can join an episode of ``base``.

    Raises:
        DataError: a class that ``base`` does not have, or a sample id it has already.
    """
    mapping = np.array([base.class_names.index(c) if c in base.class_names else -1 for c in extra.class_names])
    if (mapping[extra.labels] < 0).any():
        missing = sorted({extra.class_names[i] for i in np.unique(extra.labels) if mapping[i] < 0})
        raise DataError(f"classes {missing} are not classes of {base.name} ({list(base.class_names)}); "
                        "label the imported images with one of those classes")
    clash = set(extra.sample_ids) & set(base.sample_ids)
    if clash:
        raise DataError(f"sample ids {sorted(clash)[:3]} are already in {base.name}; these images were imported before")
    masks = None
    if base.masks is not None:
        extra_masks = extra.masks if extra.masks is not None else np.zeros((len(extra), *base.image_size), dtype=bool)
        masks = np.concatenate([base.masks, extra_masks])
    return ImageSet(np.concatenate([base.images, extra.images]), np.concatenate([base.labels, mapping[extra.labels]]),
                    base.class_names, pd.concat([base.metadata, extra.metadata], ignore_index=True), base.name, masks)
