"""``fsl-xai study ...``: freeze a study, add raters, serve the rater app, export answers.

Every bad input ends in one line on stderr and exit code 2 (the ``fsl-xai`` convention for
FslXaiError): file-system and SQLite failures are turned into StudyStoreError here, so no
traceback reaches the user.
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .freeze import STORE_NAME
from .store import StudyStoreError, store_error

RATER_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "study_rater.ipynb"


def _one_line_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn OSError and SQLite errors into StudyStoreError (one line, exit code 2)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except sqlite3.Error as exc:
            folder = getattr(args, "folder", None) or getattr(args, "out", None) or "."
            raise store_error(Path(folder) / STORE_NAME, exc) from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise StudyStoreError(f"cannot use{where}: {exc.strerror or exc}; check the path and its permissions"
                                  ) from None

    return run


def _store_path(folder: str) -> Path:
    db = Path(folder) / STORE_NAME
    if not db.is_file():
        raise StudyStoreError(f"{db} not found; freeze the study first: fsl-xai study freeze STUDY --out {folder}")
    return db


def _study_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    if not files:
        raise StudyStoreError(f"no study file (.yaml or .json) next to {folder / STORE_NAME}; copy the study file "
                              "that was frozen into that folder")
    return files[0]


@_one_line_errors
def _freeze(args: argparse.Namespace) -> int:
    from .freeze import freeze_study

    db = freeze_study(args.study, args.out, progress=not args.quiet, force=args.force)
    print(f"frozen study saved to {db}")
    return 0


@_one_line_errors
def _add_raters(args: argparse.Namespace) -> int:
    from .freeze import add_raters

    for pseudonym, token in add_raters(_store_path(args.folder), args.n, role=args.role):
        print(f"{pseudonym}\thttp://{args.host}:{args.port}/?token={token}")
    return 0


@_one_line_errors
def _serve(args: argparse.Namespace) -> int:
    from .serve import serve_rater_app

    target = Path(args.folder)
    if target.is_file():
        # a study file: freeze it next to itself on first use, then serve the frozen copy
        frozen = target.with_name(f"{target.stem}_frozen")
        if not (frozen / STORE_NAME).exists():
            from .freeze import freeze_study

            print(f"freezing {target} into {frozen} ...")
            freeze_study(target, frozen)
        target = frozen
    db = _store_path(str(target))
    return serve_rater_app(db, _study_file(db.parent), RATER_NOTEBOOK, host=args.host, port=args.port,
                           max_kernels=args.max_kernels, cull_idle_s=args.cull_idle_s, preheat=args.preheat)


@_one_line_errors
def _export(args: argparse.Namespace) -> int:
    from .export import export_study
    from .store import ResponseStore

    db = _store_path(args.folder)
    # read-only: exporting never changes the study, and works on a read-only folder or copy
    with ResponseStore(db, read_only=True) as store:
        written = export_study(store, args.out, study_file=_study_file(db.parent))
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=1))
    return 0


def register(subparsers) -> None:
    """Add ``study`` and its sub-commands to the ``fsl-xai`` parser."""
    study = subparsers.add_parser("study", help="clinician trust studies: freeze, add raters, serve, export")
    sub = study.add_subparsers(dest="study_command", required=True)
    p = sub.add_parser("freeze", help="precompute every prediction and explanation of a study file")
    p.add_argument("study", help="the study file (YAML or JSON)")
    p.add_argument("--out", required=True, help="a new folder for the frozen study")
    p.add_argument("--force", action="store_true",
                   help="replace a frozen study already in --out (refused once it has answers)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_freeze)
    p = sub.add_parser("add-raters", help="register raters and print their links")
    p.add_argument("folder")
    p.add_argument("--n", type=int, default=1, help="how many raters to add (1 or more)")
    p.add_argument("--role", default="rater", choices=["rater", "instructor"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8866)
    p.set_defaults(func=_add_raters)
    p = sub.add_parser("serve", help="serve the rater app (Voila; a token is required per rater)")
    p.add_argument("folder", help="a frozen study folder, or a study file (frozen on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=8866, help="port to serve on; an error if it is taken")
    p.add_argument("--max-kernels", type=int, default=40,
                   help="rater pages open at once (each has a kernel); beyond it: 'too many open sessions'")
    p.add_argument("--cull-idle-s", type=float, default=900.0,
                   help="shut a kernel down after this many idle seconds without a connected page")
    p.add_argument("--preheat", type=int, default=0, metavar="N",
                   help="keep N kernels started ahead with the rater app loaded up to the rater's token, so a page "
                        "opens without starting a kernel (e.g. the size of a class: --preheat 20); each ~66 MiB on "
                        "top of --max-kernels")
    p.set_defaults(func=_serve)
    p = sub.add_parser("export", help="export answers (CSV and Parquet) with the study file and provenance")
    p.add_argument("folder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_export)
