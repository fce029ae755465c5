"""Datasets by short name: where each file is looked for, how it is downloaded and checked.

Resolution order for a file-backed dataset:

1. the ``data_dir`` argument's folders, then the ``FSL_XAI_DATA_DIR`` folders (each setting is one
   folder or several joined by ``os.pathsep``, searched in order); in each folder, the file's
   relative path (``pbc_blood/pbc_bloodlike_28.npz``) and then its bare name (``pbc_bloodlike_28.npz``);
2. the cache (``cache_dir`` argument or ``FSL_XAI_CACHE_DIR``), under ``datasets/<relative path>``;
3. a download into that cache, for sets with an official URL (the MedMNIST v2 2D sets).

Every file with a known MD5 is checked before it is read: the official MD5 for MedMNIST files,
and for any file found in a data folder the folder's ``MD5SUMS`` list when it has one.
``"synthetic"`` and ``"synthetic-biased"`` are generated in memory and need no file.
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config
from ..errors import ChecksumError, DataError, DatasetNotFoundError
from .download import download_file, file_md5
from .imageset import ImageSet
from .npz import SPLITS, read_npz
from .synthetic import CLASS_SHAPES, make_synthetic

MEDMNIST_CITATION = ("Yang J, Shi R, Wei D, et al. MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
                     "3D biomedical image classification. Scientific Data 10, 41 (2023)")
_MEDMNIST_RECORD = "https://zenodo.org/records/10519652/files/{}.npz?download=1"
_CACHE_SUBDIR = "datasets"
MD5SUMS_NAME = "MD5SUMS"


@dataclass(frozen=True)
class DatasetInfo:
    """What the library knows about one dataset.

    Attributes:
        name: the short name used by ``load_dataset``.
        description: one or two sentences for people choosing a set.
        classes: class names in label order (a file's own ``class_names`` win when present).
        channels: 1 (grey) or 3 (RGB).
        image_size: height and width in pixels.
        licence: the data licence.
        citation: what to cite when using it.
        file_name: path of the npz relative to a data folder ("" for built-in sets).
        url: official download URL, or None when the file must be put in place by hand.
        md5: the official MD5 of the file, or None when unknown.
        n_samples: images per split, e.g. {"train": 546, "val": 78, "test": 156}.
        kind: "shared" (a file from the project's data folder), "medmnist" (official download)
            or "builtin" (generated in memory).
        supported: False when the library cannot load this set (the reason says why).
        unsupported_reason: why it cannot be loaded, and what to use instead.
        path: where the file is on this machine (filled by list_datasets / get_info), else None.
        present: True when it can be loaded without a download (always for built-in sets).
    """

    name: str
    description: str
    classes: tuple[str, ...]
    channels: int
    image_size: int
    licence: str
    citation: str
    file_name: str = ""
    url: str | None = None
    md5: str | None = None
    n_samples: dict = field(default_factory=dict)
    kind: str = "shared"
    supported: bool = True
    unsupported_reason: str = ""
    path: Path | None = None
    present: bool = False

    @property
    def downloadable(self) -> bool:
        return self.url is not None

    @property
    def n_classes(self) -> int:
        return len(self.classes)


_REGISTRY: dict[str, DatasetInfo] = {}
_BUILTIN: dict[str, Callable[..., ImageSet]] = {}
_ALIASES = {"pbc-blood-28": "pbc-blood", "pbc": "pbc-blood", "ham10000-28": "ham10000", "ham": "ham10000",
            "mednist-64": "mednist", "synthetic-marker": "synthetic-biased"}


def register_dataset(info: DatasetInfo, overwrite: bool = False) -> None:
    """Make a dataset loadable by name (for example your own npz file with a download URL)."""
    key = _normalise(info.name)
    if key in _REGISTRY and not overwrite:
        raise DataError(f"a dataset named {info.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = replace(info, name=key, path=None, present=False)


def unregister_dataset(name: str) -> None:
    """Forget a registered dataset (mainly for tests)."""
    _REGISTRY.pop(_normalise(name), None)
    _BUILTIN.pop(_normalise(name), None)


def _normalise(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


# ---------------------------------------------------------------------------------------- facts
def _shared(name, description, classes, channels, size, licence, citation, file_name, n_samples):
    register_dataset(DatasetInfo(name, description, tuple(classes), channels, size, licence, citation, file_name,
                                 n_samples=n_samples, kind="shared"))


_PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
_PBC_CITATION = ("Acevedo A, Merino A, Alferez S, et al. A dataset of microscopic peripheral blood cell images "
                 "for development of automatic recognition systems. Data in Brief 30, 105474 (2020)")
_HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
_HAM_CITATION = ("Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
                 "dermatoscopic images of common pigmented skin lesions. Scientific Data 5, 180161 (2018)")
_HAM_DESCRIPTION = ("HAM10000 dermoscopy, one image per lesion (5,984 images), 7 diagnoses in DermaMNIST order, "
                    "with sex, age, body location and acquisition site per image; own stratified 7:1:2 split")

_shared("pbc-blood", "PBC peripheral blood cells (all 17,092 images, the source of BloodMNIST), centre-cropped "
        "and resized to 28x28 RGB; own stratified 7:1:2 split", _PBC_CLASSES, 3, 28, "CC BY 4.0", _PBC_CITATION,
        "pbc_blood/pbc_bloodlike_28.npz", {"train": 11965, "val": 1710, "test": 3417})
_shared("pbc-blood-64", "PBC peripheral blood cells at 64x64 RGB, 200 images per class",
        _PBC_CLASSES, 3, 64, "CC BY 4.0", _PBC_CITATION, "pbc_blood/pbc_bloodlike_64_200perclass.npz",
        {"train": 1120, "val": 160, "test": 320})
_shared("mednist", "MedNIST 64x64 grey, 500 images per class: abdomen CT, breast MRI, chest X-ray, chest CT, "
        "hand radiograph, head CT", ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"), 1, 64,
        "CC BY-SA 4.0", "MedNIST, gathered from TCIA, the RSNA Bone Age set and NIH ChestX-ray14; made available "
        "by B. Erickson (Mayo Clinic)", "mednist/mednist_64_500perclass.npz", {"train": 2100, "val": 300, "test": 600})
_shared("ham10000", _HAM_DESCRIPTION + " (28x28 RGB)", _HAM_CLASSES, 3, 28, "CC BY-NC 4.0 (non-commercial)",
        _HAM_CITATION, "ham10000_subset/ham_subset_28.npz", {"train": 4189, "val": 597, "test": 1198})
_shared("ham10000-64", _HAM_DESCRIPTION + " (64x64 RGB)", _HAM_CLASSES, 3, 64, "CC BY-NC 4.0 (non-commercial)",
        _HAM_CITATION, "ham10000_subset/ham_subset_64.npz", {"train": 4189, "val": 597, "test": 1198})

# Official MedMNIST v2 2D sets at 28 px (facts from the MedMNIST project's published dataset table).
_MEDMNIST = {
    "pathmnist": ("colon pathology (NCT-CRC-HE-100K / CRC-VAL-HE-7K), 9 tissue types", 3,
                  "a8b06965200029087d5bd730944a56c1",
                  ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                   "cancer-associated stroma", "colorectal adenocarcinoma epithelium"), "CC BY 4.0",
                  (89996, 10004, 7180)),
    "chestmnist": ("chest X-ray (NIH ChestX-ray14), 14 findings, multi-label", 1, "02c8a6516a18b556561a56cbdd36c4a8",
                   ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
                   "CC BY 4.0", (78468, 11219, 22433)),
    "dermamnist": ("dermatoscopy (HAM10000, all 10,015 images), 7 diagnoses", 3, "0744692d530f8e62ec473284d019b0c7",
                   ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                    "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                    "vascular lesions"), "CC BY-NC 4.0", (7007, 1003, 2005)),
    "octmnist": ("retinal optical coherence tomography, 4 diagnoses", 1, "c68d92d5b585d8d81f7112f81e2d0842",
                 ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"), "CC BY 4.0",
                 (97477, 10832, 1000)),
    "pneumoniamnist": ("paediatric chest X-ray, pneumonia vs normal", 1, "28209eda62fecd6e6a2d98b1501bb15f",
                       ("normal", "pneumonia"), "CC BY 4.0", (4708, 524, 624)),
    "retinamnist": ("retina fundus (DeepDRiD), 5 ordinal diabetic retinopathy grades", 3,
                    "bd4c0672f1bba3e3a89f0e4e876791e4", ("0", "1", "2", "3", "4"), "CC BY 4.0", (1080, 120, 400)),
    "breastmnist": ("breast ultrasound, malignant vs normal/benign", 1, "750601b1f35ba3300ea97c75c52ff8f6",
                    ("malignant", "normal, benign"), "CC BY 4.0", (546, 78, 156)),
    "bloodmnist": ("blood cell microscopy (PBC, official MedMNIST split), 8 cell types", 3,
                   "7053d0359d879ad8a5505303e11de1dc",
                   ("basophil", "eosinophil", "erythroblast",
                    "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                    "neutrophil", "platelet"), "CC BY 4.0", (11959, 1712, 3421)),
    "tissuemnist": ("kidney cortex microscopy (BBBC051), 8 cell types", 1, "ebe78ee8b05294063de985d821c1c34b",
                    ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                     "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                     "Thick Ascending Limb"), "CC BY 4.0", (165466, 23640, 47280)),
}
_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")
for _plane, _md5, _counts in (("a", "68e3f8846a6bd62f0c9bf841c0d9eacc", (34561, 6491, 17778)),
                              ("c", "b9ceb9546e10131b32923c5bbeaea2b1", (12975, 2392, 8216)),
                              ("s", "9ab87b696fb54e2a387ebe992d6ed5f1", (13932, 2452, 8827))):
    _view = {"a": "axial", "c": "coronal", "s": "sagittal"}[_plane]
    _MEDMNIST[f"organ{_plane}mnist"] = (f"abdominal CT (LiTS), {_view} view, 11 organs", 1, _md5, _ORGANS,
                                        "CC BY 4.0", _counts)

for _name, (_what, _channels, _md5, _classes, _licence, _counts) in _MEDMNIST.items():
    _multi_label = _name == "chestmnist"
    register_dataset(DatasetInfo(
        _name, f"official MedMNIST v2 {_name} 28x28: {_what}", tuple(_classes), _channels, 28, _licence,
        MEDMNIST_CITATION, f"medmnist_official/{_name}.npz", _MEDMNIST_RECORD.format(_name), _md5,
        dict(zip(SPLITS, _counts, strict=True)), kind="medmnist", supported=not _multi_label,
        unsupported_reason=("chestmnist is multi-label (each X-ray can carry several of 14 findings); few-shot "
                            "classification here needs one class per image. Use pneumoniamnist for a single-label "
                            "chest X-ray task") if _multi_label else ""))


def _register_builtin(name: str, description: str, factory: Callable[..., ImageSet]) -> None:
    register_dataset(DatasetInfo(name, description, CLASS_SHAPES[:4], 1, 64, "CC0 (generated by fsl-xai)",
                                 "fsl-xai built-in synthetic lesion set", n_samples=dict.fromkeys(SPLITS, 240),
                                 kind="builtin"))
    _BUILTIN[name] = factory


_register_builtin(
    "synthetic", "built-in synthetic grey lesion images (offline): 4 lesion types (round, spiculated, ring, "
    "textured), lesion masks, two acquisition sites differing in noise and contrast",
    lambda split: make_synthetic(split=split, name="synthetic"))
_register_builtin(
    "synthetic-biased", "the synthetic set with a spurious shortcut: a bright corner marker on every 'round' "
    "image from site A (outside the lesion masks)",
    lambda split: make_synthetic(split=split, spurious_marker=True, marker_site="A", marker_class=0,
                                 name="synthetic-biased"))


# ------------------------------------------------------------------------------------ look-up
def _unknown(name: str) -> DatasetNotFoundError:
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(_normalise(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return DatasetNotFoundError(
        f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(known)}. For your own images use "
        "read_folder(...) or read_npz(path)"
    )


def get_info(name: str, data_dir: config.PathList | None = None,
             cache_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """The registry entry for ``name``, with ``path``/``present`` filled in for this machine.

    Raises:
        DatasetNotFoundError: the name is unknown (the message lists the known names).
    """
    key = _normalise(name)
    if key not in _REGISTRY:
        raise _unknown(name)
    info = _REGISTRY[key]
    if info.kind == "builtin":
        return replace(info, present=True)
    found = _find_local(info, data_dir, cache_dir)
    return replace(info, path=found[0] if found else None, present=found is not None)


def list_datasets(data_dir: config.PathList | None = None,
                  cache_dir: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """Every known dataset, with whether (and where) it is present on this machine.

    Nothing is downloaded or checksummed; ``present`` only says a file is in place.
    """
    return [get_info(name, data_dir, cache_dir) for name in _REGISTRY]


def datasets_table(data_dir: config.PathList | None = None,
                   cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """``list_datasets`` as a table (one row per set) for printing, e.g. by ``fsl-xai datasets``."""
    rows = []
    for info in list_datasets(data_dir, cache_dir):
        if not info.supported:
            status = "unsupported"
        elif info.present:
            status = "built in" if info.kind == "builtin" else "present"
        else:
            status = "downloadable" if info.downloadable else "missing"
        rows.append({
            "name": info.name, "status": status, "classes": info.n_classes,
            "image_size": f"{info.image_size}x{info.image_size}", "channels": info.channels,
            "images": sum(info.n_samples.values()) if info.n_samples else None, "licence": info.licence,
            "class_names": ", ".join(info.classes), "path": str(info.path) if info.path else "",
        })
    return pd.DataFrame(rows)


def _search_roots(data_dir: config.PathList | None) -> list[Path]:
    """The data folders searched, in order: ``data_dir``'s, then ``FSL_XAI_DATA_DIR``'s."""
    roots: list[Path] = []
    for root in (*(config.data_dirs(data_dir) if data_dir is not None else ()), *config.data_dirs(None)):
        if root not in roots:
            roots.append(root)
    return roots


def _searched(info: DatasetInfo, data_dir, cache_dir) -> str:
    """Every place ``info``'s file was looked for, for an error message."""
    places = []
    for root in _search_roots(data_dir):
        relative = Path(info.file_name)
        places.append(str(root / relative))
        if relative.name != info.file_name:
            places.append(str(root / relative.name))
    places.append(str(_cache_path(info, cache_dir)))
    return "; ".join(places)


def _cache_path(info: DatasetInfo, cache_dir: str | os.PathLike | None) -> Path:
    return config.cache_dir(cache_dir) / _CACHE_SUBDIR / info.file_name


def _find_local(info: DatasetInfo, data_dir, cache_dir) -> tuple[Path, Path | None] | None:
    """(file, data folder it was found in, or None for the cache), or None when absent."""
    relative = Path(info.file_name)
    for root in _search_roots(data_dir):
        for candidate in (root / relative, root / relative.name):
            if candidate.is_file():
                return candidate, root
    cached = _cache_path(info, cache_dir)
    if cached.is_file():
        return cached, None
    return None


def _md5sums_entry(root: Path, file: Path) -> str | None:
    """The MD5 listed for ``file`` in ``root``'s (or the file's own folder's) MD5SUMS, if any."""
    for listing in dict.fromkeys((root / MD5SUMS_NAME, file.parent / MD5SUMS_NAME)):
        if not listing.is_file():
            continue
        base = listing.parent
        try:
            lines = listing.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                continue
            digest, listed = parts[0].lower(), parts[1].lstrip("*").strip()
            try:
                if (base / listed).resolve() == file.resolve():
                    return digest
            except OSError:
                continue
    return None


def _expected_md5(info: DatasetInfo, file: Path, root: Path | None) -> tuple[str | None, str]:
    if info.md5:
        return info.md5.lower(), "the official MD5"
    if root is not None:
        listed = _md5sums_entry(root, file)
        if listed:
            return listed, f"the MD5 listed in {root / MD5SUMS_NAME}"
    return None, ""


def _where_to_put(info: DatasetInfo, data_dir, cache_dir) -> str:
    roots = _search_roots(data_dir)
    if roots:
        return f"save it as {roots[0] / info.file_name}"
    return (f"save it as {_cache_path(info, cache_dir)}, or put it at <folder>/{info.file_name} and set "
            f"{config.DATA_DIR_ENV}=<folder> (several folders joined by {os.pathsep!r}; or pass data_dir=<folder>)")


def resolve_path(name: str, data_dir: config.PathList | None = None, cache_dir: str | os.PathLike | None = None,
                 download: bool = True, progress: bool = True, verify: bool = True) -> Path:
    """The local path of a file-backed dataset, downloading and checking it when needed.

    Args:
        name: a short name (see ``list_datasets``).
        data_dir: folders searched first (one folder, several joined by ``os.pathsep``, or a
            list), before those of ``FSL_XAI_DATA_DIR``.
        cache_dir: where downloads go (default ``FSL_XAI_CACHE_DIR`` or ``~/.cache/fsl-xai``).
        download: fetch the official file when it is not present locally.
        progress: show a progress bar while downloading.
        verify: check the MD5 (official, or from the data folder's MD5SUMS) before returning.

    Raises:
        DatasetNotFoundError: unknown name, a built-in set, or the file is absent and cannot be
            downloaded (the message says which file to put where).
        ChecksumError: the local file's MD5 differs from the expected one.
    """
    key = _normalise(name)
    if key not in _REGISTRY:
        raise _unknown(name)
    info = _REGISTRY[key]
    if info.kind == "builtin":
        raise DatasetNotFoundError(f"{info.name!r} is generated in memory and has no file; "
                                   f"use load_dataset({info.name!r})")
    found = _find_local(info, data_dir, cache_dir)
    if found is not None:
        path, root = found
        expected, source = _expected_md5(info, path, root) if verify else (None, "")
        if expected is None or file_md5(path) == expected:
            return path
        if root is None and download and info.url:
            # a corrupt or outdated cached copy: fetch a fresh one over it
            return download_file(info.url, path, info.md5, progress=progress,
                                 manual_hint=_where_to_put(info, data_dir, cache_dir))
        fix = ("delete it so that it is downloaded again" if root is None and info.url
               else "replace it with an intact copy")
        raise ChecksumError(
            f"{path} has MD5 {file_md5(path)} but {source} is {expected}: the file is corrupt, truncated or a "
            f"different version; {fix}"
        )

    searched = _searched(info, data_dir, cache_dir)
    if not info.url:
        setting = (f"set {config.DATA_DIR_ENV} (or pass data_dir=) to the folder that holds {info.file_name}"
                   if not _search_roots(data_dir) else
                   _where_to_put(info, data_dir, cache_dir) + f", or add the folder that holds it to "
                   f"{config.DATA_DIR_ENV} (folders joined by {os.pathsep!r})")
        raise DatasetNotFoundError(
            f"dataset {info.name!r} needs the file {Path(info.file_name).name}, which is not present (looked in: "
            f"{searched}) and has no download URL. Get it from the project's shared data folder "
            f"and {setting}"
        )
    if not download:
        raise DatasetNotFoundError(
            f"dataset {info.name!r} is not present (looked in: {searched}) and download=False; "
            f"call again with download=True to fetch it from {info.url}, or download it by hand and "
            f"{_where_to_put(info, data_dir, cache_dir)}"
        )
    return download_file(info.url, _cache_path(info, cache_dir), info.md5, progress=progress,
                         manual_hint=_where_to_put(info, data_dir, cache_dir))


def class_names_for_file(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The registry's class names for an npz file that carries none of its own, when the file is a
    registered dataset (same file name and the same number of images in every split it holds,
    e.g. an official MedMNIST file saved anywhere); None otherwise, and for files with their own
    ``class_names`` (``read_npz`` uses those)."""
    path = Path(path)
    if not path.is_file() or _file_class_names(path):
        return None
    candidates = [i for i in _REGISTRY.values() if i.file_name and Path(i.file_name).name == path.name
                  and i.n_samples]
    if not candidates:
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            counts = {s: len(npz[f"{s}_labels"]) for s in SPLITS if f"{s}_labels" in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):  # read_npz reports unreadable files
        return None
    for info in candidates:
        if counts and all(info.n_samples.get(s) == n for s, n in counts.items()):
            return info.classes
    return None


def _file_class_names(path: Path) -> bool:
    """Whether the npz file stores its own class names (an npz is a zip of .npy members)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "class_names.npy" in archive.namelist()
    except (zipfile.BadZipFile, OSError):  # read_npz reports unreadable files with a clear message
        return False


def load_dataset(name: str, split: str = "test", data_dir: config.PathList | None = None,
                 cache_dir: str | os.PathLike | None = None, download: bool = True, progress: bool = True,
                 verify: bool = True) -> ImageSet:
    """Load one split of a dataset by short name (see ``list_datasets``).

    Args:
        name: e.g. ``"pbc-blood"``, ``"ham10000"``, ``"breastmnist"``, ``"pathmnist"``, ``"synthetic"``.
            A path to a MedMNIST-format ``.npz`` file is read directly.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the three joined; metadata column
            ``split`` tells them apart).
        data_dir: folders searched first (one folder, several joined by ``os.pathsep``, or a
            list), before those of ``FSL_XAI_DATA_DIR``.
        cache_dir: where downloads are kept.
        download: fetch official files that are not present.
        progress: show a progress bar while downloading.
        verify: check MD5s before reading.

    Returns:
        An ImageSet named after the dataset; class names come from the file when it has them,
        else from the registry.
    """
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r}; choose one of {[*SPLITS, 'all']}")
    text = str(name)
    if text.endswith(".npz") and Path(text).expanduser().is_file():
        path = Path(text).expanduser()
        return _read_splits(path, split, path.stem, class_names_for_file(path))
    key = _normalise(name)
    if key not in _REGISTRY:
        raise _unknown(name)
    info = _REGISTRY[key]
    if not info.supported:
        raise DataError(f"dataset {info.name!r} cannot be loaded: {info.unsupported_reason}")
    if info.kind == "builtin":
        return _BUILTIN[key](split)
    path = resolve_path(key, data_dir, cache_dir, download=download, progress=progress, verify=verify)
    class_names = None if _file_class_names(path) else info.classes
    return _read_splits(path, split, info.name, class_names)


def _read_splits(path: Path, split: str, name: str, class_names: tuple[str, ...] | None) -> ImageSet:
    if split != "all":
        return read_npz(path, split=split, name=name, class_names=class_names)
    parts = [read_npz(path, split=s, name=name, class_names=class_names) for s in SPLITS]
    first = parts[0]
    for part in parts[1:]:
        if part.class_names != first.class_names or part.images.shape[1:] != first.images.shape[1:]:
            raise DataError(f"{path}: the splits differ in classes or image shape and cannot be joined; "
                            "load them one at a time")
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                    first.class_names, pd.concat([p.metadata for p in parts], ignore_index=True), name)
