"""``fsl-xai evaluate``: accuracy with a 95% CI over many episodes, the per-query table, and on
request conformal prediction sets (``--conformal ALPHA``) and the domain guard (``--guard``).

The model is a checkpoint (``--checkpoint``) or a frozen pretrained network scored with prototypes
(``--backbone timm:NAME | torchscript:PATH | py:MODULE:FUNCTION``, ProtoNet, no training)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, EpisodeError
from ..files import atomic_write
from .backbone_args import (
    add_backbone_options,
    check_backbone_name,
    external_options,
    refuse_external_options,
    report_backbone,
)
from .common import DATA_FILE_HELP, format_ci, set_torch_threads

if TYPE_CHECKING:
    import pandas as pd

    from ..checkpoints import CheckpointInfo
    from ..conformal import ConformalCalibration
    from ..data import ImageSet
    from ..guard import DomainGuard
    from ..models import FewShotClassifier

#: the split whose episodes calibrate prediction sets unless --calibration-split says otherwise
CALIBRATION_SPLIT = "val"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command to the subparsers."""
    p = sub.add_parser("evaluate", help="accuracy with a 95%% CI over many episodes, and the per-query table")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="checkpoint written by `fsl-xai train`")
    what.add_argument("--backbone", metavar="SPEC",
                      help="evaluate a frozen pretrained network with prototypes (ProtoNet, no training): "
                           "timm:NAME, torchscript:PATH or py:MODULE:FUNCTION; see the external backbone options")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see `fsl-xai datasets`)")
    src.add_argument("--data-file", help=DATA_FILE_HELP)
    p.add_argument("--labels", metavar="CSV",
                   help="labels CSV for an image or DICOM folder (columns path or file, and label)")
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
    p.add_argument("--conformal", type=float, metavar="ALPHA",
                   help="add conformal prediction sets that hold the true class with probability >= 1 - ALPHA "
                        "(pred_set and set_size columns; coverage and mean set size in the output)")
    p.add_argument("--calibration-split", metavar="SPLIT",
                   help="split whose episodes (same classes and protocol) calibrate the sets (default: val; "
                        "without a val split, other episodes of --split, drawn with seed + 1)")
    p.add_argument("--calibration-episodes", type=int, metavar="N",
                   help="calibration episodes (default: as many as --episodes)")
    p.add_argument("--guard", metavar="GUARD.json",
                   help="a domain guard saved by `fsl-xai guard --save-guard`: adds ood_score and ood_flag and "
                        "reports the accuracy with and without the flagged queries")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--predictions", metavar="OUT.csv", help="write the per-query table to this CSV file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backbone_options(p)
    p.set_defaults(func=cmd_evaluate)


def _episode_classes(args: argparse.Namespace, info: CheckpointInfo, images: ImageSet) -> list[str]:
    """The classes to draw episodes from: --classes, else those the model was not trained on."""
    from ..checkpoints import untrained_classes

    classes = untrained_classes(info, images, args.classes)
    if not args.classes and len(classes) < images.n_classes:
        print(f"evaluating on the classes the model was not trained on: {classes}", file=sys.stderr)
    return classes


