"""The ``fsl-xai`` command: datasets, train, evaluate, lab (and ``study`` when installed).

Other scripts may call these subcommands as contracts; ``evaluate --json`` prints exactly one JSON
object on stdout. Errors the library raises on purpose (FslXaiError) print one line on stderr and
exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError, EpisodeError, FslXaiError

if TYPE_CHECKING:  # the library is imported inside each command, to keep `fsl-xai --help` quick
    from .checkpoints import CheckpointInfo
    from .data import ImageSet

EXIT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsl-xai",
        description="Inspectable few-shot classifiers for medical images: data, training, evaluation, lab.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("datasets", help="list the datasets this installation knows")
    p.add_argument("--data-dir", help="folder searched first (default: $FSL_XAI_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="meta-train (or pre-train) a few-shot model and save a checkpoint")
    p.add_argument("--dataset", required=True, help="dataset name (see `fsl-xai datasets`) or a .npz file")
    p.add_argument("--model", default="protonet", help="model name (default: protonet)")
    p.add_argument("--backbone", default="conv4", help="backbone name (default: conv4)")
    p.add_argument("--n-way", type=int, default=5, help="classes per training episode (default 5)")
    p.add_argument("--n-shot", type=int, default=5, help="support images per class (default 5)")
    p.add_argument("--n-query", type=int, default=5, help="query images per class (default 5)")
    p.add_argument("--episodes", type=int, default=500,
                   help="training episodes (for simpleshot/finetune: pre-training steps of 64 images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes to train on (default: the dataset's base classes, or all)")
    p.add_argument("--channels", type=int, help="convert images to this many channels first")
    p.add_argument("--image-size", type=int, help="resize images to this size first")
    p.add_argument("--val-every", type=int, default=100, help="episodes between validations (default 100)")
    p.add_argument("--no-val", action="store_true", help="no validation split: keep the last weights")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy with a 95%% CI over many episodes, and the per-query table")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fsl-xai train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see `fsl-xai datasets`)")
    src.add_argument("--data-file", help="a MedMNIST-format .npz file")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes to draw episodes from (default: the classes the model was not trained on)")
    p.add_argument("--n-way", type=int, help="classes per episode (default: all chosen classes, at most 5)")
    p.add_argument("--n-shot", type=int, default=5)
    p.add_argument("--n-query", type=int, default=15, help="queries per class (default 15)")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--convert", action="store_true",
                   help="convert images to the checkpoint's channels and size when they differ")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--predictions", metavar="OUT.csv", help="write the per-query table to this CSV file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("guard", help="how well the domain guard tells held-in images from another kind (AUROC)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fsl-xai train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="held-in dataset name: its train split is the reference, val calibrates")
    src.add_argument("--data-file", help="held-in MedMNIST-format .npz file (train: reference, val: calibration)")
    p.add_argument("--split", default="test", help="held-in split to test (default: test; not train or val)")
    ood = p.add_mutually_exclusive_group(required=True)
    ood.add_argument("--ood-dataset", help="out-of-distribution dataset name (see `fsl-xai datasets`)")
    ood.add_argument("--ood-data-file", help="out-of-distribution MedMNIST-format .npz file")
    p.add_argument("--ood-split", default="test", help="split of the out-of-distribution set (default: test)")
    p.add_argument("--k", type=int, help="the neighbour whose distance is the score (default: the guard's, 5)")
    p.add_argument("--quantile", type=float,
                   help="share of held-in calibration images below the threshold (default: the guard's, 0.95)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration images held out of train when there is no val split")
    p.add_argument("--convert", action="store_true",
                   help="convert images to the checkpoint's channels and size when they differ")
    p.add_argument("--save-guard", metavar="GUARD.json",
                   help="write the fitted guard (JSON, with its reference embeddings in GUARD.npz beside)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_guard)

    p = sub.add_parser("prepare", help="train and cache the default models the notebooks use (once)")
    p.add_argument("datasets", nargs="*", help=f"datasets (default: those of the notebooks that are present: "
                                               f"{', '.join(NOTEBOOK_DATASETS)})")
    p.add_argument("--model", default="protonet")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("lab", help="start JupyterLab on the notebooks folder, with the default models ready")
    p.add_argument("--dataset", action="append", help="dataset whose default model to prepare (repeatable; "
                                                      "default: those of the notebooks that are present)")
    p.add_argument("--model", default="protonet")
    p.add_argument("--notebooks", help="notebook folder (default: ./notebooks, else the repository's)")
    p.add_argument("--port", type=int, help="port for JupyterLab")
    p.add_argument("--ip", help="address JupyterLab listens on (JupyterLab's default: localhost only)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--dry-run", action="store_true", help="prepare the model and print the command only")
    p.add_argument("jupyter_args", nargs=argparse.REMAINDER,
                   help="after --, options passed to JupyterLab as they are (e.g. -- --ServerApp.token=abc)")
    p.set_defaults(func=cmd_lab)

    _register_plugins(sub)
    return parser


def _register_plugins(sub) -> None:
    """Let ``fsl_xai.study.cli.register(subparsers)`` add ``fsl-xai study ...`` when it exists."""
    import importlib
    import importlib.util

    name = "fsl_xai.study.cli"
    if name not in sys.modules:
        try:
            if importlib.util.find_spec(name) is None:
                return
        except (ImportError, ValueError):
            return
    try:
        study_cli = importlib.import_module(name)
    except Exception as exc:  # a broken plugin must not take the other commands down
        print(f"fsl-xai: warning: study commands unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return
    register = getattr(study_cli, "register", None)
    if callable(register):
        register(sub)


# ---------------------------------------------------------------------------------------- helpers
def _threads(n: int | None) -> None:
    from .training import set_threads

    set_threads(n)


def _load_images(dataset: str | None, data_file: str | None, split: str, progress: bool) -> ImageSet:
    if data_file is not None:
        from .data import read_npz

        return read_npz(data_file, split=split)
    if dataset is None:
        raise DataError("no images to load: give a dataset name (--dataset) or a .npz file (--data-file)")
    from .data.registry import load_dataset

    return load_dataset(dataset, split=split, progress=progress)


def _fmt_ci(ci) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


# ---------------------------------------------------------------------------------------- datasets
def cmd_datasets(args: argparse.Namespace) -> int:
    from .data.registry import list_datasets

    infos = list_datasets(data_dir=args.data_dir)
    rows = []
    for d in infos:
        where = "present" if d.present else ("downloadable" if d.downloadable else "missing")
        size = d.image_size if isinstance(d.image_size, (tuple, list)) else (d.image_size, d.image_size)
        rows.append({"name": d.name, "status": where, "classes": len(d.classes),
                     "image_size": f"{size[0]}x{size[1]}", "channels": d.channels, "licence": d.licence,
                     "path": str(d.path) if d.path else ""})
    if args.json:
        print(json.dumps(rows))
        return 0
    cols = [("name", "NAME"), ("status", "LOCAL"), ("classes", "CLASSES"), ("image_size", "SIZE"),
            ("channels", "CH"), ("licence", "LICENCE")]
    widths = {k: max(len(h), *(len(str(r[k])) for r in rows)) if rows else len(h) for k, h in cols}
    print("  ".join(h.ljust(widths[k]) for k, h in cols))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k, _ in cols))
    return 0


# ---------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .episodes import ClassSplit
    from .errors import ModelError
    from .models import list_backbones, list_models
    from .training import (
        DEFAULT_SPLITS,
        PRETRAINED_MODELS,
        CheckpointInfo,
        build_model,
        fit_base_statistics,
        pretrain,
        save_checkpoint,
        train_episodic,
        validation_accuracy,
    )

    if args.model not in list_models():
        raise ModelError(f"unknown model {args.model!r}; choose one of {list_models()}")
    if args.backbone not in list_backbones():
        raise ModelError(f"unknown backbone {args.backbone!r}; choose one of {list_backbones()}")
    _threads(args.threads)
    progress = not args.no_progress
    is_file = args.dataset.endswith(".npz")
    train = _load_images(None if is_file else args.dataset, args.dataset if is_file else None, "train", progress)
    try:
        val = _load_images(None if is_file else args.dataset, args.dataset if is_file else None, "val", progress)
    except DataError:
        val = None
    if args.channels or args.image_size:
        train = train.convert(channels=args.channels, size=args.image_size)
        val = val.convert(channels=args.channels, size=args.image_size) if val is not None else None
    split = DEFAULT_SPLITS.get(train.name)
    if args.classes:
        classes = tuple(args.classes)
        for c in classes:
            train.class_index(c)
        split = ClassSplit(base=classes, novel=tuple(c for c in train.class_names if c not in classes))
    elif split is not None:
        classes = split.base
    else:
        classes = train.class_names
        split = ClassSplit(base=classes)
    if args.no_val or val is None:
        val_set = None
    else:
        val_set = val.select_classes(split.val or classes)
    model = build_model(args.model, args.backbone, train.n_channels, train.image_size, seed=args.seed)
    out = Path(args.out)
    print(f"Training {args.model} ({args.backbone}) on {train.name}: classes {list(classes)}", file=sys.stderr)
    if args.model in PRETRAINED_MODELS:
        base = train.select_classes(classes)
        result = pretrain(model.backbone, base, epochs=10**6, batch_size=64, max_steps=args.episodes,
                          lr=args.lr, seed=args.seed, progress=progress)
        fit_base_statistics(model, base)
        model.eval()
        val_metrics = validation_accuracy(model, val_set, args.n_way, args.n_shot, seed=args.seed) if val_set else {}
        info = CheckpointInfo.for_model(
            model, dataset=train.name, data_fingerprint=base.fingerprint(), classes=classes,
            class_split=split.to_dict(), val_metrics=val_metrics,
            progress={"pretrain_steps": args.episodes, "batch_size": 64, "seed": args.seed, "lr": args.lr,
                      "finished": True, "history": result.history})
        save_checkpoint(out, model, info)
        best = val_metrics.get("best_val_accuracy")
    else:
        result = train_episodic(model, train, args.n_way, args.n_shot, args.n_query, args.episodes, seed=args.seed,
                                val_images=val_set, val_every=args.val_every, lr=args.lr, progress=progress,
                                checkpoint=out, resume=args.resume, classes=classes, class_split=split)
        best = result.best_val_accuracy
        if best is not None:
            print(f"best validation accuracy {best:.3f} (95% CI {_fmt_ci(result.best_val_ci95)}, "
                  f"100 episodes) at episode {result.best_episode}", file=sys.stderr)
    print(f"saved checkpoint to {out.resolve()}")
    return 0


# ---------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoints import load_checkpoint
    from .errors import CheckpointError

    _threads(args.threads)
    progress = not args.no_progress
    model, info = load_checkpoint(args.checkpoint)
    images = _load_images(args.dataset, args.data_file, args.split, progress)
    want_c, want_hw = info.in_channels, info.image_size
    if images.n_channels != want_c or images.image_size != want_hw:
        if not args.convert:
            raise CheckpointError(
                f"the checkpoint expects {want_c}-channel {want_hw[0]}x{want_hw[1]} images but {images.name} has "
                f"{images.n_channels}-channel {images.image_size[0]}x{images.image_size[1]} images; "
                "pass --convert to convert them, or use a checkpoint trained on such images")
        images = images.convert(channels=want_c, size=want_hw)
    if args.classes:
        classes = list(args.classes)
    else:
        seen = set(info.classes)
        classes = [c for c in images.class_names if c not in seen]
        if len(classes) < 2:
            raise EpisodeError(
                f"{images.name} has {len(classes)} class(es) the model was not trained on; "
                f"name the classes to test with --classes (classes: {list(images.class_names)})")
        if len(classes) < images.n_classes:
            print(f"evaluating on the classes the model was not trained on: {classes}", file=sys.stderr)
    n_way = args.n_way if args.n_way is not None else min(5, len(classes))
    from .evaluation import evaluate

    result = evaluate(model, images, n_way=n_way, n_shot=args.n_shot, n_query=args.n_query,
                      episodes=args.episodes, seed=args.seed, classes=classes, progress=progress)
    if args.predictions:
        path = Path(args.predictions)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        result.predictions.to_csv(tmp, index=False)
        os.replace(tmp, path)
    summary = {
        "accuracy": float(result.accuracy), "ci95": [float(v) for v in result.ci95],
        "episodes": int(result.episodes), "n_way": int(result.n_way), "n_shot": int(result.n_shot),
        "n_query": int(result.n_query), "n_predictions": int(len(result.predictions)),
        "dataset": images.name, "split": args.split, "classes": classes, "seed": args.seed,
        "checkpoint": str(Path(args.checkpoint)), "model": info.model, "backbone": info.backbone,
        "model_fingerprint": model.fingerprint(), "predictions": args.predictions,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        half = (result.ci95[1] - result.ci95[0]) / 2
        print(f"accuracy {result.accuracy:.3f} +- {half:.3f} (95% CI {_fmt_ci(result.ci95)}; "
              f"n = {result.episodes} episodes, {result.n_way}-way {result.n_shot}-shot, "
              f"{result.n_query} queries per class) on {images.name} {args.split} classes {classes}")
        if args.predictions:
            print(f"per-query table written to {Path(args.predictions).resolve()}")
    return 0


# ---------------------------------------------------------------------------------------- guard
#: share of the train split held out for calibration when a held-in set has no val split
GUARD_HELD_OUT = 0.2


def _images_for_checkpoint(images: ImageSet, info: CheckpointInfo, convert: bool) -> ImageSet:
    """The images at the checkpoint's channels and size, converted only when ``convert`` is set."""
    want_c, want_hw = info.in_channels, info.image_size
    if images.n_channels == want_c and images.image_size == want_hw:
        return images
    if not convert:
        from .errors import CheckpointError

        raise CheckpointError(
            f"the checkpoint expects {want_c}-channel {want_hw[0]}x{want_hw[1]} images but {images.name} has "
            f"{images.n_channels}-channel {images.image_size[0]}x{images.image_size[1]} images; "
            "pass --convert to convert them, or use a checkpoint trained on such images")
    return images.convert(channels=want_c, size=want_hw)


