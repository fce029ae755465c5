"""``fsl-xai prepare`` and ``fsl-xai lab``: the default models the notebooks open, and JupyterLab."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import FslXaiError

#: datasets whose default models the notebooks open (the synthetic one needs no data)
NOTEBOOK_DATASETS = ("pbc-blood-64", "ham10000-64", "mednist", "synthetic")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` and ``lab`` commands to the subparsers."""
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


def notebook_dir(explicit: str | None) -> Path:
    """The notebooks folder: ``explicit``, else ./notebooks, else the repository's."""
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "notebooks",
                                                    Path(__file__).resolve().parents[2] / "notebooks"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise FslXaiError(f"no notebooks folder at {', '.join(str(c) for c in candidates)}; run `fsl-xai lab` from "
                      "the repository root or pass --notebooks FOLDER")


def prepare(datasets: Sequence[str] | None, model_name: str) -> None:
    """Train (once) and cache the default model of each dataset (default: the notebooks' present ones)."""
    from ..data.registry import list_datasets
    from ..training import default_model

    if not datasets:
        present = {i.name for i in list_datasets() if i.present or i.kind == "builtin"}
        datasets = [d for d in NOTEBOOK_DATASETS if d in present]
    for name in datasets:
        _, info = default_model(name, model_name, progress=True)
        acc = info.val_metrics.get("best_val_accuracy")
        note = f" (validation accuracy {acc:.3f})" if acc is not None else ""
        print(f"default {info.model} model for {name} is ready{note}", file=sys.stderr)


def cmd_prepare(args: argparse.Namespace) -> int:
    prepare(args.datasets, args.model)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    folder = notebook_dir(args.notebooks)
    prepare(args.dataset, args.model)
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
