"""download_file against a real local HTTP server: checksum, atomic write, clear offline errors."""

from __future__ import annotations

import hashlib

import pytest

from fsl_xai import ChecksumError, DatasetNotFoundError
from fsl_xai.data import download_file, file_md5


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_download_is_checked_and_in_place(http_server, make_npz, leftovers, tmp_path) -> None:
    body = make_npz(seed=1)
    url = http_server.serve("sets/good.npz", body)
    dest = tmp_path / "cache" / "good.npz"
    out = download_file(url, dest, md5(body), progress=True)
    assert out == dest and dest.read_bytes() == body
    assert file_md5(dest) == md5(body)
    assert leftovers(dest.parent) == []
    # a second call finds the good file and does not ask the server again
    n_requests = len(http_server.requests)
    download_file(url, dest, md5(body).upper(), progress=False)
    assert len(http_server.requests) == n_requests


def test_checksum_mismatch_removes_everything(http_server, make_npz, leftovers, tmp_path) -> None:
    body = make_npz(seed=2)
    url = http_server.serve("bad.npz", body)
    dest = tmp_path / "bad.npz"
    with pytest.raises(ChecksumError) as info:
        download_file(url, dest, md5(b"something else"), progress=False)
    message = str(info.value)
    assert "bad.npz" in message and md5(body) in message and url in message
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_failed_download_keeps_the_previous_file(http_server, make_npz, leftovers, tmp_path) -> None:
    # a stale cached copy stays untouched when the new download does not match either
    dest = tmp_path / "set.npz"
    dest.write_bytes(b"old contents")
    url = http_server.serve("set.npz", make_npz(seed=3))
    with pytest.raises(ChecksumError):
        download_file(url, dest, md5(b"expected"), progress=False)
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_corrupt_existing_file_is_replaced(http_server, make_npz, tmp_path) -> None:
    body = make_npz(seed=4)
    url = http_server.serve("set.npz", body)
    dest = tmp_path / "set.npz"
    dest.write_bytes(body[:100])
    download_file(url, dest, md5(body), progress=False)
    assert dest.read_bytes() == body


def test_truncated_transfer_is_an_offline_error(http_server, make_npz, leftovers, tmp_path) -> None:
    body = make_npz(n=50, size=16, seed=5)
    url = http_server.serve("cut.npz", body, mode="truncate")
    dest = tmp_path / "cut.npz"
    with pytest.raises(DatasetNotFoundError) as info:
        download_file(url, dest, md5(body), progress=False)
    message = str(info.value)
    assert "cut.npz" in message and url in message and str(dest) in message
    assert not dest.exists() and leftovers(tmp_path) == []


def test_truncated_transfer_without_md5_is_still_caught(http_server, make_npz, leftovers, tmp_path) -> None:
    body = make_npz(n=50, size=16, seed=6)
    url = http_server.serve("cut.npz", body, mode="truncate")
    with pytest.raises(DatasetNotFoundError, match="closed early|transfer failed"):
        download_file(url, tmp_path / "cut.npz", None, progress=False)
    assert not (tmp_path / "cut.npz").exists() and leftovers(tmp_path) == []


def test_http_404_says_which_file_from_where_and_where_to_put_it(http_server, leftovers, tmp_path) -> None:
    url = http_server.url("missing.npz")
    dest = tmp_path / "sub" / "missing.npz"
    with pytest.raises(DatasetNotFoundError) as info:
        download_file(url, dest, "0" * 32, progress=False, manual_hint="put it in /somewhere/else")
    message = str(info.value)
    assert "404" in message and "missing.npz" in message and url in message
    assert "put it in /somewhere/else" in message
    assert not dest.exists() and leftovers(dest.parent) == []


def test_unreachable_server_is_an_offline_error(closed_port_url, tmp_path) -> None:
    dest = tmp_path / "file.npz"
    with pytest.raises(DatasetNotFoundError) as info:
        download_file(closed_port_url, dest, "0" * 32, progress=False, timeout=5)
    message = str(info.value)
    assert "file.npz" in message and closed_port_url in message and str(dest) in message
    assert "offline" in message
    assert list(tmp_path.iterdir()) == []
