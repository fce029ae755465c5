"""Freeze a study: precompute every prediction and explanation once and store exactly what each
rater will see, with its provenance, so answers link to what was shown and the app never
recomputes.

Raters never see a sample id: each case gets a neutral label (``C01``, ``C02``, ...) from a random
permutation drawn from the operating system's entropy at freeze time, so neither the label nor the
order of labels says anything about the case's class, file or patient. Item ids are built from the
label (``C07|heatmap``); the store keeps the sample id in the item's ``case_id`` for the analyst,
and the export maps labels to sample ids.

A freeze is atomic: it is built in a hidden sibling folder (``.NAME.freezing-PID-RANDOM``) and
renamed into place only when complete, so a freeze that fails or is killed leaves no half-made
study at the target, and the next freeze removes the leftover folder of a dead one.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EpisodeError, FslXaiError
from .design import StudyDesign, StudyDesignError, load_design
from .store import ResponseStore, StudyStoreError

STORE_NAME = "study.sqlite"
MAX_RATERS_AT_ONCE = 10_000


class StudyExistsError(FslXaiError, FileExistsError):
    """The folder to freeze into exists already (use ``force`` to replace a study without answers)."""


def _png_b64(image: np.ndarray) -> str:
    """image: (C, H, W) float in [0, 1] or (H, W, 3) uint8 -> base64 PNG."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 1)
        arr = (arr.transpose(1, 2, 0) * 255).round().astype(np.uint8) if arr.ndim == 3 else (arr * 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def overlay(image: np.ndarray, normalized_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a signed map in [-1, 1] (blue negative, red positive) over an image (C, H, W) in
    [0, 1]; returns (H, W, 3) uint8."""
    img = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    rgb = rgb.transpose(1, 2, 0)
    m = np.clip(np.asarray(normalized_map, dtype=np.float32), -1, 1)[..., None]
    red, blue = np.array([0.85, 0.1, 0.1]), np.array([0.1, 0.25, 0.85])
    colour = np.where(m >= 0, red, blue)
    weight = alpha * np.abs(m)
    out = rgb * (1 - weight) + colour * weight
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _load_model(design: StudyDesign, base: Path):
    from ..training import default_model

    if "checkpoint" in design.model:
        from ..checkpoints import load_checkpoint

        path = Path(design.model["checkpoint"])
        model, info = load_checkpoint(path if path.is_absolute() else base / path)
    else:
        model, info = default_model(design.model["default"], model=design.model.get("model", "protonet"))
    model.eval()
    return model, info


def _episode_and_cases(design: StudyDesign, images):
    from ..episodes import Episode, EpisodeSampler

    ep = design.episode
    n_way, n_shot, seed = ep["n_way"], ep["n_shot"], int(ep.get("seed", 0))
    if isinstance(design.cases, tuple):
        case_idx = images.indices_of(design.cases)
        case_classes = sorted(set(images.labels[case_idx].tolist()))
        classes = [images.class_index(c) for c in ep.get("classes", [])] or case_classes
        if not set(case_classes) <= set(classes) or len(classes) != n_way:
            raise EpisodeError(f"the cases' classes {[images.class_names[c] for c in case_classes]} must be the "
                               f"episode's {n_way} classes; set episode.classes or choose other cases")
        rng = np.random.default_rng(seed)
        support, labels = [], []
        for k, c in enumerate(classes):
            pool = np.setdiff1d(np.flatnonzero(images.labels == c), case_idx)
            if len(pool) < n_shot:
                raise EpisodeError(f"class {images.class_names[c]!r} has {len(pool)} images besides the cases, "
                                   f"but n_shot = {n_shot}; lower n_shot")
            support += rng.choice(pool, n_shot, replace=False).tolist()
            labels += [k] * n_shot
        q_labels = [classes.index(int(images.labels[i])) for i in case_idx]
        ids = images.sample_ids
        episode = Episode(tuple(images.class_names[c] for c in classes), tuple(ids[support]), tuple(labels),
                          tuple(ids[case_idx]), tuple(q_labels), images.name, images.fingerprint(), seed, None)
        return episode
    n = design.cases["n"]
    per_class = math.ceil(n / n_way)
    sampler = EpisodeSampler(images, n_way, n_shot, per_class, classes=ep.get("classes"), seed=seed)
    episode = sampler.sample(int(design.cases.get("index", 0)))
    order = np.random.default_rng(int(design.cases.get("seed", seed))).permutation(episode.n_query)[:n]
    order = np.sort(order)
    return episode.with_queries([episode.query_ids[i] for i in order], [episode.query_labels[i] for i in order])


def case_labels(n: int) -> list[str]:
    """Neutral labels for n cases, in a random order: the i-th case gets the i-th label.

    The labels are ``C01`` ... (zero-padded to the width of n, at least two digits) assigned by a
    permutation from the operating system's entropy, never from a seed in the study file or from
    the sample ids, so a label says nothing about its case.
    """
    width = max(2, len(str(n)))
    order = secrets.SystemRandom().sample(range(n), n)
    return [f"C{k + 1:0{width}d}" for k in order]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_dead_builds(out: Path) -> None:
    """Delete build folders of ``out`` left by freezes whose process is gone (killed midway)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:freezing|replaced)-(\d+)-[A-Za-z0-9_-]+$")
    for sibling in out.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and sibling.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def _check_target(out: Path, force: bool) -> None:
    """Refuse an existing target unless ``force``, and even then refuse one that holds answers or
    files that are not a frozen study's (``force`` must never delete someone's data)."""
    if not out.exists() and not out.is_symlink():
        return
    db = out / STORE_NAME
    if not force:
        if db.exists():
            raise StudyExistsError(f"{db} already holds a frozen study; choose another folder with --out, or pass "
                                   "--force to replace it (only while it has no answers)")
        raise StudyExistsError(f"{out} already exists; choose a new folder with --out, or pass --force to replace it")
    if not out.is_dir() or out.is_symlink():
        raise StudyExistsError(f"{out} exists and is not a folder; --force only replaces a frozen study's folder")
    ours = {STORE_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm"}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours and p.suffix not in (".yaml", ".yml", ".json"))
    if others:
        raise StudyExistsError(f"{out} holds files that are not a frozen study's ({others[:5]}); --force only replaces "
                               "a frozen study: choose another folder with --out")
    if db.exists():
        try:
            with ResponseStore(db, read_only=True) as old:
                n = old.n_answers()
        except StudyStoreError as exc:
            raise StudyExistsError(f"{db} cannot be read ({exc}), so --force cannot tell whether it holds answers; "
                                   "move the folder away yourself, or choose another folder with --out") from None
        if n:
            raise StudyExistsError(f"{db} holds {n} answers; --force never replaces a study with answers: export "
                                   "them (fsl-xai study export) and move the folder away yourself, or choose another "
                                   "folder with --out")


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _move_into_place(built: Path, out: Path, force: bool) -> None:
    if force and out.exists():
        _check_target(out, force=True)  # again: answers may have arrived while freezing
        aside = out.with_name(f".{out.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, aside)
        os.rename(built, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            os.rename(built, out)  # an existing empty folder would be replaced silently: checked before
        except OSError as exc:
            raise StudyExistsError(f"{out} appeared while freezing ({exc.strerror}); choose another folder") from None
    _sync_folder(out.parent)


def _check_method(design: StudyDesign) -> None:
    """An unknown explanation method is an error before any work, not after the model ran."""
    if {"heatmap", "badges"} & {p for c in design.conditions for p in c.show}:
        from ..explain import list_methods

        if design.method not in list_methods():
            raise StudyDesignError(f"method: unknown explanation method {design.method!r}; use one of "
                                   f"{list_methods()}, e.g. method: gradcam")


def freeze_study(study_file: str | Path, out_dir: str | Path, progress: bool = True, force: bool = False) -> Path:
    """Precompute and store every item of a study in a new folder; returns the store's path.

    Args:
        study_file: the study file (YAML or JSON).
        out_dir: the folder to create (its parent is created if needed).
        progress: show a progress bar.
        force: replace an existing frozen study at ``out_dir`` that has no answers yet.

    Raises:
        StudyExistsError: ``out_dir`` exists (without ``force``), or holds answers or other files.
        StudyDesignError: the study file is invalid.
    """
    study_file = Path(study_file)
    design = load_design(study_file)
    out = Path(out_dir).absolute()
    _check_target(out, force)
    _check_method(design)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(out)
        built = out.with_name(f".{out.name}.freezing-{os.getpid()}-{secrets.token_hex(4)}")
        built.mkdir()
    except OSError as exc:
        raise StudyStoreError(f"cannot create the study folder next to {out} ({exc.strerror}); choose a writable "
                              "place with --out") from None
    try:
        _build(design, study_file, built, progress)
        _move_into_place(built, out, force)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return out / STORE_NAME


def _build(design: StudyDesign, study_file: Path, folder: Path, progress: bool) -> None:
    """Compute every item and write the store and the study file into ``folder``."""
    import torch
    from tqdm.auto import tqdm

    from ..data.registry import load_dataset
    from ..explain import explain, nearest_support

    with ResponseStore(folder / STORE_NAME) as store:
        store.set_meta("study_id", design.study_id)
        store.set_meta("design", json.dumps(design.raw, sort_keys=True))
        store.set_allow_back(design.allow_back)
        store.set_reading(design.reading, design.aided_conditions)
        images = load_dataset(design.dataset["name"], split=design.dataset.get("split", "test"), progress=progress)
        model, info = _load_model(design, study_file.parent)
        from ..explain.core import method_refusal

        reason = method_refusal(model, design.method)
        if reason is not None:
            raise StudyDesignError(f"method: {reason}")
        if images.n_channels != model.backbone.in_channels or images.image_size != tuple(model.backbone.image_size):
            images = images.convert(channels=model.backbone.in_channels, size=tuple(model.backbone.image_size))
        episode = _episode_and_cases(design, images)
        s_img, s_lab, q_img, q_lab = episode.tensors(images)
        fitted = model.fit(s_img, s_lab).with_queries(q_img)
        with torch.no_grad():
            logits = fitted(q_img)
        probs = torch.softmax(logits, dim=1)
        pred = logits.argmax(1)
        panels = {p for c in design.conditions for p in c.show}
        sets: list[dict[str, Any]] | None = None
        calibration_info: dict[str, Any] | None = None
        if "prediction_set" in panels:
            from .advice import calibrate_sets, prediction_sets

            calibration, drawn = calibrate_sets(design, model, episode, progress)
            sets = prediction_sets(calibration, probs.numpy(), episode.classes)
            calibration_info = calibration.to_dict() | drawn
        guarded = guard_info = None
        if design.guard is not None:
            from .advice import GUARD_WARNING, guard_scores

            guarded, guard_info = guard_scores(design, study_file.parent, fitted, q_img)
        maps = explain(fitted, q_img, method=design.method, target="predicted", episode_id=episode.episode_id) \
            if {"heatmap", "badges"} & panels else None
        provenance_common = {
            "model_fingerprint": model.fingerprint(), "model_config": model.config(),
            "checkpoint": getattr(info, "path", None) and str(info.path),
            "episode": episode.to_dict(), "method": design.method,
            "method_params": maps.to_dict()["params"] if maps is not None else None,
            "dataset": images.name, "dataset_fingerprint": images.fingerprint(), "study_id": design.study_id,
        }
        support_np = s_img.numpy()
        labels = case_labels(episode.n_query)
        for i in tqdm(range(episode.n_query), desc="freezing cases", disable=not progress):
            case_id, label = episode.query_ids[i], labels[i]
            # true_class is for teaching mode's reveal and the analysis; the app shows it only there
            full: dict[str, Any] = {
                "case_label": label, "image_png": _png_b64(q_img[i].numpy()), "classes": list(episode.classes),
                "true_class": episode.classes[episode.query_labels[i]],
            }
            extra: dict[str, Any] = {
                "prediction": {"class": episode.classes[int(pred[i])], "probability": float(probs[i, pred[i]])},
            }
            if maps is not None:
                extra["heatmap_png"] = _png_b64(overlay(q_img[i].numpy(), maps.normalized[i]))
                extra["method"] = design.method
            if "prototypes" in panels:
                near = nearest_support(fitted, q_img[i], k=3, support_images=s_img, sample_ids=episode.support_ids,
                                       class_names=episode.classes)
                # the support images' sample ids name files and patients: provenance only, never shown
                extra["nearest_support"] = [{"class": str(row["class"]),
                                             "image_png": _png_b64(support_np[int(row["support_index"])])}
                                            for _, row in near.iterrows()]
                extra["nearest_support_ids"] = [str(row["sample_id"]) for _, row in near.iterrows()]
            if "badges" in panels and maps is not None:  # maps are computed whenever badges are shown
                from ..explain.quality import badges

                checks = badges(fitted, q_img[i], design.method, s_img, attribution=maps.maps[i:i + 1], support=False)
                deletion = checks["deletion"].value
                # a flat map has no defined checks: shown as "undefined", never as passed
                extra["badges"] = {"randomisation check": checks["randomization"].status,
                                   "deletion area (lower is better)":
                                       "undefined" if deletion is None else round(deletion, 3)}
            if sets is not None:
                extra["prediction_set"] = sets[i]
            flagged = guarded is not None and bool(guarded.flags[i])
            items = []
            for cond in design.conditions:
                shown = dict(full)
                # the top-1 advice goes with every panel but a prediction set shown instead of it
                if set(cond.show) - {"prediction_set"}:
                    shown["prediction"] = extra["prediction"]
                if "prediction_set" in cond.show:
                    shown["prediction_set"] = extra["prediction_set"]
                if flagged and cond.show:  # the warning goes with the AI's output, never without it
                    shown["guard_warning"] = GUARD_WARNING
                for panel, keys in (("heatmap", ("heatmap_png", "method")), ("prototypes", ("nearest_support",)),
                                    ("badges", ("badges",))):
                    if panel in cond.show:
                        shown.update({k: extra[k] for k in keys if k in extra})
                provenance = provenance_common | {"query_index": i, "sample_id": case_id, "case_label": label,
                                                  "shown_panels": list(cond.show) + (["guard"] if flagged and
                                                                                     cond.show else []),
                                                  "model_prediction": extra["prediction"]["class"],
                                                  "reading": design.reading}
                if sets is not None:
                    provenance["prediction_set"] = extra["prediction_set"]["classes"]
                    provenance["conformal"] = calibration_info
                if guarded is not None:
                    provenance["guard"] = {"score": float(guarded.scores[i]), "flagged": flagged,
                                           "threshold": guarded.threshold, "settings": guard_info}
                if "prototypes" in cond.show and "nearest_support_ids" in extra:
                    provenance["nearest_support_ids"] = extra["nearest_support_ids"]
                items.append({"item_id": f"{label}|{cond.name}", "case_id": case_id, "condition": cond.name,
                              "shown": shown, "provenance": provenance})
            # one case at a time: memory stays bounded by one case's images however large the study
            store.add_items(items)
        store.set_meta("case_ids", json.dumps(list(episode.query_ids)))
        # in the same order as case_ids (the episode's), so the counterbalancing is unchanged
        store.set_meta("case_labels", json.dumps(labels))
    shutil.copyfile(study_file, folder / study_file.name)


def add_raters(db: str | Path, n: int, role: str = "rater") -> list[tuple[str, str]]:
    """Register n raters with their assigned, counterbalanced items; returns (pseudonym, token).

    Raises:
        StudyStoreError: n is not a whole number from 1 to MAX_RATERS_AT_ONCE, the role is
            unknown, or the store is not a frozen study (or cannot be written).
    """
    from .design import parse_design

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RATERS_AT_ONCE:
        raise StudyStoreError(f"the number of raters to add must be a whole number from 1 to {MAX_RATERS_AT_ONCE}, "
                              f"got {n!r}; e.g. --n 6")
    if role not in ("rater", "instructor"):
        raise StudyStoreError(f"role must be 'rater' or 'instructor', got {role!r}")
    with ResponseStore(db) as store:
        design_json, cases_json = store.meta("design"), store.meta("case_ids")
        if design_json is None or cases_json is None:
            raise StudyStoreError(f"{db} holds no frozen study design; run `fsl-xai study freeze` on it first")
        design = parse_design(json.loads(design_json))
        # item ids are built from the case labels (stores frozen before labels existed: sample ids)
        cases = json.loads(store.meta("case_labels") or cases_json)
        existing = store.n_raters()
        out = []
        for r in range(existing, existing + n):
            items = [f"{c}|{k}" for c, k in design.assign(cases, r)]
            rater, token = store.add_rater(items, role=role)
            out.append((rater.pseudonym, token))
    return out
