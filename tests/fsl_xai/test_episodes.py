"""Episodes: seeded sampling, exact JSON round trip, clear errors, class splits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fsl_xai import ClassSplit, Episode, EpisodeError, EpisodeSampler, ImageSet, read_npz
from fsl_xai.testing import make_episode, make_imageset


@pytest.fixture
def images() -> ImageSet:
    return make_imageset(n_classes=5, n_per_class=12, size=16, seed=0)


def test_same_seed_and_index_same_episode(images: ImageSet) -> None:
    a = EpisodeSampler(images, n_way=3, n_shot=2, n_query=4, seed=7)
    b = EpisodeSampler(images, n_way=3, n_shot=2, n_query=4, seed=7)
    assert a.sample(5) == b.sample(5)
    # the index alone decides: drawing others first changes nothing
    list(b.episodes(5))
    assert a.sample(5) == b.sample(5)
    assert list(a.episodes(3, start=4)) == [b.sample(4), b.sample(5), b.sample(6)]
    assert a.sample(5) != a.sample(6)
    assert a.sample(5) != EpisodeSampler(images, n_way=3, n_shot=2, n_query=4, seed=8).sample(5)


def test_episode_structure(images: ImageSet) -> None:
    ep = EpisodeSampler(images, n_way=3, n_shot=2, n_query=4, seed=1).sample(0)
    assert ep.n_way == 3 and ep.n_shot == 2 and ep.n_query == 12
    assert ep.support_labels == (0, 0, 1, 1, 2, 2)
    assert ep.query_labels == tuple(np.repeat([0, 1, 2], 4))
    assert not set(ep.support_ids) & set(ep.query_ids)
    assert len(set(ep.support_ids + ep.query_ids)) == 18
    # every id belongs to the class its label says
    for ids, labels in ((ep.support_ids, ep.support_labels), (ep.query_ids, ep.query_labels)):
        idx = images.indices_of(ids)
        assert [images.class_names[i] for i in images.labels[idx]] == [ep.classes[y] for y in labels]
    assert ep.dataset == "toy" and ep.dataset_fingerprint == images.fingerprint()
    assert ep.seed == 1 and ep.index == 0
    s, sl, q, ql = ep.tensors(images)
    assert tuple(s.shape) == (6, 1, 16, 16) and tuple(q.shape) == (12, 1, 16, 16)
    assert sl.tolist() == list(ep.support_labels) and ql.tolist() == list(ep.query_labels)


def test_classes_restrict_the_draw(images: ImageSet) -> None:
    sampler = EpisodeSampler(images, n_way=2, n_shot=1, n_query=1, classes=["c4", "c1", "c2"], seed=0)
    seen = set()
    for ep in sampler.episodes(20):
        seen.update(ep.classes)
    assert seen == {"c1", "c2", "c4"}


def test_json_round_trip_is_exact(images: ImageSet, tmp_path: Path) -> None:
    ep = EpisodeSampler(images, n_way=4, n_shot=3, n_query=2, seed=3).sample(11)
    text = ep.to_json(indent=1)
    back = Episode.from_json(text)
    assert back == ep
    assert back.episode_id == ep.episode_id
    assert back.to_json(indent=1) == text
    (tmp_path / "ep.json").write_text(text)
    again = Episode.from_json((tmp_path / "ep.json").read_text())
    np.testing.assert_array_equal(again.tensors(images)[0].numpy(), ep.tensors(images)[0].numpy())
    edited = ep.with_support(ep.support_ids[1:], ep.support_labels[1:])
    assert edited.seed is None and edited.index is None
    assert Episode.from_json(edited.to_json()) == edited
    assert edited.episode_id != ep.episode_id


@pytest.mark.parametrize("tamper", [
    lambda d: d.update(query_labels=d["query_labels"][::-1]),
    lambda d: d.update(support_ids=[d["query_ids"][0]] + d["support_ids"][1:]),
    lambda d: d.update(classes=d["classes"][::-1]),
])
def test_tampered_json_refused(images: ImageSet, tamper: Callable[[dict], None]) -> None:
    data = json.loads(EpisodeSampler(images, n_way=3, n_shot=2, n_query=2, seed=0).sample(0).to_json())
    tamper(data)
    with pytest.raises(EpisodeError, match="does not match its stored episode_id"):
        Episode.from_dict(data)


@pytest.mark.parametrize("text", ['{"classes": ["a"]}', "[1, 2]", "{not json", ""])
def test_not_an_episode_record(text: str) -> None:
    with pytest.raises(EpisodeError, match="not an episode record"):
        Episode.from_json(text)


def test_repeated_classes(images: ImageSet) -> None:
    with pytest.raises(EpisodeError, match=r"classes are repeated in \['c1', 'c1', 'c2'\]"):
        EpisodeSampler(images, n_way=2, n_shot=1, n_query=1, classes=["c1", "c1", "c2"])


def test_episode_from_other_data_version(images: ImageSet) -> None:
    ep = EpisodeSampler(images, n_way=3, n_shot=1, n_query=1, seed=0).sample(0)
    ep.check_dataset(images)
    other = make_imageset(n_classes=5, n_per_class=12, size=16, seed=1)
    with pytest.raises(EpisodeError, match="different version of 'toy'"):
        ep.check_dataset(other)


def test_too_few_images_names_class_and_numbers() -> None:
    images = make_imageset(n_classes=3, n_per_class=6, size=16)
    few = images.subset(np.flatnonzero((images.labels != 1) | (np.arange(len(images)) < 9)))
    assert few.class_counts() == {"c0": 6, "c1": 3, "c2": 6}
    with pytest.raises(EpisodeError) as info:
        EpisodeSampler(few, n_way=3, n_shot=2, n_query=3)
    message = str(info.value)
    assert "class 'c1' has 3 images" in message
    assert "n_shot + n_query = 2 + 3 = 5" in message
    assert "c0" not in message and "c2" not in message
    EpisodeSampler(few, n_way=3, n_shot=1, n_query=2)  # fits


def test_real_data_too_few_images(shared_file: Callable[[str], Path]) -> None:
    ham = read_npz(shared_file("ham10000_subset/ham_subset_28.npz"), split="val")
    counts = ham.class_counts()
    smallest = min(counts, key=counts.get)
    need = counts[smallest] + 1
    with pytest.raises(EpisodeError, match=rf"class '{smallest}' has {counts[smallest]} images.*= {need}"):
        EpisodeSampler(ham, n_way=2, n_shot=1, n_query=need - 1, classes=[smallest, "nv"])


def test_empty_class() -> None:
    images = make_imageset(n_classes=3, n_per_class=5, size=16)
    no_c2 = images.subset(images.labels != 2)
    assert no_c2.class_counts()["c2"] == 0
    with pytest.raises(EpisodeError, match="class 'c2' has 0 images"):
        EpisodeSampler(no_c2, n_way=3, n_shot=1, n_query=1)
    with pytest.raises(EpisodeError, match=r"class\(es\) \['b'\] have no support image"):
        Episode(classes=("a", "b"), support_ids=("x",), support_labels=(0,), query_ids=(), query_labels=())


def test_n_way_too_large(images: ImageSet) -> None:
    with pytest.raises(EpisodeError, match=r"n_way = 6 but only 5 classes are available"):
        EpisodeSampler(images, n_way=6, n_shot=1, n_query=1)
    with pytest.raises(EpisodeError, match=r"n_way = 3 but only 2 classes"):
        EpisodeSampler(images, n_way=3, n_shot=1, n_query=1, classes=["c0", "c1"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_way=1, n_shot=1, n_query=1), "n_way must be at least 2"),
    (dict(n_way=2, n_shot=0, n_query=1), "n_shot must be at least 1"),
    (dict(n_way=2, n_shot=1, n_query=0), "n_query must be at least 1"),
])
def test_bad_sizes(images: ImageSet, kwargs: dict, match: str) -> None:
    with pytest.raises(EpisodeError, match=match):
        EpisodeSampler(images, **kwargs)


def test_bad_episode_labels() -> None:
    with pytest.raises(EpisodeError, match="support labels must lie in 0..1"):
        Episode(classes=("a", "b"), support_ids=("x", "y"), support_labels=(0, 2), query_ids=(), query_labels=())
    with pytest.raises(EpisodeError, match="one query label per query id"):
        Episode(classes=("a", "b"), support_ids=("x", "y"), support_labels=(0, 1), query_ids=("q",), query_labels=())


def test_class_split_disjoint() -> None:
    split = ClassSplit(base=("a", "b", "c"), val=("d",), novel=("e", "f"))
    assert split.to_dict() == {"base": ["a", "b", "c"], "val": ["d"], "novel": ["e", "f"]}
    with pytest.raises(EpisodeError, match="class 'c' is in both the base and the novel split"):
        ClassSplit(base=("a", "b", "c"), novel=("c", "d"))
    with pytest.raises(EpisodeError, match="in both the val and the novel split"):
        ClassSplit(base=("a",), val=("b",), novel=("b",))


def test_random_class_split_is_seeded_and_covers_all() -> None:
    names = [f"k{i}" for i in range(8)]
    a = ClassSplit.random(names, n_base=5, n_val=1, seed=3)
    assert a == ClassSplit.random(names, n_base=5, n_val=1, seed=3)
    assert a != ClassSplit.random(names, n_base=5, n_val=1, seed=4)
    assert (len(a.base), len(a.val), len(a.novel)) == (5, 1, 2)
    assert sorted(a.base + a.val + a.novel) == names
    with pytest.raises(EpisodeError, match="8 classes cannot give 7 base \\+ 1 val"):
        ClassSplit.random(names, n_base=7, n_val=1)


def test_split_drives_disjoint_samplers(images: ImageSet) -> None:
    split = ClassSplit(base=("c0", "c1", "c2"), novel=("c3", "c4"))
    train = EpisodeSampler(images, n_way=2, n_shot=1, n_query=1, classes=split.base)
    test = EpisodeSampler(images, n_way=2, n_shot=1, n_query=1, classes=split.novel)
    train_classes = {c for ep in train.episodes(10) for c in ep.classes}
    test_classes = {c for ep in test.episodes(10) for c in ep.classes}
    assert train_classes <= set(split.base) and test_classes == set(split.novel)


def test_make_episode_helper() -> None:
    images, ep = make_episode(n_way=3, n_shot=2, n_query=3, channels=3, size=20, seed=5)
    again_images, again = make_episode(n_way=3, n_shot=2, n_query=3, channels=3, size=20, seed=5)
    assert ep == again and images.fingerprint() == again_images.fingerprint()
    assert images.n_channels == 3 and ep.n_query == 9
