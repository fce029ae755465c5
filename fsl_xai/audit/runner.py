"""``run_audit``: a whole split's predictions, attribution maps, quality checks and subgroup gaps,
in chunks of episodes run in-process or as tasks on Dask distributed, written to an audit folder.

Typical use::

    spec = AuditSpec(checkpoint="model.pt", dataset="synthetic", episodes=100, methods=("gradcam",))
    run_audit(spec, "audit/")                      # in-process (the reference path)
    run_audit(spec, "audit/", workers=2)           # a LocalCluster of 2 processes on 127.0.0.1
    run_audit(spec, "audit/", scheduler="tcp://127.0.0.1:8786")   # an existing cluster

The client embeds every image once and scores every episode (:func:`fsl_xai.evaluation.evaluate`,
with the domain guard when one is given), writes the query table, then sends chunks of episodes
(pixels and the checkpoint's bytes, so workers need no shared disk) and writes each chunk's maps as
it arrives (:func:`distributed.as_completed`); at most a few chunks are in flight, so memory stays
bounded. A rerun of the same spec skips finished chunks; Dask reruns a chunk whose worker died.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .chunks import ChunkContext, ChunkResult, ChunkTask, EpisodeInputs, run_chunk, run_chunk_in_worker
from .spec import FORMAT, AuditError, AuditSpec
from .store import AuditFolder
from .tables import accuracy_summary, by_columns, query_table, subgroup_rows

if TYPE_CHECKING:
    from dask.distributed import Client

    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet
    from ..evaluation import EvaluationResult

#: called as progress(chunks done, chunks in all)
Progress = Callable[[int, int], None]
#: a scheduler address: protocol, host and port
ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s/:]+(:\d+)?$")
#: chunks in flight per worker thread (one running, one waiting), so memory stays bounded
IN_FLIGHT_PER_THREAD = 2


@dataclass(frozen=True)
class AuditResult:
    """What a run did: the folder, its spec hash, how many chunks it computed and skipped, and the
    ``fsl-xai report`` command for the folder (as the manifest records it)."""

    out_dir: Path
    spec_hash: str
    n_chunks: int
    computed: int
    skipped: int
    report_command: str = ""


@dataclass
class _Prepared:
    spec: AuditSpec
    info: CheckpointInfo
    images: ImageSet
    classes: list[str]
    result: EvaluationResult
    checkpoint: bytes
    sha256: str
    spec_hash: str
    guard: Any


def _prepare(spec: AuditSpec, progress: bool) -> _Prepared:
    from ..checkpoints import images_for_checkpoint, load_checkpoint, untrained_classes
    from ..data.open import load_images
    from ..evaluation import evaluate
    from ..explain.core import refused_methods

    spec = spec.checked()
    model, info = load_checkpoint(spec.checkpoint)
    refused = refused_methods(model, spec.methods)
    if refused:  # said before any chunk runs, not by the first chunk that tries the method
        raise AuditError("--methods: " + "; ".join(refused.values()))
    checkpoint = Path(spec.checkpoint).read_bytes()
    images = images_for_checkpoint(load_images(spec.dataset, spec.data_file, spec.split, progress), info, spec.convert)
    by_columns(images, spec.by)
    classes = untrained_classes(info, images, spec.classes)
    guard = None
    if spec.guard is not None:
        from ..guard import DomainGuard

        guard = DomainGuard.load(spec.guard)
    n_way = spec.n_way if spec.n_way is not None else min(5, len(classes))
    result = evaluate(model, images, n_way=n_way, n_shot=spec.n_shot, n_query=spec.n_query, episodes=spec.episodes,
                      seed=spec.seed, classes=classes, progress=progress, guard=guard)
    sha256 = hashlib.sha256(checkpoint).hexdigest()
    return _Prepared(spec, info, images, classes, result, checkpoint, sha256,
                     spec.fingerprint(sha256, images.fingerprint()), guard)


def _tasks(p: _Prepared, chunks: list[int]) -> Iterator[ChunkTask]:
    """The chunks' inputs, built one at a time (pixels are copied only for the chunk at hand)."""
    assert p.result.sampler is not None
    spec, images = p.spec, p.images
    targets = p.result.predictions["pred_label"].to_numpy(dtype=np.int64)
    n_q = p.result.n_way * spec.n_query
    for c in chunks:
        episodes = []
        for e in range(c * spec.chunk_episodes, min(spec.episodes, (c + 1) * spec.chunk_episodes)):
            _, s, sl, q, _ = p.result.sampler.sample_indices(e)
            rows = np.arange(e * n_q, (e + 1) * n_q, dtype=np.int64)
            episodes.append(EpisodeInputs(e, rows, images.images[s], sl, images.images[q], targets[rows],
                                          None if images.masks is None else images.masks[q]))
        yield ChunkTask(c, tuple(episodes))


