"""Checked, atomic file downloads (standard library only, plus tqdm for the progress bar).

A download streams into a hidden temporary file next to the destination, hashes the bytes as they
arrive, and only renames the temporary file onto the destination when the MD5 matches. An
interrupted or corrupt download therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ChecksumError, DatasetNotFoundError

_CHUNK = 1 << 20
_USER_AGENT = "fsl-xai (dataset downloader)"
# (resolved path, size, mtime_ns) -> md5, so a large file is hashed once per process
_MD5_MEMO: dict[tuple[str, int, int], str] = {}


def file_md5(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """The hex MD5 of a file, remembered while the file's size and modification time stay the same."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_MEMO:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk_size), b""):
                digest.update(block)
        _MD5_MEMO[key] = digest.hexdigest()
    return _MD5_MEMO[key]


def _offline_error(url: str, dest: Path, reason: str, manual_hint: str | None) -> DatasetNotFoundError:
    where = manual_hint or f"save it by hand as {dest}"
    return DatasetNotFoundError(
        f"could not download {dest.name} from {url} ({reason}). If this machine is offline or the "
        f"server is unreachable, download the file elsewhere and {where}; then load it again"
    )


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    manual_hint: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, check its MD5 and move it into place atomically.

    When ``dest`` already exists with the expected MD5 nothing is downloaded. A ``dest`` with the
    wrong MD5 is replaced only once a correct copy has arrived.

    Args:
        url: where to fetch the file from (http, https or file URL).
        dest: the final path; its folder is created if needed.
        md5: the expected hex MD5 (lower or upper case); None skips the check.
        progress: show a tqdm progress bar.
        timeout: seconds to wait for the server before giving up.
        manual_hint: how to install the file by hand, used in the offline message (default:
            "save it by hand as DEST").

    Returns:
        The destination path.

    Raises:
        ChecksumError: the downloaded bytes have another MD5 (nothing is left behind).
        DatasetNotFoundError: the server cannot be reached, answers with an error, or the transfer
            is cut short; the message says which file, from which URL and where to put it by hand.
    """
    dest = Path(dest)
    expected = md5.lower() if md5 else None
    if dest.exists() and expected and file_md5(dest) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        received = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                from tqdm.auto import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"downloading {dest.name}", disable=not progress, leave=False) as bar:
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
                if total is not None and received < total:
                    # some servers close the connection early without an exception being raised
                    raise http.client.IncompleteRead(b"", total - received)
        except urllib.error.HTTPError as exc:
            exc.close()  # an HTTPError holds the open response
            raise _offline_error(url, dest, f"the server answered HTTP {exc.code} {exc.reason}", manual_hint) from exc
        except urllib.error.URLError as exc:
            raise _offline_error(url, dest, f"network error: {exc.reason}", manual_hint) from exc
        except http.client.IncompleteRead as exc:
            raise _offline_error(url, dest, f"the connection closed early after {received} bytes; "
                                 "try again", manual_hint) from exc
        except TimeoutError as exc:
            raise _offline_error(url, dest, f"no answer within {timeout:g} s", manual_hint) from exc
        except (http.client.HTTPException, ConnectionError) as exc:
            raise _offline_error(url, dest, f"transfer failed: {exc!r}", manual_hint) from exc

        actual = digest.hexdigest()
        if expected and actual != expected:
            raise ChecksumError(
                f"the download of {dest.name} from {url} has MD5 {actual}, expected {expected} "
                f"({received} bytes received); nothing was saved. The file on the server may have "
                "changed or the transfer was corrupted: try again, or download it by hand and "
                f"check its MD5 before saving it as {dest}"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a cached dataset is not secret
        os.replace(tmp, dest)
        stat = dest.stat()
        _MD5_MEMO[(str(dest.resolve()), stat.st_size, stat.st_mtime_ns)] = actual
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()
