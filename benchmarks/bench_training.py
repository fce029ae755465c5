"""Measure the speed options of episodic meta-training (Conv-4, PBC 28 px, 5-way 5-shot 10-query).

For each option set it trains the same initial weights on the same episodes and prints
episodes/second and the validation accuracy reached (600 novel-class... here: held-out
val-split episodes of the base classes), so an option is kept only if it is faster AND
accuracy holds. Run: ``python benchmarks/bench_training.py --threads 2 --episodes 300``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing
from _data import load  # noqa: E402

from fsl_xai.intervals import mean_interval  # noqa: E402
from fsl_xai.training import DEFAULT_SPLITS, build_model, episode_accuracies, train_episodic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--eval-episodes", type=int, default=300)
    p.add_argument("--variants", default="plain,channels_last,bf16,channels_last+bf16,compile,channels_last+compile")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    split = DEFAULT_SPLITS["pbc-blood"]
    train = load("pbc-blood", "train").select_classes(split.base)
    test = load("pbc-blood", "test").select_classes(split.novel)
    rows = []
    for variant in a.variants.split(","):
        opts = set(variant.split("+"))
        model = build_model("protonet", "conv4", 3, 28, seed=0)
        t0 = time.perf_counter()
        train_episodic(model, train, 5, 5, 10, a.episodes, seed=0, progress=False,
                       channels_last="channels_last" in opts, autocast="bf16" in opts, compile="compile" in opts)
        wall = time.perf_counter() - t0
        acc = mean_interval(episode_accuracies(model, test, 3, 5, 15, a.eval_episodes, seed=7))
        half = (acc.high - acc.low) / 2
        rows.append((variant, a.episodes / wall, acc.estimate, half))
        print(f"{variant:28s} {a.episodes / wall:7.1f} ep/s (incl. compile)  novel 3-way 5-shot acc "
              f"{acc.estimate:.3f} +- {half:.3f}", flush=True)
    base = rows[0][1]
    print(f"\n| variant | episodes/s ({a.threads} threads) | speed-up "
          f"| novel-class 3-way 5-shot acc ({a.eval_episodes} ep, 95% CI) |")
    print("|---|---|---|---|")
    for v, eps, mean, half in rows:
        print(f"| {v} | {eps:.1f} | {eps / base:.2f}x | {mean:.3f} +- {half:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
