"""Importing a folder of DICOM files into an ImageSet, with labels; bad files are reported, not fatal.

:func:`import_dicom_folder` reads every DICOM image under a folder (one frame of each file, or every
frame; labels from class folders, a dict or a CSV), reporting every bad file with its reason and
carrying on; :meth:`DicomImport.to_npz` writes the result as a MedMNIST-format npz file. The metadata table holds
only de-identified fields (see :func:`~fsl_xai.data.dicom.deid.safe_metadata`); the files' relative
paths are kept apart (``DicomImport.sources``), for the caller's own display.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import DataError
from ..imageset import ImageSet
from .deid import DeidConfig
from .loading import DicomReadError
from .npz_export import write_medmnist_npz
from .pixels import Window
from .reading import read_dicom_frames

log = logging.getLogger(__name__)


@dataclass
class DicomImport:
    """The result of :func:`import_dicom_folder`.

    Attributes:
        images: the imported images as an ImageSet (de-identified metadata; ``sample_id`` is a
            keyed image pseudonym).
        bad_files: (file relative to the root, reason) for every file that was not imported.
        sources: the relative path of each imported image (aligned with ``images``; the frames of
            one file share it), for the caller's own display; never put into the metadata table or
            the exports.
        n_files: files looked at.
    """

    images: ImageSet
    bad_files: list[tuple[str, str]]
    sources: list[str] = field(default_factory=list, repr=False)
    n_files: int = 0

    def __iter__(self) -> Iterator[object]:
        """``images, bad_files = import_dicom_folder(...)`` (the pair named in docs/CONTRACTS.md)."""
        return iter((self.images, self.bad_files))

    def bad_table(self) -> pd.DataFrame:
        """The bad files as a table (file, reason)."""
        return pd.DataFrame(self.bad_files, columns=["file", "reason"])

    def table(self) -> pd.DataFrame:
        """The de-identified metadata with the label name of each image."""
        out = self.images.metadata.copy()
        out.insert(1, "label", [self.images.class_names[i] for i in self.images.labels])
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the de-identified metadata table (with labels) as CSV."""
        path = Path(path)
        self.table().to_csv(path, index=False)
        return path

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the de-identified metadata, the class names and the bad-file report as JSON."""
        path = Path(path)
        payload = {"class_names": list(self.images.class_names),
                   "images": json.loads(self.table().to_json(orient="records")),
                   "bad_files": [{"file": f, "reason": r} for f, r in self.bad_files]}
        path.write_text(json.dumps(payload, indent=1))
        return path

    def to_npz(self, path: str | os.PathLike, split: str = "test") -> Path:
        """Write the images, labels, class names and de-identified metadata as one split of a
        MedMNIST-format npz file, atomically (see :func:`~fsl_xai.data.dicom.npz_export.write_medmnist_npz`)."""
        return write_medmnist_npz(self.images, path, split)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for _, reason in self.bad_files:
            key = reason.split(":", 1)[0]
            kinds[key] = kinds.get(key, 0) + 1
        bad = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        return (f"DicomImport({len(self.images)} images from {self.n_files} files, "
                f"{len(self.bad_files)} bad ({bad}); {self.images!r})")


def _label_lookup(labels: None | str | os.PathLike | Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """-> (mapping file key -> label, mode: None, "folders" or "map")."""
    if labels is None:
        return {}, None
    if isinstance(labels, str) and labels == "folders":
        return {}, "folders"
    if isinstance(labels, Mapping):
        return {str(k).replace("\\", "/"): str(v) for k, v in labels.items()}, "map"
    p = Path(labels)
    if not p.is_file():
        raise DataError(f"labels must be None, 'folders', a dict or a CSV file; {p} is not a file")
    table = pd.read_csv(p, dtype=str)
    file_col = next((c for c in ("file", "path", "filename") if c in table.columns), None)
    if file_col is None or "label" not in table.columns:
        raise DataError(f"the label CSV {p.name} needs a 'file' (or 'path'/'filename') column and a 'label' column; "
                        f"it has {list(table.columns)}")
    table = table.dropna(subset=[file_col, "label"])
    return {str(f).replace("\\", "/"): str(lab) for f, lab in zip(table[file_col], table["label"], strict=True)}, "map"


def _find_label(rel: str, mapping: dict[str, str]) -> str | None:
    if rel in mapping:
        return mapping[rel]
    name = rel.rsplit("/", 1)[-1]
    return mapping.get(name)


def _files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(p)
    return out


def import_dicom_folder(
    root: str | os.PathLike,
    labels: None | str | os.PathLike | Mapping[str, str] = None,
    size: int | tuple[int, int] = 64,
    channels: int = 1,
    window: Window = "auto",
    frame: int | str = 0,
    fit: str = "resize",
    progress: bool = True,
    config: DeidConfig | None = None,
    name: str = "dicom",
    files: Iterable[str | os.PathLike] | None = None,
) -> DicomImport:
    """Import every DICOM image under a folder into an ImageSet; bad files are reported, not fatal.

    Args:
        root: the folder (searched recursively; hidden files and folders are skipped).
        labels: None (one class "unlabelled"), "folders" (the first sub-folder under ``root`` is
            the class), a dict {relative path or file name: label}, or a CSV file with columns
            ``file`` (relative path or file name) and ``label``. Files without a label are
            reported as bad files ("no label").
        size, channels, window, fit: as in :func:`read_dicom`; every image gets the same shape so
            they form one set.
        frame: which frame of each file (0-based; a file with fewer frames is a bad file), or
            "all": every frame of every file, one image each (the ``frame`` metadata column says
            which; a multi-frame file's ``sample_id`` ends in ``-f<frame>``).
        progress: show a tqdm progress bar.
        config: de-identification settings.
        name: the image set's name.
        files: import only these files (paths under ``root``) instead of the whole folder.

    Returns:
        A :class:`DicomImport` (ImageSet, bad files with reasons, relative sources).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the folder that holds the DICOM files")
    config = config or DeidConfig()
    mapping, mode = _label_lookup(labels)
    if frame == "all":
        wanted: list[int] | None = None
    elif isinstance(frame, (int, np.integer)) and not isinstance(frame, bool):
        wanted = [int(frame)]
    else:
        raise DataError(f"frame must be a frame index (0, 1, ...) or 'all', got {frame!r}")
    paths = [Path(f) if Path(f).is_absolute() else root / f for f in files] if files is not None else _files(root)
    iterator = paths
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(paths, desc="DICOM import", unit="file")
    images, metas, names, sources, bad = [], [], [], [], []
    seen: dict[str, str] = {}
    for p in iterator:
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        label = "unlabelled"
        if mode == "folders":
            parts = rel.split("/")
            if len(parts) < 2:
                bad.append((rel, "no label: the file is not inside a class folder under the root"))
                continue
            label = parts[0]
        elif mode == "map":
            found = _find_label(rel, mapping)
            if found is None:
                bad.append((rel, "no label: the file is not listed in the labels"))
                continue
            label = found
        try:
            read = read_dicom_frames(p, frames=wanted, window=window, size=size, channels=channels, fit=fit,
                                     config=config)
        except DicomReadError as exc:
            bad.append((rel, f"{exc.reason}: {exc.detail}"))
            continue
        except Exception as exc:  # one bad file must never lose the others
            bad.append((rel, f"unreadable: unexpected {type(exc).__name__} while reading"))
            continue
        sid = read[0].metadata["sample_id"]
        if sid in seen:
            bad.append((rel, f"duplicate: the same image (SOP instance) as {seen[sid]}"))
            continue
        for img in read:
            seen[img.metadata["sample_id"]] = rel
            images.append(img.pixels)
            metas.append(img.metadata)
            names.append(label)
            sources.append(rel)
    for rel, reason in bad:
        log.warning("DICOM import skipped %s (%s)", rel, reason.split(":", 1)[0])
    class_names = tuple(sorted(set(names))) or ("unlabelled",)
    index = {c: i for i, c in enumerate(class_names)}
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    array = np.stack(images) if images else np.zeros((0, channels, h, w), dtype=np.float32)
    meta = pd.DataFrame(metas) if metas else pd.DataFrame({"sample_id": pd.Series([], dtype=str)})
    imageset = ImageSet(array, np.array([index[n] for n in names], dtype=np.int64), class_names, meta, name)
    log.info("DICOM import: %d images from %d files, %d bad", len(images), len(paths), len(bad))
    return DicomImport(imageset, bad, sources, len(paths))


#: the name used in docs/CONTRACTS.md
import_folder = import_dicom_folder
