"""Build a deployable bundle: ONNX backbone, class vectors, input transform, scoring rule, model card
and a predictor that needs only numpy and onnxruntime.

The bundle is built in a hidden sibling folder of ``out`` and renamed into place when every file is
written and onnxruntime has been checked against torch, so ``out`` is either absent, the old bundle
(replaced only with ``force``) or the complete new one.

Files: ``model.onnx`` (images -> embeddings), ``vectors.npz`` (what the rule compares against),
``bundle.json`` (classes, transform, rule), ``predict.py`` (:mod:`fsl_xai.deploy.predict`, copied),
``model_card.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..episodes import EpisodeSampler
from ..errors import DataError, ModelError
from .card import model_card, model_card_markdown
from .onnx_export import INPUT_NAME, OUTPUT_NAME, Parity, check_parity, export_backbone
from .rules import scoring_rule

if TYPE_CHECKING:
    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet
    from ..guard import DomainGuard
    from ..models import FewShotClassifier

#: marks a folder as a bundle (``bundle.json["format"]``); only such a folder is replaced with force
BUNDLE_FORMAT = "fsl-xai-onnx-bundle"
BUNDLE_VERSION = 1
PREDICTOR_SOURCE = Path(__file__).with_name("predict.py")


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: the bundle folder.
        size_bytes: the bundle's size on disk (all files).
        files: file name -> size in bytes.
        parity: onnxruntime against torch on the real images.
        card: the model card (also in ``model_card.json``).
    """

    path: Path
    size_bytes: int
    files: dict[str, int]
    parity: Parity
    card: dict[str, Any] = field(repr=False)


def input_transform(backbone: torch.nn.Module, channels: int, size: tuple[int, int]) -> dict[str, Any]:
    """How an image must be prepared for the ONNX model (what fsl-xai's loaders do). A backbone that
    normalises its input (an external one's ``transform``) does so inside the graph, so the model is
    always fed [0, 1] pixels."""
    stated = getattr(backbone, "transform", None)
    if stated is not None and not getattr(stated, "is_identity", True):
        normalisation = (f"inside model.onnx: (x - mean) / std with mean {list(stated.mean)} and std "
                         f"{list(stated.std)}; feed it [0, 1] pixels")
    else:
        normalisation = "none (no mean or standard deviation is subtracted)"
    return {"layout": "NCHW", "dtype": "float32", "channels": int(channels), "height": int(size[0]),
            "width": int(size[1]), "range": [0.0, 1.0], "scale": "uint8 pixel values / 255",
            "normalisation": normalisation,
            "colour": "grey (Pillow mode L: 0.299 R + 0.587 G + 0.114 B)" if channels == 1 else "RGB",
            "resize": "bicubic (Pillow) to height x width when the image differs"}


def check_out(out: Path, force: bool) -> None:
    """Raise DataError unless ``out`` may be written: absent, or (with ``force``) an empty folder or an
    earlier bundle. Anything else is never deleted."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise DataError(f"{out} exists; pass --force to replace it, or choose another --out")
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"{out} exists and is not a bundle folder; remove it yourself or choose another --out")
    spec = out / "bundle.json"
    if any(out.iterdir()):
        try:
            ours = json.loads(spec.read_text()).get("format") == BUNDLE_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DataError(f"{out} is a folder that holds no fsl-xai bundle; --force only replaces a bundle. "
                            "Choose another --out")


def draw_support(images: ImageSet, classes: Sequence[str], n_shot: int, seed: int
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n_shot`` support images per class drawn with ``seed`` (the sampler's first episode):
    (class names in label order, support positions, support labels)."""
    if len(classes) < 2:
        raise DataError(f"a bundle needs at least two classes, got {list(classes)}; name them with --classes")
    sampler = EpisodeSampler(images, n_way=len(classes), n_shot=n_shot, n_query=1, classes=list(classes), seed=seed)
    chosen, support, labels, _, _ = sampler.sample_indices(0)
    return [images.class_names[c] for c in chosen], support, labels


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    as_float32: dict[str, Any] = {k: v.astype(np.float32) for k, v in arrays.items()}
    np.savez_compressed(buffer, **as_float32)
    path.write_bytes(buffer.getvalue())


