"""``fsl-xai guard``: how well the domain guard tells held-in images from another kind (AUROC), and
the fitted guard saved for ``fsl-xai evaluate --guard``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError
from .common import DATA_FILE_HELP, set_torch_threads

if TYPE_CHECKING:
    from ..data import ImageSet


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``guard`` command to the subparsers."""
    p = sub.add_parser("guard", help="how well the domain guard tells held-in images from another kind (AUROC)")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fsl-xai train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="held-in dataset name: its train split is the reference, val calibrates")
    src.add_argument("--data-file", help="held-in images (train: reference, val: calibration); " + DATA_FILE_HELP)
    p.add_argument("--split", default="test", help="held-in split to test (default: test; not train or val)")
    ood = p.add_mutually_exclusive_group(required=True)
    ood.add_argument("--ood-dataset", help="out-of-distribution dataset name (see `fsl-xai datasets`)")
    ood.add_argument("--ood-data-file", help="out-of-distribution images; " + DATA_FILE_HELP)
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


def cmd_guard(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoints import images_for_checkpoint, load_checkpoint
    from ..data.open import load_images
    from ..embeddings import embed_all, embedding_fingerprint
    from ..guard import DEFAULT_K, DEFAULT_QUANTILE, DomainGuard, detection_summary, reference_and_calibration

    if args.split in ("train", "val", "all"):
        raise DataError(f"--split {args.split} overlaps the guard's reference (train) or calibration (val) images; "
                        "test on held-out images: --split test")
    set_torch_threads(args.threads)
    progress = not args.no_progress
    model, info = load_checkpoint(args.checkpoint)

    def held_in(split: str) -> ImageSet:
        return images_for_checkpoint(load_images(args.dataset, args.data_file, split, progress), info, args.convert)

    try:
        val: ImageSet | None = held_in("val")
    except DataError:  # no val split: a seeded part of train is held out of the reference
        val = None
    reference, calibration, where = reference_and_calibration(held_in("train"), val, seed=args.seed)
    tested = held_in(args.split)
    ood = images_for_checkpoint(load_images(args.ood_dataset, args.ood_data_file, args.ood_split, progress), info,
                                args.convert)

    def emb(images: ImageSet) -> torch.Tensor:
        return embed_all(model, images, progress=progress)

    k = DEFAULT_K if args.k is None else args.k
    quantile = DEFAULT_QUANTILE if args.quantile is None else args.quantile
    guard = DomainGuard.fit(emb(reference), emb(calibration), k=k, quantile=quantile,
                            embedding_fingerprint=embedding_fingerprint(model),
                            reference_data=f"{reference.name} train ({len(reference)} images)",
                            calibration_data=f"{calibration.name} {where}")
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
