"""The built-in synthetic lesion set: deterministic, masks on the lesions, measurable sites, marker."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fsl_xai import DataError
from fsl_xai.data import CLASS_SHAPES, ImageSet, make_synthetic
from fsl_xai.data.synthetic import marker_box


@pytest.fixture(scope="module")
def plain() -> ImageSet:
    return make_synthetic(n_per_class=40, seed=3)


def lesion_masks(images: ImageSet) -> np.ndarray:
    """The set's lesion masks (n_images, height, width); the synthetic set always has them."""
    assert images.masks is not None, f"{images.name} has no lesion masks"
    return images.masks


def lesion_contrast(images: ImageSet) -> np.ndarray:
    """Per image: mean inside the lesion mask minus mean of a band just outside it."""
    out = np.empty(len(images))
    for i, (img, mask) in enumerate(zip(images.images[:, 0], lesion_masks(images), strict=True)):
        band = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=1)
        out[i] = img[mask].mean() - img[band].mean()
    return out


def noise_level(images: ImageSet) -> np.ndarray:
    """Per image: spread of the pixel-to-pixel differences away from the lesion (a noise estimate)."""
    out = np.empty(len(images))
    for i, (img, mask) in enumerate(zip(images.images[:, 0], lesion_masks(images), strict=True)):
        detail = img[1:-1, 1:-1] - 0.25 * (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:])
        away = ~ndimage.binary_dilation(mask, iterations=3)[1:-1, 1:-1]
        out[i] = detail[away].std()
    return out


def test_layout(plain: ImageSet) -> None:
    assert plain.images.shape == (160, 1, 64, 64) and plain.images.dtype == np.float32
    assert plain.class_names == ("round", "spiculated", "ring", "textured")
    assert plain.class_counts() == dict.fromkeys(plain.class_names, 40)
    assert plain.masks is not None and plain.masks.shape == (160, 64, 64) and plain.masks.dtype == bool
    assert 0.0 <= plain.images.min() and plain.images.max() <= 1.0
    # stored like an 8-bit image
    assert np.array_equal(plain.images * 255, np.round(plain.images * 255))
    meta = plain.metadata
    assert {"sample_id", "site", "marker", "split"} <= set(meta.columns)
    assert meta["sample_id"].is_unique and not meta["marker"].any() and (meta["split"] == "train").all()
    # sites are balanced within every class
    counts = meta.groupby([plain.labels, "site"]).size()
    assert set(counts.tolist()) == {20}


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a = make_synthetic(n_per_class=10, size=32, seed=7)
    b = make_synthetic(n_per_class=10, size=32, seed=7)
    assert a.images.tobytes() == b.images.tobytes() and lesion_masks(a).tobytes() == lesion_masks(b).tobytes()
    assert np.array_equal(a.labels, b.labels) and a.metadata.equals(b.metadata)
    assert a.fingerprint() == b.fingerprint()
    c = make_synthetic(n_per_class=10, size=32, seed=8)
    assert a.images.tobytes() != c.images.tobytes() and a.fingerprint() != c.fingerprint()


def test_splits_are_disjoint_streams() -> None:
    train = make_synthetic(n_per_class=5, size=32, split="train")
    test = make_synthetic(n_per_class=5, size=32, split="test")
    assert not np.array_equal(train.images, test.images)
    assert set(train.sample_ids).isdisjoint(test.sample_ids)
    both = make_synthetic(n_per_class=5, size=32, split="all")
    assert len(both) == 60 and both.metadata["split"].value_counts().to_dict() == {"train": 20, "val": 20, "test": 20}
    assert np.array_equal(both.where(split="test").images, test.images)
    assert np.array_equal(lesion_masks(both.where(split="test")), lesion_masks(test))


def test_masks_sit_on_the_lesions(plain: ImageSet) -> None:
    contrast = lesion_contrast(plain)
    assert (contrast > 0.03).mean() > 0.95, np.sort(contrast)[:10]
    areas = lesion_masks(plain).sum(axis=(1, 2))
    assert areas.min() >= 20 and areas.max() < 0.25 * 64 * 64
    # the mask is where the lesion was drawn: centre pixel in or out depending on the shape
    cy = plain.metadata["lesion_y"].astype(int).to_numpy()
    cx = plain.metadata["lesion_x"].astype(int).to_numpy()
    centre = lesion_masks(plain)[np.arange(len(plain)), cy, cx]
    names = np.array(plain.class_names)[plain.labels]
    assert centre[names == "round"].all() and centre[names == "textured"].all()
    assert not centre[names == "ring"].any()


