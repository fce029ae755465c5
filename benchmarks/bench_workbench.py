"""Workbench speed, driven through WorkbenchState without a browser.

Measures, on PBC blood cells 64x64 (5-way 5-shot, 5 queries per class):
  - support-set edit -> refreshed predictions, distances and projection of all queries (target p95 < 100 ms),
    against the peer "re-embed the whole episode and refit the projection" (what a naive view would do);
  - selecting a query -> Grad-CAM map (target < 100 ms) and Integrated Gradients map (target < 300 ms),
    each computed and turned into the plotly figure, against the peer "one forward pass of the query";
  - notebook start: imports, data, cached model and the first render of the Workbench widget tree in a
    fresh process (target < 5 s), against the peer "python -c 'import torch, ipywidgets, plotly'".

Prints one table with p50 / p95 and the ratio to the peer measured in the same run.
Usage: python benchmarks/bench_workbench.py [--repeats 40] [--threads 2] [--dataset pbc-blood-64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsl_xai.data import load_dataset  # noqa: E402
from fsl_xai.projection import Projection  # noqa: E402
from widgets.figures import heatmap_figure, projection_figure  # noqa: E402
from widgets.state import WorkbenchState  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def load_state(dataset: str) -> tuple[WorkbenchState, str]:
    images = load_dataset(dataset, "test")
    try:
        from fsl_xai.training import default_model

        cache = Path(os.environ.get("FSL_XAI_CACHE_DIR", ROOT / ".cache")) / "models"
        if any(cache.glob(f"{dataset}-protonet-*.pt")):
            model, _ = default_model(dataset, progress=False)
            note = "cached default model"
        else:
            raise FileNotFoundError
    except (ImportError, FileNotFoundError):
        from fsl_xai.models import make_backbone, make_model

        torch.manual_seed(0)
        model = make_model("protonet", make_backbone("conv4", images.n_channels, images.image_size)).eval()
        note = "Conv-4 ProtoNet, untrained (no cached default model; same cost per call)"
    state = WorkbenchState(n_way=5, n_shot=5, n_query=5)
    state.load(dataset, images=images, model=model, model_info=None)
    # 5-way needs five classes: draw from all classes for the benchmark
    state.episode_classes = list(images.class_names)
    state.n_way = 5
    state.resample(0)
    assert state.error == "", state.error
    return state, note


def bench_edits(state: WorkbenchState, repeats: int) -> tuple[list[float], list[float]]:
    ours, peer = [], []
    ep = state.episode
    labels = np.asarray(ep.support_labels)
    for r in range(repeats):
        pos = r % len(ep.support_ids)
        cls = state.episode.classes[labels[pos]]
        candidates = state.pool(cls).sample_id.tolist()
        new_id = candidates[r % len(candidates)]
        t0 = time.perf_counter()
        state.swap_support(pos, new_id)
        ours.append(time.perf_counter() - t0)
        assert state.error == "", state.error
        # peer: re-embed support and queries from pixels, refit prototypes and the projection
        t0 = time.perf_counter()
        s_img, s_lab, q_img, _ = state.episode.tensors(state.images)
        with torch.no_grad():
            fitted = state.model.fit(s_img, s_lab)
            q_emb = state.model.embed(q_img)
            logits = fitted.logits_from_embeddings(q_emb)
            s_emb = fitted.support_embeddings_
        proj = Projection("pca").fit(torch.cat([s_emb, q_emb]).numpy())
        proj.transform(fitted.prototypes_.numpy())
        _ = (-logits).numpy()
        peer.append(time.perf_counter() - t0)
    return ours, peer


def bench_maps(state: WorkbenchState, method: str, repeats: int) -> tuple[list[float], list[float]]:
    ours, peer = [], []
    n_query = state.episode.n_query
    for r in range(repeats):
        qi = r % n_query
        state.explanations.clear()  # measure the computation, not the cache
        t0 = time.perf_counter()
        state.select_query(qi)
        amap = state.explanations.attribution(method, qi)
        heatmap_figure(state.query_image(qi), [amap.normalized[0]], [method], mask=state.query_mask(qi))
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            state.fitted(torch.from_numpy(state.query_image(qi)[None].copy()))
        peer.append(time.perf_counter() - t0)
    return ours, peer


START_SCRIPT = r"""
import time, sys
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from widgets import WorkbenchState
from widgets.workbench import Workbench
state = WorkbenchState().load({dataset!r}, progress=False)
wb = Workbench(state, badges=False)
# "first render": the widget tree's state as the front-end would receive it
import ipywidgets
n = len(ipywidgets.Widget.widgets) if hasattr(ipywidgets.Widget, "widgets") else 0
assert state.result is not None and state.error == "", state.error
print(time.perf_counter() - t0)
"""

PEER_SCRIPT = r"""
import time
t0 = time.perf_counter()
import torch, ipywidgets, plotly.graph_objects
print(time.perf_counter() - t0)
"""


def bench_start(dataset: str, threads: int, repeats: int) -> tuple[list[float], list[float]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ours, peer = [], []
    for _ in range(repeats):
        script = START_SCRIPT.format(root=str(ROOT), threads=threads, dataset=dataset)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        ours.append(float(out.stdout.strip().splitlines()[-1]))
        out = subprocess.run([sys.executable, "-c", PEER_SCRIPT], capture_output=True, text=True, env=env, check=True)
        peer.append(float(out.stdout.strip().splitlines()[-1]))
    return ours, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pbc-blood-64")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--start-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state, note = load_state(args.dataset)
    ep = state.episode
    print(f"dataset {args.dataset} test split, {ep.n_way}-way {ep.n_shot}-shot, {ep.n_query} queries, "
          f"{state.images.image_size[0]}x{state.images.image_size[1]}px; model: {note}; torch threads {args.threads}")
    # warm-up (first calls allocate)
    bench_edits(state, 3)
    for m in ("gradcam", "integrated_gradients"):
        bench_maps(state, m, 2)

    rows = []
    ours, peer = bench_edits(state, args.repeats)
    rows.append(("support edit -> predictions, distances, projection", ours, peer, 100, "full re-embed + refit"))
    t_fig = []
    for _ in range(10):
        t0 = time.perf_counter()
        projection_figure(state.result, ep.support_ids, ep.query_ids, 0)
        t_fig.append(time.perf_counter() - t0)
    rows.append(("  (+ building the projection figure)", t_fig, t_fig, None, "itself"))
    ours, peer = bench_maps(state, "gradcam", args.repeats)
    rows.append(("select query -> Grad-CAM map + figure", ours, peer, 100, "one forward pass"))
    ours, peer = bench_maps(state, "integrated_gradients", max(10, args.repeats // 2))
    rows.append(("select query -> Integrated Gradients map + figure", ours, peer, 300, "one forward pass"))
    if note == "cached default model":
        ours, peer = bench_start(args.dataset, args.threads, args.start_repeats)
        rows.append(("notebook start: imports, data, model, Workbench", ours, peer, 5000,
                     "import torch+widgets+plotly"))
    else:
        print("notebook start not measured: no cached default model (it would include training)")

    print()
    print(f"{'measure':52s} {'p50 ms':>9s} {'p95 ms':>9s} {'target':>8s} {'ok':>4s} {'peer p50':>9s} "
          f"{'ratio':>6s}  peer")
    for name, ours, peer, target, peer_name in rows:
        p50, p95, q50 = pct(ours, 50), pct(ours, 95), pct(peer, 50)
        ok = "" if target is None else ("yes" if p95 < target else "NO")
        tgt = "" if target is None else f"<{target}"
        print(f"{name:52s} {p50:9.1f} {p95:9.1f} {tgt:>8s} {ok:>4s} {q50:9.1f} {p50 / q50:6.2f}  {peer_name}")


if __name__ == "__main__":
    main()
