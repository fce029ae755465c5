"""The accuracy table of docs/results.md: every model, 1-shot and 5-shot, 600 episodes, 95% CI.

Models are the cached default models (``fsl_xai.training.default_model``; trained on first use):

- PBC blood (28 px): meta-trained on 5 base classes, tested 3-way on the 3 novel classes.
- HAM10000 (28 px): meta-trained on other data (MedNIST + PBC base classes, as RGB 28 px),
  tested 7-way on all its classes (7 queries per class: the test split has 12 ``df`` images).
- BreastMNIST (grey 28 px) and RetinaMNIST (RGB 28 px) as novel tasks with the same recipe
  (MedNIST + PBC converted to their channels), 2-way and 5-way.

Every (dataset, model) pair is one row of ``--out`` (markdown) and one line of ``--jsonl``;
rows already in the JSONL file are reused unless ``--fresh``. Reproduce one row with
``python benchmarks/accuracy_table.py --dataset pbc-blood --model protonet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

from _data import load  # noqa: E402

from fsl_xai.data.registry import get_info  # noqa: E402
from fsl_xai.evaluation import evaluate  # noqa: E402
from fsl_xai.models import list_models  # noqa: E402
from fsl_xai.training import DEFAULT_SPLITS, default_model_from_recipe, default_recipe  # noqa: E402

#: label, dataset, classes (None: all), n_way, n_query
TASKS = [
    ("PBC blood, novel classes", "pbc-blood", DEFAULT_SPLITS["pbc-blood"].novel, 3, 15),
    ("HAM10000 (trained on MedNIST + PBC)", "ham10000", None, 7, 7),
    ("BreastMNIST (trained on MedNIST + PBC)", "breastmnist", None, 2, 15),
    ("RetinaMNIST (trained on MedNIST + PBC)", "retinamnist", None, 5, 15),
]
# cheapest first: transductive reuses the ProtoNet backbone, finetune reuses SimpleShot's
MODEL_ORDER = ["protonet", "transductive", "simpleshot", "finetune", "matching"]


def recipe_for(name: str, train_episodes: int | None):
    """The default model's recipe, optionally with a smaller training budget."""
    recipe = default_recipe(get_info(name).name)
    if train_episodes:
        scale = train_episodes / recipe.episodes
        recipe = dataclasses.replace(recipe, episodes=train_episodes,
                                     val_every=max(1, min(recipe.val_every, train_episodes)),
                                     pretrain_steps=max(1, round(recipe.pretrain_steps * scale)))
    return recipe


def run_row(dataset: str, model_name: str, episodes: int, seed: int, train_episodes: int | None = None) -> dict:
    label, name, classes, n_way, n_query = next(t for t in TASKS if t[1] == dataset)
    t0 = time.perf_counter()
    recipe = recipe_for(name, train_episodes)
    model, info = default_model_from_recipe(recipe, model_name, progress=False)
    t_train = time.perf_counter() - t0
    images = load(name, "test")
    if images.n_channels != info.in_channels or images.image_size != info.image_size:
        images = images.convert(channels=info.in_channels, size=info.image_size)
    row = {"task": label, "dataset": name, "model": model_name, "n_way": n_way, "n_query": n_query,
           "classes": list(classes) if classes else list(images.class_names), "episodes": episodes,
           "seed": seed, "trained_on": info.dataset, "train_classes": len(info.classes),
           "val_accuracy": info.val_metrics.get("best_val_accuracy"), "model_fingerprint": None,
           "load_or_train_seconds": round(t_train, 1),
           "train_budget": (f"{recipe.pretrain_steps} pre-training steps of {recipe.pretrain_batch} images"
                            if model_name in ("simpleshot", "finetune") else
                            f"{recipe.episodes} episodes {recipe.n_way}-way {recipe.n_shot}-shot "
                            f"{recipe.n_query}-query"),
           "train_episodes_option": train_episodes}
    for shot in (1, 5):
        t0 = time.perf_counter()
        res = evaluate(model, images, n_way=n_way, n_shot=shot, n_query=n_query, episodes=episodes, seed=seed,
                       classes=classes, progress=False)
        row[f"acc_{shot}"] = float(res.accuracy)
        row[f"ci_{shot}"] = [float(v) for v in res.ci95]
        row[f"eval_seconds_{shot}"] = round(time.perf_counter() - t0, 1)
    row["model_fingerprint"] = model.fingerprint()
    return row


def fmt(row: dict, shot: int) -> str:
    acc, (lo, hi) = row[f"acc_{shot}"], row[f"ci_{shot}"]
    return f"{100 * acc:.1f} ± {100 * (hi - lo) / 2:.1f}"


def render(rows: list[dict], models: list[str]) -> str:
    out = ["| task | model | 1-shot acc % (95% CI) | 5-shot acc % (95% CI) | test episodes | training | reproduce |",
           "|---|---|---|---|---|---|---|"]
    for label, name, _, n_way, n_query in TASKS:
        for m in models:
            r = next((r for r in rows if r["dataset"] == name and r["model"] == m), None)
            opt = f" --train-episodes {r['train_episodes_option']}" if r and r.get("train_episodes_option") else ""
            cmd = f"`python benchmarks/accuracy_table.py --dataset {name} --model {m}{opt}`"
            task = f"{label}, {n_way}-way, {n_query} queries/class"
            if r is None:
                out.append(f"| {task} | {m} | not run | not run | - | - | {cmd} |")
            else:
                out.append(f"| {task} | {m} | {fmt(r, 1)} | {fmt(r, 5)} | {r['episodes']} | {r['train_budget']} on "
                           f"{r['trained_on']} | {cmd} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    p.add_argument("--model", action="append", help="only these models (repeatable)")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jsonl", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.jsonl")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--fresh", action="store_true", help="recompute rows already in --jsonl")
    p.add_argument("--train-episodes", type=int,
                   help="train with this many episodes instead of the default recipe's "
                        "(pre-training steps scaled alike)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = [m for m in MODEL_ORDER if m in list_models() and (not a.model or m in a.model)]
    datasets = [t[1] for t in TASKS if not a.dataset or t[1] in a.dataset]
    a.jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in a.jsonl.read_text().splitlines() if line.strip()] if a.jsonl.exists() else []
    for m in models:  # model-major: one model's default training serves all its datasets
        for d in datasets:
            done = [r for r in rows if r["dataset"] == d and r["model"] == m and r["episodes"] == a.episodes
                    and r["seed"] == a.seed and r.get("train_episodes_option") == a.train_episodes]
            if done and not a.fresh:
                continue
            t0 = time.perf_counter()
            print(f"{d} / {m}: loading or training the model ...", flush=True)
            row = run_row(d, m, a.episodes, a.seed, a.train_episodes)
            rows = [r for r in rows if not (r["dataset"] == d and r["model"] == m)] + [row]
            with a.jsonl.open("w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
            print(f"{d:12s} {m:12s} 1-shot {fmt(row, 1):>12s}  5-shot {fmt(row, 5):>12s}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    table = render(rows, [m for m in MODEL_ORDER if m in list_models()])
    print(table)
    if a.out:
        a.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
