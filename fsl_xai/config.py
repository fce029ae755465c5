"""Where data is read from and where caches are written.

Settings come from an explicit argument first, then the environment:

- ``FSL_XAI_DATA_DIR``: one folder with datasets (for example ``../shared/data``), or several
  joined by ``os.pathsep`` (``:`` on Linux and macOS, ``;`` on Windows), searched in order, so that
  a folder of your own can sit beside the shared sets: ``FSL_XAI_DATA_DIR=~/my-data:../shared/data``.
- ``FSL_XAI_CACHE_DIR``: a writable folder for downloads, trained models and embeddings
  (default ``~/.cache/fsl-xai``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_DIR_ENV = "FSL_XAI_DATA_DIR"
CACHE_DIR_ENV = "FSL_XAI_CACHE_DIR"

PathList = str | os.PathLike | Iterable[str | os.PathLike]


def data_dirs(path: PathList | None = None) -> list[Path]:
    """The data folders to search, in order (empty when none is set).

    Args:
        path: a folder, several joined by ``os.pathsep``, or a list of folders; None reads
            ``FSL_XAI_DATA_DIR``. Empty entries are ignored and repeated folders kept once.
    """
    value = path if path is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        return []
    if isinstance(value, (str, os.PathLike)):
        parts: list[str | os.PathLike] = list(str(value).split(os.pathsep))
    else:
        parts = [p for item in value for p in str(item).split(os.pathsep)]
    out: list[Path] = []
    for part in parts:
        text = str(part).strip()
        if text:
            folder = Path(text).expanduser()
            if folder not in out:
                out.append(folder)
    return out


def data_dir(path: PathList | None = None) -> Path | None:
    """The first data folder to search, or None when none is set (see :func:`data_dirs` for all)."""
    folders = data_dirs(path)
    return folders[0] if folders else None


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The writable cache directory (created if missing)."""
    value = path if path is not None else os.environ.get(CACHE_DIR_ENV)
    root = Path(value).expanduser() if value else Path.home() / ".cache" / "fsl-xai"
    root.mkdir(parents=True, exist_ok=True)
    return root
