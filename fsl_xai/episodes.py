"""Few-shot episodes: sampling, class splits and an exact JSON round-trip."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .data.imageset import ImageSet
from .errors import EpisodeError


@dataclass(frozen=True)
class Episode:
    """One few-shot task, by sample ids, so that it can be stored and rebuilt exactly.

    Attributes:
        classes: class names; episode label ``i`` means ``classes[i]``.
        support_ids / support_labels: the support images and their episode labels (0..n_way-1).
        query_ids / query_labels: the query images and their episode labels (-1 when unknown).
        dataset: the image set's name; dataset_fingerprint: its fingerprint.
        seed, index: how the sampler drew it (None for hand-made or edited episodes).
    """

    classes: tuple[str, ...]
    support_ids: tuple[str, ...]
    support_labels: tuple[int, ...]
    query_ids: tuple[str, ...]
    query_labels: tuple[int, ...]
    dataset: str = ""
    dataset_fingerprint: str = ""
    seed: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        for name in ("classes", "support_ids", "query_ids"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        for name in ("support_labels", "query_labels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.support_ids) != len(self.support_labels):
            raise EpisodeError("an episode needs one support label per support id")
        if len(self.query_ids) != len(self.query_labels):
            raise EpisodeError("an episode needs one query label per query id")
        n_way = len(self.classes)
        if any(not 0 <= y < n_way for y in self.support_labels):
            raise EpisodeError(f"support labels must lie in 0..{n_way - 1} (one per class of {list(self.classes)})")
        if any(not -1 <= y < n_way for y in self.query_labels):
            raise EpisodeError(f"query labels must lie in 0..{n_way - 1}, or be -1 when unknown")
        empty = [c for i, c in enumerate(self.classes) if i not in set(self.support_labels)]
        if empty:
            raise EpisodeError(
                f"class(es) {empty} have no support image; add at least one support image per class "
                "or remove the class from the episode"
            )

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def n_shot(self) -> int:
        """The smallest number of support images of any class."""
        return int(np.bincount(self.support_labels, minlength=self.n_way).min())

    @property
    def n_query(self) -> int:
        return len(self.query_ids)

    @property
    def episode_id(self) -> str:
        """A short hash of the episode's content (classes, ids and labels)."""
        payload = json.dumps([self.classes, self.support_ids, self.support_labels,
                              self.query_ids, self.query_labels, self.dataset_fingerprint])
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return asdict(self) | {"episode_id": self.episode_id}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> Episode:
        if not isinstance(data, dict):
            raise EpisodeError(
                f"not an episode record (a {type(data).__name__}); expected the dict of Episode.to_dict()")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            episode = cls(**fields)
        except TypeError as exc:
            raise EpisodeError(f"not an episode record ({exc}); expected the keys of Episode.to_dict()") from exc
        if "episode_id" in data and data["episode_id"] != episode.episode_id:
            raise EpisodeError("the episode's content does not match its stored episode_id; the record was changed")
        return episode

    @classmethod
    def from_json(cls, text: str) -> Episode:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EpisodeError(
                f"not an episode record: invalid JSON ({exc}); expected the text of Episode.to_json()") from exc
        return cls.from_dict(data)

    # ------------------------------------------------------------------ data
    def check_dataset(self, images: ImageSet) -> None:
        if self.dataset_fingerprint and images.fingerprint() != self.dataset_fingerprint:
            raise EpisodeError(
                f"this episode was drawn from a different version of {self.dataset!r} "
                f"(fingerprint {self.dataset_fingerprint}, given {images.fingerprint()}); load the same data"
            )

    def support_indices(self, images: ImageSet) -> np.ndarray:
        return images.indices_of(self.support_ids)

    def query_indices(self, images: ImageSet) -> np.ndarray:
        return images.indices_of(self.query_ids)

    def tensors(self, images: ImageSet):
        """(support_images, support_labels, query_images, query_labels) as torch tensors.

        Images are (n, C, H, W) float32; labels are episode labels (n,) int64.
        """
        import torch

        s, q = self.support_indices(images), self.query_indices(images)
        return (torch.from_numpy(images.images[s]), torch.tensor(self.support_labels),
                torch.from_numpy(images.images[q]), torch.tensor(self.query_labels))

    # ------------------------------------------------------------------ edits
    def with_support(self, support_ids: Sequence[str], support_labels: Sequence[int]) -> Episode:
        """A copy with another support set (an edited episode has no sampler seed)."""
        return replace(self, support_ids=tuple(support_ids), support_labels=tuple(support_labels),
                       seed=None, index=None)

    def with_queries(self, query_ids: Sequence[str], query_labels: Sequence[int]) -> Episode:
        return replace(self, query_ids=tuple(query_ids), query_labels=tuple(query_labels),
                       seed=None, index=None)


