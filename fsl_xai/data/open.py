"""Open any image source by its path: a MedMNIST-format npz, an image folder (class sub-folders or
a CSV), or a folder of DICOM files, each read into an :class:`ImageSet` with its class names.

:func:`detect_kind` says which of these a path is (from the file's bytes, not only its name);
:func:`open_images` reads it. Anything else (a checkpoint, a lone CSV or DICOM file, an empty
folder) gets a :class:`~fsl_xai.errors.DataError` that says what the path is and what to give instead.

Splits: an npz holds ``train``/``val``/``test``; an image folder may hold ``train``/``val``/``test``
sub-folders, and the CSV of a folder (images or DICOM) a ``split`` column: then the split asked for
is read. A source without splits is one set, read whole for ``train``, ``test`` and ``all``; asking
it for ``val`` is a DataError, so that validation never silently reuses the training images.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pandas as pd

from ..errors import DataError, DatasetNotFoundError
from .folder import IMAGE_EXTENSIONS, read_folder
from .imageset import ImageSet
from .npz import SPLITS, read_npz

KINDS = ("npz", "folder", "dicom")
#: files looked at to tell an image folder from a DICOM folder
_SNIFF_FILES = 400
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".onnx")
WHAT_TO_GIVE = ("a MedMNIST-format .npz file, an image folder (class sub-folders, or a CSV with path and label "
                "columns) or a folder of DICOM files")


def _is_dicom_file(path: Path) -> bool:
    """A DICOM file by its 'DICM' marker after the 128-byte preamble, or by its suffix."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _visible_files(root: Path, limit: int) -> list[Path]:
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                out.append(Path(folder) / name)
                if len(out) >= limit:
                    return out
    return out


