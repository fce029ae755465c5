"""The audit folder (format ``fsl-xai-audit/1``): paths, atomic writes and the resumability markers.

Layout: ``manifest.json`` (provenance, protocol, spec hash, ``complete``); ``queries.parquet`` (one
row per query: row, episode, query, image_index, true, pred, correct, margin, confidence, the
guard's ood_score/ood_flag, the ``--by`` columns; never sample ids); ``accuracy.json`` (pooled and
per-class accuracy with episode-aware 95% intervals); ``subgroups.parquet`` (with ``--by``);
``maps/<method>/chunk-NNNNN.npz`` (``rows`` int64, ``maps`` float16 (n, H, W)); ``quality.parquet``
(with ``--quality``: row, episode, method, check, value, status); ``chunks/`` (markers, internal).

Every file is written through :func:`fsl_xai.files.atomic_write`, so a reader (or a resumed run)
sees a complete file or none. A chunk's marker (``chunks/chunk-NNNNN.done``) is written after its
map shards and quality part, and names the spec hash it was computed for: a chunk counts as done
only when its marker has the folder's spec hash and every file it lists is present.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..files import atomic_write
from .chunks import ChunkResult
from .spec import FORMAT, AuditError

#: the names an audit writes directly inside its folder (all that ``--force`` removes)
OWN_NAMES = ("manifest.json", "queries.parquet", "accuracy.json", "subgroups.parquet", "quality.parquet", "maps",
             "chunks")


class AuditFolder:
    """Paths and writers of one audit folder."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    # ------------------------------------------------------------------------------------- paths
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def table_path(self, name: str) -> Path:
        return self.root / f"{name}.parquet"

    def map_path(self, method: str, chunk: int) -> Path:
        return self.root / "maps" / method / f"chunk-{chunk:05d}.npz"

    def marker_path(self, chunk: int) -> Path:
        return self.root / "chunks" / f"chunk-{chunk:05d}.done"

    def quality_part_path(self, chunk: int) -> Path:
        return self.root / "chunks" / f"quality-{chunk:05d}.parquet"

    # ----------------------------------------------------------------------------------- reading
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none."""
        if not self.manifest_path.is_file():
            return None
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise AuditError(f"{self.manifest_path} is unreadable ({exc}); delete the folder or pass --force") from None
        return data if isinstance(data, dict) else None

    def prepare(self, spec_hash: str, force: bool) -> None:
        """Make the folder ready for a run with this spec hash.

        A new or empty folder is used as is; a folder of the same spec resumes; anything else is an
        error unless ``force``, which removes the audit's own files (never anything else).
        """
        if self.root.exists() and not self.root.is_dir():
            raise AuditError(f"--out {self.root} is a file; give a folder for the audit")
        entries = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        if entries:
            manifest = self.read_manifest()
            same = manifest is not None and manifest.get("format") == FORMAT and manifest.get("spec_hash") == spec_hash
            if not same and not force:
                what = ("an audit of another checkpoint, data or settings" if manifest is not None
                        else "not an audit folder")
                raise AuditError(f"--out {self.root} holds {what}; choose a new folder, or pass --force to replace "
                                 "the audit files in it")
            if not same:
                for name in OWN_NAMES:
                    path = self.root / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def chunk_done(self, chunk: int, spec_hash: str) -> bool:
        """Whether this chunk's results are on disk for this spec."""
        marker = self.marker_path(chunk)
        if not marker.is_file():
            return False
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(data, dict) and data.get("spec_hash") == spec_hash
                and all((self.root / f).is_file() for f in data.get("files", [])))

    # ----------------------------------------------------------------------------------- writing
    def write_json(self, path: Path, data: Any) -> None:
        with atomic_write(path) as handle:
            handle.write((json.dumps(data, indent=1) + "\n").encode())

    def write_table(self, path: Path, table: pd.DataFrame) -> None:
        with atomic_write(path) as handle:
            table.to_parquet(handle, index=False, engine="pyarrow")

    def write_chunk(self, result: ChunkResult, spec_hash: str) -> None:
        """A chunk's map shards, its quality part, then its marker."""
        files = []
        for method, maps in result.maps.items():
            path = self.map_path(method, result.index)
            buffer = io.BytesIO()
            np.savez(buffer, rows=result.rows.astype(np.int64), maps=maps.astype(np.float16))
            with atomic_write(path) as handle:
                handle.write(buffer.getvalue())
            files.append(path.relative_to(self.root).as_posix())
        if result.quality is not None:
            path = self.quality_part_path(result.index)
            self.write_table(path, result.quality)
            files.append(path.relative_to(self.root).as_posix())
        self.write_json(self.marker_path(result.index),
                        {"spec_hash": spec_hash, "n_rows": len(result.rows), "files": files})

    def quality_table(self, n_chunks: int) -> pd.DataFrame:
        """The quality parts of every chunk, in chunk order."""
        parts = [pd.read_parquet(self.quality_part_path(c)) for c in range(n_chunks)]
        return pd.concat(parts, ignore_index=True)


def read_maps(root: str | os.PathLike[str], method: str) -> tuple[np.ndarray, np.ndarray]:
    """All map shards of one method of an audit folder: (rows (n,) int64, maps float16 (n, H, W)),
    sorted by row. For tests and small audits; a reader of a large audit reads shard by shard."""
    shards = sorted((Path(root) / "maps" / method).glob("chunk-*.npz"))
    if not shards:
        raise AuditError(f"{root} has no maps of method {method!r}")
    rows, maps = [], []
    for shard in shards:
        with np.load(shard) as data:
            rows.append(data["rows"])
            maps.append(data["maps"])
    r, m = np.concatenate(rows), np.concatenate(maps)
    order = np.argsort(r, kind="stable")
    return r[order], m[order]


__all__ = ["OWN_NAMES", "AuditFolder", "read_maps"]
