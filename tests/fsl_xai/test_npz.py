"""read_npz on the real shared files and on broken generated ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fsl_xai import DataError, DatasetNotFoundError, read_npz

HAM = "ham10000_subset/ham_subset_28.npz"
PBC = "pbc_blood/pbc_bloodlike_28.npz"
HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


# ------------------------------------------------------------------ real files
@pytest.mark.parametrize("split, n", [("train", 4189), ("val", 597), ("test", 1198)])
def test_ham10000_metadata_columns(shared_file: Callable[[str], Path], split: str, n: int) -> None:
    ham = read_npz(shared_file(HAM), split=split)
    assert len(ham) == n
    assert ham.class_names == HAM_CLASSES
    assert ham.images.shape[1:] == (3, 28, 28)
    meta = ham.metadata
    for column in ("sample_id", "sex", "age", "localization", "site", "dx_type", "lesion_id", "image_id", "split"):
        assert column in meta.columns, column
    # the image id is the sample id: stable across loads and joins with the public metadata CSV
    assert meta["sample_id"].equals(meta["image_id"])
    assert meta["sample_id"].str.match(r"^ISIC_\d{7}$").all()
    assert meta["sample_id"].is_unique
    assert set(meta["sex"]) <= {"male", "female", "unknown"} and {"male", "female"} <= set(meta["sex"])
    assert set(meta["site"]) <= {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}
    assert meta["site"].nunique() >= 3
    assert meta["age"].dtype == np.float64
    assert (meta["split"] == split).all()
    ages = meta["age"].dropna()
    assert ages.between(0, 100).all() and len(ages) > 0.95 * n


def test_ham10000_missing_age_is_nan(shared_file: Callable[[str], Path]) -> None:
    path = shared_file(HAM)
    with np.load(path, allow_pickle=False) as raw:
        raw_age = {s: raw[f"{s}_age"] for s in ("train", "val", "test")}
    missing = {s: int((a == -1).sum()) for s, a in raw_age.items()}
    assert sum(missing.values()) > 0, "the HAM10000 subset is known to have some unknown ages"
    for split, n_missing in missing.items():
        age = read_npz(path, split=split).metadata["age"]
        assert int(age.isna().sum()) == n_missing
        assert not (age == -1).any()
        np.testing.assert_allclose(age.dropna().to_numpy(), raw_age[split][raw_age[split] != -1])


def test_ham10000_pixels_and_labels_match_the_file(shared_file: Callable[[str], Path]) -> None:
    path = shared_file(HAM)
    ham = read_npz(path, split="val")
    with np.load(path, allow_pickle=False) as raw:
        images, labels = raw["val_images"], raw["val_labels"]
    np.testing.assert_array_equal(ham.labels, labels[:, 0])
    np.testing.assert_allclose(ham.images[10], images[10].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    counts = ham.class_counts()
    assert counts["nv"] == max(counts.values())  # nevi dominate HAM10000


def test_pbc_filenames_are_sample_ids(shared_file: Callable[[str], Path]) -> None:
    pbc = read_npz(shared_file(PBC), split="test")
    assert len(pbc) == 3417
    assert pbc.class_names == PBC_CLASSES
    ids = pbc.metadata["sample_id"]
    assert ids.equals(pbc.metadata["filenames"]) and ids.is_unique
    # the folder in each file name is the class of the image
    folders = ids.str.split("/").str[0]
    assert (folders.to_numpy() == np.asarray(pbc.class_names)[pbc.labels]).all()


def test_files_without_class_names_or_ids(shared_file: Callable[[str], Path]) -> None:
    breast = read_npz(shared_file("medmnist_official/breastmnist.npz"), split="train")
    assert len(breast) == 546 and breast.class_names == ("0", "1")
    assert breast.n_channels == 1 and breast.image_size == (28, 28)
    assert breast.sample_ids[0] == "train-00000" and breast.metadata["sample_id"].is_unique
    named = read_npz(shared_file("medmnist_official/breastmnist.npz"), class_names=("malignant", "benign"))
    assert named.class_names == ("malignant", "benign") and len(named) == 156
    assert named.name == "breastmnist"
    retina = read_npz(shared_file("medmnist_official/retinamnist.npz"), split="val", name="retina")
    assert retina.name == "retina" and retina.n_channels == 3 and retina.n_classes == 5


# ------------------------------------------------------------------ bad files
def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, allow_pickle=True, **arrays)
    return path


def _good_arrays(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"test_images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
            "test_labels": (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)}


def test_good_generated_file(tmp_path: Path) -> None:
    arrays = _good_arrays()
    arrays["test_site"] = np.array(["A", "B", "A", "B", "A", "B"])
    arrays["test_age"] = np.array([30, -1, 50, 60, -1, 80], dtype=np.int16)
    arrays["test_sample_id"] = np.array([f"s{i}" for i in range(6)])
    arrays["test_scores"] = np.zeros((6, 2))  # not one value per image: not a metadata column
    arrays["train_images"] = np.zeros((2, 8, 8), np.uint8)
    arrays["train_labels"] = np.array([[0], [4]], np.uint8)  # class 4 only appears in train
    s = read_npz(_write(tmp_path / "good.npz", **arrays))
    assert list(s.metadata.columns) == ["sample_id", "site", "age", "split"]
    assert s.sample_ids.tolist() == [f"s{i}" for i in range(6)]
    assert s.metadata["age"].isna().tolist() == [False, True, False, False, True, False]
    # every split of one file shares the class list
    assert s.class_names == ("0", "1", "2", "3", "4")
    assert read_npz(tmp_path / "good.npz", split="train").class_names == s.class_names


def test_repeated_ids_in_file_are_kept_but_not_used(tmp_path: Path) -> None:
    arrays = _good_arrays() | {"test_sample_id": np.array(["x", "x", "y", "y", "z", "z"])}
    s = read_npz(_write(tmp_path / "dup.npz", **arrays))
    assert s.sample_ids.tolist() == [f"test-{i:05d}" for i in range(6)]
    assert s.metadata["sample_id_in_file"].tolist() == ["x", "x", "y", "y", "z", "z"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"npz file not found: .*nothing\.npz"):
        read_npz(tmp_path / "nothing.npz")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'dev'; choose one of \['train', 'val', 'test'\]"):
        read_npz(_write(tmp_path / "a.npz", **_good_arrays()), split="dev")


def test_truncated_file(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.npz", **_good_arrays(50)).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="may be truncated"):
        read_npz(cut)


def test_corrupt_member(tmp_path: Path) -> None:
    data = bytearray(_write(tmp_path / "whole.npz", **_good_arrays(200)).read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="may be truncated"):
        read_npz(bad)


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "text.npz"
    bad.write_text("this is not an npz file\n" * 20)
    with pytest.raises(DataError, match="is not an npz"):
        read_npz(bad)


def test_pickled_object_array_refused(tmp_path: Path) -> None:
    arrays = _good_arrays()
    arrays["test_sex"] = np.array(["male", None, "female", "male", "male", "female"], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, allow_pickle=True, **arrays)  # object arrays are stored as pickles
    with pytest.raises(DataError, match="pickled objects"):
        read_npz(path)


@pytest.mark.parametrize("key, value, match", [
    ("test_images", np.zeros((6, 64), np.uint8), r"must be N x H x W or N x H x W x C, got shape \(6, 64\)"),
    ("test_images", np.zeros((6, 8, 8), np.float32), "must be uint8"),
    ("test_labels", np.zeros((5, 1), np.uint8), "6 images but 5 labels"),
    ("test_labels", np.zeros((6, 3), np.uint8), "multi-label sets are not supported"),
    ("test_labels", np.full((6, 1), 0.5), "must be integers"),
])
def test_bad_arrays(tmp_path: Path, key: str, value: np.ndarray, match: str) -> None:
    arrays = _good_arrays() | {key: value}
    with pytest.raises(DataError, match=match):
        read_npz(_write(tmp_path / "bad.npz", **arrays))


def test_missing_array_names_what_is_there(tmp_path: Path) -> None:
    arrays = _good_arrays()
    del arrays["test_labels"]
    with pytest.raises(DataError, match=r"no array 'test_labels'; it holds \['test_images'\]"):
        read_npz(_write(tmp_path / "nolabels.npz", **arrays))


def test_labels_outside_given_class_names(tmp_path: Path) -> None:
    arrays = _good_arrays() | {"test_labels": np.array([0, 1, 2, 0, 1, 2], np.uint8)}
    with pytest.raises(DataError, match="outside the class list"):
        read_npz(_write(tmp_path / "three.npz", **arrays), class_names=("a", "b"))


def test_nothing_half_built_on_error(tmp_path: Path) -> None:
    """A failed read raises before returning anything and leaves the file as it was."""
    path = _write(tmp_path / "bad.npz", **(_good_arrays() | {"test_labels": np.zeros((6, 3), np.uint8)}))
    before = path.read_bytes()
    with pytest.raises(DataError):
        read_npz(path)
    assert path.read_bytes() == before
