"""The ``fsl-xai`` command: datasets, train, evaluate, guard, dicom, lab, app, export-model, report, audit
(and ``study`` when installed).

Other scripts may call these subcommands as contracts; ``evaluate --json`` and ``guard --json``
print exactly one JSON object on stdout. Errors the library raises on purpose (FslXaiError) print
one line on stderr and exit with code 2.

One module per command group (``datasets``, ``train``, ``evaluate``, ``guard``, ``dicom``, ``lab``, ``app``), each
adding its parser; helpers they share are in ``common``. The library is imported inside each
command, so ``fsl-xai --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import FslXaiError
from . import app, audit, datasets, dicom, evaluate, export_model, guard, lab, report, train
from .lab import NOTEBOOK_DATASETS

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``fsl-xai`` argument parser with every command, plug-ins included."""
    parser = argparse.ArgumentParser(
        prog="fsl-xai",
        description="Inspectable few-shot classifiers for medical images: data, training, evaluation, lab.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    datasets.add_parser(sub)
    dicom.add_parser(sub)
    train.add_parser(sub)
    evaluate.add_parser(sub)
    guard.add_parser(sub)
    export_model.add_parser(sub)
    report.add_parser(sub)
    audit.add_parser(sub)
    lab.add_parsers(sub)
    app.add_parser(sub)
    register_plugins(sub)
    return parser


def register_plugins(sub: argparse._SubParsersAction) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = build_parser()
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


__all__ = ["EXIT_ERROR", "NOTEBOOK_DATASETS", "build_parser", "main", "register_plugins"]
