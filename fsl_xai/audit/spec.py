"""What an audit computes: :class:`AuditSpec`, checked before any work starts, and its hash.

The spec names the inputs (checkpoint, images, protocol) and the outputs (attribution methods,
quality checks, subgroup columns). Two runs with equal specs on the same checkpoint and images
produce the same folder, so the hash of the spec (with the checkpoint's and the images' content
hashes) tells a resumable folder from one written for something else.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import DataError, FslXaiError

#: the folder format this package writes
FORMAT = "fsl-xai-audit/1"
#: episodes per chunk (one Dask task) unless the spec says otherwise
DEFAULT_CHUNK_EPISODES = 5
#: metadata columns that identify a patient or a file: never written, never a subgroup column
IDENTIFYING_COLUMNS = ("sample_id", "image_id", "filenames", "filename", "file", "path", "patient_id")


class AuditError(FslXaiError, ValueError):
    """An audit cannot run as asked (a folder written for another spec, a bad scheduler address, ...)."""


def _names(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """A comma-separated string or a sequence -> a tuple of non-empty stripped names."""
    if values is None:
        return ()
    items = values.split(",") if isinstance(values, str) else list(values)
    return tuple(str(v).strip() for v in items if str(v).strip())


@dataclass(frozen=True)
class AuditSpec:
    """Everything that determines an audit's results.

    Attributes:
        checkpoint: a checkpoint written by ``fsl-xai train`` (path).
        dataset / data_file: the images (exactly one of them): a registered dataset name, or your own
            images (an .npz file, an image folder or a DICOM folder; see ``fsl_xai.data.open``).
        split: the split to audit.
        convert: convert the images to the checkpoint's channels and size when they differ.
        classes: the classes to draw episodes from (default: those the model was not trained on).
        n_way: classes per episode (default: all chosen classes, at most 5); n_shot, n_query:
            support images and queries per class; episodes: how many episodes; seed: the episode
            sampler's seed (episode ``i`` explains with seed ``seed + i``).
        methods: attribution methods (names in :data:`fsl_xai.explain.METHODS`), each with its
            registry defaults.
        quality: add the per-map quality checks (:func:`fsl_xai.explain.quality.badges`).
        by: metadata columns for the subgroup table.
        guard: a domain guard file saved by ``fsl-xai guard --save-guard``; adds ``ood_score`` and
            ``ood_flag`` to the query table.
        chunk_episodes: episodes per chunk (one task); results do not depend on it, the shard
            layout does.
    """

    checkpoint: str
    dataset: str | None = None
    data_file: str | None = None
    split: str = "test"
    convert: bool = False
    classes: tuple[str, ...] | None = None
    n_way: int | None = None
    n_shot: int = 5
    n_query: int = 15
    episodes: int = 600
    seed: int = 0
    methods: tuple[str, ...] = ("gradcam",)
    quality: bool = False
    by: tuple[str, ...] = ()
    guard: str | None = None
    chunk_episodes: int = DEFAULT_CHUNK_EPISODES

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", _names(self.methods))
        object.__setattr__(self, "by", _names(self.by))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def checked(self) -> AuditSpec:
        """This spec after the checks that need no data (ranges, method names); raises on bad input."""
        from ..explain import method_spec

        if (self.dataset is None) == (self.data_file is None):
            raise DataError("give the images as exactly one of a dataset name (--dataset) or your own images "
                            "(--data-file)")
        for name in ("n_shot", "n_query", "episodes", "chunk_episodes"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.n_way is not None and self.n_way < 2:
            raise DataError(f"n-way must be at least 2, got {self.n_way}")
        if not self.methods:
            raise DataError("no attribution method given; name at least one with --methods (e.g. gradcam,saliency)")
        if len(set(self.methods)) != len(self.methods):
            raise DataError(f"--methods names a method twice: {list(self.methods)}")
        for m in self.methods:
            method_spec(m)  # ModelError naming the choices when unknown
        bad = [c for c in self.by if c in IDENTIFYING_COLUMNS]
        if bad:
            raise DataError(f"--by {bad[0]} identifies single images; group by a shared attribute such as site, "
                            "sex or age instead")
        return self

    def with_chunk_episodes(self, n: int) -> AuditSpec:
        return replace(self, chunk_episodes=int(n))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        out["methods"], out["by"] = list(self.methods), list(self.by)
        out["classes"] = None if self.classes is None else list(self.classes)
        return out

    def fingerprint(self, checkpoint_sha256: str, images_fingerprint: str) -> str:
        """A hash of the spec's results-relevant fields and of the inputs' contents (paths left out,
        so a moved checkpoint or data file still resumes)."""
        fields = self.to_dict()
        for path_field in ("checkpoint", "data_file", "guard"):
            fields[path_field] = fields[path_field] is not None
        fields.update(checkpoint_sha256=checkpoint_sha256, images=images_fingerprint, format=FORMAT)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

    def command(self, out_dir: str) -> str:
        """The ``fsl-xai audit`` command line that reproduces this spec into ``out_dir``."""
        args = ["fsl-xai", "audit", "--checkpoint", self.checkpoint]
        args += ["--dataset", self.dataset] if self.dataset is not None else ["--data-file", str(self.data_file)]
        args += ["--split", self.split]
        if self.convert:
            args.append("--convert")
        if self.classes:
            args += ["--classes", *self.classes]
        if self.n_way is not None:
            args += ["--n-way", str(self.n_way)]
        args += ["--n-shot", str(self.n_shot), "--n-query", str(self.n_query), "--episodes", str(self.episodes),
                 "--methods", ",".join(self.methods)]
        if self.quality:
            args.append("--quality")
        if self.by:
            args += ["--by", ",".join(self.by)]
        if self.guard is not None:
            args += ["--guard", self.guard]
        args += ["--chunk-episodes", str(self.chunk_episodes), "--seed", str(self.seed), "--out", out_dir]
        return shlex.join(args)

    def report_command(self, out_dir: str, html: str = "report.html") -> str:
        """The ``fsl-xai report`` command line for the audit in ``out_dir``: with ``--data-file`` when the
        audit read your own images (the report shows the query images from that file)."""
        args = ["fsl-xai", "report", out_dir, "--out", html]
        if self.data_file is not None:
            args += ["--data-file", str(self.data_file)]
        return shlex.join(args)


__all__ = ["DEFAULT_CHUNK_EPISODES", "FORMAT", "IDENTIFYING_COLUMNS", "AuditError", "AuditSpec"]
