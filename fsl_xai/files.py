"""Writing files so that nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# like tempfile.mkstemp's flags (no following a planted link, not inherited by child processes),
# but the file is created with mode 0o666 so that the umask applies as it does to a plain open()
_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


def _create_temporary(target: Path) -> tuple[int, Path]:
    """Open a new, uniquely named hidden file next to ``target``; its mode is what ``open(..., "wb")``
    would give a new file (0o666 less the umask), not tempfile's 0o600."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {target}: 100 names were taken")


def _keep_mode(target: Path, fd: int) -> None:
    """Give the open temporary file ``fd`` the permission bits of the regular file it will replace."""
    try:
        existing = os.stat(target)
    except OSError:  # no file yet: the temporary keeps its umask-derived mode
        return
    if stat.S_ISREG(existing.st_mode) and hasattr(os, "fchmod"):
        os.fchmod(fd, stat.S_IMODE(existing.st_mode))


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file in the same folder and a rename.

    Yields a binary file handle. When the block ends without an error the data are flushed to disk
    and the file is renamed into place, so readers see either the old file or the complete new one;
    on any error (or an interrupt) the temporary file is removed and ``path`` is left as it was.
    Parent folders are created. A new file gets the mode a plain ``open(path, "wb")`` would give
    it (0o644 under the usual umask 022); a replaced file keeps its permission bits.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            _keep_mode(target, handle.fileno())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
