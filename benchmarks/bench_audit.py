"""Throughput and memory of ``fsl-xai audit`` (fsl_xai.audit) on Dask distributed.

1. Queries explained per second by the audit's chunk phase (every query of every episode explained
   with each method and written to its shards) for the in-process loop (``workers=0``, the reference
   path, one torch thread), a LocalCluster of 1 worker process and one of 2 (1 thread each), all
   measured in this run on the same spec; prints the ratios to the in-process loop (target: >= 1.7x
   with 2 workers on the 2-core machine). The clusters are started and warmed up (imports, the
   model loaded once per process) before the clock starts; the clock runs from the first chunk
   sent to the last chunk written. CPU seconds per 100 maps count every process of the audit (this
   one, with the scheduler and the nannies, and the workers); they are steadier than wall time on
   a shared machine.

   The default of 30 one-episode chunks stands for a real audit (hundreds of episodes): with 12, the
   fill and the tail of the 2-worker run (one worker idle while the other finishes the last chunk,
   up to a chunk's time) were a tenth of its chunk phase, a fixed cost a long audit does not pay.

   Workers make glibc's malloc keep freed memory (``fsl_xai.audit.chunks.keep_freed_memory``); the
   in-process loop runs in the caller's process, which keeps its malloc settings. For reference,
   the loop is timed once more at the end with the workers' settings in this process, and the
   2-worker ratio to that run is printed too.
2. Peak memory (RSS of this process and every worker process, sampled every 0.1 s) of an audit of
   a 20,000-image synthetic set (64x64 grey, written as a MedMNIST-format .npz file) on 2 workers.

The model is the cached default Conv-4 ProtoNet of the built-in synthetic set (trained on first
use). Run: ``python benchmarks/bench_audit.py`` (``--episodes 8 --big-images 4000`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

from dask.distributed import Client  # noqa: E402

from fsl_xai.audit import AuditSpec, local_client, run_audit  # noqa: E402
from fsl_xai.audit.chunks import keep_freed_memory  # noqa: E402
from fsl_xai.checkpoints import save_checkpoint  # noqa: E402
from fsl_xai.data.synthetic import make_synthetic  # noqa: E402
from fsl_xai.training.zoo import default_model  # noqa: E402

TARGET = 1.7


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its living children (the workers)."""
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class Clock:
    """A progress callback timing the chunk phase, from the (0, n) call to the (n, n) call: wall
    seconds and CPU seconds of every process of the audit (steadier on a shared machine)."""

    def __init__(self) -> None:
        self.start = self.end = self.cpu_start = self.cpu_end = 0.0

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self.start, self.cpu_start = time.perf_counter(), cpu_seconds()
        if done == total:
            self.end, self.cpu_end = time.perf_counter(), cpu_seconds()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def cpu(self) -> float:
        return self.cpu_end - self.cpu_start


class PeakRss:
    """Samples the summed RSS of this process and its children in a background thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.every, self.peak, self.peak_client = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total, client = 0, 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                client = rss if proc.pid == me.pid else client
            self.peak, self.peak_client = max(self.peak, total), max(self.peak_client, client)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_audit(spec: AuditSpec, work: Path, name: str, client: Client | None) -> Clock:
    """The clock of the chunk phase of one audit, after a one-episode warm-up on the same workers."""
    run_audit(replace(spec, episodes=1), work / f"{name}-warm", client=client, progress=False)
    clock = Clock()
    run_audit(spec, work / name, client=client, progress=clock)
    return clock


def write_big_set(path: Path, n_images: int) -> None:
    """A MedMNIST-format .npz file of ``n_images`` synthetic 64x64 test images (uint8) with sites."""
    data = make_synthetic(n_per_class=n_images // 4, size=64, n_classes=4, split="test")
    np.savez(path, test_images=np.round(data.images[:, 0] * 255).astype(np.uint8),
             test_labels=data.labels.astype(np.int64), class_names=np.asarray(data.class_names),
             test_site=data.metadata["site"].to_numpy().astype(str))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=30, help="episodes of the throughput audits (default 30)")
    ap.add_argument("--methods", default="gradcam,saliency", help="attribution methods (default gradcam,saliency)")
    ap.add_argument("--big-images", type=int, default=20000,
                    help="images of the memory audit (default 20000; 0: no memory audit)")
    ap.add_argument("--big-episodes", type=int, default=40, help="episodes of the memory audit (default 40)")
    args = ap.parse_args()

    model, info = default_model("synthetic", progress=True)
    classes = ("round", "spiculated", "ring", "textured")  # the default model saw all four: name them
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = Path(tmp)
        ckpt = save_checkpoint(work / "synthetic.pt", model, info)
        spec = AuditSpec(checkpoint=str(ckpt), dataset="synthetic", classes=classes, n_way=4, n_shot=5, n_query=15,
                         episodes=args.episodes, methods=args.methods, chunk_episodes=1, seed=0)
        n_queries = args.episodes * 4 * 15 * len(spec.methods)
        clocks = {"in-process loop": timed_audit(spec, work, "inproc", None)}
        for workers in (1, 2):
            with local_client(workers) as client:
                clocks[f"{workers} worker{'s' if workers > 1 else ''}"] = timed_audit(spec, work, f"w{workers}", client)
        memory = ""
        if args.big_images > 0:
            big = work / "synthetic-20k.npz"
            write_big_set(big, args.big_images)
            big_spec = AuditSpec(checkpoint=str(ckpt), data_file=str(big), n_way=4, n_shot=5, n_query=15,
                                 episodes=args.big_episodes, methods=("gradcam",), by=("site",), chunk_episodes=2,
                                 classes=classes)
            with PeakRss() as rss:
                t0 = time.perf_counter()
                run_audit(big_spec, work / "big", workers=2, progress=False)
                wall = time.perf_counter() - t0
            memory = (f"\nmemory: audit of {args.big_images} images ({args.big_episodes} episodes, gradcam, by site) "
                      f"on 2 workers in {wall:.0f} s: peak RSS of all processes {rss.peak / 2**20:.0f} MiB "
                      f"(this process alone {rss.peak_client / 2**20:.0f} MiB)")
        # last: the malloc settings stay with this process for good
        kept = "in-process loop, workers' malloc settings"
        if keep_freed_memory():
            clocks[kept] = timed_audit(spec, work, "inproc-kept", None)

        base = n_queries / clocks["in-process loop"].seconds
        print(f"\nthroughput: {args.episodes} episodes of 4-way 5-shot, 15 queries per class, methods "
              f"{','.join(spec.methods)} = {n_queries} query maps, default synthetic Conv-4, 64x64 grey; "
              f"load average at the end {psutil.getloadavg()[0]:.1f}")
        print("| path | chunk phase (s) | query maps/s | vs in-process | CPU s per 100 maps (all processes) |")
        print("|---|---|---|---|---|")
        for name, c in clocks.items():
            print(f"| {name} | {c.seconds:.1f} | {n_queries / c.seconds:.1f} | {n_queries / c.seconds / base:.2f}x | "
                  f"{100 * c.cpu / n_queries:.2f} |")
        ratio = clocks["in-process loop"].seconds / clocks["2 workers"].seconds
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"2 workers / in-process: {ratio:.2f}x (target >= {TARGET}x: {verdict})")
        if kept in clocks:
            print(f"2 workers / in-process with the workers' malloc settings: "
                  f"{clocks[kept].seconds / clocks['2 workers'].seconds:.2f}x (for reference)")
        if memory:
            print(memory)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
