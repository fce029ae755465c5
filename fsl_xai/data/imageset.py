"""The in-memory image set that every loader produces."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import DataError


def _default_metadata(name: str, n_images: int) -> pd.DataFrame:
    """The metadata table of a set that has none: only sample ids ``<name>-00000``, ``<name>-00001``, ..."""
    return pd.DataFrame({"sample_id": [f"{name}-{i:05d}" for i in range(n_images)]})


@dataclass(eq=False)
class ImageSet:
    """Images with labels, class names and one metadata row per image.

    Attributes:
        images: float32 array (n_images, channels, height, width), values in [0, 1].
        labels: int64 array (n_images,), indices into ``class_names``.
        class_names: one name per class.
        metadata: one row per image, aligned with ``images``; column ``sample_id`` holds a
            unique, stable string id; other columns (sex, age, site, scanner, split, ...) are free.
        name: a short name for display and provenance.
        masks: optional bool array (n_images, height, width), e.g. lesion masks for checking
            explanations; carried through subset/selection.
        skipped: ``(path, reason)`` for each file a loader left out (e.g. ``read_folder``); set on the
            loaded set only, not carried to subsets.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    metadata: pd.DataFrame
    name: str = "images"
    masks: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    # (the metadata frame, {sample id: position}): built on the first lookup, rebuilt when the frame
    # is replaced (a dict: the views look up a few ids at a time, many times per click)
    _ids: tuple[pd.DataFrame, dict[str, int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.class_names = tuple(str(c) for c in self.class_names)
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise DataError(
                f"{self.name}: images must have shape (n_images, channels, height, width), "
                f"got shape {images.shape}; use ImageSet.from_array() for (N, H, W) or (N, H, W, C) arrays"
            )
        if images.dtype != np.float32:
            images = images.astype(np.float32)
        if not np.isfinite(images).all():
            bad = np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))
            raise DataError(
                f"{self.name}: {len(bad)} image(s) contain NaN or infinite pixels "
                f"(first at positions {bad[:5].tolist()}); remove or repair them before loading"
            )
        labels = np.asarray(self.labels).reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{self.name}: {len(images)} images but {len(labels)} labels; give one label per image")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{self.name}: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            outside = sorted(set(labels[(labels < 0) | (labels >= len(self.class_names))].tolist()))
            raise DataError(
                f"{self.name}: labels {outside[:10]} are outside the class list of {len(self.class_names)} "
                f"classes {list(self.class_names)}; fix the labels or pass the full class list"
            )
        if self.metadata is None:  # a caller with no table (the annotation says DataFrame; None is tolerated)
            self.metadata = _default_metadata(self.name, len(images))
        metadata = self.metadata.reset_index(drop=True)
        if len(metadata) != len(images):
            raise DataError(f"{self.name}: {len(images)} images but {len(metadata)} metadata rows")
        if "sample_id" not in metadata.columns:
            raise DataError(f"{self.name}: the metadata table needs a 'sample_id' column")
        metadata["sample_id"] = metadata["sample_id"].astype(str)
        if metadata["sample_id"].duplicated().any():
            dup = metadata.loc[metadata["sample_id"].duplicated(), "sample_id"].head(3).tolist()
            raise DataError(f"{self.name}: sample ids must be unique; repeated: {dup}")
        if self.masks is not None:
            masks = np.asarray(self.masks).astype(bool)
            if masks.shape != (images.shape[0], *images.shape[2:]):
                raise DataError(f"{self.name}: masks must have shape {(images.shape[0], *images.shape[2:])}, "
                                f"got {masks.shape}")
            self.masks = masks
        self.images, self.labels, self.metadata = images, labels, metadata

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_array(
        cls,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        class_names: Sequence[str],
        metadata: pd.DataFrame | None = None,
        name: str = "images",
    ) -> ImageSet:
        """Build from uint8 or float arrays shaped (N, H, W), (N, H, W, C) or (N, C, H, W).

        uint8 images are scaled to [0, 1]; float images must already be in [0, 1].
        """
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.ndim != 4:
            raise DataError(
                f"{name}: images must have 3 or 4 dimensions (N, H, W[, C]), got shape {arr.shape}"
            )
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        else:
            raise DataError(f"{name}: images must be uint8 or float, got dtype {arr.dtype}")
        table = metadata if metadata is not None else _default_metadata(name, len(arr))
        return cls(np.ascontiguousarray(arr), np.asarray(labels), tuple(class_names), table, name)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def sample_ids(self) -> np.ndarray:
        return self.metadata["sample_id"].to_numpy()

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def class_index(self, cls: str | int) -> int:
        """The index of a class given by name or index; a clear error when unknown."""
        if isinstance(cls, (int, np.integer)):
            if not 0 <= int(cls) < self.n_classes:
                raise DataError(f"{self.name}: class index {cls} is out of range 0..{self.n_classes - 1}")
            return int(cls)
        try:
            return self.class_names.index(str(cls))
        except ValueError:
            raise DataError(
                f"{self.name}: unknown class {cls!r}; known classes: {list(self.class_names)}"
            ) from None

    def fingerprint(self) -> str:
        """A short hash of the pixels, labels and class names (for checkpoints and caches)."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(np.ascontiguousarray(self.images).tobytes())
            h.update(self.labels.tobytes())
            h.update("\x1f".join(self.class_names).encode())
            h.update("\x1f".join(self.sample_ids.tolist()).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # ------------------------------------------------------------------ selection
    def subset(self, indices: Iterable[int] | np.ndarray, name: str | None = None) -> ImageSet:
        """The images at these positions, keeping the class list."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return ImageSet(
            self.images[idx], self.labels[idx], self.class_names,
            self.metadata.iloc[idx].reset_index(drop=True), name or self.name,
            None if self.masks is None else self.masks[idx],
        )

    def select_classes(self, classes: Sequence[str | int], name: str | None = None) -> ImageSet:
        """Only these classes, relabelled 0..k-1 in the order given."""
        ids = [self.class_index(c) for c in classes]
        if len(set(ids)) != len(ids):
            raise DataError(f"{self.name}: classes are repeated in {list(classes)}")
        mapping = np.full(self.n_classes, -1, dtype=np.int64)
        mapping[ids] = np.arange(len(ids))
        keep = mapping[self.labels] >= 0
        out = self.subset(np.flatnonzero(keep), name)
        out.labels = mapping[self.labels[keep]]
        out.class_names = tuple(self.class_names[i] for i in ids)
        out._fingerprint = None
        return out

    def where(self, condition: Callable[[pd.DataFrame], pd.Series] | None = None, **equals) -> ImageSet:
        """Images whose metadata match: ``where(site="rosendahl")``, ``where(sex=["male", "female"])``
        or ``where(lambda m: m.age >= 60)``."""
        mask = np.ones(len(self), dtype=bool)
        for column, value in equals.items():
            if column not in self.metadata.columns:
                raise DataError(
                    f"{self.name}: no metadata column {column!r}; columns: {list(self.metadata.columns)}"
                )
            values = value if isinstance(value, (list, tuple, set)) else [value]
            mask &= self.metadata[column].isin(values).to_numpy()
        if condition is not None:
            mask &= np.asarray(condition(self.metadata), dtype=bool)
        return self.subset(np.flatnonzero(mask))

    def indices_of(self, sample_ids: Sequence[str]) -> np.ndarray:
        """Positions of these sample ids; a clear error naming any that are missing."""
        if self._ids is None or self._ids[0] is not self.metadata:
            ids = self.metadata["sample_id"].astype(str).tolist()
            self._ids = (self.metadata, dict(zip(ids, range(len(ids)), strict=True)))
        positions = self._ids[1]
        idx = np.fromiter((positions.get(str(s), -1) for s in sample_ids), dtype=np.int64, count=len(sample_ids))
        if (idx < 0).any():
            missing = [s for s, i in zip(sample_ids, idx, strict=True) if i < 0]
            raise DataError(f"{self.name}: unknown sample ids {missing[:5]} ({len(missing)} missing)")
        return idx

    # ------------------------------------------------------------------ conversion
    def convert(self, channels: int | None = None, size: int | tuple[int, int] | None = None) -> ImageSet:
        """A copy with this many channels (grey <-> RGB) and/or resized (bilinear, antialiased)."""
        images = self.images
        if channels is not None and channels != images.shape[1]:
            if images.shape[1] == 1 and channels == 3:
                images = np.repeat(images, 3, axis=1)
            elif images.shape[1] == 3 and channels == 1:
                weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
                images = (images * weights).sum(axis=1, keepdims=True)
            else:
                raise DataError(f"{self.name}: cannot convert {images.shape[1]} channels to {channels}")
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            if hw != images.shape[2:]:
                import torch
                import torch.nn.functional as F

                t = F.interpolate(torch.from_numpy(np.ascontiguousarray(images)), size=hw,
                                  mode="bilinear", antialias=True, align_corners=False)
                images = t.clamp_(0, 1).numpy()
        if images is self.images:  # nothing changed: still a copy, so edits never reach the original
            images = images.copy()
        masks = self.masks
        if masks is not None and masks.shape[1:] != images.shape[2:]:
            import torch
            import torch.nn.functional as F

            masks = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=images.shape[2:],
                                  mode="nearest")[:, 0].numpy() > 0.5
        return ImageSet(np.ascontiguousarray(images), self.labels.copy(), self.class_names,
                        self.metadata.copy(), self.name, masks)

    @staticmethod
    def concat(sets: Sequence[ImageSet], name: str = "combined") -> ImageSet:
        """Join sets with the same image shape; classes are prefixed by each set's name."""
        shapes = {s.images.shape[1:] for s in sets}
        if len(shapes) != 1:
            raise DataError(
                f"cannot join image sets of shapes {sorted(shapes)}; call .convert(channels=, size=) first"
            )
        names: list[str] = []
        labels, metas = [], []
        for s in sets:
            labels.append(s.labels + len(names))
            names.extend(f"{s.name}:{c}" for c in s.class_names)
            m = s.metadata.copy()
            m["sample_id"] = s.name + ":" + m["sample_id"].astype(str)
            m["source"] = s.name
            metas.append(m)
        masks = (np.concatenate([s.masks for s in sets]) if all(s.masks is not None for s in sets) else None)
        return ImageSet(np.concatenate([s.images for s in sets]), np.concatenate(labels), tuple(names),
                        pd.concat(metas, ignore_index=True), name, masks)

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageSet({self.name!r}: {len(self)} images {c}x{h}x{w}, {self.n_classes} classes, "
                f"metadata columns {list(self.metadata.columns)})")
