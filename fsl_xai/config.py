"""Where data is read from and where caches are written.

Settings come from an explicit argument first, then the environment:

- ``FSL_XAI_DATA_DIR``: a folder with datasets (for example ``../shared/data``), searched first.
- ``FSL_XAI_CACHE_DIR``: a writable folder for downloads, trained models and embeddings
  (default ``~/.cache/fsl-xai``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "FSL_XAI_DATA_DIR"
CACHE_DIR_ENV = "FSL_XAI_CACHE_DIR"


def data_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The data directory to search first, or None when none is set."""
    value = path if path is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    return Path(value).expanduser()


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The writable cache directory (created if missing)."""
    value = path if path is not None else os.environ.get(CACHE_DIR_ENV)
    root = Path(value).expanduser() if value else Path.home() / ".cache" / "fsl-xai"
    root.mkdir(parents=True, exist_ok=True)
    return root
