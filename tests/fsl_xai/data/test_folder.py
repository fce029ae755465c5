"""read_folder: class sub-folders, CSV manifests (incl. the public HAM10000 layout) and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fsl_xai import DataError, DatasetNotFoundError
from fsl_xai.data import read_folder

HAM_CSV = "ham10000_subset/HAM10000_metadata_with_site.csv"
HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def grey(value: int, size=(12, 10)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def rgb(r: int, g: int, b: int, size=(12, 10)) -> np.ndarray:
    return np.stack([np.full(size, c, dtype=np.uint8) for c in (r, g, b)], axis=-1)


# ------------------------------------------------------------------ class sub-folders
def test_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("benign", "malignant"):
        for i in range(3):
            pixels = rng.integers(0, 256, (12, 10), dtype=np.uint8)
            written[f"{cls}/img{i}.png"] = pixels
            save(tmp_path / cls / f"img{i}.png", pixels)
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    (tmp_path / "benign" / ".DS_Store").write_bytes(b"\0")
    images = read_folder(tmp_path, progress=False)
    assert images.class_names == ("benign", "malignant")
    assert images.images.shape == (6, 1, 12, 10)
    assert list(images.metadata.columns) == ["sample_id", "path"]
    for i, sample_id in enumerate(images.sample_ids):
        assert images.class_names[images.labels[i]] == sample_id.split("/")[0]
        assert np.array_equal((images.images[i, 0] * 255).round().astype(np.uint8), written[sample_id])
    assert images.skipped == [("benign/notes.txt", images.skipped[0][1])]
    assert "not an image file" in images.skipped[0][1]


def test_unreadable_image_is_skipped_and_reported(tmp_path: Path) -> None:
    save(tmp_path / "a" / "good.png", grey(10))
    save(tmp_path / "b" / "good.png", grey(200))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    images = read_folder(tmp_path, progress=False)
    assert len(images) == 2 and images.class_names == ("a", "b")
    reasons = dict(images.skipped)
    assert set(reasons) == {"a/broken.png", "b/empty.jpg"}
    assert all(r.startswith("unreadable image") for r in reasons.values())
    with pytest.raises(DataError, match="broken.png"):
        read_folder(tmp_path, on_error="raise", progress=False)


def test_mixed_sizes_need_size(tmp_path: Path) -> None:
    save(tmp_path / "a" / "small.png", grey(10, (8, 8)))
    save(tmp_path / "a" / "small2.png", grey(10, (8, 8)))
    save(tmp_path / "b" / "large.png", grey(90, (20, 30)))
    with pytest.raises(DataError) as info:
        read_folder(tmp_path, progress=False)
    message = str(info.value)
    assert "8x8 (2 images" in message and "20x30 (1 images" in message and "size=" in message
    resized = read_folder(tmp_path, size=16, progress=False)
    assert resized.images.shape == (3, 1, 16, 16)
    assert np.allclose(resized.images[resized.labels == 1], 90 / 255, atol=1 / 255)
    assert read_folder(tmp_path, size=(6, 9), progress=False).image_size == (6, 9)


def test_grey_and_rgb_mixed_follow_the_majority_or_the_request(tmp_path: Path) -> None:
    save(tmp_path / "a" / "g1.png", grey(100))
    save(tmp_path / "a" / "g2.png", grey(50))
    save(tmp_path / "b" / "c1.png", rgb(255, 0, 0))
    majority = read_folder(tmp_path, progress=False)
    assert majority.n_channels == 1
    red = majority.images[majority.indices_of(["b/c1.png"])[0], 0]
    assert np.allclose(red, 0.299, atol=1e-3)  # luminance of pure red
    as_rgb = read_folder(tmp_path, channels=3, progress=False)
    assert as_rgb.n_channels == 3
    g1 = as_rgb.images[as_rgb.indices_of(["a/g1.png"])[0]]
    assert np.allclose(g1, 100 / 255) and np.allclose(g1[0], g1[2])
    c1 = as_rgb.images[as_rgb.indices_of(["b/c1.png"])[0]]
    assert np.allclose(c1[0], 1.0) and np.allclose(c1[1:], 0.0)
    with pytest.raises(DataError, match="channels must be"):
        read_folder(tmp_path, channels=2, progress=False)


def test_sixteen_bit_grey_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    (tmp_path / "x").mkdir()
    Image.fromarray(values).save(tmp_path / "x" / "deep.png")
    save(tmp_path / "y" / "other.png", grey(0, (2, 2)))
    images = read_folder(tmp_path, progress=False)
    assert np.allclose(images.images[0, 0], values / 65535.0, atol=1e-6)


def test_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="not found"):
        read_folder(tmp_path / "nowhere", progress=False)
    with pytest.raises(DataError, match="no class sub-folders"):
        read_folder(tmp_path, progress=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images") as info:
        read_folder(tmp_path, progress=False)
    assert "bad.png" in str(info.value)


def test_class_names_order_and_unknown_folder(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", grey(1))
    save(tmp_path / "b" / "1.png", grey(2))
    images = read_folder(tmp_path, class_names=["b", "a", "c"], progress=False)
    assert images.class_names == ("b", "a", "c") and images.class_counts() == {"b": 1, "a": 1, "c": 0}
    with pytest.raises(DataError, match=r"\['b \(1 images\)'\].*not in class_names"):
        read_folder(tmp_path, class_names=["a"], progress=False)


# ------------------------------------------------------------------ CSV manifests
def test_manifest_with_metadata_and_missing_files(tmp_path: Path) -> None:
    save(tmp_path / "scans" / "p1.png", grey(10))
    save(tmp_path / "scans" / "p2.png", grey(20))
    save(tmp_path / "scans" / "p3.png", grey(30))
    table = pd.DataFrame({
        "path": ["scans/p1.png", "scans/p2.png", "scans/p3.png", "scans/gone.png"],
        "label": ["normal", "tumour", "normal", "tumour"],
        "sex": ["F", "M", "F", "M"], "age": [34, 61, None, 50], "scanner": ["s1", "s2", "s1", "s2"],
    })
    table.to_csv(tmp_path / "manifest.csv", index=False)
    images = read_folder(tmp_path, "manifest.csv", progress=False)
    assert len(images) == 3 and images.class_names == ("normal", "tumour")
    assert list(images.metadata.columns) == ["sample_id", "path", "sex", "age", "scanner"]
    assert images.metadata["sex"].tolist() == ["F", "M", "F"]
    assert images.metadata["age"].isna().tolist() == [False, False, True]
    assert images.where(scanner="s2").sample_ids.tolist() == ["scans/p2.png"]
    assert images.skipped == [("scans/gone.png", "file not found (manifest row 5)")]
    with pytest.raises(DataError, match="gone.png"):
        read_folder(tmp_path, tmp_path / "manifest.csv", on_error="raise", progress=False)


def test_manifest_label_errors(tmp_path: Path) -> None:
    save(tmp_path / "p1.png", grey(10))
    save(tmp_path / "p2.png", grey(20))
    table = pd.DataFrame({"file": ["p1.png", "p2.png"], "diagnosis": ["cyst", "mass"], "code": [1, 0]})
    with pytest.raises(DataError, match="no 'path' column"):
        read_folder(tmp_path, table, progress=False)
    with pytest.raises(DataError, match="no 'label' column"):
        read_folder(tmp_path, table, path_column="file", progress=False)
    with pytest.raises(DataError, match=r"labels \['mass \(1 images\)'\] in column 'diagnosis'"):
        read_folder(tmp_path, table, path_column="file", label_column="diagnosis", class_names=["cyst"],
                    progress=False)
    # integer labels are positions in class_names
    coded = read_folder(tmp_path, table, path_column="file", label_column="code", class_names=["mass", "cyst"],
                        progress=False)
    assert coded.labels.tolist() == [1, 0] and "diagnosis" in coded.metadata.columns
    with pytest.raises(DataError, match="more than once"):
        read_folder(tmp_path, pd.concat([table, table]), path_column="file", label_column="diagnosis",
                    progress=False)
    with pytest.raises(DatasetNotFoundError, match="manifest CSV not found"):
        read_folder(tmp_path, tmp_path / "missing.csv", progress=False)


def test_manifest_where_every_file_is_missing(tmp_path: Path) -> None:
    table = pd.DataFrame({"path": ["x.png", "y.png"], "label": ["a", "b"]})
    with pytest.raises(DataError, match="no readable images.*2 skipped"):
        read_folder(tmp_path, table, progress=False)


HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"


def test_public_ham10000_layout(tmp_path: Path) -> None:
    """The HAM10000 CSV layout: no path column (image_id + .jpg), label in dx, images in part folders."""
    rows = ["HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp",
            "HAM_0002730,ISIC_0026769,bkl,histo,80.0,male,scalp",
            "HAM_0001466,ISIC_0031633,nv,histo,75.0,male,ear",
            "HAM_0002761,ISIC_0029176,mel,histo,,female,face"]
    (tmp_path / "HAM10000_metadata.csv").write_text(HAM_HEADER + "\n".join(rows) + "\n")
    for i, row in enumerate(rows):
        part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        save(tmp_path / part / f"{row.split(',')[1]}.jpg", rgb(40 * i, 90, 200, size=(45, 60)))
    images = read_folder(tmp_path, tmp_path / "HAM10000_metadata.csv", class_names=HAM_CLASSES, size=28,
                         progress=False)
    assert images.images.shape == (4, 3, 28, 28)
    assert images.sample_ids.tolist() == ["ISIC_0027419", "ISIC_0026769", "ISIC_0031633", "ISIC_0029176"]
    assert [images.class_names[i] for i in images.labels] == ["bkl", "bkl", "nv", "mel"]
    assert {"lesion_id", "image_id", "dx_type", "age", "sex", "localization"} <= set(images.metadata.columns)
    assert "dx" not in images.metadata.columns and images.skipped == []
    assert np.isnan(images.metadata["age"].iloc[3])


def test_real_ham10000_metadata_csv(data_dir: Path, tmp_path: Path) -> None:
    """The full public metadata table (10,015 rows, plus site) with a handful of images present."""
    table = pd.read_csv(data_dir / HAM_CSV)
    assert list(table.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "site"]
    chosen = table.groupby("dx").head(1)  # one image of each of the 7 diagnoses
    rng = np.random.default_rng(0)
    for i, image_id in enumerate(chosen["image_id"]):
        save(tmp_path / "images" / f"part_{i % 2}" / f"{image_id}.jpg",
             rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    images = read_folder(tmp_path / "images", data_dir / HAM_CSV, class_names=HAM_CLASSES, size=(28, 28),
                         progress=False)
    assert len(images) == 7 and images.class_counts() == dict.fromkeys(HAM_CLASSES, 1)
    assert images.sample_ids.tolist() == chosen["image_id"].tolist()
    for column in ("sex", "age", "site", "localization", "lesion_id", "dx_type"):
        assert images.metadata[column].tolist() == chosen[column].tolist(), column
    # every other row of the table is reported as missing, none is fatal
    assert len(images.skipped) == len(table) - 7
    assert all("file not found" in reason for _, reason in images.skipped)
