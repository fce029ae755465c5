"""View 1: pick a dataset and a model, or open your own images (npz, image folder + CSV, DICOM folder)
with a checkpoint file, the model on screen or a default model.

A registered dataset loads its cached default model (trained on first use, with a progress bar).
Your own images never start a long training by themselves: when the default model for such images
is not cached, the view says so and offers "train" (progress shown, "cancel" stops it; what was
trained is kept and resumes next time) or a checkpoint file instead."""

from __future__ import annotations

import asyncio
import ctypes
import html
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as w

from fsl_xai.data import list_datasets
from fsl_xai.data.imageset import ImageSet
from fsl_xai.models import list_models

from ._base import View, progress_done, progress_failed, progress_start
from .session import classes_note, default_model_file, open_checkpoint, open_own_images, own_default_model

#: where the model for your own images comes from
ON_SCREEN, CHECKPOINT, DEFAULT = "the model on screen", "a checkpoint file", "the default model for such images"
SPLITS = ("test", "val", "train", "all")


class TrainingCancelled(BaseException):  # noqa: N818 - not an error: the user's choice
    """Raised inside the training thread when the user clicks cancel (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` in the training code swallows it)."""


def backbone_line(model: Any, info: Any) -> str:
    """What the model's network is and the input it takes (size, channels, normalisation): the
    backbone spec as trained (``torchscript:FILE``, ``py:MODULE:FUNCTION``, ``timm:NAME`` or a
    built-in name; a file by its name, the full path in the tooltip)."""
    backbone = getattr(model, "backbone", None)
    spec = str(getattr(info, "backbone", "") or getattr(backbone, "backbone_name", "") or "")
    if not spec:
        return ""
    kind, _, rest = spec.partition(":")
    short = f"{kind}:{os.path.basename(rest)}" if kind == "torchscript" and rest else spec
    transform = getattr(backbone, "transform", None)
    described = f", input {html.escape(transform.describe())}" if transform is not None else ""
    return f"backbone <code title='{html.escape(spec, quote=True)}'>{html.escape(short)}</code>{described}"


