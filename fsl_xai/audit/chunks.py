"""One chunk of an audit: the attribution maps (and quality checks) of every query of a few episodes.

:func:`run_chunk` is what a Dask worker runs, and what the in-process path runs in a plain loop:
the same function on the same inputs, with one torch thread, so both give the same numbers.

A task carries everything it needs: the checkpoint's bytes (loaded once per process and kept,
keyed by their SHA-256) and the pixels of its episodes, so a worker needs neither the client's
disk nor the data set. It returns small arrays; the client writes them.

A worker runs :func:`run_chunk_in_worker`, which first makes the worker process's glibc malloc keep
freed memory for reuse (:func:`keep_freed_memory`): an explanation's largest tensors (60 queries x 64
channels x 64 x 64 float32 = 63 MB) are above the largest threshold under which glibc serves memory
from its heap, so by default each is mapped afresh and its pages zeroed on first touch (about 460
page faults per map, 15-20 % of a chunk's CPU time, measured). The numbers do not change.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..models import FewShotClassifier
from ..training import torch_threads

#: models kept per process (one audit uses one; a long-lived worker may serve a few)
MODEL_CACHE_SIZE = 2
#: the quality table's columns, in order
QUALITY_COLUMNS = ["row", "episode", "method", "check", "value", "status"]
#: the largest magnitude float16 holds; maps are clipped to it rather than stored as infinities
FLOAT16_MAX = float(np.finfo(np.float16).max)

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
#: free memory at the top of the heap that glibc keeps rather than returning it to the system
KEPT_FREE_BYTES = 1 << 30
#: glibc's padding of each heap extension; at least one heap (64 MiB) so that a thread's arena (a
#: Dask worker computes in a thread) keeps its emptied heaps instead of unmapping them
TOP_PAD_BYTES = 64 << 20

_MODELS: OrderedDict[str, FewShotClassifier] = OrderedDict()
_KEEPS_FREED_MEMORY: list[bool] = []


@dataclass(frozen=True)
class ChunkContext:
    """What every chunk of one audit shares."""

    checkpoint: bytes
    checkpoint_sha256: str
    methods: tuple[str, ...]
    quality: bool
    seed: int


@dataclass(frozen=True)
class EpisodeInputs:
    """One episode's pixels and the classes to explain.

    Attributes:
        episode: the episode's index; rows: (n_query,) its queries' rows of the query table.
        support_images, support_labels: (n_support, C, H, W) float32 and (n_support,) episode labels.
        query_images: (n_query, C, H, W) float32; targets: (n_query,) the predicted episode label of
            each query (the class its map explains); masks: (n_query, H, W) bool lesion masks or None.
    """

    episode: int
    rows: np.ndarray
    support_images: np.ndarray
    support_labels: np.ndarray
    query_images: np.ndarray
    targets: np.ndarray
    masks: np.ndarray | None = None


@dataclass(frozen=True)
class ChunkTask:
    """One chunk: its number and its episodes."""

    index: int
    episodes: tuple[EpisodeInputs, ...]


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk returns.

    Attributes:
        index: the chunk's number.
        rows: (n,) int64 rows of the query table, in order.
        maps: per method, float16 (n, H, W) maps in ``rows`` order.
        quality: the quality rows (``QUALITY_COLUMNS``), or None without quality checks.
    """

    index: int
    rows: np.ndarray
    maps: dict[str, np.ndarray]
    quality: pd.DataFrame | None