def _image_index(p: _Prepared) -> np.ndarray:
    assert p.result.sampler is not None
    return np.concatenate([p.result.sampler.sample_indices(e)[3] for e in range(p.spec.episodes)])


def _manifest(p: _Prepared, out_dir: Path, n_chunks: int, complete: bool) -> dict[str, Any]:
    import dask
    import torch

    from .. import __version__

    spec = p.spec
    data_name = spec.dataset if spec.dataset is not None else Path(str(spec.data_file)).name
    return {
        "format": FORMAT, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "complete": complete,
        "reproduce": spec.command(str(out_dir)), "report_command": spec.report_command(str(out_dir)),
        "checkpoint": {"file": Path(spec.checkpoint).name, "sha256": p.sha256, "info": p.info.to_dict()},
        "data": {"name": data_name, "source": "dataset" if spec.dataset is not None else "file", "split": spec.split,
                 "n_images": len(p.images), "classes": list(p.images.class_names), "episode_classes": p.classes},
        "protocol": {"n_way": p.result.n_way, "n_shot": spec.n_shot, "n_query": spec.n_query,
                     "episodes": spec.episodes, "seed": spec.seed},
        "methods": list(spec.methods), "quality": spec.quality, "by": list(spec.by),
        "guard": None if p.guard is None else {"threshold": float(p.guard.threshold),
                                                "source": Path(str(spec.guard)).name},
        "chunks": {"size": spec.chunk_episodes, "n": n_chunks}, "spec_hash": p.spec_hash,
        "versions": {"fsl_xai": __version__, "torch": torch.__version__, "dask": dask.__version__},
    }


@contextmanager
def local_client(workers: int) -> Iterator[Client]:
    """A client of a LocalCluster as the audit makes one: ``workers`` processes of 1 thread on
    127.0.0.1, no dashboard; closed (workers included) when the block ends."""
    import dask
    from dask.distributed import Client, LocalCluster

    # Workers without Dask's default MALLOC_TRIM_THRESHOLD_: setting it fixes glibc's mmap threshold,
    # so every large tensor of an explanation is mapped and zeroed afresh (2x the time per chunk,
    # measured; the workers' malloc settings are chunks.keep_freed_memory's); without the statistical
    # profiler, which samples the computing thread every 10 ms. The periodic bookkeeping of every
    # process (event-loop tick, system monitor for the dashboard we do not start, memory monitor)
    # runs less often: on an idle 2-worker cluster it cost 6 % of a core, under 3 % after (measured); the
    # memory monitor still checks the pause and terminate limits 4 times a second.
    settings = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                "distributed.worker.profile.enabled": False,
                "distributed.admin.tick.interval": "500ms", "distributed.admin.system-monitor.interval": "2s",
                "distributed.worker.memory.monitor-interval": "250ms"}
    with dask.config.set(settings), warnings.catch_warnings():
        # distributed warns when making the workers' scratch folders takes over a second, which
        # only says that the machine is busy
        warnings.filterwarnings("ignore", message="Creating scratch directories is taking a surprisingly long time",
                                category=UserWarning)
        # no dashboard; the scheduler's small HTTP server (health checks) on a free port of
        # 127.0.0.1, not on 8787, which another cluster on the machine may hold
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


def _connect(stack: ExitStack, client: Client | None, scheduler: str | None, workers: int,
             connect_timeout: float) -> Client | None:
    """The client to run on: the one given, one connected to ``scheduler``, a LocalCluster of
    ``workers`` processes, or None (in-process)."""
    if client is not None:
        return client
    if scheduler is None and workers <= 0:
        return None
    from dask.distributed import Client

    if scheduler is not None:
        try:
            return stack.enter_context(Client(scheduler, timeout=f"{connect_timeout}s"))
        except (OSError, TimeoutError) as exc:
            raise AuditError(f"no Dask scheduler answered at {scheduler} within {connect_timeout:g} s "
                             f"({type(exc).__name__}); start one with `dask scheduler --host 127.0.0.1` and "
                             "workers with `dask worker ADDRESS`, or drop --scheduler to use a local cluster") from None
    return stack.enter_context(local_client(workers))


