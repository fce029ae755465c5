"""The dataset registry: short names, resolution order, checksums, downloads and clear errors."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fsl_xai import ChecksumError, DataError, DatasetNotFoundError
from fsl_xai.data import (
    DatasetInfo,
    ImageSet,
    datasets_table,
    get_info,
    list_datasets,
    load_dataset,
    make_synthetic,
    register_dataset,
    registry,
    resolve_path,
    unregister_dataset,
)

DATA_ENV = "FSL_XAI_DATA_DIR"

# name -> (relative file, test images, channels, size, class names)
SHARED = {
    "pbc-blood": ("pbc_blood/pbc_bloodlike_28.npz", 3417, 3, 28,
                  ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")),
    "pbc-blood-64": ("pbc_blood/pbc_bloodlike_64_200perclass.npz", 320, 3, 64,
                     ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                      "platelet")),
    "mednist": ("mednist/mednist_64_500perclass.npz", 600, 1, 64,
                ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")),
    "ham10000": ("ham10000_subset/ham_subset_28.npz", 1198, 3, 28, ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")),
    "ham10000-64": ("ham10000_subset/ham_subset_64.npz", 1198, 3, 64,
                    ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")),
    "breastmnist": ("medmnist_official/breastmnist.npz", 156, 1, 28, ("malignant", "normal, benign")),
    "retinamnist": ("medmnist_official/retinamnist.npz", 400, 3, 28, ("0", "1", "2", "3", "4")),
}
MEDMNIST_2D = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
               "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")


@pytest.fixture
def no_env_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FSL_XAI_DATA_DIR: only explicit folders and the cache count."""
    monkeypatch.delenv(DATA_ENV, raising=False)


@pytest.fixture
def tiny(make_npz):
    """Register a small file-backed set 'tiny-test' (tiny/tiny_set.npz, no URL); removed afterwards."""
    info = DatasetInfo("tiny-test", "a generated test set", ("left", "right"), 1, 8, "CC0", "none",
                       "tiny/tiny_set.npz")
    register_dataset(info)
    yield info
    unregister_dataset("tiny-test")


@pytest.fixture
def swap_entry():
    """Replace a registry entry for one test: swap(name, **changes) -> new info; restored afterwards."""
    saved = {}

    def swap(name: str, **changes) -> DatasetInfo:
        original = get_info(name)
        saved.setdefault(name, original)
        info = replace(original, **changes)
        register_dataset(info, overwrite=True)
        return info

    yield swap
    for original in saved.values():
        register_dataset(original, overwrite=True)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ the shared files
@pytest.mark.parametrize("name", sorted(SHARED))
def test_each_shared_short_name_loads(name: str, data_dir: Path, cache_dir: Path) -> None:
    relative, n_test, channels, size, classes = SHARED[name]
    assert (data_dir / relative).is_file()
    images = load_dataset(name, data_dir=data_dir, download=False, progress=False)
    assert isinstance(images, ImageSet) and images.name == name
    assert len(images) == n_test
    assert images.images.shape[1:] == (channels, size, size)
    assert images.class_names == classes
    assert 0.0 <= images.images.min() and images.images.max() <= 1.0
    assert images.metadata["sample_id"].is_unique
    assert set(np.unique(images.labels)) == set(range(len(classes)))
    assert resolve_path(name, data_dir=data_dir, download=False) == data_dir / relative
    # nothing was downloaded or copied into the cache
    assert not any(cache_dir.rglob("*.npz"))