def cmd_guard(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .checkpoints import load_checkpoint
    from .embeddings import embed_all, embedding_fingerprint
    from .guard import DEFAULT_K, DEFAULT_QUANTILE, DomainGuard, detection_summary

    if args.split in ("train", "val", "all"):
        raise DataError(f"--split {args.split} overlaps the guard's reference (train) or calibration (val) images; "
                        "test on held-out images: --split test")
    _threads(args.threads)
    progress = not args.no_progress
    model, info = load_checkpoint(args.checkpoint)

    def held_in(split: str) -> ImageSet:
        return _images_for_checkpoint(_load_images(args.dataset, args.data_file, split, progress), info, args.convert)

    reference = held_in("train")
    try:
        calibration = held_in("val")
        where = "val split"
    except DataError:  # no val split: hold a seeded part of train out of the reference
        order = np.random.default_rng(args.seed).permutation(len(reference))
        n_cal = max(1, round(GUARD_HELD_OUT * len(reference)))
        calibration, reference = reference.subset(order[:n_cal]), reference.subset(order[n_cal:])
        where = f"{GUARD_HELD_OUT:.0%} of the train split (seed {args.seed})"
    tested = held_in(args.split)
    ood = _images_for_checkpoint(_load_images(args.ood_dataset, args.ood_data_file, args.ood_split, progress), info,
                        args.convert)

    def emb(images: ImageSet) -> torch.Tensor:
        return embed_all(model, images, progress=progress)

    k = DEFAULT_K if args.k is None else args.k
    quantile = DEFAULT_QUANTILE if args.quantile is None else args.quantile
    guard = DomainGuard.fit(emb(reference), emb(calibration), k=k, quantile=quantile,
                            embedding_fingerprint=embedding_fingerprint(model),
                            reference_data=f"{reference.name} train ({len(reference)} images)",
                            calibration_data=f"{calibration.name} {where} ({len(calibration)} images)")
    summary = detection_summary(guard, emb(tested), emb(ood))
    summary.update({"dataset": tested.name, "split": args.split, "ood_dataset": ood.name, "ood_split": args.ood_split,
                    "checkpoint": str(Path(args.checkpoint)), "model": info.model, "backbone": info.backbone,
                    "model_fingerprint": model.fingerprint(), "guard_file": args.save_guard})
    if args.save_guard:
        guard.save(args.save_guard)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"domain guard ({guard.method}, k={guard.k}, threshold {guard.threshold:.4f} = the {guard.quantile:.0%} "
              f"quantile of {guard.n_calibration} held-in images): AUROC {summary['auroc']:.4f}, FPR at 95% TPR "
              f"{summary['fpr_at_95_tpr']:.4f}; flagged {summary['in_flag_rate']:.1%} of {summary['n_in']} "
              f"{tested.name} {args.split} images and {summary['ood_flag_rate']:.1%} of {summary['n_ood']} "
              f"{ood.name} {args.ood_split} images")
        if args.save_guard:
            print(f"guard written to {Path(args.save_guard).resolve()}")
    return 0


