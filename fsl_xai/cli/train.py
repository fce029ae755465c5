"""``fsl-xai train``: meta-train (or pre-train) a few-shot model and save a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError
from .backbone_args import BACKBONE_HELP, add_backbone_options, check_backbone_name, external_options, report_backbone
from .common import format_ci, set_torch_threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command to the subparsers."""
    p = sub.add_parser("train", help="meta-train (or pre-train) a few-shot model and save a checkpoint")
    p.add_argument("--dataset", required=True, help="dataset name (see `fsl-xai datasets`) or a .npz file")
    p.add_argument("--model", default="protonet", help="model name (default: protonet)")
    p.add_argument("--backbone", default="conv4", help=f"backbone (default: conv4): {BACKBONE_HELP}")
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
    add_backbone_options(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..data.open import load_images
    from ..embeddings import images_for_model
    from ..episodes import ClassSplit
    from ..errors import ModelError
    from ..models import list_models
    from ..training import (
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
    check_backbone_name(args.backbone)
    backbone_params = external_options(args)
    set_torch_threads(args.threads)
    progress = not args.no_progress
    is_file = args.dataset.endswith(".npz")
    train = load_images(None if is_file else args.dataset, args.dataset if is_file else None, "train", progress)
    try:
        val = load_images(None if is_file else args.dataset, args.dataset if is_file else None, "val", progress)
    except DataError:
        val = None
    if args.channels or args.image_size:
        train = train.convert(channels=args.channels, size=args.image_size)
        val = val.convert(channels=args.channels, size=args.image_size) if val is not None else None
    model = build_model(args.model, args.backbone, train.n_channels, train.image_size, seed=args.seed,
                        backbone_params=backbone_params)
    if backbone_params:  # the data go in as the external network's input transform says
        report_backbone(model.backbone)
        fitted_train = images_for_model(train, model)
        if fitted_train is not train:
            print(f"converting {train.name} images to the backbone's input ({fitted_train.n_channels} channel(s), "
                  f"{fitted_train.image_size[0]}x{fitted_train.image_size[1]})", file=sys.stderr)
        train = fitted_train
        val = images_for_model(val, model) if val is not None else None
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
            print(f"best validation accuracy {best:.3f} (95% CI {format_ci(result.best_val_ci95)}, "
                  f"100 episodes) at episode {result.best_episode}", file=sys.stderr)
    print(f"saved checkpoint to {out.resolve()}")
    return 0