def _as_new_folder(path: Path) -> None:
    """Give a folder from mkdtemp (owner-only) the permissions a plain mkdir would give it."""
    umask = os.umask(0o022)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def _place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``, replacing an earlier bundle (already checked) last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, aside / "bundle")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside / "bundle", out)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_bundle(model: FewShotClassifier, info: CheckpointInfo, images: ImageSet, classes: Sequence[str],
                  n_shot: int, out: str | os.PathLike[str], seed: int = 0, force: bool = False,
                  n_query: int = 15, episodes: int = 200, guard: DomainGuard | None = None,
                  source: dict[str, Any] | None = None, progress: bool = False,
                  say: Callable[[str], None] | None = None) -> ExportResult:
    """Fit ``n_shot`` support images per class of ``images`` and write the bundle to ``out``.

    Args:
        model, info: the checkpoint's model (eval mode) and its description.
        images: the data the support set is drawn from and the bundle is validated on (at the
            checkpoint's channels and size).
        classes: the bundle's classes (names in ``images``).
        n_shot: support images per class; seed: draws them (and the validation episodes).
        out: the bundle folder; force: replace an earlier bundle there.
        n_query, episodes: the validation protocol (episodes of all the bundle's classes).
        guard: a domain guard fitted for this model (its threshold goes into the card).
        source: what to record about the data (split, file or dataset name).
        progress: progress bars; say: called with progress messages.

    Raises:
        DataError: ``out`` may not be written, or the classes or data do not allow the protocol.
        ModelError: the model cannot be carried by the predictor, or onnxruntime disagrees with torch.
    """
    from ..evaluation import evaluate

    try:
        from .predict import Bundle
    except ImportError as exc:
        raise ModelError(f"exporting needs onnxruntime ({exc}); install it: pip install 'fsl-xai[deploy]'") from None
    out = Path(out)
    check_out(out, force)
    say = say or (lambda message: None)
    names, support, labels = draw_support(images, classes, n_shot, seed)
    fitted = model.fit(torch.from_numpy(images.images[support]), torch.from_numpy(labels))
    rule, arrays = scoring_rule(fitted)
    if guard is not None:
        guard.check_model(model)
    say(f"validating on {episodes} episodes of {len(names)}-way {n_shot}-shot ...")
    result = evaluate(model, images, n_way=len(names), n_shot=n_shot, n_query=n_query, episodes=episodes,
                      seed=seed, classes=names, progress=progress)
    # every image of the bundle's classes is checked; those outside the support set also measure its accuracy
    ids = [images.class_index(c) for c in names]
    keep = np.flatnonzero(np.isin(images.labels, ids))
    held_out = ~np.isin(keep, support)
    truth = np.array([ids.index(int(k)) for k in images.labels[keep]], dtype=np.int64)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    _as_new_folder(tmp)
    try:
        say("exporting the backbone to ONNX ...")
        exporter = export_backbone(model, tmp / "model.onnx", torch.from_numpy(images.images[support[:2]]))
        _write_npz(tmp / "vectors.npz", arrays)
        spec = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model": "model.onnx", "input": INPUT_NAME,
                "output": OUTPUT_NAME, "arrays": "vectors.npz", "classes": names,
                "transform": input_transform(model.backbone, info.in_channels, info.image_size), "rule": rule,
                "exporter": exporter, "model_fingerprint": model.fingerprint()}
        (tmp / "bundle.json").write_text(json.dumps(spec, indent=2))
        shutil.copyfile(PREDICTOR_SOURCE, tmp / "predict.py")
        say(f"checking onnxruntime against torch on {len(keep)} images ...")
        parity, scores = check_parity(Bundle(tmp), fitted, images.images[keep])
        bundle_correct = (scores.argmax(1) == truth)[held_out]
        card = model_card(model, info, spec, images, source or {}, seed, n_shot, support_counts(labels, names),
                          result, bundle_correct, parity, guard)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2))
        (tmp / "MODEL_CARD.md").write_text(model_card_markdown(card))
        check_out(out, force)  # again: the folder may have appeared while the bundle was built
        _place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return ExportResult(out, sum(files.values()), files, parity, card)


def support_counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts, strict=True)}