# ---------------------------------------------------------------------------------------- lab
def _notebook_dir(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "notebooks",
                                                    Path(__file__).resolve().parents[1] / "notebooks"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FslXaiError(f"no notebooks folder at {', '.join(str(c) for c in candidates)}; run `fsl-xai lab` from "
                      "the repository root or pass --notebooks FOLDER")


#: datasets whose default models the notebooks open (the synthetic one needs no data)
NOTEBOOK_DATASETS = ("pbc-blood-64", "ham10000-64", "mednist", "synthetic")


def _prepare(datasets: Sequence[str] | None, model_name: str) -> None:
    from .data.registry import list_datasets
    from .training import default_model

    if not datasets:
        present = {i.name for i in list_datasets() if i.present or i.kind == "builtin"}
        datasets = [d for d in NOTEBOOK_DATASETS if d in present]
    for name in datasets:
        _, info = default_model(name, model_name, progress=True)
        acc = info.val_metrics.get("best_val_accuracy")
        note = f" (validation accuracy {acc:.3f})" if acc is not None else ""
        print(f"default {info.model} model for {name} is ready{note}", file=sys.stderr)


def cmd_prepare(args: argparse.Namespace) -> int:
    _prepare(args.datasets, args.model)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    folder = _notebook_dir(args.notebooks)
    _prepare(args.dataset, args.model)
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"]
    if args.port:
        cmd.append(f"--port={args.port}")
    if args.ip:
        cmd.append(f"--ip={args.ip}")
    if args.no_browser:
        cmd.append("--no-browser")
    passed = [a for a in args.jupyter_args if a != "--"]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in passed:
        # containers often run as root, and Jupyter refuses to start as root without this flag
        print("fsl-xai lab: running as root, so JupyterLab is started with --allow-root", file=sys.stderr)
        cmd.append("--allow-root")
    cmd += passed
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FslXaiError as exc:
        message = " ".join(str(exc).split())
        print(f"fsl-xai {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fsl-xai: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
