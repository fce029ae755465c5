"""Image folders, with or without a CSV manifest, read into an ImageSet.

Two layouts:

- ``root/<class name>/<image>`` (no manifest): the class is the sub-folder name; the sample id is
  the path relative to ``root``.
- a CSV manifest with one row per image: a path column (relative to ``root``) and a label column;
  every other column becomes metadata (sex, age, site, scanner, ...). The public HAM10000
  metadata layout (``lesion_id, image_id, dx, dx_type, age, sex, localization[, site]``) works as
  is: without a path column the file is ``image_id`` plus ``image_extension``, and without a
  label column the label is ``dx``. Files not at the listed path are looked up by name anywhere
  under ``root`` (HAM10000 ships its images in two part folders).

Bad files never stop an import: unreadable images and manifest rows whose file is missing are
skipped and listed in the returned set's ``skipped`` attribute as ``(path, reason)`` pairs (pass
``on_error="raise"`` to stop at the first one instead). Problems with the set as a whole (mixed
image sizes without ``size=``, labels outside ``class_names``, nothing readable) raise DataError.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, DatasetNotFoundError
from .imageset import ImageSet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W) / (H, W, 3), or float32 in [0, 1] for 16-bit and float images."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        opened.load()
        # honour the camera's orientation tag, as image viewers do
        im: Image.Image = ImageOps.exif_transpose(opened) or opened
        mode = im.mode
        if mode in ("1", "L", "LA"):
            im = im.convert("L")
        elif mode.startswith("I") or mode == "F":
            im = im.convert("F") if mode == "F" else im.convert("I")
        else:
            im = im.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        if im.mode in ("L", "RGB"):
            return np.asarray(im, dtype=np.uint8).copy()
        values = np.asarray(im, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("the image contains NaN or infinite pixel values")
    if mode == "F":
        top = float(values.max()) if values.size else 1.0
        values = values / top if top > 1.0 else values
    else:
        values = values / (65535.0 if values.max() <= 65535 else float(values.max()))
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise DataError(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def _label_text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _entries_from_folders(root: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root} has no class sub-folders; arrange images as {root}/<class name>/<image> or pass "
            "manifest=<CSV with path and label columns>"
        )
    entries, skipped = [], []
    for class_dir in class_dirs:
        for file in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if _is_hidden(file, root):
                continue
            rel = file.relative_to(root).as_posix()
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((rel, f"not an image file (extension {file.suffix or 'none'!r}; "
                                     f"readable types: {', '.join(IMAGE_EXTENSIONS)})"))
                continue
            entries.append({"file": file, "rel": rel, "label": class_dir.name})
    return entries, skipped


def _entries_from_manifest(root: Path, manifest, path_column: str, label_column: str, image_extension: str
                           ) -> tuple[list[dict], list[tuple[str, str]], str, pd.DataFrame]:
    if isinstance(manifest, pd.DataFrame):
        table, source = manifest.reset_index(drop=True), "the manifest table"
    else:
        manifest = Path(manifest)
        if not manifest.is_absolute() and not manifest.exists() and (root / manifest).exists():
            manifest = root / manifest
        if not manifest.is_file():
            raise DatasetNotFoundError(f"manifest CSV not found: {manifest}; check the path")
        try:
            table = pd.read_csv(manifest)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{manifest} is not a readable CSV table ({exc}); it needs a header row and one "
                            "row per image") from exc
        source = str(manifest)
    columns = list(table.columns)
    if path_column in columns:
        paths = table[path_column].map(lambda v: "" if pd.isna(v) else str(v).strip())
        drop = [path_column]
    elif "image_id" in columns:
        # the public HAM10000 layout: file name = image id + extension
        ext = image_extension if image_extension.startswith(".") else f".{image_extension}"
        paths = table["image_id"].map(
            lambda v: "" if pd.isna(v) else (str(v) if Path(str(v)).suffix.lower() in IMAGE_EXTENSIONS
                                             else f"{v}{ext}"))
        drop = []
    else:
        raise DataError(f"{source} has no {path_column!r} column (columns: {columns}); pass path_column= "
                        "naming the column with the image paths (relative to the image folder)")
    if label_column not in columns:
        if label_column == "label" and "dx" in columns:
            label_column = "dx"
        else:
            raise DataError(f"{source} has no {label_column!r} column (columns: {columns}); pass label_column= "
                            "naming the column with the class of each image")
    drop.append(label_column)
    meta_table = table.drop(columns=drop)

    # one walk of the folder instead of a file-system query per manifest row
    by_relative: set[str] = set()
    by_name: dict[str, list[str]] = {}
    for folder, _dirs, files in os.walk(root):
        for file_name in files:
            relative = os.path.relpath(os.path.join(folder, file_name), root).replace(os.sep, "/")
            by_relative.add(relative)
            by_name.setdefault(file_name, []).append(relative)
    entries, skipped = [], []
    for row, (rel, raw_label) in enumerate(zip(paths.tolist(), table[label_column].tolist(), strict=True)):
        label = _label_text(raw_label)
        if not rel:
            skipped.append((f"<row {row + 2} of {source}>", f"manifest row {row + 2} has an empty path"))
            continue
        if label is None:
            skipped.append((rel, f"manifest row {row + 2} has no label in column {label_column!r}"))
            continue
        listed = Path(rel)
        if listed.is_absolute():
            if not listed.is_file():
                skipped.append((rel, f"file not found (manifest row {row + 2})"))
                continue
            file = listed
        else:
            normal = os.path.normpath(rel).replace(os.sep, "/")
            if normal not in by_relative:
                matches = by_name.get(listed.name, [])
                if len(matches) != 1:
                    why = ("file not found" if not matches else
                           f"file not at the listed path and {len(matches)} files under {root} have its name")
                    skipped.append((rel, f"{why} (manifest row {row + 2})"))
                    continue
                normal = matches[0]
            file = root / normal
        entries.append({"file": file, "rel": rel, "label": label, "row": row})
    return entries, skipped, label_column, meta_table


def read_folder(
    root: str | os.PathLike,
    manifest: str | os.PathLike | pd.DataFrame | None = None,
    path_column: str = "path",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    image_extension: str = ".jpg",
    on_error: str = "skip",
    id_column: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> ImageSet:
    """Read an image folder (class sub-folders, or a CSV manifest) into an ImageSet.

    Args:
        root: the image folder; manifest paths are relative to it.
        manifest: a CSV file (or DataFrame) with one row per image; None for class sub-folders.
        path_column: the manifest column with image paths (default ``path``; without it,
            ``image_id`` + ``image_extension`` is used, as in the HAM10000 metadata).
        label_column: the manifest column with the class (default ``label``; falls back to ``dx``).
        class_names: the classes in label order; labels outside it are an error. Default: the
            labels found (sorted; numerically when they are all integers).
        size: resize every image to this (int or (height, width)); required when the images
            differ in size.
        channels: 1 (grey) or 3 (RGB); default: what most images have (RGB on a tie).
        image_extension: appended to ``image_id`` when the manifest has no path column.
        on_error: ``"skip"`` (unreadable or missing files are skipped and reported) or ``"raise"``.
        id_column: the manifest column to use as sample id (default ``image_id`` when unique,
            else the relative path).
        name: the image set's name (default: the folder's name).
        progress: show a progress bar while reading.

    Returns:
        An ImageSet with metadata columns ``sample_id``, ``path`` (as listed) and every other
        manifest column. Its attribute ``skipped`` lists ``(path, reason)`` for every file left out.
        (``skipped`` is set on this object only; subsets made from it do not carry it.)

    Raises:
        DatasetNotFoundError: the folder or manifest does not exist.
        DataError: labels outside ``class_names``, mixed image sizes without ``size``, no readable
            image, bad arguments; or, with ``on_error="raise"``, the first bad file.
    """
    root = Path(root).expanduser()
    if on_error not in ("skip", "raise"):
        raise DataError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grey), 3 (RGB) or None (the majority), got {channels!r}")
    hw = _as_size(size)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {root}; check the path")
    name = name or root.name or "images"

    if manifest is None:
        entries, skipped = _entries_from_folders(root)
        used_label_column, meta_table = None, None
    else:
        entries, skipped, used_label_column, meta_table = _entries_from_manifest(
            root, manifest, path_column, label_column, image_extension)
    if on_error == "raise" and skipped:
        raise DataError(f"{skipped[0][0]}: {skipped[0][1]} (pass on_error='skip' to leave such files out)")

    rel_counts = Counter(e["rel"] for e in entries)
    repeated = [r for r, c in rel_counts.items() if c > 1]
    if repeated:
        raise DataError(f"the manifest lists the same image more than once: {repeated[:5]}; remove the duplicate rows")

    # check labels before the (slow) image reading
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(set(class_names)) != len(class_names):
            raise DataError(f"class_names has repeated names: {list(class_names)}")
        labels_seen = {e["label"] for e in entries}
        unknown = sorted(labels_seen - set(class_names))
        if unknown and all(lbl.isdigit() for lbl in labels_seen) \
                and all(int(lbl) < len(class_names) for lbl in labels_seen):
            # integer labels are taken as positions in class_names
            for e in entries:
                e["label"] = class_names[int(e["label"])]
            unknown = []
        if unknown:
            counts = Counter(e["label"] for e in entries if e["label"] in unknown)
            example = next(e["rel"] for e in entries if e["label"] in unknown)
            where = f"column {used_label_column!r}" if used_label_column else "the sub-folder names"
            raise DataError(
                f"labels {[f'{u} ({counts[u]} images)' for u in unknown[:10]]} in {where} are not in class_names "
                f"{list(class_names)} (e.g. {example}); add them to class_names or fix the labels"
            )

    from tqdm.auto import tqdm

    arrays, kept = [], []
    for entry in tqdm(entries, desc=f"reading {name}", unit="img", disable=not progress, leave=False):
        try:
            arrays.append(_read_image(entry["file"], hw))
        except Exception as exc:  # any decoder failure is a bad file, not a reason to stop
            reason = f"unreadable image: {type(exc).__name__}: {exc}"
            if on_error == "raise":
                raise DataError(f"{entry['rel']}: {reason} (pass on_error='skip' to leave such files out)") from exc
            skipped.append((entry["rel"], reason))
            continue
        kept.append(entry)
    if not kept:
        detail = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DataError(
            f"no readable images in {root} ({len(entries)} listed, {len(skipped)} skipped"
            f"{': ' + detail if detail else ''}); check the folder layout, the manifest paths and image_extension"
        )

    shapes = Counter(a.shape[:2] for a in arrays)
    if len(shapes) > 1:
        examples: dict[tuple[int, ...], str] = {}
        for a, e in zip(arrays, kept, strict=True):
            examples.setdefault(a.shape[:2], e["rel"])
        listing = ", ".join(f"{h}x{w} ({n} images, e.g. {examples[(h, w)]})" for (h, w), n in shapes.most_common(5))
        raise DataError(f"images in {root} have different sizes: {listing}; pass size=N or size=(height, width) "
                        "to resize them all")
    n_rgb = sum(a.ndim == 3 for a in arrays)
    target = channels or (3 if n_rgb * 2 >= len(arrays) else 1)
    out = np.empty((len(arrays), target, *arrays[0].shape[:2]), dtype=np.float32)
    for i, a in enumerate(arrays):
        values = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a
        if values.ndim == 2:
            out[i] = values[None]
        elif target == 3:
            out[i] = values.transpose(2, 0, 1)
        else:
            out[i, 0] = values @ _LUMA

    if class_names is None:
        found = sorted({e["label"] for e in kept})
        if all(lbl.lstrip("-").isdigit() for lbl in found):
            found = sorted(found, key=int)
        class_names = tuple(found)
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.array([lookup[e["label"]] for e in kept], dtype=np.int64)

    if meta_table is not None:
        meta = meta_table.iloc[[e["row"] for e in kept]].reset_index(drop=True)
    else:
        meta = pd.DataFrame(index=range(len(kept)))
    rel = [e["rel"] for e in kept]
    if id_column is not None:
        if id_column not in meta.columns:
            raise DataError(f"id_column {id_column!r} is not a manifest column; columns: {list(meta.columns)}")
        ids = meta[id_column].astype(str)
        if ids.duplicated().any():
            raise DataError(f"id_column {id_column!r} has repeated values {ids[ids.duplicated()].head(3).tolist()}; "
                            "sample ids must be unique")
    elif "image_id" in meta.columns and meta["image_id"].astype(str).is_unique:
        ids = meta["image_id"].astype(str)
    else:
        ids = pd.Series(rel)
    meta = meta.drop(columns=[c for c in ("sample_id",) if c in meta.columns])
    meta.insert(0, "sample_id", ids.to_numpy())
    if "path" not in meta.columns:
        meta.insert(1, "path", rel)
    return ImageSet(out, labels, class_names, meta, name, skipped=list(skipped))