def cached_model(checkpoint: bytes, sha256: str) -> FewShotClassifier:
    """The model of these checkpoint bytes, loaded once per process."""
    from ..checkpoints import load_checkpoint
    from ..errors import CheckpointError

    if sha256 in _MODELS:
        _MODELS.move_to_end(sha256)
        return _MODELS[sha256]
    if hashlib.sha256(checkpoint).hexdigest() != sha256:
        raise CheckpointError("the checkpoint bytes sent to this worker are damaged (SHA-256 differs); run again")
    with tempfile.TemporaryDirectory(prefix="fsl-xai-audit-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        path.write_bytes(checkpoint)
        model, _ = load_checkpoint(path)
    _MODELS[sha256] = model
    while len(_MODELS) > MODEL_CACHE_SIZE:
        _MODELS.popitem(last=False)
    return model


def keep_freed_memory() -> bool:
    """Make glibc's malloc in this process serve every allocation from its heap (no ``mmap`` per
    large block) and keep up to :data:`KEPT_FREE_BYTES` of freed memory for reuse; once per process.

    For processes that exist to run chunks (Dask workers): the process keeps its peak heap (one
    chunk's working set) mapped instead of mapping and zeroing its largest tensors for every
    episode. Returns whether the settings took (False off glibc, e.g. macOS or musl).
    """
    if _KEEPS_FREED_MEMORY:
        return _KEEPS_FREED_MEMORY[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = all(mallopt(param, value) == 1 for param, value in
                     ((_M_TRIM_THRESHOLD, KEPT_FREE_BYTES), (_M_TOP_PAD, TOP_PAD_BYTES), (_M_MMAP_MAX, 0)))
    _KEEPS_FREED_MEMORY.append(ok)
    return ok


def as_float16(maps: np.ndarray) -> np.ndarray:
    """float16 maps, clipped to float16's range (no infinities)."""
    return np.clip(maps, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


def _pixels(images: np.ndarray) -> torch.Tensor:
    """A float32 tensor with torch's standard (contiguous) strides and memory.

    A grey image array may carry any stride on its channel axis of size 1, and pickling changes
    it; torch reads such strides as another memory format and picks kernels that round
    differently, so the same pixels must always arrive in the same layout.
    """
    out = torch.empty(images.shape, dtype=torch.float32)
    out.copy_(torch.from_numpy(np.asarray(images, dtype=np.float32)))
    return out


def _quality_rows(check: object, rows: np.ndarray, episode: int, method: str) -> pd.DataFrame:
    """Per query: the check's value and whether it passes against the check's threshold over the
    episode's queries (fixed thresholds such as randomisation's are the same for every query)."""
    from ..explain.quality import BadgeCheck

    assert isinstance(check, BadgeCheck)
    values = np.array([np.nan if v is None else v for v in check.values], dtype=np.float64)
    status = np.full(len(values), "undefined", dtype=object)
    if check.threshold is not None:
        defined = np.isfinite(values)
        better = values > check.threshold if check.higher_is_better else values < check.threshold
        status[defined] = np.where(better[defined], "passed", "failed")
    return pd.DataFrame({"row": rows.astype(np.int64), "episode": np.full(len(rows), episode, dtype=np.int64),
                         "method": method, "check": check.name, "value": values, "status": status})


def run_chunk(context: ChunkContext, task: ChunkTask) -> ChunkResult:
    """Explain every query of the chunk's episodes with every method (and check the maps).

    Episode ``e`` is fitted on its support images and explained with seed ``context.seed + e``,
    so a map does not depend on the chunk it falls in.
    """
    from ..explain import explain

    with torch_threads(1):
        model = cached_model(context.checkpoint, context.checkpoint_sha256)
        maps: dict[str, list[np.ndarray]] = {m: [] for m in context.methods}
        quality: list[pd.DataFrame] = []
        for ep in task.episodes:
            support, queries = _pixels(ep.support_images), _pixels(ep.query_images)
            fitted = model.fit(support, torch.from_numpy(ep.support_labels.astype(np.int64))).with_queries(queries)
            targets = [int(t) for t in ep.targets]
            seed = context.seed + ep.episode
            for method in context.methods:
                attribution = explain(fitted, queries, method=method, target=targets, seed=seed,
                                      query_indices=list(range(len(targets))))
                maps[method].append(as_float16(attribution.maps))
                if context.quality:
                    from ..explain.quality import badges

                    result = badges(fitted, queries, method, support, mask=ep.masks, attribution=attribution,
                                    seed=seed)
                    quality += [_quality_rows(c, ep.rows, ep.episode, method) for c in result.checks]
    rows = np.concatenate([ep.rows for ep in task.episodes]).astype(np.int64)
    table = pd.concat(quality, ignore_index=True)[QUALITY_COLUMNS] if quality else None
    return ChunkResult(task.index, rows, {m: np.concatenate(v) for m, v in maps.items()}, table)


def run_chunk_in_worker(context: ChunkContext, task: ChunkTask) -> ChunkResult:
    """:func:`run_chunk` in a process that runs chunks only (a Dask worker): the same results, after
    :func:`keep_freed_memory` (once per process)."""
    keep_freed_memory()
    return run_chunk(context, task)


__all__ = ["KEPT_FREE_BYTES", "QUALITY_COLUMNS", "ChunkContext", "ChunkResult", "ChunkTask", "EpisodeInputs",
           "as_float16", "cached_model", "keep_freed_memory", "run_chunk", "run_chunk_in_worker"]
