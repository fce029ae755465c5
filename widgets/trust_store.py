"""What the workbench keeps of its trust computations (:mod:`widgets.trust`): the held-in score, and
the caches of domain guards and held-in evaluations, in memory (per model and data, shared by every
workbench of this kernel) and on disk (``FSL_XAI_CACHE_DIR/workbench-trust``: plain arrays and JSON,
no pickles; a damaged or foreign file is ignored and recomputed)."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fsl_xai.errors import FslXaiError
from fsl_xai.evaluation import accuracy_interval
from fsl_xai.files import atomic_write
from fsl_xai.guard import DomainGuard
from fsl_xai.intervals import Interval

from .figures import rate_text

#: model x data entries kept in each cache
CACHE_SIZE = 8
#: the version of the files kept under FSL_XAI_CACHE_DIR/workbench-trust (a new one ignores old files)
DISK_FORMAT = 2

GUARDS: OrderedDict[tuple, tuple[DomainGuard | None, str]] = OrderedDict()
#: a held-in evaluation: its per-query table (None: the note says why), what it was measured on (or
#: why there is none), its episode shape (n_way, n_shot, n_query) and its score
HeldIn = tuple["pd.DataFrame | None", str, tuple[int, int, int], "HeldInScore | None"]
HELD_IN: OrderedDict[tuple, HeldIn] = OrderedDict()


def remember(cache: OrderedDict, key: tuple, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value


@dataclass(frozen=True)
class HeldInScore:
    """Accuracy on held-in episodes of the data on screen (its validation score).

    Attributes:
        accuracy: pooled accuracy with its interval (a cluster bootstrap over episodes).
        n_correct, n_queries, n_episodes: what it counts.
        n_flagged: held-in queries the domain guard flags (None without a guard).
        where: what the episodes were drawn from; shape: (n_way, n_shot, n_query).
        classes: the classes drawn from.
    """

    accuracy: Interval
    n_correct: int
    n_queries: int
    n_episodes: int
    n_flagged: int | None
    where: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]

    @classmethod
    def of(cls, table: pd.DataFrame, where: str, shape: tuple[int, int, int], classes: tuple[str, ...]
           ) -> HeldInScore:
        """The score of a held-in evaluation's per-query table."""
        flags = int(table["ood_flag"].sum()) if "ood_flag" in table.columns else None
        return cls(accuracy=accuracy_interval(table), n_correct=int(table["correct"].sum()), n_queries=len(table),
                   n_episodes=int(table["episode"].nunique()), n_flagged=flags, where=where, shape=shape,
                   classes=classes)

    def text(self) -> str:
        way, shot, query = self.shape
        return (f"{rate_text(self.n_correct, self.n_queries, 'validation accuracy', self.accuracy, self.n_flagged)}"
                f", measured on {self.where}: {self.n_episodes} episodes, {way}-way {shot}-shot, {query} "
                f"quer{'ies' if query != 1 else 'y'} per class, classes {', '.join(self.classes)}")



def write_quietly(write: Callable[[], Any]) -> None:
    """Keep a result in the cache folder; a folder that cannot be written only costs a recomputation."""
    try:
        write()
    except OSError:
        pass


def read_guard(path: Path, fingerprint: str) -> DomainGuard | None:
    """A guard kept by an earlier session, None when absent, unreadable, without its reference
    embeddings or fitted on other embeddings."""
    if not path.is_file():
        return None
    try:
        guard = DomainGuard.load(path)
    except (FslXaiError, OSError, ValueError, KeyError):
        return None
    if guard.reference_ is None or guard.embedding_fingerprint != fingerprint:
        return None
    return guard


def write_held_in(path: Path, entry: HeldIn) -> None:
    """The per-query table of a held-in evaluation as plain arrays (no pickles), with what it was
    measured on and its score (read back without recomputing its bootstrap interval)."""
    table, where, shape, score = entry
    assert table is not None and score is not None
    arrays: dict[str, np.ndarray] = {}
    kinds = []
    for i, column in enumerate(table.columns):
        values = table[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            arrays[f"c{i}"] = values.to_numpy()
            kinds.append("value")
        else:
            arrays[f"c{i}"] = np.asarray(values.astype(str).to_numpy(), dtype=str)
            kinds.append("text")
    meta = {"columns": [str(c) for c in table.columns], "kinds": kinds, "where": where, "shape": list(shape),
            "score": dataclasses.asdict(score)}
    arrays["meta"] = np.asarray(json.dumps(meta))
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stubs take the keywords for allow_pickle


def read_held_in(path: Path) -> HeldIn | None:
    """What :func:`write_held_in` kept; None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            columns = {name: (stored[f"c{i}"] if kind == "value" else stored[f"c{i}"].astype(object))
                       for i, (name, kind) in enumerate(zip(meta["columns"], meta["kinds"], strict=True))}
        way, shot, query = (int(v) for v in meta["shape"])
        s = meta["score"]
        score = HeldInScore(accuracy=Interval(**s["accuracy"]), n_correct=int(s["n_correct"]),
                            n_queries=int(s["n_queries"]), n_episodes=int(s["n_episodes"]),
                            n_flagged=None if s["n_flagged"] is None else int(s["n_flagged"]),
                            where=str(s["where"]), shape=(way, shot, query), classes=tuple(s["classes"]))
        return pd.DataFrame(columns), str(meta["where"]), (way, shot, query), score
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