class DatasetModelPicker(View):
    title = "Dataset and model"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        # what can be opened now: present here, downloadable, or built in
        names = [i.name for i in list_datasets()
                 if i.supported and (i.present or i.downloadable or i.kind == "builtin")]
        current = state.dataset_name if state.dataset_name in names else (names[0] if names else None)
        self.dataset = w.Dropdown(options=names, value=current, description="dataset",
                                  layout=w.Layout(width="260px"))
        models = list_models()
        self.model = w.Dropdown(options=models, value=state.model_name if state.model_name in models else models[0],
                                description="model", layout=w.Layout(width="220px"))
        style = {"description_width": "50px"}
        self.n_way = w.BoundedIntText(value=state.n_way, min=2, max=20, description="n-way", style=style,
                                      layout=w.Layout(width="120px"))
        self.n_shot = w.BoundedIntText(value=state.n_shot, min=1, max=50, description="n-shot", style=style,
                                       layout=w.Layout(width="120px"))
        self.n_query = w.BoundedIntText(value=state.n_query, min=1, max=50, description="n-query",
                                        style={"description_width": "60px"}, layout=w.Layout(width="140px"))
        self.load_button = w.Button(description="load", icon="download", button_style="primary",
                                    tooltip="load the dataset and its cached model (trained on first use)")
        self.load_button.on_click(self.guard(lambda _: self.load()))
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="160px", visibility="hidden"))
        self.output = w.Output(layout=w.Layout(max_height="120px", overflow="auto"))
        self.info = w.HTML()
        self.info.add_class("fsl-model-info")
        self._build_own()
        self.children = [w.HBox([self.dataset, self.model, self.n_way, self.n_shot, self.n_query, self.load_button,
                                 self.progress]), self.own_box, self.output, self.info, self.error_area]
        state.observe(self._on_model, names=["model", "model_info", "status", "episode_classes", "result"])
        self._on_model()

    # ------------------------------------------------------------------ your own data: widgets
    def _build_own(self) -> None:
        short = {"description_width": "80px"}
        self.data_path = w.Text(description="your data", style=short, layout=w.Layout(width="430px"),
                                placeholder="path of an .npz file, an image folder or a DICOM folder")
        self.labels_path = w.Text(description="labels CSV", style=short, layout=w.Layout(width="330px"),
                                  placeholder="optional: CSV with path/file and label columns")
        self.split = w.Dropdown(options=SPLITS, value="test", description="split", layout=w.Layout(width="140px"),
                                style={"description_width": "35px"})
        self.model_source = w.Dropdown(description="model", style={"description_width": "45px"},
                                       layout=w.Layout(width="330px"))
        self.checkpoint_path = w.Text(description="checkpoint", style=short, layout=w.Layout(width="430px"),
                                      placeholder="path of a checkpoint (.pt) written by `fsl-xai train`")
        self.upload = w.FileUpload(accept=".npz,.pt,.pth", multiple=False, description="upload .npz / .pt",
                                   layout=w.Layout(width="150px"))
        self.open_button = w.Button(description="open", icon="folder-open", button_style="primary",
                                    tooltip="open your data with the chosen model (with a checkpoint and no path: "
                                            "the dataset chosen above with that checkpoint)")
        self.train_button = w.Button(description="train default model", icon="cogs", button_style="warning",
                                     layout=w.Layout(width="170px", display="none"),
                                     tooltip="train the default model for such images now (several minutes)")
        self.cancel_button = w.Button(description="cancel", icon="stop", layout=w.Layout(width="90px", display="none"),
                                      tooltip="stop the training (its progress is kept and resumes next time)")
        self.own_note = w.HTML()
        self.open_button.on_click(self.guard(lambda _: self.open_own()))
        self.train_button.on_click(self.guard(lambda _: self.start_training()))
        self.cancel_button.on_click(self.guard(lambda _: self.cancel_training()))
        self.upload.observe(self.guard(lambda _: self._on_upload()), names="value")
        self.checkpoint_path.observe(self._on_checkpoint_typed, names="value")
        self.own_box = w.VBox([
            w.HBox([self.data_path, self.labels_path, self.split]),
            w.HBox([self.model_source, self.checkpoint_path]),
            w.HBox([self.upload, self.open_button, self.train_button, self.cancel_button]), self.own_note,
        ], layout=w.Layout(border="1px solid #ddd", padding="4px", margin="4px 0"))
        self.own_box.add_class("fsl-own-data")
        self._training: threading.Thread | None = None
        self._lock = threading.Lock()
        self._train_outcome: tuple[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: Path | None = None
        self._sync_model_source()

    def _sync_model_source(self) -> None:
        """Model choices for your data: the model on screen only once one is loaded; default sensible."""
        options = ([ON_SCREEN] if self.state.model is not None else []) + [DEFAULT, CHECKPOINT]
        keep = self.model_source.value
        if tuple(self.model_source.options) != tuple(options):
            self.model_source.options = options
        if self.checkpoint_path.value.strip():
            self.model_source.value = CHECKPOINT
        else:
            self.model_source.value = keep if keep in options and keep != CHECKPOINT else options[0]

    def _on_checkpoint_typed(self, change=None) -> None:
        if self.checkpoint_path.value.strip() and CHECKPOINT in self.model_source.options:
            self.model_source.value = CHECKPOINT

    def _on_upload(self) -> None:
        """An uploaded .npz fills "your data", a .pt fills "checkpoint" (saved to a temporary folder
        under a neutral name: a file name may carry a patient's name)."""
        if not self.upload.value:
            return
        item = self.upload.value[0]
        suffix = Path(str(item["name"])).suffix.lower()
        if suffix not in (".npz", ".pt", ".pth"):
            raise ValueError(f"an upload must be an .npz file (images) or a .pt checkpoint, not {suffix or 'none'}")
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="fsl-xai-upload-"))
        target = self._tmp / (f"uploaded-images{suffix}" if suffix == ".npz" else f"uploaded-model{suffix}")
        target.write_bytes(bytes(item["content"]))
        (self.data_path if suffix == ".npz" else self.checkpoint_path).value = str(target)

    # ------------------------------------------------------------------ loading
    def _run_in_output(self, fn) -> None:
        """Run ``fn`` with its progress bars in this view's output area. An error is re-raised for
        the inline message (an Output widget would print its raw traceback and swallow it)."""
        self.output.clear_output()
        error: Exception | None = None
        with self.output:  # tqdm.auto inside an Output widget renders as a live ipywidgets progress bar
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - shown inline below, never as a raw traceback
                error = exc
        if error is not None:
            raise error

    def _failed(self, what: str) -> None:
        progress_failed(self.progress)
        self.state.status = f"failed: {what} (see the message in the dataset view)"

    def load(self) -> None:
        """Load the chosen dataset and model (training runs with tqdm progress bars shown in this view)."""
        progress_start(self.progress, 2)
        s = self.state
        s.n_way, s.n_shot, s.n_query = self.n_way.value, self.n_shot.value, self.n_query.value
        name = self.dataset.value
        if name is None:
            self._failed("no dataset chosen")
            raise ValueError("choose a dataset first (none is available: set FSL_XAI_DATA_DIR to your data folders)")
        try:
            # a load the user asked for shows its guard and validation score with its first episode
            # (only the page's first load defers them until after the first paint)
            self._run_in_output(lambda: self.state.load(name, self.model.value, progress=True).finish_trust())
            if self.state.error:  # loaded, but no episode could be drawn: the guard shows why
                raise ValueError(self.state.error)
        except Exception:
            self._failed(f"loading {name}")
            raise
        finally:
            self.n_way.value = self.state.n_way
        progress_done(self.progress)
        self._sync_model_source()

    def open_own(self) -> None:
        """Open the images at "your data" with the chosen model; when that is a default model that is
        not cached yet, say so and offer training instead of starting it."""
        if self._training is not None and self._training.is_alive():
            raise ValueError("a training is running: wait for it or cancel it first")
        progress_start(self.progress, 3)
        self.own_note.value = ""
        self.train_button.layout.display = "none"
        try:
            images = self._images_to_open()
            self.progress.value = 1
            if images.n_classes < 2:
                raise ValueError(f"{images.name} has one class ({images.class_names[0]}); episodes need two or more: "
                                 "give a labels CSV (columns file or path, and label) or put the images in one "
                                 "sub-folder per class")
            model, info, model_name = self._own_model(images)
            if model is None:
                progress_failed(self.progress, "not loaded")
                self.state.status = "your data is read; its model needs training first (see the dataset view)"
                return
            self.progress.value = 2
            s = self.state
            s.n_way, s.n_shot, s.n_query = self.n_way.value, self.n_shot.value, self.n_query.value
            self._run_in_output(lambda: s.load(images.name, model_name, split=self.split.value, progress=True,
                                               images=images, model=model, model_info=info).finish_trust())
            if s.error:  # loaded, but no episode could be drawn: the guard shows why
                raise ValueError(s.error)
        except Exception:
            self._failed("opening your data")
            raise
        finally:
            self.n_way.value = self.state.n_way
        skipped = getattr(images, "skipped", [])
        self.own_note.value = (f"opened <b>{html.escape(images.name)}</b>: {len(images)} images, "
                               f"{images.n_classes} classes ({html.escape(', '.join(images.class_names))})"
                               + (f"; {len(skipped)} file(s) left out (unreadable, unlabelled or not images)"
                                  if skipped else ""))
        progress_done(self.progress)
        self._sync_model_source()

    def _images_to_open(self) -> ImageSet:
        """The images at "your data"; with no path but a checkpoint, the dataset chosen above."""
        if not self.data_path.value.strip() and self.model_source.value == CHECKPOINT and self.dataset.value:
            from fsl_xai.data.registry import load_dataset

            name, split = self.dataset.value, self.split.value
            holder: list[ImageSet] = []
            self._run_in_output(lambda: holder.append(load_dataset(name, split=split, progress=True)))
            return holder[0]
        size, channels = self._dicom_shape()
        return open_own_images(self.data_path.value, split=self.split.value, labels_csv=self.labels_path.value,
                               size=size, channels=channels)

    def _dicom_shape(self) -> tuple[int | None, int | None]:
        """DICOM images are read at the size and channels of the model on screen (64 px grey otherwise)."""
        bb = getattr(self.state.model, "backbone", None)
        if bb is None or self.model_source.value != ON_SCREEN:
            return None, None
        return int(getattr(bb, "image_size", (64, 64))[0]), int(getattr(bb, "in_channels", 1))

    def _own_model(self, images) -> tuple[Any, Any, str]:
        """(model, info, model name) for your images; (None, None, "") when training is needed first."""
        source = self.model_source.value
        if source == CHECKPOINT:
            model, info = open_checkpoint(self.checkpoint_path.value)
            return model, info, getattr(info, "model", self.model.value)
        if source == ON_SCREEN:
            if self.state.model is None:
                raise ValueError("no model is on screen yet: choose a checkpoint file or the default model")
            return self.state.model, self.state.model_info, self.state.model_name
        recipe, path, cached = own_default_model(images, self.model.value)
        if cached:
            from fsl_xai.training import load_checkpoint

            model, info = load_checkpoint(path)
            return model, info, self.model.value
        self._pending = recipe
        self.train_button.layout.display = ""
        self.own_note.value = (
            f"<span style='color:#a60'>No default {html.escape(self.model.value)} model for {recipe.channels}-channel "
            f"{recipe.size} px images is cached on this machine. Training one (on MedNIST + PBC) takes several "
            "minutes: click <b>train default model</b> to start it (progress shown here; cancel any time), or "
            "choose <b>a checkpoint file</b> or <b>the model on screen</b> and open again.</span>")
        return None, None, ""

    # ------------------------------------------------------------------ training, on request only
    def start_training(self) -> None:
        """Train the default model the last "open" asked for, in the background (cancellable)."""
        recipe = getattr(self, "_pending", None)
        if recipe is None:
            raise ValueError("open your data with the default model first; training starts only when it is needed")
        if self._training is not None and self._training.is_alive():
            raise ValueError("a training is running already")
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # plain Python (tests, scripts): wait_training() finishes the job
            self._loop = None
        from fsl_xai.training import default_model_from_recipe

        model_name = self.model.value
        path = default_model_file(recipe, model_name)
        progress_start(self.progress, 1)
        self.progress.description = "training"
        self.train_button.disabled = True
        self.cancel_button.layout.display = ""
        self.state.status = f"training the default {model_name} model for {recipe.target} (cancel in the dataset view)"
        self._train_outcome = None
        started = time.monotonic()

        def work() -> None:
            try:
                default_model_from_recipe(recipe, model_name, progress=False)
                self._train_outcome = ("done", None)
            except TrainingCancelled:
                self._train_outcome = ("cancelled", None)
            except Exception as exc:  # noqa: BLE001 - reported inline by _finish_training
                self._train_outcome = ("failed", exc)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._finish_training)

        def watch(thread: threading.Thread) -> None:
            partial = path.with_name(f".{path.name}.partial")  # where the training keeps its progress
            while thread.is_alive():
                elapsed = time.monotonic() - started
                done = _training_progress(partial)
                with self._lock:  # never over the final word of _finish_training
                    if self._training is not thread:
                        return
                    if done is not None:
                        self.progress.max, self.progress.value = max(1, done[1]), done[0]
                    self.own_note.value = (f"training: {elapsed:.0f} s"
                                           + (f", episode {done[0]} of {done[1]}" if done else ", preparing")
                                           + " (cancel stops it; the progress is kept)")
                time.sleep(1.0)

        self._training = threading.Thread(target=work, name="fsl-xai-training", daemon=True)
        self._training.start()
        threading.Thread(target=watch, args=(self._training,), name="fsl-xai-training-progress", daemon=True).start()

    def cancel_training(self) -> None:
        """Stop a running training (raises TrainingCancelled in its thread at the next Python step)."""
        thread = self._training
        if thread is None or not thread.is_alive() or thread.ident is None:
            raise ValueError("no training is running")
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TrainingCancelled))
        self.cancel_button.disabled = True

    def wait_training(self, timeout: float | None = None) -> None:
        """Wait for a training started without an event loop (tests, scripts) and finish it here."""
        if self._training is not None:
            self._training.join(timeout)
            if not self._training.is_alive() and self._loop is None:
                self._finish_training()

    def _finish_training(self) -> None:
        outcome, exc = self._train_outcome or ("failed", RuntimeError("the training ended without a result"))
        with self._lock:
            self._training = None
        self.cancel_button.layout.display = "none"
        self.cancel_button.disabled = self.train_button.disabled = False
        if outcome == "cancelled":
            progress_failed(self.progress, "cancelled")
            self.state.status = "training cancelled; open again to resume it, or choose a checkpoint file"
            self.own_note.value = "training cancelled (what was trained is kept and resumes next time)"
            return
        if outcome == "failed":
            self._failed("training the default model")
            self.fail(exc)
            return
        self.train_button.layout.display = "none"
        self.guard(self.open_own)()  # the model is cached now: opens at once

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        super().close()

    # ------------------------------------------------------------------ header
    def _on_model(self, change=None) -> None:
        s = self.state
        if s.model is None:
            self.info.value = "<i>no model loaded: choose a dataset and click load, or open your own data</i>"
            return
        info = s.model_info
        parts = [f"<b>{html.escape(s.dataset_name)}</b> · model <b>{html.escape(s.model_name)}</b> "
                 f"(fingerprint <code>{s.fingerprint}</code>)"]
        trained = getattr(info, "trained", True)
        if trained is False:
            note = getattr(info, "note", "") or "not trained"
            parts.append(f"<span style='color:#a00'>untrained model ({html.escape(note)})</span>")
        parts += [line for line in [backbone_line(s.model, info)] if line]
        from .trust_text import header_lines

        lines = header_lines(s)  # validation on the data on screen, the domain guard, this episode (with flags)
        if s.episode_classes:
            lines.insert(1, html.escape(classes_note(info, list(s.episode_classes), s.dataset_name)))
        parts.extend(lines)
        self.info.value = "<br>".join(parts)


def _training_progress(partial: Path) -> tuple[int, int] | None:
    """(episode reached, episodes planned) from the checkpoint a running training keeps, if any."""
    if not partial.is_file():
        return None
    try:
        from fsl_xai.checkpoints import training_state

        info = training_state(partial)[0]
        return int(info.progress.get("episode", 0)), int(info.progress.get("episodes", 0))
    except Exception:  # noqa: BLE001 - being rewritten right now: try again next second
        return None
