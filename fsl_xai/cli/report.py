"""``fsl-xai report``: a standalone, offline HTML audit report from a folder ``fsl-xai audit`` wrote."""

from __future__ import annotations

import argparse
import sys

from ..errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` command to the subparsers."""
    p = sub.add_parser("report", help="a standalone offline HTML report (model card) of an `fsl-xai audit` folder")
    p.add_argument("folder", metavar="DIR", help="the folder `fsl-xai audit --out DIR` wrote")
    p.add_argument("--out", required=True, help="the HTML file to write (e.g. report.html)")
    p.add_argument("--data-file", help="the .npz file the audit read, when it used --data-file, for the query "
                                       "images (default: the path in the audit's reproduce command)")
    p.add_argument("--gallery", type=int, help="how many of the most confident failures to show (default: 12)")
    p.add_argument("--title", help="the report's title (default: the model and data set)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report; each partial section is a warning on stderr."""
    from ..report import DEFAULT_GALLERY, write_report

    gallery = DEFAULT_GALLERY if args.gallery is None else args.gallery
    if gallery < 0:
        raise DataError(f"--gallery must be 0 or more, got {gallery}")
    problems = write_report(args.folder, args.out, data_file=args.data_file, gallery=gallery, title=args.title)
    for section, message in problems:
        print(f"fsl-xai report: warning: the {section} section is partial: {' '.join(message.split())}",
              file=sys.stderr)
    print(f"wrote {args.out}" + (f" ({len(problems)} partial section(s))" if problems else ""))
    return 0