def _run_tasks(client: Client | None, context: ChunkContext, tasks: Iterator[ChunkTask],
               on_result: Callable[[ChunkResult], None], spec_hash: str) -> None:
    """Run the chunks in-process, or on the cluster with a bounded number in flight."""
    if client is None:
        for task in tasks:
            on_result(run_chunk(context, task))
        return
    from dask.distributed import as_completed

    slots = max(1, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    token = os.urandom(4).hex()

    def submit(task: ChunkTask) -> Any:
        return client.submit(run_chunk_in_worker, context, task, key=f"fsl-xai-audit-{spec_hash}-{task.index}-{token}",
                             pure=False)

    running = as_completed([submit(t) for _, t in zip(range(slots), tasks, strict=False)])
    try:
        for future in running:
            result = future.result()
            future.release()
            on_result(result)
            following = next(tasks, None)
            if following is not None:
                running.add(submit(following))
    finally:
        client.cancel(list(running.futures))


def run_audit(spec: AuditSpec, out_dir: str | os.PathLike[str], *, client: Client | None = None,
              scheduler: str | None = None, workers: int = 0, progress: bool | Progress = True,
              force: bool = False, connect_timeout: float = 10.0) -> AuditResult:
    """Audit a checkpoint on a whole split, into the folder ``out_dir`` (format ``fsl-xai-audit/1``).

    Args:
        spec: what to compute (:class:`AuditSpec`).
        out_dir: the audit folder; a folder of the same spec resumes (finished chunks are kept).
        client: a ``distributed.Client`` to run the chunks on (not closed here).
        scheduler: the address of a running Dask scheduler (``tcp://127.0.0.1:8786``).
        workers: with neither client nor scheduler, the worker processes of a LocalCluster on
            127.0.0.1 (1 thread each, no dashboard); 0 runs the chunks in this process.
        progress: True shows progress bars on stderr; a callable gets ``(chunks done, chunks)``.
        force: replace an audit of another spec in ``out_dir``.
        connect_timeout: seconds to wait for ``scheduler``.

    Returns:
        :class:`AuditResult`.

    Raises:
        AuditError, DataError, ModelError, CheckpointError, EpisodeError: bad input (messages say
        how to fix it), before any chunk runs.
    """
    if scheduler is not None and client is not None:
        raise AuditError("give a client or a scheduler address, not both")
    if workers < 0:
        raise AuditError(f"workers must be 0 (in-process) or more, got {workers}")
    if scheduler is not None and not ADDRESS.match(scheduler):
        raise AuditError(f"--scheduler {scheduler!r} is not a scheduler address; give one like "
                         "tcp://127.0.0.1:8786 (what `dask scheduler` prints)")
    report = progress if callable(progress) else None
    bars = bool(progress) and report is None
    p = _prepare(spec, bars)
    folder = AuditFolder(out_dir)
    out = folder.root
    folder.prepare(p.spec_hash, force)
    n_chunks = math.ceil(p.spec.episodes / p.spec.chunk_episodes)
    folder.write_json(folder.manifest_path, _manifest(p, out, n_chunks, complete=False))
    predictions = p.result.predictions
    folder.write_table(folder.table_path("queries"), query_table(predictions, _image_index(p), p.spec.by))
    todo = [c for c in range(n_chunks) if not folder.chunk_done(c, p.spec_hash)]
    skipped = n_chunks - len(todo)
    context = ChunkContext(p.checkpoint, p.sha256, p.spec.methods, p.spec.quality, p.spec.seed)

    from tqdm.auto import tqdm

    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=n_chunks, initial=skipped, desc="audit", unit="chunk", file=sys.stderr,
                                       disable=not bars))
        done = skipped
        if report is not None:
            report(done, n_chunks)

        def on_result(result: ChunkResult) -> None:
            nonlocal done
            folder.write_chunk(result, p.spec_hash)
            done += 1
            bar.update(1)
            if report is not None:
                report(done, n_chunks)

        client = _connect(stack, client, scheduler, workers, connect_timeout)
        _run_tasks(client, context, _tasks(p, todo), on_result, p.spec_hash)

    folder.write_json(out / "accuracy.json", accuracy_summary(predictions, p.classes, p.spec.seed))
    if p.spec.by:
        folder.write_table(folder.table_path("subgroups"), subgroup_rows(predictions, p.spec.by, p.spec.seed))
    if p.spec.quality:
        folder.write_table(folder.table_path("quality"), folder.quality_table(n_chunks))
    folder.write_json(folder.manifest_path, _manifest(p, out, n_chunks, complete=True))
    return AuditResult(out, p.spec_hash, n_chunks, len(todo), skipped, p.spec.report_command(str(out)))


__all__ = ["ADDRESS", "AuditResult", "Progress", "local_client", "run_audit"]
