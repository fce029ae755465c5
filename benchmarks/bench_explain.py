"""Speed of the attribution methods (fsl_xai.explain) on a Conv-4 ProtoNet.

1. Median latency of ``explain`` per registry method for ONE 64x64 RGB query (PBC blood cells 64 px
   when the shared data is there, else the built-in synthetic set), with the targets of issue 3
   (Grad-CAM and Saliency < 20 ms, Integrated Gradients 50 steps < 150 ms, Occlusion < 250 ms).
2. Throughput for 256 queries: one batched ``explain`` call against a plain per-query loop of the
   same Captum method on the same wrapped model, measured in the same run (target >= 5x for IG).

Latency does not depend on the weights, so the Conv-4 is a seeded, untrained one (fit on a 3-way
5-shot support set of the data). Run: ``python benchmarks/bench_explain.py --threads 2`` (``--repeats 5
--n-queries 32`` for a quicker look).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting for each other make
# 2 threads 10-100x slower than 1; passive waiting keeps the 2-thread numbers meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

import fsl_xai  # noqa: E402
from fsl_xai.explain import ExplainedOutput, explain, explanation_model, list_methods  # noqa: E402
from fsl_xai.explain import fast as fast_path  # noqa: E402
from fsl_xai.explain.core import eval_mode  # noqa: E402

TARGETS_MS = {"gradcam": 20.0, "saliency": 20.0, "integrated_gradients": 150.0, "occlusion": 250.0}
# settings of the latency run (registry defaults otherwise); IG with the 50 steps of the target
LATENCY_PARAMS = {"integrated_gradients": {"n_steps": 50}}


def load_images(size: int = 64):
    """(support images, support labels, query pool, data name)."""
    try:
        from _data import load

        images = load("pbc-blood-64", "test")
        name = "pbc-blood-64 (test)"
    except Exception as exc:  # no shared data on this machine: the offline synthetic set
        from fsl_xai.data.synthetic import make_synthetic

        print(f"(shared data not available: {exc}; using the synthetic set)")
        images = make_synthetic(n_per_class=100, size=size, seed=0).convert(channels=3)
        name = "synthetic"
    if images.image_size != (size, size) or images.n_channels != 3:
        images = images.convert(channels=3, size=size)
    ep = fsl_xai.EpisodeSampler(images, n_way=3, n_shot=5, n_query=1, classes=[0, 1, 2], seed=0).sample(0)
    s, sl, _, _ = ep.tensors(images)
    # queries: every other image of the set (any class; a query's class does not change the cost)
    rest = np.setdiff1d(np.arange(len(images)), ep.support_indices(images))
    q = torch.from_numpy(images.images[rest])
    return s, sl, q, name


def timeit(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def per_query_loop(method: str, fitted, queries: torch.Tensor, n_steps: int, fast: bool = False) -> None:
    """The plain way: one Captum call per query (same Captum class and settings as the registry).

    ``fast``: on the same BatchNorm-folded, channels-last copy that ``explain`` uses (to separate
    the gain of batching from the gain of the fast copy)."""
    from captum.attr import IntegratedGradients, LayerGradCam, Occlusion, Saliency

    runner = explanation_model(fitted) if fast else fitted
    fwd = ExplainedOutput(runner)
    with eval_mode(fitted):
        for i in range(len(queries)):
            x = queries[i:i + 1].clone()
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(method != "occlusion")
            with torch.no_grad():
                logits = fitted(x)
            w = torch.zeros_like(logits)
            w[0, logits.argmax()] = 1
            if method == "integrated_gradients":
                IntegratedGradients(fwd).attribute(x, baselines=torch.zeros_like(x), target=0, n_steps=n_steps,
                                                   method="gausslegendre", additional_forward_args=(w,))
            elif method == "saliency":
                Saliency(fwd).attribute(x, target=0, abs=False, additional_forward_args=(w,))
            elif method == "gradcam":
                LayerGradCam(fwd, runner.backbone.blocks[3]).attribute(x, target=0, additional_forward_args=(w,))
            elif method == "occlusion":
                Occlusion(fwd).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.0,
                                         target=0, additional_forward_args=(w,), perturbations_per_eval=64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="timed runs per method (median reported)")
    p.add_argument("--n-queries", type=int, default=256)
    p.add_argument("--throughput-methods", default="integrated_gradients,saliency,gradcam")
    p.add_argument("--methods", default=",".join(list_methods()))
    p.add_argument("--ig-batch", type=int, default=None, help="internal_batch_size of the batched IG call")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    s, sl, q, name = load_images()
    torch.manual_seed(0)
    fitted = fsl_xai.make_model("protonet", fsl_xai.make_backbone("conv4", 3, 64)).eval().fit(s, sl)
    print(f"Conv-4 ProtoNet, {name}, 3-way 5-shot support, one 64x64 RGB query, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")

    # ---------------------------------------------------------------- latency
    one = q[:1]
    rows = []
    for method in a.methods.split(","):
        params = LATENCY_PARAMS.get(method, {})
        # interleave the fast path and the plain model so that load changes hit both alike
        fast_t, plain_t = [], []
        for _ in range(a.repeats):
            fast_path.OPTIMIZE = True
            fast_t += timeit(lambda m=method, p=params: explain(fitted, one, m, **p), 1, warmup=0 if fast_t else 2)
            fast_path.OPTIMIZE = False
            plain_t += timeit(lambda m=method, p=params: explain(fitted, one, m, **p), 1, warmup=0 if plain_t else 2)
        fast_path.OPTIMIZE = True
        med, plain = statistics.median(fast_t) * 1000, statistics.median(plain_t) * 1000
        target = TARGETS_MS.get(method)
        verdict = "" if target is None else ("met" if med < target else "MISSED")
        rows.append((method, med, min(fast_t) * 1000, plain, target, verdict))
        print(f"  {method:22s} median {med:8.1f} ms (plain model {plain:8.1f} ms)", flush=True)
    print("\n| method | median ms | min ms | plain model median ms | speed-up | target ms | |")
    print("|---|---|---|---|---|---|---|")
    for method, med, lo, plain, target, verdict in rows:
        print(f"| {method} | {med:.1f} | {lo:.1f} | {plain:.1f} | {plain / med:.2f}x | "
              f"{'' if target is None else f'< {target:.0f}'} | {verdict} |")

    # ---------------------------------------------------------------- throughput
    n = min(a.n_queries, len(q))
    queries = q[:n]
    print(f"\nThroughput, {n} queries (batched explain vs a per-query loop of the same Captum method):")
    print("| method | batched explain s | per-query loop s | ratio | loop on the fast copy s | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for method in a.throughput_methods.split(","):
        params = {"n_steps": 50} if method == "integrated_gradients" else {}
        if method == "integrated_gradients" and a.ig_batch:
            params["internal_batch_size"] = a.ig_batch
        # every path is warmed on a few queries, then timed once on all of them
        explain(fitted, queries[:4], method, **params)
        per_query_loop(method, fitted, queries[:4], 50)
        per_query_loop(method, fitted, queries[:4], 50, fast=True)
        t0 = time.perf_counter()
        explain(fitted, queries, method, **params)
        batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        per_query_loop(method, fitted, queries, 50)
        loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        per_query_loop(method, fitted, queries, 50, fast=True)
        loop_fast = time.perf_counter() - t0
        target = ">= 5x" if method == "integrated_gradients" else ""
        print(f"| {method} | {batched:.2f} | {loop:.2f} | {loop / batched:.2f}x | {loop_fast:.2f} | "
              f"{loop_fast / batched:.2f}x | {target} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