def _calibrate(args: argparse.Namespace, model: FewShotClassifier, info: CheckpointInfo, classes: list[str],
               n_way: int, progress: bool) -> tuple[ConformalCalibration, dict[str, Any]]:
    """Calibrate prediction sets on held-in episodes (see :mod:`fsl_xai.conformal` for why these)."""
    from ..checkpoints import images_for_checkpoint
    from ..conformal import calibrate
    from ..data.open import load_images
    from ..evaluation import evaluate

    split = args.calibration_split or CALIBRATION_SPLIT
    try:
        chosen = load_images(args.dataset, args.data_file, split, progress, labels=args.labels)
        images = images_for_checkpoint(chosen, info, args.convert)
    except DataError:
        if args.calibration_split is not None:
            raise
        split = args.split  # no val split: other episodes of the evaluated split
        chosen = load_images(args.dataset, args.data_file, split, progress, labels=args.labels)
        images = images_for_checkpoint(chosen, info, args.convert)
        print(f"no {CALIBRATION_SPLIT} split to calibrate the prediction sets on: using other episodes of the "
              f"{split} split (seed {args.seed + 1})", file=sys.stderr)
    seed = args.seed + 1 if split == args.split else args.seed
    episodes = args.calibration_episodes or args.episodes
    try:
        held_in = evaluate(model, images, n_way=n_way, n_shot=args.n_shot, n_query=args.n_query, episodes=episodes,
                           seed=seed, classes=classes, progress=progress)
    except EpisodeError as exc:
        raise EpisodeError(f"calibration episodes on the {split} split: {exc}; choose another split with "
                           "--calibration-split") from exc
    where = f"{images.name} {split} split, {episodes} episodes (seed {seed})"
    return calibrate(held_in.predictions, args.conformal, calibration_data=where), {
        "split": split, "seed": seed, "episodes": episodes}


def _guard_summary(predictions: pd.DataFrame, guard: DomainGuard, path: str) -> dict[str, Any]:
    """How many queries the guard flagged, and the accuracy with and without them (cluster bootstrap)."""
    from ..evaluation import accuracy_interval
    from ..intervals import proportion_interval

    flags = predictions["ood_flag"].to_numpy(dtype=bool)
    n_flagged = int(flags.sum())
    per_episode = predictions.assign(ood_flag=flags).groupby("episode", sort=False)["ood_flag"].agg(["sum", "size"])
    flagged = proportion_interval(per_episode["sum"].to_numpy(), per_episode["size"].to_numpy())
    return {"file": path, "threshold": guard.threshold, "k": guard.k, "quantile": guard.quantile,
            "n_queries": len(predictions), "n_flagged": n_flagged, "flagged_rate": flagged.to_dict(),
            "accuracy_with_flagged": {**accuracy_interval(predictions).to_dict(), "flagged_included": n_flagged},
            "accuracy_without_flagged": {**accuracy_interval(predictions[~flags]).to_dict(),
                                         "flagged_included": 0}}


