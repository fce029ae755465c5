"""The one embedding cache: every image is embedded at most once per (backbone weights, image set).

Embedding is the expensive step of few-shot inference (scoring an episode from embeddings costs
microseconds), so training's validation, evaluation, the audit and the workbench all read
embeddings from here. ``embed_all(model, images)`` gives the embeddings of a whole image set;
``embedding_table(model, images)`` gives the shared table behind it, whose rows are computed on
demand, for a caller that needs only a few rows now (the workbench embeds one image when a support
image is swapped). Both use the same in-memory store, so an image embedded by one of them is not
embedded again by the other.

Typical use::

    emb = embed_all(model, images)                       # (N, D), computed once
    table = embedding_table(model, images)               # the same store, row by row
    support = table.rows(episode.support_indices(images))
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data.imageset import ImageSet
from .errors import DataError, ModelError
from .files import atomic_write

if TYPE_CHECKING:
    from .models.base import FewShotClassifier

#: image sets x models whose embeddings are kept in memory (least recently used dropped first)
CACHE_SIZE = 8
#: batches at least this large go through the backbone in channels_last memory format
CHANNELS_LAST_MIN = 16

Pixels = ImageSet | np.ndarray | torch.Tensor


def embedding_fingerprint(model: FewShotClassifier) -> str:
    """A hash of what determines ``model.embed``: the embedding function, the backbone's class, its
    identity (external backbones: ``backbone_identity``) and its weights. Fitting a support set or
    SimpleShot's base mean does not change it, so fitted episodes of one model share cached
    embeddings."""
    h = hashlib.sha1()
    embed = type(model).embed
    h.update(f"{embed.__module__}.{embed.__qualname__}|{type(model.backbone).__module__}."
             f"{type(model.backbone).__qualname__}".encode())
    # an external backbone's spec, code or archive hash and input transform: two foreign networks with
    # the same weights (or none) never share entries
    h.update(str(getattr(model.backbone, "backbone_identity", "")).encode())
    for key, tensor in sorted(model.backbone.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def images_fingerprint(images: Pixels) -> str:
    """A hash of the pixels (an ImageSet's own fingerprint, which it computes once)."""
    if isinstance(images, ImageSet):
        return images.fingerprint()
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    h = hashlib.sha1(str(arr.shape).encode() + str(arr.dtype).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _pixels_of(images: Pixels) -> np.ndarray | torch.Tensor:
    pixels = images.images if isinstance(images, ImageSet) else images
    if getattr(pixels, "ndim", None) != 4:
        raise ModelError(f"images must be (N, C, H, W), got shape {tuple(getattr(pixels, 'shape', ()))}")
    return pixels


class EmbeddingTable:
    """Embeddings (N, D) of one image set under one model's weights, computed row by row on demand.

    Get one with :func:`embedding_table` (shared) rather than building it: the table belongs to the
    weights it was made with; after the weights change, ask :func:`embedding_table` again.

    Args:
        model: the few-shot model whose ``embed`` is used.
        images: an ImageSet, or an array/tensor (N, C, H, W) in [0, 1].
        batch_size: images per forward pass.
        key: the cache key (embedding fingerprint, images fingerprint), if known.
    """

    def __init__(self, model: FewShotClassifier, images: Pixels, batch_size: int = 64,
                 key: tuple[str, str] | None = None):
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.pixels = _pixels_of(images)
        self.batch_size = batch_size
        self.key = key
        self._values: torch.Tensor | None = None
        self._have = np.zeros(len(self.pixels), dtype=bool)

    def __len__(self) -> int:
        return len(self._have)

    @property
    def n_embedded(self) -> int:
        """How many images have been embedded so far."""
        return int(self._have.sum())

    @property
    def complete(self) -> bool:
        """Whether every image is embedded."""
        return bool(self._have.all())

    def is_embedded(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Whether each of these image positions has been embedded already (bool array)."""
        return self._have[np.asarray(indices, dtype=np.int64)]

    def rows(self, indices: np.ndarray | list[int], progress: bool = False) -> torch.Tensor:
        """Embeddings (len(indices), D) of these image positions; only images not embedded before
        go through the backbone. The result is a new tensor (changing it leaves the table)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(f"image positions must lie in 0..{len(self) - 1}, got {idx.min()}..{idx.max()}")
        missing = np.unique(idx[~self._have[idx]])
        if len(missing):
            self._store(missing, self._compute(missing, progress))
        if self._values is None:  # no rows asked for and none embedded yet
            return torch.zeros(0, 0)
        # index_select, not values[idx]: advanced indexing stalled for ~10 ms now and then on a busy
        # 2-core machine (its threads wait for each other), index_select takes microseconds
        return torch.index_select(self._values, 0, torch.from_numpy(idx))

    def all(self, progress: bool = False) -> torch.Tensor:
        """Embeddings (N, D) of every image (a new tensor)."""
        if len(self) == 0:
            raise DataError("there are no images to embed; check the image set or the class selection")
        if not self.complete:
            missing = np.flatnonzero(~self._have)
            self._store(missing, self._compute(missing, progress))
        assert self._values is not None
        return self._values.clone()

    def fill(self, values: torch.Tensor) -> None:
        """Set every row from embeddings (N, D) computed elsewhere (a disk cache)."""
        if values.ndim != 2 or len(values) != len(self):
            raise DataError(f"expected embeddings ({len(self)}, D), got {tuple(values.shape)}")
        self._values = values.to(torch.float32).clone()
        self._have[:] = True

    def extended(self, images: Pixels) -> EmbeddingTable:
        """The table of ``images``, whose first N images are this table's (an image set with
        images appended): the rows embedded so far are kept, the new images are embedded on demand."""
        pixels = _pixels_of(images)
        if len(pixels) < len(self):
            raise DataError(f"the new image set has {len(pixels)} images, fewer than the {len(self)} it extends")
        table = embedding_table(self.model, images, batch_size=self.batch_size)
        have = self._have & ~table._have[: len(self)]
        if have.any() and self._values is not None:
            rows = np.flatnonzero(have)
            table._store(rows, torch.index_select(self._values, 0, torch.from_numpy(rows)))
        return table

    # ------------------------------------------------------------------ internals
    def _store(self, positions: np.ndarray, values: torch.Tensor) -> None:
        if self._values is None:
            self._values = torch.zeros(len(self), values.shape[1], dtype=torch.float32)
        self._values.index_copy_(0, torch.from_numpy(positions), values)
        self._have[positions] = True

    def _compute(self, positions: np.ndarray, progress: bool) -> torch.Tensor:
        from tqdm.auto import tqdm

        model = self.model
        was_training = model.training
        model.eval()  # BatchNorm on its running statistics
        whole = len(positions) == len(self)  # slicing avoids copying the image set
        chunks = []
        try:
            with torch.no_grad():
                starts = range(0, len(positions), self.batch_size)
                for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False):
                    stop = start + self.batch_size
                    batch = self.pixels[start:stop] if whole else self.pixels[positions[start:stop]]
                    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
                    x = x.to(torch.float32)
                    model.check_images(x, "images")
                    # channels_last and batches of 64 keep the activations in cache on this CPU: measured
                    # 0.32 s against 0.83 s (NCHW, batches of 256) for 996 PBC 28 px images with Conv-4;
                    # for a few images (a support edit embeds one) the layout change costs more than it
                    # saves (one 64 px image: ~12 ms NCHW against ~100 ms channels_last)
                    if len(x) >= CHANNELS_LAST_MIN:
                        x = x.contiguous(memory_format=torch.channels_last)
                    chunks.append(model.embed(x).to(torch.float32).contiguous())
        finally:
            model.train(was_training)
        emb = torch.cat(chunks)
        if not torch.isfinite(emb).all():
            raise ModelError("the model produced NaN or infinite embeddings; check the weights "
                             "(a diverged training run?)")
        return emb


_TABLES: OrderedDict[tuple[str, str], EmbeddingTable] = OrderedDict()


def embedding_table(model: FewShotClassifier, images: Pixels, batch_size: int = 64) -> EmbeddingTable:
    """The shared embedding table of these images under the model's current weights (made empty
    on first use; the least recently used of more than ``CACHE_SIZE`` tables is dropped)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    key = (embedding_fingerprint(model), images_fingerprint(images))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = EmbeddingTable(model, images, batch_size=batch_size, key=key)
    _TABLES.move_to_end(key)
    while len(_TABLES) > CACHE_SIZE:
        _TABLES.popitem(last=False)
    return table


def clear_embedding_cache() -> None:
    """Forget the embeddings kept in memory."""
    _TABLES.clear()


def embed_all(model: FewShotClassifier, images: Pixels, batch_size: int = 64, progress: bool = False,
              cache: bool = True, disk_cache: bool = False) -> torch.Tensor:
    """Embeddings (N, D) float32 of all images, computed once per (weights, images).

    The model is put in eval mode (BatchNorm uses its running statistics) under ``no_grad`` and
    put back in its previous mode. With ``cache`` the embeddings are kept in memory in the shared
    table of :func:`embedding_table`, so a second call with unchanged weights and images costs a
    hash, and rows another caller embedded already are reused; changed weights give new embeddings.
    With ``disk_cache=True`` they are also stored under ``fsl_xai.config.cache_dir() / "embeddings"``
    and read back in later sessions. The returned tensor is a copy: changing it leaves the cache.

    Args:
        model: a few-shot model (its ``embed`` is used).
        images: an ImageSet, or an array/tensor (N, C, H, W) in [0, 1].
        batch_size: images per forward pass.
        progress: show a progress bar.
        cache: use and fill the in-memory cache.
        disk_cache: also use and fill the on-disk cache.

    Raises:
        ModelError: the images do not fit the backbone (channels, shape).
        DataError: batch_size is not positive or there are no images.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if len(images.images if isinstance(images, ImageSet) else images) == 0:
        raise DataError("there are no images to embed; check the image set or the class selection")
    table = embedding_table(model, images, batch_size) if cache else EmbeddingTable(model, images, batch_size)
    if table.complete:
        return table.all()
    path = None
    if disk_cache:
        from .config import cache_dir

        key = table.key or (embedding_fingerprint(model), images_fingerprint(images))
        path = cache_dir() / "embeddings" / f"{key[0]}-{key[1]}.pt"
        stored = _read(path, len(table))
        if stored is not None:
            table.fill(stored)
            return table.all()
    emb = table.all(progress)
    if path is not None:
        _write(path, emb)
    return emb


def _read(path: os.PathLike[str], n: int) -> torch.Tensor | None:
    if not os.path.exists(path):
        return None
    try:
        emb: Any = torch.load(path, weights_only=True)
    except Exception:  # an unreadable cache file is recomputed and replaced
        return None
    return emb if isinstance(emb, torch.Tensor) and emb.ndim == 2 and len(emb) == n else None


def _write(path: os.PathLike[str], emb: torch.Tensor) -> None:
    with atomic_write(path) as handle:  # another process never reads half a file
        torch.save(emb, handle)


def images_for_model(images: ImageSet, model: FewShotClassifier) -> ImageSet:
    """The images converted to the backbone's channels and input size when they differ (a 3-channel
    model on grey images, say); the same ImageSet when they fit.

    Raises:
        DataError: the images cannot be converted (the message says which model to pick instead).
    """
    cin = getattr(model.backbone, "in_channels", images.n_channels)
    size = tuple(getattr(model.backbone, "image_size", images.image_size))
    if images.n_channels == cin and tuple(images.image_size) == size:
        return images
    try:
        return images.convert(channels=cin, size=size)
    except DataError as exc:
        raise DataError(f"these images do not fit the model ({exc}); pick a model trained on such images") from exc


__all__ = ["CACHE_SIZE", "EmbeddingTable", "clear_embedding_cache", "embed_all", "embedding_fingerprint",
           "embedding_table", "images_fingerprint", "images_for_model"]
