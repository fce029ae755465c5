"""Held-in images for the model and data on screen: what the domain guard is fitted on, and what the
validation score and the prediction sets' calibration are measured on.

Found once per model and data (``widgets.trust`` caches what is computed from them), never on a
click. Nothing here downloads: a split that is not on this machine is simply not used.

The guard's reference is what the model knows (as ``fsl-xai guard`` fits it): the train split of
the model's training data (the sources a default model's recipe names, or the checkpoint's
dataset), with its val split as calibration (without one, a seeded fifth of the train split held
out). When that data is not here, or the model does not say what it was trained on, the train and
val splits of the data on screen stand in, and the guard says so.

Validation score and conformal calibration: held-in episodes of the data on screen with the
episode's classes, from its val split (random images of the same source as the test split, so
calibration and test episodes are exchangeable); when there is no val split or it is the split on
screen, other episodes of the split on screen (another seed), as ``fsl-xai evaluate --conformal``
does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fsl_xai.data.imageset import ImageSet
from fsl_xai.embeddings import images_for_model
from fsl_xai.errors import DataError, DatasetNotFoundError, FslXaiError
from fsl_xai.guard import reference_and_calibration
from fsl_xai.models import FewShotClassifier

#: seed of the calibration images held out of a train split that has no val split beside it
HOLD_OUT_SEED = 0


@dataclass(frozen=True)
class GuardData:
    """Reference and calibration images of a domain guard, and where they came from.

    Attributes:
        reference: images whose embeddings the guard's reference is (converted to the model's input).
        calibration: held-in images (not in the reference) whose scores place the threshold.
        source: "training data" (the model's own) or "data on screen" (a stand-in).
        description: one line for the page ("pbc-blood-64 train split (1120 images) ...").
    """

    reference: ImageSet
    calibration: ImageSet
    source: str
    description: str


def training_sources(info: Any) -> tuple[str, ...]:
    """The data sets a model was trained on, as its checkpoint says: a default model's recipe
    sources, else the checkpoint's dataset; empty when it does not say."""
    extra = getattr(info, "extra", None) or {}
    recipe = extra.get("recipe") if isinstance(extra, dict) else None
    sources = tuple(str(s) for s in (recipe or {}).get("sources") or ())
    dataset = str(getattr(info, "dataset", None) or "")
    return sources or ((dataset,) if dataset else ())


def load_split(name: str, split: str, model: FewShotClassifier) -> ImageSet:
    """One split of a data set found on this machine (a registered name or an npz path), converted
    to the model's input; DataError (or DatasetNotFoundError) when it is not here."""
    from fsl_xai.data.registry import load_dataset

    images = load_dataset(name, split=split, download=False, progress=False)
    images = images_for_model(images, model)
    images.name = name
    return images


def _joined(sets: Sequence[ImageSet], name: str) -> ImageSet:
    return sets[0] if len(sets) == 1 else ImageSet.concat(list(sets), name=name)


def _reference_and_calibration(names: Sequence[str], model: FewShotClassifier) -> tuple[ImageSet, ImageSet, str]:
    """Train splits joined as the reference; val splits as calibration, or a seeded fifth of the
    train splits held out when a val split is missing."""
    label = "+".join(names)
    train = _joined([load_split(n, "train", model) for n in names], label)
    try:
        val: ImageSet | None = _joined([load_split(n, "val", model) for n in names], label)
    except FslXaiError:
        val = None
    train, calibration, where = reference_and_calibration(train, val, seed=HOLD_OUT_SEED)
    return train, calibration, f"{label} train split ({len(train)} images), threshold from its {where}"


def guard_data(info: Any, model: FewShotClassifier, dataset_name: str, split_on_screen: str = "test") -> GuardData:
    """What the domain guard for this model is fitted on (see the module docstring).

    Raises:
        DataError: neither the model's training data nor a train split of the data on screen is
            on this machine.
    """
    sources = training_sources(info)
    problems = []
    if sources:
        try:
            ref, cal, text = _reference_and_calibration(sources, model)
            return GuardData(ref, cal, "training data", f"the model's training data: {text}")
        except FslXaiError as exc:
            problems.append(f"its training data ({', '.join(sources)}) {_why_not(exc)}")
    else:
        problems.append("the model does not say what it was trained on")
    if dataset_name and split_on_screen == "train":
        problems.append(f"the train split of {_short(dataset_name)} is on screen, so it cannot also be the "
                        "reference its queries are compared with")
    elif dataset_name:
        try:
            ref, cal, text = _reference_and_calibration([dataset_name], model)
            return GuardData(ref, cal, "data on screen",
                             f"the data on screen (standing in for the model's training data): {text}")
        except FslXaiError as exc:
            problems.append(f"{_short(dataset_name)} has no train split here" if isinstance(exc, DatasetNotFoundError)
                            else f"the train split of {_short(dataset_name)} {_why_not(exc)}")
    raise DataError("no domain guard for this model: " + "; ".join(problems)
                    + " (open a data set with a train split, or the model's training data, to get one)")


def _short(name: str) -> str:
    """A data set's name for a sentence: a path by its file name."""
    if "/" in name or "\\" in name:
        return os.path.basename(name.rstrip("/\\")) or name
    return name


def _why_not(exc: FslXaiError) -> str:
    """Why data cannot be used, in a few words: a data set that is not here is only said to be
    absent (its error lists every registered data set), another error by its first line."""
    if isinstance(exc, DatasetNotFoundError):
        return "is not on this machine"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot be read here ({first[:160]}{'…' if len(first) > 160 else ''})"


def files_signature(names: Sequence[str]) -> tuple[str, ...] | None:
    """What identifies the files behind data sets (path, size and modification time of each file;
    "builtin" for a built-in set), without reading them: a result computed from them is kept on
    disk under this signature. "absent" for a name with no file here; None when a name cannot be
    told apart from other data of that name (then nothing is kept on disk)."""
    from fsl_xai.data.registry import get_info, resolve_path

    out = []
    for name in dict.fromkeys(n for n in names if n):
        path: str | os.PathLike[str]
        try:
            info = get_info(name)
        except FslXaiError:
            info = None
        if info is not None and info.kind == "builtin":
            out.append(f"{name}:builtin")
            continue
        if info is not None:
            try:
                path = resolve_path(name, download=False, progress=False, verify=False)
            except FslXaiError:
                out.append(f"{name}:absent")
                continue
        elif os.path.isfile(name):
            path = name
        else:
            return None
        stat = os.stat(path)
        out.append(f"{name}:{os.path.abspath(os.fspath(path))}:{stat.st_size}:{stat.st_mtime_ns}")
    return tuple(out)


def held_in_images(dataset_name: str, split_on_screen: str, images_on_screen: ImageSet,
                   classes: Sequence[str], need_per_class: int, model: FewShotClassifier
                   ) -> tuple[ImageSet, bool, str]:
    """Images for held-in episodes of the data on screen: its val split when it is another split
    than the one on screen and has ``need_per_class`` images of each class; else the images on
    screen.

    Returns:
        (images, other_split, description): other_split is False when the images are the ones
        on screen (draw the episodes with another seed then).
    """
    if split_on_screen != "val" and dataset_name:
        try:
            val = load_split(dataset_name, "val", model)
            counts = val.class_counts()
            if all(counts.get(c, 0) >= need_per_class for c in classes):
                return val, True, f"{dataset_name} val split"
        except FslXaiError:
            pass  # no val split here: other episodes of the split on screen
    name = dataset_name or images_on_screen.name
    return images_on_screen, False, f"other episodes of the {name} {split_on_screen} split on screen (no val split)"