def _frozen_backbone(args: argparse.Namespace, images: ImageSet) -> tuple[FewShotClassifier, CheckpointInfo]:
    """A ProtoNet around the external network ``--backbone`` (weights as loaded, never trained), and
    its description as a checkpoint would give it; the input transform defaults to the data's size
    and channels where neither the options nor the network state one."""
    import torch

    from ..checkpoints import CheckpointInfo
    from ..errors import ModelError
    from ..models import make_backbone, make_model

    check_backbone_name(args.backbone)
    if ":" not in args.backbone:
        raise ModelError(f"--backbone {args.backbone} without a checkpoint would have random weights; give "
                         "--checkpoint FILE, or a pretrained external network (timm:NAME, torchscript:PATH, "
                         "py:MODULE:FUNCTION)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # a factory that initialises weights at random does so reproducibly
        backbone = make_backbone(args.backbone, images.n_channels, images.image_size, **external_options(args))
    report_backbone(backbone)
    model = make_model("protonet", backbone).eval()
    return model, CheckpointInfo.for_model(model)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoints import images_for_checkpoint, load_checkpoint
    from ..data.open import load_images
    from ..evaluation import evaluate

    if args.conformal is not None and not 0 < args.conformal < 1:
        raise DataError(f"--conformal {args.conformal}: ALPHA must lie strictly between 0 and 1 (the share of "
                        "queries whose set may miss the true class); use 0.1 for 90% coverage")
    set_torch_threads(args.threads)
    progress = not args.no_progress
    raw = load_images(args.dataset, args.data_file, args.split, progress, labels=args.labels)
    if args.backbone:
        model, info = _frozen_backbone(args, raw)
        if not args.convert and (raw.n_channels, raw.image_size) != (info.in_channels, info.image_size):
            raise DataError(f"backbone {args.backbone} expects {info.in_channels}-channel {info.image_size[0]}x"
                            f"{info.image_size[1]} images but {raw.name} has {raw.n_channels}-channel "
                            f"{raw.image_size[0]}x{raw.image_size[1]} images; pass --convert to convert them")
    else:
        refuse_external_options(args, "a checkpoint states its backbone's input")
        model, info = load_checkpoint(args.checkpoint)
    images = images_for_checkpoint(raw, info, args.convert)
    classes = _episode_classes(args, info, images)
    n_way = args.n_way if args.n_way is not None else min(5, len(classes))
    guard = None
    if args.guard:
        from ..guard import DomainGuard

        guard = DomainGuard.load(args.guard)
    calibration: ConformalCalibration | None = None
    calibrated_on: dict[str, Any] = {}
    if args.conformal is not None:  # calibrated first: a split or protocol problem shows before the long run
        calibration, calibrated_on = _calibrate(args, model, info, classes, n_way, progress)

    result = evaluate(model, images, n_way=n_way, n_shot=args.n_shot, n_query=args.n_query,
                      episodes=args.episodes, seed=args.seed, classes=classes, progress=progress, guard=guard)
    predictions = result.predictions
    summary: dict[str, Any] = {
        "accuracy": float(result.accuracy), "ci95": [float(v) for v in result.ci95],
        "episodes": int(result.episodes), "n_way": int(result.n_way), "n_shot": int(result.n_shot),
        "n_query": int(result.n_query), "n_predictions": int(len(predictions)),
        "dataset": images.name, "split": args.split, "classes": classes, "seed": args.seed,
        "checkpoint": str(Path(args.checkpoint)) if args.checkpoint else None, "model": info.model,
        "backbone": info.backbone, "input_transform": info.backbone_params.get("transform"),
        "model_fingerprint": model.fingerprint(), "predictions": args.predictions,
    }
    if guard is not None:
        summary["guard"] = _guard_summary(predictions, guard, args.guard)
        summary["flagged_included"] = summary["guard"]["n_flagged"]
    if calibration is not None:
        from ..conformal import add_prediction_sets, conformal_report

        predictions = add_prediction_sets(predictions, calibration)
        summary["conformal"] = conformal_report(predictions, calibration).to_dict()
        summary["conformal"]["calibration"].update(calibrated_on)
        if guard is not None:
            summary["conformal"]["flagged_included"] = summary["guard"]["n_flagged"]
    if args.predictions:
        with atomic_write(args.predictions) as handle:
            predictions.to_csv(handle, index=False)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary, result.ci95)
    return 0


def _print_summary(summary: dict[str, Any], ci95: tuple[float, float]) -> None:
    half = (ci95[1] - ci95[0]) / 2
    flagged = f", {summary['flagged_included']} flagged queries included" if "guard" in summary else ""
    print(f"accuracy {summary['accuracy']:.3f} +- {half:.3f} (95% CI {format_ci(ci95)}; "
          f"n = {summary['episodes']} episodes, {summary['n_way']}-way {summary['n_shot']}-shot, "
          f"{summary['n_query']} queries per class{flagged}) on {summary['dataset']} {summary['split']} classes "
          f"{summary['classes']}")
    if "guard" in summary:
        g = summary["guard"]
        acc = g["accuracy_without_flagged"]
        print(f"domain guard: {g['n_flagged']} of {g['n_queries']} queries flagged out of distribution; accuracy "
              f"without them {_number(acc['estimate'])} (95% CI {format_ci(acc['ci95'])}, n = {acc['n']} queries)")
    if "conformal" in summary:
        c = summary["conformal"]
        cov, size = c["coverage"], c["mean_set_size"]
        print(f"conformal sets (alpha {c['alpha']}, calibrated on {c['calibration']['calibration_data']}): coverage "
              f"{_number(cov['estimate'])} (95% CI {format_ci(cov['ci95'])}), mean set size "
              f"{_number(size['estimate'])} (95% CI {format_ci(size['ci95'])}); n = {cov['n']} queries in "
              f"{c['n_episodes']} episodes")
    if summary["predictions"]:
        print(f"per-query table written to {Path(summary['predictions']).resolve()}")


def _number(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"
