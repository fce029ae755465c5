"""ImageSet: construction, validation, selection and conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fsl_xai import DataError, ImageSet
from fsl_xai.testing import make_imageset


def _uint8(n: int, *shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ------------------------------------------------------------------ from_array shapes
@pytest.mark.parametrize("shape, channels", [
    ((6, 28, 28), 1),        # N x H x W grey
    ((6, 28, 28, 1), 1),     # N x H x W x 1
    ((6, 28, 28, 3), 3),     # N x H x W x C (MedMNIST RGB)
    ((6, 3, 28, 28), 3),     # already N x C x H x W
    ((6, 1, 20, 30), 1),     # not square
])
def test_from_array_layouts(shape: tuple[int, ...], channels: int) -> None:
    raw = _uint8(*shape)
    s = ImageSet.from_array(raw, [0, 1, 0, 1, 0, 1], ["a", "b"])
    assert s.images.dtype == np.float32
    assert s.images.shape[:2] == (6, channels)
    assert s.n_channels == channels
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    # uint8 scaled by 255 and channels moved, not reordered pixels
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        np.testing.assert_allclose(s.images[2, :, 5, 7], raw[2, 5, 7, :] / 255.0, rtol=1e-6)
    elif len(shape) == 3:
        np.testing.assert_allclose(s.images[2, 0], raw[2] / 255.0, rtol=1e-6)
    assert s.image_size == s.images.shape[2:]
    assert list(s.metadata.columns) == ["sample_id"]
    assert s.class_counts() == {"a": 3, "b": 3}


def test_from_array_float_kept() -> None:
    raw = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float64).reshape(2, 8, 8)
    s = ImageSet.from_array(raw, [0, 1], ["a", "b"])
    np.testing.assert_allclose(s.images[:, 0], raw.astype(np.float32))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 8), dtype=np.uint8), "3 or 4 dimensions"),
    (np.zeros((2, 1, 4, 8, 8), dtype=np.uint8), "3 or 4 dimensions"),
    (np.zeros((4, 8, 8), dtype=np.int32), "uint8 or float"),
])
def test_from_array_rejects_bad_arrays(bad: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ImageSet.from_array(bad, [0] * len(bad), ["a"])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_pixels_error_names_the_images(value: float) -> None:
    raw = np.full((5, 1, 8, 8), 0.5, dtype=np.float32)
    raw[3, 0, 2, 2] = value
    with pytest.raises(DataError, match=r"1 image\(s\) contain NaN or infinite.*\[3\]"):
        ImageSet(raw, [0, 0, 1, 1, 1], ("a", "b"), None)


@pytest.mark.parametrize("labels, bad", [([0, 1, 2, 0], "[2]"), ([0, -1, 1, 0], "[-1]")])
def test_labels_outside_class_list(labels: list[int], bad: str) -> None:
    with pytest.raises(DataError, match=r"labels .* outside the class list of 2 classes") as info:
        ImageSet.from_array(_uint8(4, 8, 8), labels, ["a", "b"])
    assert bad in str(info.value)


def test_label_count_and_dtype_errors() -> None:
    with pytest.raises(DataError, match="4 images but 3 labels"):
        ImageSet.from_array(_uint8(4, 8, 8), [0, 1, 0], ["a", "b"])
    with pytest.raises(DataError, match="labels must be integers"):
        ImageSet.from_array(_uint8(2, 8, 8), [0.0, 1.5], ["a", "b"])


def test_shape_error_points_to_from_array() -> None:
    with pytest.raises(DataError, match="from_array"):
        ImageSet(np.zeros((3, 8, 8), np.float32), [0, 0, 0], ("a",), None)


def test_sample_ids_unique_and_stable() -> None:
    s = ImageSet.from_array(_uint8(4, 8, 8), [0, 1, 0, 1], ["a", "b"], name="x")
    assert s.sample_ids.tolist() == ["x-00000", "x-00001", "x-00002", "x-00003"]
    meta = pd.DataFrame({"sample_id": ["p", "q", "p", "r"]})
    with pytest.raises(DataError, match=r"sample ids must be unique; repeated: \['p'\]"):
        ImageSet.from_array(_uint8(4, 8, 8), [0, 1, 0, 1], ["a", "b"], metadata=meta)
    with pytest.raises(DataError, match="needs a 'sample_id' column"):
        ImageSet.from_array(_uint8(2, 8, 8), [0, 1], ["a", "b"], metadata=pd.DataFrame({"site": ["A", "B"]}))
    with pytest.raises(DataError, match="2 images but 3 metadata rows"):
        ImageSet.from_array(_uint8(2, 8, 8), [0, 1], ["a", "b"],
                            metadata=pd.DataFrame({"sample_id": ["1", "2", "3"]}))


def test_masks_validated() -> None:
    with pytest.raises(DataError, match="masks must have shape"):
        ImageSet(np.zeros((2, 1, 8, 8), np.float32), [0, 1], ("a", "b"), None, masks=np.zeros((2, 4, 4), bool))


# ------------------------------------------------------------------ selection
@pytest.fixture
def toy() -> ImageSet:
    return make_imageset(n_classes=3, n_per_class=4, channels=1, size=16, seed=1, with_masks=True)


def test_subset_keeps_rows_aligned(toy: ImageSet) -> None:
    idx = [7, 2, 11]
    sub = toy.subset(idx)
    assert len(sub) == 3 and sub.class_names == toy.class_names
    np.testing.assert_array_equal(sub.images, toy.images[idx])
    np.testing.assert_array_equal(sub.labels, toy.labels[idx])
    np.testing.assert_array_equal(sub.masks, toy.masks[idx])
    assert sub.sample_ids.tolist() == toy.sample_ids[idx].tolist()
    assert sub.metadata.index.tolist() == [0, 1, 2]
    boolean = toy.subset(toy.labels == 2)
    assert boolean.sample_ids.tolist() == toy.sample_ids[8:].tolist()


def test_select_classes_relabels_in_given_order(toy: ImageSet) -> None:
    sel = toy.select_classes(["c2", 0])
    assert sel.class_names == ("c2", "c0")
    assert len(sel) == 8
    for i, sid in enumerate(sel.sample_ids):
        original = toy.labels[toy.indices_of([sid])[0]]
        assert sel.class_names[sel.labels[i]] == toy.class_names[original]
    assert sel.masks is not None and sel.masks.shape == (8, 16, 16)
    assert sel.fingerprint() != toy.fingerprint()
    with pytest.raises(DataError, match="unknown class 'zzz'; known classes"):
        toy.select_classes(["zzz"])
    with pytest.raises(DataError, match="repeated"):
        toy.select_classes(["c1", "c1"])
    with pytest.raises(DataError, match="out of range"):
        toy.select_classes([5])


def test_where_by_value_list_and_condition(toy: ImageSet) -> None:
    a = toy.where(site="A")
    assert set(a.metadata["site"]) == {"A"} and len(a) == 6
    both = toy.where(site=["A", "B"])
    assert len(both) == len(toy)
    old = toy.where(lambda m: m.age >= 50)
    assert (old.metadata["age"] >= 50).all() and 0 < len(old) < len(toy)
    combined = toy.where(lambda m: m.age >= 50, site="B")
    assert set(combined.sample_ids) == set(old.sample_ids) & set(toy.where(site="B").sample_ids)
    assert toy.where(site="A").masks is not None
    with pytest.raises(DataError, match="no metadata column 'sex'"):
        toy.where(sex="female")


def test_indices_of_unknown_ids(toy: ImageSet) -> None:
    assert toy.indices_of([toy.sample_ids[3]]).tolist() == [3]
    with pytest.raises(DataError, match=r"unknown sample ids \['nope'\] \(1 missing\)"):
        toy.indices_of(["nope", toy.sample_ids[0]])


def test_convert_channels_and_size(toy: ImageSet) -> None:
    rgb = toy.convert(channels=3)
    assert rgb.images.shape == (12, 3, 16, 16)
    np.testing.assert_array_equal(rgb.images[:, 0], rgb.images[:, 2])
    grey = rgb.convert(channels=1)
    np.testing.assert_allclose(grey.images, toy.images, atol=1e-5)  # weights sum to 1
    big = toy.convert(size=32)
    assert big.images.shape == (12, 1, 32, 32) and big.masks.shape == (12, 32, 32)
    assert big.images.min() >= 0 and big.images.max() <= 1
    # a resized blob stays where it was: masks and images still line up
    for i in range(len(big)):
        inside = big.images[i, 0][big.masks[i]].mean()
        outside = big.images[i, 0][~big.masks[i]].mean()
        assert inside > outside + 0.3
    rect = toy.convert(size=(20, 24))
    assert rect.image_size == (20, 24)
    assert toy.convert().images is not toy.images  # a copy, never a view to edit by mistake
    with pytest.raises(DataError, match="cannot convert 1 channels to 2"):
        toy.convert(channels=2)


def test_concat_prefixes_classes_and_ids() -> None:
    a = make_imageset(2, 3, size=16, seed=0, name="a", with_masks=True)
    b = make_imageset(3, 2, size=16, seed=1, name="b", with_masks=True)
    joined = ImageSet.concat([a, b], name="ab")
    assert joined.class_names == ("a:c0", "a:c1", "b:c0", "b:c1", "b:c2")
    assert len(joined) == 12 and joined.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert joined.sample_ids[0] == "a:a-0000" and joined.sample_ids[-1] == "b:b-0005"
    assert joined.metadata["source"].tolist() == ["a"] * 6 + ["b"] * 6
    assert joined.masks.shape == (12, 16, 16)
    without_masks = ImageSet.concat([a, make_imageset(2, 2, size=16, name="c")])
    assert without_masks.masks is None
    with pytest.raises(DataError, match=r"cannot join image sets of shapes.*convert"):
        ImageSet.concat([a, make_imageset(2, 2, size=20, name="d")])


def test_fingerprint_depends_on_content(toy: ImageSet) -> None:
    same = make_imageset(n_classes=3, n_per_class=4, channels=1, size=16, seed=1)
    assert same.fingerprint() == toy.fingerprint()
    other = make_imageset(n_classes=3, n_per_class=4, channels=1, size=16, seed=2)
    assert other.fingerprint() != toy.fingerprint()
    assert len(toy.fingerprint()) == 16


def test_make_imageset_is_deterministic_and_separable() -> None:
    a, b = make_imageset(4, 5, channels=3, size=24, seed=3), make_imageset(4, 5, channels=3, size=24, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (20, 3, 24, 24)
    # nearest class mean in pixel space classifies every image: classes are separable
    flat = a.images.reshape(len(a), -1)
    means = np.stack([flat[a.labels == k].mean(0) for k in range(4)])
    pred = ((flat[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(pred, a.labels)
