"""``fsl-xai export-model``: a deployable bundle (ONNX backbone, class vectors, input transform, scoring
rule, model card and a numpy + onnxruntime predictor) for K shots per class drawn from the given data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EpisodeError
from .common import DATA_FILE_HELP, format_ci, set_torch_threads

if TYPE_CHECKING:
    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``export-model`` command to the subparsers."""
    p = sub.add_parser("export-model", help="a deployable ONNX bundle with prototypes, model card and predictor")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fsl-xai train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see `fsl-xai datasets`): the support set is drawn from it")
    src.add_argument("--data-file", help="the support set is drawn from these images; " + DATA_FILE_HELP)
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--convert", action="store_true",
                   help="convert images to the checkpoint's channels and size when they differ")
    p.add_argument("--n-shot", type=int, required=True, help="support images per class in the bundle")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="the bundle's classes (default: the classes the model was not trained on)")
    p.add_argument("--seed", type=int, default=0, help="draws the support set and the validation episodes")
    p.add_argument("--n-query", type=int, default=15, help="queries per class in validation episodes (default 15)")
    p.add_argument("--episodes", type=int, default=200, help="validation episodes (default 200)")
    p.add_argument("--guard", metavar="GUARD.json",
                   help="a domain guard saved by `fsl-xai guard --save-guard`: its threshold goes into the model card")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an earlier bundle at --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export_model)


def bundle_classes(requested: list[str] | None, info: CheckpointInfo, images: ImageSet) -> list[str]:
    """--classes, else the classes of the data the model was not trained on (as ``evaluate`` chooses)."""
    from ..checkpoints import untrained_classes

    return untrained_classes(info, images, requested)


def cmd_export_model(args: argparse.Namespace) -> int:
    from ..checkpoints import images_for_checkpoint, load_checkpoint
    from ..data.open import load_images
    from ..deploy import export_bundle

    if args.n_shot < 1 or args.episodes < 1 or args.n_query < 1:
        raise EpisodeError(f"--n-shot, --n-query and --episodes must be at least 1; got {args.n_shot}, "
                           f"{args.n_query} and {args.episodes}")
    set_torch_threads(args.threads)
    progress = not args.no_progress
    model, info = load_checkpoint(args.checkpoint)
    images = images_for_checkpoint(load_images(args.dataset, args.data_file, args.split, progress), info,
                                   args.convert)
    classes = bundle_classes(args.classes, info, images)
    guard = None
    if args.guard:
        from ..guard import DomainGuard

        guard = DomainGuard.load(args.guard)
    source = {"split": args.split, **({"file": Path(args.data_file).name} if args.data_file else {})}

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    result = export_bundle(model, info, images, classes, args.n_shot, args.out, seed=args.seed, force=args.force,
                           n_query=args.n_query, episodes=args.episodes, guard=guard, source=source,
                           progress=progress, say=say)
    card, parity = result.card, result.parity
    summary = {"out": str(result.path), "size_bytes": result.size_bytes, "files": result.files,
               "parity": parity.to_dict(), "classes": card["classes"], "validation": card["validation"],
               "domain_guard": card["domain_guard"], "checkpoint": str(Path(args.checkpoint)),
               "model": info.model, "backbone": info.backbone}
    if args.json:
        print(json.dumps(summary))
        return 0
    ep, own = card["validation"]["episodes"], card["validation"]["this_support_set"]
    print(f"onnxruntime vs torch on {parity.n_images} real images: largest difference {parity.max_diff:.2e} "
          f"(embeddings; allowed {parity.tolerance:g}); class scores within {parity.max_score_diff:.2e} "
          f"({parity.max_score_rel_diff:.2e} of their size); same predictions: "
          f"{'yes' if parity.same_predictions else 'no'}")
    print(f"validation: accuracy {ep['accuracy']:.3f} (95% CI {format_ci(ep['ci95'])}; n = {ep['n_episodes']} "
          f"episodes, {ep['n_way']}-way {ep['n_shot']}-shot, {ep['n_queries']} queries); this support set "
          f"{_number(own['estimate'])} (95% CI {format_ci(own['ci95'])}; n = {own['n']} images)")
    print(f"bundle written to {result.path.resolve()}: {result.size_bytes / 1e6:.2f} MB ({result.size_bytes} bytes, "
          f"{len(result.files)} files: {', '.join(result.files)})")
    return 0


def _number(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"
