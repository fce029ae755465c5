"""``fsl-xai dicom import``: a folder of DICOM files to a MedMNIST-format npz file, de-identified.

Every file under the folder is read (every frame of a multi-frame file by default), windowed and
brought to one size; each file that cannot be used is reported on stderr with its reason and the
import carries on. The npz file (written atomically) holds the images, the labels with their class
names and the de-identified metadata, never a file name, name, ID, date or UID. One summary line
goes to stdout; the exit code is 0 when any image was imported, 2 when none could be.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``dicom`` command group (``dicom import``) to the subparsers."""
    p = sub.add_parser("dicom", help="DICOM files: batch import to a MedMNIST-format npz file")
    group = p.add_subparsers(dest="dicom_command", metavar="SUBCOMMAND")
    group.required = True
    imp = group.add_parser("import", help="import a DICOM folder into a MedMNIST-format npz file (de-identified)")
    imp.add_argument("folder", metavar="FOLDER", help="the folder of DICOM files (searched recursively)")
    imp.add_argument("--out", required=True, metavar="SET.npz", help="the npz file to write")
    imp.add_argument("--labels", metavar="CSV",
                     help="labels: a CSV with columns file (relative path or file name) and label, or 'folders' "
                          "(the first sub-folder is the class); default: one class 'unlabelled'")
    imp.add_argument("--split", default="test", choices=("train", "val", "test"),
                     help="the split the images form in the file (default: test)")
    imp.add_argument("--size", type=int, default=64, help="image height and width in pixels (default: 64)")
    imp.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 (grey) or 3 (RGB); default 1")
    imp.add_argument("--window", default="auto",
                     help="monochrome window: auto (the file's, per frame), range (min..max), a preset "
                          "(lung, mediastinum, soft_tissue, abdomen, liver, bone, brain) or CENTRE,WIDTH")
    imp.add_argument("--frames", default="all",
                     help="all (every frame of every file; default) or one frame index (0: the first)")
    imp.add_argument("--fit", default="resize", choices=("resize", "stretch", "crop"),
                     help="how images are brought to the size (default: resize, keeping the aspect ratio)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_dicom_import)


def parse_window(text: str) -> str | tuple[float, float] | None:
    """``--window``: "auto", "range" (None: the value range), a preset name or "CENTRE,WIDTH"."""
    text = text.strip()
    if text == "range":
        return None
    if "," in text:
        parts = text.split(",")
        try:
            centre, width = (float(v) for v in parts)
        except ValueError:
            raise DataError(f"--window {text!r}: give CENTRE,WIDTH as two numbers, e.g. -600,1500") from None
        return centre, width
    return text


def parse_frames(text: str) -> int | str:
    """``--frames``: "all" or a frame index."""
    text = text.strip().lower()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise DataError(f"--frames {text!r}: give 'all' or a frame index (0 for the first frame)")


def cmd_dicom_import(args: argparse.Namespace) -> int:
    from ..data.dicom import import_dicom_folder

    folder, out = Path(args.folder), Path(args.out)
    if args.size < 1:
        raise DataError(f"--size must be a positive number of pixels, got {args.size}")
    labels = args.labels
    if labels is not None and labels != "folders" and not Path(labels).is_file():
        raise DataError(f"--labels {labels}: no such file; give a CSV with columns file and label, or 'folders'")
    imported = import_dicom_folder(folder, labels=labels, size=args.size, channels=args.channels,
                                   window=parse_window(args.window), frame=parse_frames(args.frames), fit=args.fit,
                                   progress=not args.no_progress, name=out.stem)
    for file, reason in imported.bad_files:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    n_images, n_bad = len(imported.images), len(imported.bad_files)
    if n_images == 0:
        raise DataError(f"no image could be imported from {folder} ({imported.n_files} file(s), {n_bad} bad: see "
                        "the reasons above); nothing was written. Check that the folder holds DICOM images"
                        + (" and that the labels name their files" if labels else ""))
    imported.to_npz(out, split=args.split)
    files_used = len(set(imported.sources))
    classes = ", ".join(f"{name} {n}" for name, n in imported.images.class_counts().items())
    print(f"imported {n_images} image(s) from {files_used} of {imported.n_files} file(s) ({n_bad} skipped) into "
          f"{out} split {args.split}: {classes}; {args.channels}x{args.size}x{args.size}")
    return 0