@dataclass(frozen=True)
class ClassSplit:
    """Disjoint class lists for meta-training (base), model selection (val) and testing (novel)."""

    base: tuple[str, ...]
    val: tuple[str, ...] = ()
    novel: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("base", "val", "novel"):
            object.__setattr__(self, name, tuple(str(c) for c in getattr(self, name)))
        seen: dict[str, str] = {}
        for name in ("base", "val", "novel"):
            for c in getattr(self, name):
                if c in seen:
                    raise EpisodeError(
                        f"class {c!r} is in both the {seen[c]} and the {name} split; splits must be disjoint")
                seen[c] = name

    @classmethod
    def random(cls, class_names: Sequence[str], n_base: int, n_val: int = 0, seed: int = 0) -> ClassSplit:
        """A seeded random split: n_base base classes, n_val validation classes, the rest novel."""
        names = list(class_names)
        if n_base + n_val >= len(names):
            raise EpisodeError(f"{len(names)} classes cannot give {n_base} base + {n_val} val and any novel classes")
        order = np.random.default_rng(seed).permutation(len(names))
        pick = [names[i] for i in order]
        return cls(tuple(pick[:n_base]), tuple(pick[n_base:n_base + n_val]), tuple(pick[n_base + n_val:]))

    def to_dict(self) -> dict:
        return {"base": list(self.base), "val": list(self.val), "novel": list(self.novel)}


@dataclass
class EpisodeSampler:
    """Draws episodes reproducibly: episode ``i`` of seed ``s`` is always the same.

    Args:
        images: the image set to draw from.
        n_way: classes per episode; n_shot: support images per class; n_query: queries per class.
        classes: the classes to draw from (names or indices; default all).
        seed: the base seed.
    """

    images: ImageSet
    n_way: int
    n_shot: int
    n_query: int
    classes: Sequence[str | int] | None = None
    seed: int = 0
    _pools: list[np.ndarray] = field(init=False, repr=False)
    _class_ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_way < 2:
            raise EpisodeError(f"n_way must be at least 2, got {self.n_way}")
        if self.n_shot < 1:
            raise EpisodeError(f"n_shot must be at least 1, got {self.n_shot}")
        if self.n_query < 1:
            raise EpisodeError(f"n_query must be at least 1, got {self.n_query}")
        ids = ([self.images.class_index(c) for c in self.classes] if self.classes is not None
               else list(range(self.images.n_classes)))
        if len(set(ids)) != len(ids):
            # only a class list given by the caller can repeat a class
            raise EpisodeError(f"classes are repeated in {list(self.classes or ())}; give each class once")
        if len(ids) < self.n_way:
            raise EpisodeError(
                f"n_way = {self.n_way} but only {len(ids)} classes are available "
                f"({[self.images.class_names[i] for i in ids]}); lower n_way or add classes"
            )
        need = self.n_shot + self.n_query
        counts = np.bincount(self.images.labels, minlength=self.images.n_classes)
        short = [(self.images.class_names[i], int(counts[i])) for i in ids if counts[i] < need]
        if short:
            detail = ", ".join(f"class {n!r} has {c} image{'s' if c != 1 else ''}" for n, c in short)
            raise EpisodeError(
                f"{detail}, but n_shot + n_query = {self.n_shot} + {self.n_query} = {need}; "
                "lower n_shot or n_query, or leave out those classes"
            )
        self._class_ids = np.asarray(ids, dtype=np.int64)
        self._pools = [np.flatnonzero(self.images.labels == i) for i in range(self.images.n_classes)]

    def sample_indices(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Positions for episode ``index``: (class_ids, support_idx, support_labels, query_idx, query_labels).

        Support and query positions are grouped by class in episode-label order.
        """
        rng = np.random.default_rng([self.seed, index])
        chosen = self._class_ids[np.sort(rng.choice(len(self._class_ids), self.n_way, replace=False))]
        support, query = [], []
        for cid in chosen:
            pool = self._pools[cid]
            pick = pool[rng.choice(len(pool), self.n_shot + self.n_query, replace=False)]
            support.append(pick[: self.n_shot])
            query.append(pick[self.n_shot:])
        support_labels = np.repeat(np.arange(self.n_way), self.n_shot)
        query_labels = np.repeat(np.arange(self.n_way), self.n_query)
        return chosen, np.concatenate(support), support_labels, np.concatenate(query), query_labels

    def sample(self, index: int = 0) -> Episode:
        chosen, s, sl, q, ql = self.sample_indices(index)
        ids = self.images.sample_ids
        return Episode(
            classes=tuple(self.images.class_names[c] for c in chosen),
            support_ids=tuple(ids[s]), support_labels=tuple(sl),
            query_ids=tuple(ids[q]), query_labels=tuple(ql),
            dataset=self.images.name, dataset_fingerprint=self.images.fingerprint(),
            seed=self.seed, index=index,
        )

    def episodes(self, n: int, start: int = 0) -> Iterator[Episode]:
        for i in range(start, start + n):
            yield self.sample(i)