def test_shared_names_resolve_through_the_environment_setting(data_dir: Path, cache_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    val = load_dataset("breastmnist", split="val", download=False, progress=False)
    assert len(val) == 78 and (val.metadata["split"] == "val").all()


def test_ham10000_has_subgroup_columns(data_dir: Path) -> None:
    ham = load_dataset("ham10000", split="all", data_dir=data_dir, download=False)
    assert len(ham) == 5984
    meta = ham.metadata
    for column in ("sex", "age", "site", "localization", "dx_type", "lesion_id", "image_id", "split"):
        assert column in meta.columns, column
    assert meta["split"].value_counts().to_dict() == {"train": 4189, "val": 597, "test": 1198}
    assert meta["site"].value_counts().to_dict() == {"vidir_molemax": 3159, "vidir_modern": 1346,
                                                     "rosendahl": 1259, "vienna_dias": 220}
    assert meta["sex"].value_counts().to_dict() == {"male": 3211, "female": 2737, "unknown": 36}
    ages = meta["age"]
    assert ages.dtype == np.float64 and ages.dropna().between(0, 100).all() and ages.notna().mean() > 0.95
    assert meta["sample_id"].str.match(r"^ISIC_\d{7}$").all() and meta["sample_id"].is_unique


def test_list_datasets_marks_presence(data_dir: Path, tmp_path: Path, cache_dir: Path, no_env_data) -> None:
    with_data = {info.name: info for info in list_datasets(data_dir=data_dir)}
    for name, (relative, *_rest) in SHARED.items():
        assert with_data[name].present and with_data[name].path == data_dir / relative, name
    empty = tmp_path / "empty"
    empty.mkdir()
    without = {info.name: info for info in list_datasets(data_dir=empty)}
    for name in ("pbc-blood", "mednist", "ham10000"):
        assert not without[name].present and without[name].path is None and not without[name].downloadable
    for name in MEDMNIST_2D:
        info = without[name]
        assert info.kind == "medmnist" and info.downloadable and not info.present
        assert info.url is not None and info.url.startswith("https://zenodo.org/")
        assert info.md5 is not None and len(info.md5) == 32
        assert info.channels in (1, 3) and info.image_size == 28 and info.licence
        assert info.n_classes == len(info.classes) >= 2
    assert without["chestmnist"].supported is False
    assert all(without[n].supported for n in MEDMNIST_2D if n != "chestmnist")
    assert without["synthetic"].present and without["synthetic-biased"].present
    # the shared MedMNIST files are byte-identical to the official downloads
    for name in ("breastmnist", "retinamnist"):
        path = with_data[name].path
        assert path is not None
        assert hashlib.md5(path.read_bytes()).hexdigest() == with_data[name].md5
    table = datasets_table(data_dir=empty)
    status = dict(zip(table["name"], table["status"], strict=True))
    assert status["pbc-blood"] == "missing" and status["pathmnist"] == "downloadable"
    assert status["chestmnist"] == "unsupported" and status["synthetic"] == "built in"
    assert {"classes", "image_size", "channels", "licence", "path"} <= set(table.columns)


def test_official_facts() -> None:
    derma = get_info("dermamnist")
    assert derma.licence == "CC BY-NC 4.0" and derma.n_classes == 7 and derma.channels == 3
    assert derma.md5 == "0744692d530f8e62ec473284d019b0c7"
    assert derma.url == "https://zenodo.org/records/10519652/files/dermamnist.npz?download=1"
    organ = get_info("organamnist")
    assert organ.n_classes == 11 and organ.channels == 1 and organ.classes[-1] == "spleen"
    assert get_info("breastmnist").md5 == "750601b1f35ba3300ea97c75c52ff8f6"
    assert get_info("PBC_Blood").name == "pbc-blood"  # names are case- and separator-insensitive


# ------------------------------------------------------------------ resolution order
def test_explicit_folder_beats_environment_beats_cache(tiny, make_npz, tmp_path: Path, cache_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    write(explicit / "tiny_set.npz", make_npz(seed=1))  # found by bare file name
    write(env / "tiny" / "tiny_set.npz", make_npz(seed=2))  # found by relative path
    write(cache_dir / "datasets" / "tiny" / "tiny_set.npz", make_npz(seed=3))
    monkeypatch.setenv(DATA_ENV, str(env))

    def pixels(seed: int) -> np.ndarray:
        with np.load(io.BytesIO(make_npz(seed=seed))) as z:
            return z["test_images"]

    first = load_dataset("tiny-test", data_dir=explicit, download=False)
    assert np.array_equal((first.images[:, 0] * 255).round(), pixels(1))
    assert resolve_path("tiny-test", data_dir=explicit) == explicit / "tiny_set.npz"
    assert resolve_path("tiny-test") == env / "tiny" / "tiny_set.npz"
    monkeypatch.delenv(DATA_ENV)
    assert resolve_path("tiny-test") == cache_dir / "datasets" / "tiny" / "tiny_set.npz"
    assert get_info("tiny-test").present


def test_class_names_come_from_the_file_else_the_registry(tiny, make_npz, tmp_path: Path, no_env_data) -> None:
    write(tmp_path / "a" / "tiny_set.npz", make_npz(class_names=("up", "down")))
    write(tmp_path / "b" / "tiny_set.npz", make_npz())
    assert load_dataset("tiny-test", data_dir=tmp_path / "a").class_names == ("up", "down")
    assert load_dataset("tiny-test", data_dir=tmp_path / "b").class_names == ("left", "right")


def test_split_all_and_bad_split(tiny, make_npz, tmp_path: Path, no_env_data) -> None:
    write(tmp_path / "tiny_set.npz", make_npz(n=5))
    both = load_dataset("tiny-test", split="all", data_dir=tmp_path)
    assert len(both) == 15 and list(both.metadata["split"].unique()) == ["train", "val", "test"]
    with pytest.raises(DataError, match="unknown split 'testing'"):
        load_dataset("tiny-test", split="testing", data_dir=tmp_path)


def test_md5sums_in_the_data_folder_are_checked(tiny, make_npz, tmp_path: Path, no_env_data) -> None:
    body = make_npz(seed=9)
    write(tmp_path / "tiny" / "tiny_set.npz", body)
    (tmp_path / "MD5SUMS").write_text(f"{hashlib.md5(body).hexdigest()}  ./tiny/tiny_set.npz\n")
    assert len(load_dataset("tiny-test", data_dir=tmp_path)) == 6
    (tmp_path / "MD5SUMS").write_text(f"{'0' * 32}  ./tiny/tiny_set.npz\n")
    with pytest.raises(ChecksumError) as info:
        load_dataset("tiny-test", data_dir=tmp_path)
    assert "tiny_set.npz" in str(info.value) and "0" * 32 in str(info.value) and "MD5SUMS" in str(info.value)
    assert len(load_dataset("tiny-test", data_dir=tmp_path, verify=False)) == 6


def test_corrupt_npz_in_the_data_folder_is_a_clear_error(tiny, tmp_path: Path, no_env_data) -> None:
    write(tmp_path / "tiny_set.npz", b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match="npz"):
        load_dataset("tiny-test", data_dir=tmp_path)


# ------------------------------------------------------------------ downloads
def test_official_set_downloads_into_the_cache_once(swap_entry, http_server, make_npz, tmp_path: Path,
                                                    cache_dir: Path, leftovers, no_env_data) -> None:
    body = make_npz(n=9, channels=3, n_classes=9, seed=4)
    url = http_server.serve("records/pathmnist.npz", body)
    swap_entry("pathmnist", url=url, md5=hashlib.md5(body).hexdigest())
    images = load_dataset("pathmnist", data_dir=tmp_path, progress=False)
    cached = cache_dir / "datasets" / "medmnist_official" / "pathmnist.npz"
    assert cached.read_bytes() == body and leftovers(cached.parent) == []
    assert images.class_names == get_info("pathmnist").classes and images.n_channels == 3
    assert len(http_server.requests) == 1
    load_dataset("pathmnist", split="train", progress=False)
    assert len(http_server.requests) == 1  # served from the cache
    # a corrupt cached copy is fetched again
    cached.write_bytes(body[:50])
    assert len(load_dataset("pathmnist", progress=False)) == 9
    assert len(http_server.requests) == 2 and cached.read_bytes() == body


def test_download_with_wrong_checksum_leaves_nothing(swap_entry, http_server, make_npz, cache_dir: Path,
                                                     leftovers, no_env_data) -> None:
    url = http_server.serve("octmnist.npz", make_npz(seed=5))
    swap_entry("octmnist", url=url, md5="f" * 32)
    with pytest.raises(ChecksumError, match="octmnist.npz"):
        load_dataset("octmnist", progress=False)
    folder = cache_dir / "datasets" / "medmnist_official"
    assert not (folder / "octmnist.npz").exists() and leftovers(folder) == []


def test_offline_download_says_which_file_from_where_and_where_to_put_it(
        swap_entry, closed_port_url, cache_dir: Path, no_env_data) -> None:
    swap_entry("pneumoniamnist", url=closed_port_url)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("pneumoniamnist", progress=False)
    message = str(info.value)
    assert "pneumoniamnist.npz" in message and closed_port_url in message
    assert str(cache_dir / "datasets" / "medmnist_official" / "pneumoniamnist.npz") in message


def test_download_false_names_the_url(cache_dir: Path, tmp_path: Path, no_env_data) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("bloodmnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    url = get_info("bloodmnist").url
    assert "download=True" in message and url is not None and url in message
    assert str(tmp_path / "medmnist_official" / "bloodmnist.npz") in message


# ------------------------------------------------------------------ bad names
def test_unknown_name_lists_known_names_and_suggests_the_closest() -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("pbc-blod")
    message = str(info.value)
    assert "'pbc-blood'" in message and "Did you mean" in message
    for name in ("mednist", "ham10000", "pathmnist", "synthetic"):
        assert name in message
    with pytest.raises(DatasetNotFoundError, match="Known datasets"):
        get_info("no-such-set-at-all")


def test_absent_shared_set_says_which_file_to_put_where(tmp_path: Path, cache_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("ham10000")
    message = str(info.value)
    assert "ham_subset_28.npz" in message and DATA_ENV in message and "no download URL" in message
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mednist")
    assert str(tmp_path / "mednist" / "mednist_64_500perclass.npz") in str(info.value)


def test_multilabel_chestmnist_is_refused_before_any_download(monkeypatch: pytest.MonkeyPatch,
                                                               cache_dir: Path) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(registry, "download_file", fail)
    with pytest.raises(DataError, match="multi-label") as info:
        load_dataset("chestmnist")
    assert "pneumoniamnist" in str(info.value)


def test_register_refuses_to_overwrite_silently(tiny) -> None:
    with pytest.raises(DataError, match="already registered"):
        register_dataset(tiny)


# ------------------------------------------------------------------ built-in sets
def test_synthetic_names_need_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("FSL_XAI_CACHE_DIR", str(tmp_path / "cache"))
    plain = load_dataset("synthetic")
    assert plain.fingerprint() == make_synthetic(split="test").fingerprint()
    assert (plain.metadata["split"] == "test").all() and not plain.metadata["marker"].any()
    biased = load_dataset("synthetic-biased", split="train")
    assert biased.metadata["marker"].any()
    marked = biased.metadata[biased.metadata["marker"]]
    assert set(marked["site"]) == {"A"} and set(biased.labels[marked.index]) == {0}
    with pytest.raises(DatasetNotFoundError, match="generated in memory"):
        resolve_path("synthetic")
    assert not (tmp_path / "cache" / "datasets").exists()
