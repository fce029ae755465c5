"""``fsl-xai audit``: every query of a split with its attribution maps, quality checks and subgroup
gaps, in chunks of episodes on Dask distributed (a LocalCluster by default), into a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DATA_FILE_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command to the subparsers."""
    p = sub.add_parser("audit", help="predictions, attribution maps, quality checks and subgroup gaps of a whole "
                                     "split, on Dask distributed, into an audit folder")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fsl-xai train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see `fsl-xai datasets`)")
    src.add_argument("--data-file", help=DATA_FILE_HELP)
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--convert", action="store_true",
                   help="convert images to the checkpoint's channels and size when they differ")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes to draw episodes from (default: the classes the model was not trained on)")
    p.add_argument("--n-way", type=int, help="classes per episode (default: all chosen classes, at most 5)")
    p.add_argument("--n-shot", type=int, default=5)
    p.add_argument("--n-query", type=int, default=15, help="queries per class (default 15)")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", required=True, metavar="M1,M2",
                   help="attribution methods, comma-separated (e.g. gradcam,saliency; see fsl_xai.explain.METHODS)")
    p.add_argument("--quality", action="store_true",
                   help="add the per-map quality checks (randomisation, deletion/insertion, support checks, ...)")
    p.add_argument("--by", metavar="COL1,COL2", help="metadata columns for the subgroup table (e.g. site,sex)")
    p.add_argument("--guard", metavar="GUARD.json",
                   help="a domain guard saved by `fsl-xai guard --save-guard`: adds ood_score and ood_flag")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler (tcp://127.0.0.1:8786) instead of a local cluster")
    where.add_argument("--workers", type=int, default=2,
                       help="worker processes of the local cluster on 127.0.0.1 (default 2; 0: run in this process)")
    p.add_argument("--chunk-episodes", type=int, metavar="K",
                   help="episodes per task (default 5); results do not depend on it")
    p.add_argument("--force", action="store_true", help="replace an audit of other settings in --out")
    p.add_argument("--out", required=True, metavar="DIR", help="the audit folder (a rerun resumes it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit import DEFAULT_CHUNK_EPISODES, AuditSpec, run_audit

    spec = AuditSpec(checkpoint=args.checkpoint, dataset=args.dataset, data_file=args.data_file, split=args.split,
                     convert=args.convert, classes=tuple(args.classes) if args.classes else None, n_way=args.n_way,
                     n_shot=args.n_shot, n_query=args.n_query, episodes=args.episodes, seed=args.seed,
                     methods=args.methods, quality=args.quality, by=args.by or (), guard=args.guard,
                     chunk_episodes=args.chunk_episodes or DEFAULT_CHUNK_EPISODES)
    workers = 0 if args.scheduler else args.workers
    if workers == 0 and not args.scheduler:
        from ..audit.chunks import keep_freed_memory

        keep_freed_memory()  # this process exists to run the chunks, as a worker does
    result = run_audit(spec, args.out, scheduler=args.scheduler, workers=workers, progress=not args.no_progress,
                       force=args.force)
    print(f"audit written to {Path(result.out_dir).resolve()} ({result.computed} chunk(s) computed, "
          f"{result.skipped} already done); report: {result.report_command}")
    return 0
