"""``fsl-xai datasets``: the datasets this installation knows, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``datasets`` command to the subparsers."""
    p = sub.add_parser("datasets", help="list the datasets this installation knows")
    p.add_argument("--data-dir", help=f"folders searched first, joined by {os.pathsep!r}, before those of "
                                      "$FSL_XAI_DATA_DIR (itself one folder or several joined the same way)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data.registry import list_datasets

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