def test_classes_differ_only_inside_the_lesion(plain: ImageSet) -> None:
    background = np.array([img[~ndimage.binary_dilation(m, iterations=3)].mean()
                           for img, m in zip(plain.images[:, 0], lesion_masks(plain), strict=True)])
    per_class = [background[plain.labels == k].mean() for k in range(plain.n_classes)]
    assert max(per_class) - min(per_class) < 0.03
    # while the lesion footprints differ: rings are thin, spiculated outlines are ragged
    area = lesion_masks(plain).sum(axis=(1, 2)).astype(float)
    radius = plain.metadata["lesion_radius"].to_numpy()
    fill = area / (np.pi * radius ** 2)
    mean_fill = {name: fill[plain.labels == k].mean() for k, name in enumerate(plain.class_names)}
    assert mean_fill["ring"] < 0.75 < mean_fill["round"]
    assert mean_fill["spiculated"] < mean_fill["round"]


def test_sites_differ_in_noise_and_contrast(plain: ImageSet) -> None:
    at_a, at_b = (plain.metadata["site"] == "A").to_numpy(), (plain.metadata["site"] == "B").to_numpy()
    noise = noise_level(plain)
    assert np.median(noise[at_b]) > 2.0 * np.median(noise[at_a])
    assert np.percentile(noise[at_b], 5) > np.percentile(noise[at_a], 95)
    contrast = lesion_contrast(plain)
    assert np.median(contrast[at_b]) < 0.8 * np.median(contrast[at_a])


def test_spurious_marker_is_a_shortcut_outside_the_lesion() -> None:
    plain = make_synthetic(n_per_class=30, size=48, seed=1)
    biased = make_synthetic(n_per_class=30, size=48, seed=1, spurious_marker=True, marker_site="B",
                            marker_class="ring")
    marked = biased.metadata["marker"].to_numpy()
    ring = biased.class_index("ring")
    expected = (biased.labels == ring) & (biased.metadata["site"] == "B").to_numpy()
    assert np.array_equal(marked, expected) and marked.sum() == 15
    rows, cols = marker_box(48)
    patch = biased.images[:, 0, rows, cols]
    assert np.all(patch[marked] > 0.9) and np.all(patch[~marked].max(axis=(1, 2)) < 0.9)
    # nothing else changed, and the marker never touches a lesion mask
    assert biased.name == "synthetic-biased"
    same = biased.images.copy()
    same[marked, 0, rows, cols] = plain.images[marked, 0, rows, cols]
    assert np.array_equal(same, plain.images) and np.array_equal(lesion_masks(biased), lesion_masks(plain))
    many = make_synthetic(n_per_class=150, size=28, seed=5, n_classes=6)
    rows, cols = marker_box(28)
    assert not lesion_masks(many)[:, rows, cols].any()


def test_marker_rate() -> None:
    half = make_synthetic(n_per_class=200, size=16, seed=2, spurious_marker=True, marker_rate=0.5)
    eligible = (half.labels == 0) & (half.metadata["site"] == "A").to_numpy()
    assert 30 <= half.metadata["marker"][eligible].sum() <= 70
    assert not half.metadata["marker"][~eligible].any()


def test_all_lesion_types_and_sizes() -> None:
    six = make_synthetic(n_per_class=4, size=28, n_classes=6, sites=("north", "south", "east"))
    assert six.class_names == CLASS_SHAPES and six.images.shape == (24, 1, 28, 28)
    assert set(six.metadata["site"]) == {"north", "south", "east"}
    assert (lesion_masks(six).sum(axis=(1, 2)) > 0).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_classes": 1}, "n_classes"),
    ({"n_classes": 7}, "n_classes"),
    ({"size": 8}, "size"),
    ({"n_per_class": 0}, "n_per_class"),
    ({"split": "holdout"}, "unknown split"),
    ({"sites": ("A", "A")}, "distinct"),
    ({"spurious_marker": True, "marker_site": "C"}, "marker_site"),
    ({"marker_class": "oval"}, "marker_class"),
    ({"marker_class": 9}, "marker_class"),
    ({"marker_rate": 1.5}, "marker_rate"),
    ({"site_noise": (0.1,)}, "one value per site"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        make_synthetic(**{"n_per_class": 2, **kwargs})