def detect_kind(path: str | os.PathLike) -> str:
    """``"npz"``, ``"folder"`` (images) or ``"dicom"`` (a folder of DICOM files).

    Raises:
        DatasetNotFoundError: the path does not exist.
        DataError: it is none of these (the message says what it looks like and what to give).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{path} does not exist; give {WHAT_TO_GIVE}")
    if path.is_file():
        suffix = path.suffix.lower()
        if zipfile.is_zipfile(path) and suffix in (".npz", ".zip", ""):
            return "npz"
        if suffix in _CHECKPOINT_SUFFIXES:
            raise DataError(f"{path.name} looks like a model checkpoint, not images; open it as the model "
                            "(--checkpoint, or the workbench's checkpoint field) and give the images separately")
        if suffix == ".csv":
            raise DataError(f"{path.name} is a table, not images; give the image folder it describes and pass the "
                            "CSV as the labels (--labels / labels_csv=)")
        if _is_dicom_file(path):
            raise DataError(f"{path.name} is a single DICOM file; put it (with the others) in a folder and open "
                            "the folder")
        if suffix == ".npz":
            raise DataError(f"{path.name} is not a readable npz (zip) file; it may be truncated or corrupt: "
                            "download or export it again")
        raise DataError(f"{path.name} is not something fsl-xai can open as images; give {WHAT_TO_GIVE}")
    files = _visible_files(path, _SNIFF_FILES)
    n_dicom = sum(_is_dicom_file(f) for f in files)
    n_image = sum(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
    if n_dicom and n_dicom >= n_image:
        return "dicom"
    if n_image:
        return "folder"
    found = sorted({f.suffix.lower() or "(none)" for f in files})[:8]
    what = f"files with extensions {found}" if files else "no files"
    raise DataError(f"{path} holds {what} and no images or DICOM files; give {WHAT_TO_GIVE}")


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")


def _open_npz(path: Path, split: str, name: str | None) -> ImageSet:
    from .registry import class_names_for_file, load_dataset

    if path.suffix.lower() == ".npz":  # the registry joins splits and knows the names of known files
        images = load_dataset(str(path), split=split)
        if name:
            images.name = name
        return images
    if split == "all":
        raise DataError(f"{path.name}: split 'all' needs a file ending in .npz; rename it or choose one split")
    return read_npz(path, split=split, name=name, class_names=class_names_for_file(path))


def _manifest(labels_csv: str | os.PathLike | None, root: Path) -> Path | None:
    """The CSV to use: the one given, or the only CSV at the top of ``root``."""
    if labels_csv is not None:
        csv = Path(labels_csv).expanduser()
        if not csv.is_absolute() and not csv.exists() and (root / csv).exists():
            csv = root / csv
        if not csv.is_file():
            raise DatasetNotFoundError(f"labels CSV not found: {csv}; check the path")
        return csv
    csvs = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
    return csvs[0] if len(csvs) == 1 else None


def _rows_of_split(table: pd.DataFrame, split: str, source: str) -> pd.DataFrame:
    if split == "all" or "split" not in table.columns:
        return table
    rows = table[table["split"].astype(str).str.strip().str.lower() == split]
    if rows.empty:
        found = sorted(table["split"].astype(str).unique().tolist())[:6]
        raise DataError(f"{source} has no rows of split {split!r} (its split column holds {found}); "
                        "choose one of those splits")
    return rows.reset_index(drop=True)


def _unsplit(split: str, root: Path) -> None:
    """A source without splits: refuse 'val' (it would be the very images trained on)."""
    if split == "val":
        raise DataError(f"{root} has no splits (no train/val/test sub-folders, no 'split' column in its CSV), so it "
                        "has no separate validation images; ask for 'test' or 'all', or add a split column to the CSV")


def _open_folder(root: Path, split: str, labels_csv, name: str | None, size, channels, progress: bool) -> ImageSet:
    name = name or root.name or "images"
    csv = _manifest(labels_csv, root)
    if csv is None:
        split_dirs = {s for s in SPLITS if (root / s).is_dir()}
        if split_dirs and split != "all":
            if split not in split_dirs:
                raise DataError(f"{root} has split folders {sorted(split_dirs)} but no {split!r}; choose one of them")
            return read_folder(root / split, size=size, channels=channels, name=name, progress=progress)
        _unsplit(split, root)
        return read_folder(root, size=size, channels=channels, name=name, progress=progress)
    try:
        table = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv.name} is not a readable CSV table ({exc}); it needs a header row and one row per "
                        "image (path and label columns)") from exc
    if "split" not in table.columns:
        _unsplit(split, root)
    table = _rows_of_split(table, split, csv.name)
    return read_folder(root, manifest=table, size=size, channels=channels, name=name, progress=progress)


def _open_dicom(root: Path, split: str, labels_csv, name: str | None, size, channels, progress: bool) -> ImageSet:
    from .dicom import import_dicom_folder  # imports pydicom: only when DICOM files are opened

    csv = _manifest(labels_csv, root)
    labels: object
    files = None
    if csv is not None:
        table = pd.read_csv(csv, dtype=str)
        if "split" not in table.columns:
            _unsplit(split, root)
        rows = _rows_of_split(table, split, csv.name)
        labels = csv
        if len(rows) != len(table):  # only this split's files
            column = next((c for c in ("file", "path", "filename") if c in rows.columns), None)
            files = rows[column].dropna().tolist() if column else None
    else:
        _unsplit(split, root)
        in_subfolders = all(len(f.relative_to(root).parts) > 1
                            for f in _visible_files(root, _SNIFF_FILES) if _is_dicom_file(f))
        labels = "folders" if in_subfolders else None
    result = import_dicom_folder(root, labels=labels, size=size or 64, channels=channels or 1, progress=progress,
                                 name=name or root.name or "dicom", files=files)
    if not len(result.images):
        detail = "; ".join(f"{f}: {r}" for f, r in result.bad_files[:3])
        raise DataError(f"no DICOM image in {root} could be imported ({result.n_files} files looked at"
                        f"{'; ' + detail if detail else ''}); check the files and the labels CSV (columns file, label)")
    images = result.images
    images.skipped = list(result.bad_files)
    return images


def open_images(path: str | os.PathLike, split: str = "test", labels_csv: str | os.PathLike | None = None,
                size: int | tuple[int, int] | None = None, channels: int | None = None, name: str | None = None,
                progress: bool = False) -> ImageSet:
    """Read one split of any image source into an ImageSet.

    Args:
        path: a MedMNIST-format npz file, an image folder (``<class>/<image>`` sub-folders, optionally
            under ``train``/``val``/``test``, or any layout with a CSV of path and label columns) or a
            folder of DICOM files (labels from ``labels_csv`` with ``file`` and ``label`` columns,
            else from class sub-folders, else one class "unlabelled").
        split: ``train``, ``val``, ``test`` or ``all``.
        labels_csv: the CSV for a folder (default: the folder's only top-level CSV, if any).
        size, channels: resize / convert folder and DICOM images (DICOM default 64 px, grey);
            npz files are returned as stored.
        name: the set's name (default: the file or folder name; a registered dataset keeps its names).
        progress: show progress bars while reading folders.

    Returns:
        An ImageSet; class names come from the source (the npz's ``class_names``, the registry for a
        known file without them, the CSV's labels or the class folders). Files left out are listed
        in ``skipped`` as ``(relative path, reason)``.

    Raises:
        DatasetNotFoundError: the path (or the CSV) does not exist.
        DataError: the path is not one of these kinds, or holds nothing readable.
    """
    _check_split(split)
    source = Path(path).expanduser()
    kind = detect_kind(source)
    if kind == "npz":
        if labels_csv is not None:
            raise DataError(f"{source.name} is an npz file, which carries its own labels; drop the labels CSV")
        return _open_npz(source, split, name)
    if kind == "dicom":
        return _open_dicom(source, split, labels_csv, name, size, channels, progress)
    return _open_folder(source, split, labels_csv, name, size, channels, progress)


def _is_path(text: str) -> bool:
    """A dataset argument that names a file or folder on this machine rather than a registered set."""
    from .registry import list_datasets

    path = Path(text).expanduser()
    if not path.exists():
        return False
    known = {i.name for i in list_datasets()}
    return text.strip().lower().replace("_", "-") not in known or path.suffix.lower() == ".npz"


def load_images(dataset: str | None, data_file: str | None, split: str, progress: bool,
                labels: str | None = None) -> ImageSet:
    """One split of a registered dataset (``--dataset``) or of your own images (``--data-file``: a
    MedMNIST-format npz, an image folder with or without a CSV, or a DICOM folder; see
    :func:`fsl_xai.data.open.open_images`). A ``--dataset`` that is a path on this machine is opened
    the same way. ``labels`` is the CSV of a folder (default: the folder's only CSV)."""
    if data_file is not None:
        return open_images(data_file, split=split, labels_csv=labels, progress=progress)
    if dataset is None:
        raise DataError("no images to load: give a dataset name (--dataset) or your own images (--data-file: "
                        "an .npz file, an image folder or a DICOM folder)")
    if _is_path(dataset):
        return open_images(dataset, split=split, labels_csv=labels, progress=progress)
    if labels is not None:
        raise DataError(f"--labels is for your own folders; {dataset!r} is a registered dataset with its own labels")
    from .registry import load_dataset

    return load_dataset(dataset, split=split, progress=progress)
