"""How far Integrated Gradients is from completeness on the default PBC 64 px model, per baseline,
integration rule and step count: the evidence behind IG's registry defaults.

Completeness: the attributions of a query should sum to F(x) - F(baseline), the change of the
explained logit along the path. The gap (sum - (F(x) - F(baseline))) is the map's own error; it is
compared with the query's decision margin (top logit minus the runner-up), because an error as
large as the margin could hide or invent the evidence that decides between two classes.

For each setting it prints the median F(baseline), the median |gap|, the median |gap| / margin, the
share of queries whose |gap| exceeds their margin, the share that fail the completeness badge
(|gap| / margin >= 0.1) and the seconds taken. Baselines: ``zeros`` (black), ``blur`` (a strong
Gaussian blur of each image), ``mean`` (each image's mean colour) and ``dataset_mean`` (the mean
colour of the model's training images, as a fixed tensor). Queries come from 3-way 5-shot episodes
of the novel classes (lymphocyte, monocyte, platelet) of the test split, the predicted class is
explained (no contrast).

Last run with the defaults (30 queries; median |gap| / margin, share of queries failing the badge):

    baseline       Gauss-Legendre 16   Gauss-Legendre 50   trapezoid 16    trapezoid 50
    zeros          0.246 (63%)         0.090 (43%)         5.98 (100%)     1.95 (100%)
    mean           0.022 (10%)         0.007 (0%)          0.148 (60%)     0.049 (27%)
    blur           0.014 (3%)          0.003 (0%)          0.086 (40%)     0.023 (3%)
    dataset_mean   0.011 (13%)         0.005 (0%)          0.117 (63%)     0.039 (20%)

F(black) is about -542 against F(x) about -7 (F of the other baselines -14 to -16); from black at 50
Gauss-Legendre steps the largest |gap| is 1.6 logits. This is why IG's registry default is the
blurred query with Gauss-Legendre (``fsl_xai.explain.methods``).

Usage: ``python benchmarks/ig_completeness.py [--episodes 2] [--n-query 5] [--steps 16 50]
[--rules gausslegendre riemann_trapezoid] [--baselines zeros mean blur dataset_mean]``
(about a minute on a quiet 2-core machine with the defaults; 4 minutes on a busy one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import load  # noqa: E402

from fsl_xai import EpisodeSampler  # noqa: E402
from fsl_xai.explain import BASELINES, INTEGRATION_RULES, explain  # noqa: E402
from fsl_xai.explain.quality import DEFAULT_COMPLETENESS_THRESHOLD  # noqa: E402
from fsl_xai.training import DEFAULT_SPLITS, default_model  # noqa: E402

DATASET = "pbc-blood-64"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--n-query", type=int, default=5, help="queries per class and episode")
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 50])
    parser.add_argument("--rules", nargs="+", default=["gausslegendre", "riemann_trapezoid"],
                        choices=INTEGRATION_RULES)
    parser.add_argument("--baselines", nargs="+", default=[*BASELINES, "dataset_mean"],
                        choices=[*BASELINES, "dataset_mean"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, info = default_model(DATASET, progress=False)
    model.eval()
    images = load(DATASET, "test").select_classes(list(DEFAULT_SPLITS[DATASET].novel))
    train = load(DATASET, "train")
    baselines: dict[str, object] = {name: name for name in BASELINES}
    # the mean colour of the training images, one value per channel: (1, C, 1, 1), broadcast by make_baseline
    baselines["dataset_mean"] = torch.from_numpy(train.images.mean(axis=(0, 2, 3), dtype=np.float64)
                                                 .astype(np.float32)).reshape(1, -1, 1, 1)
    sampler = EpisodeSampler(images, n_way=3, n_shot=5, n_query=args.n_query, seed=args.seed)
    episodes = []
    for i in range(args.episodes):
        s, sl, q, _ = sampler.sample(i).tensors(images)
        episodes.append((model.fit(s, sl), q))
    n = sum(len(q) for _, q in episodes)
    print(f"{DATASET} default {info.model} (fingerprint {model.fingerprint()}), {args.episodes} episodes 3-way "
          f"5-shot, {n} queries, predicted class explained; badge threshold |gap|/margin < "
          f"{DEFAULT_COMPLETENESS_THRESHOLD}")
    header = (f"{'baseline':<13} {'rule':<18} {'steps':>5} {'F(base) med':>11} {'F(x) med':>9} {'|gap| med':>9} "
              f"{'|gap| max':>9} {'|gap|/margin med':>16} {'|gap|>margin':>12} {'badge fails':>11} {'seconds':>7}")
    print(header)
    print("-" * len(header))
    for bname in args.baselines:
        for rule in args.rules:
            for steps in args.steps:
                t0 = time.perf_counter()
                gaps, rel, fb, fx = [], [], [], []
                for fitted, q in episodes:
                    amap = explain(fitted, q, "integrated_gradients", n_steps=steps, rule=rule,
                                   baselines=baselines[bname], seed=args.seed)
                    assert amap.completeness_gap is not None and amap.relative_gap is not None
                    assert amap.baseline_output is not None
                    gaps.append(np.abs(amap.completeness_gap))
                    rel.append(amap.relative_gap)
                    fb.append(amap.baseline_output)
                    fx.append(amap.explained)
                g, r = np.concatenate(gaps), np.concatenate(rel)
                seconds = time.perf_counter() - t0
                print(f"{bname:<13} {rule:<18} {steps:>5} {np.median(np.concatenate(fb)):>11.2f} "
                      f"{np.median(np.concatenate(fx)):>9.2f} {np.median(g):>9.4f} {g.max():>9.4f} "
                      f"{np.nanmedian(r):>16.4f} {np.mean(r > 1):>12.2f} "
                      f"{np.mean(r >= DEFAULT_COMPLETENESS_THRESHOLD):>11.2f} {seconds:>7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
