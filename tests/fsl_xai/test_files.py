"""atomic_write: the old file or the complete new one, never half of one."""

from __future__ import annotations

import os
import stat

import pytest

from fsl_xai.files import atomic_write


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "deep" / "folder" / "out.bin"
    with atomic_write(path) as handle:
        handle.write(b"first")
    with atomic_write(path) as handle:
        handle.write(b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.fixture
def umask():
    """Set the process umask for one test and give the old one back afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_a_plain_open_gives(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.bin"
    with open(plain, "wb") as handle:
        handle.write(b"x")
    path = tmp_path / "atomic.bin"
    with atomic_write(path) as handle:
        handle.write(b"x")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    for mode in (0o640, 0o444):  # a read-only file is replaced too (the folder is writable) and stays read-only
        path.chmod(mode)
        with atomic_write(path) as handle:
            handle.write(b"new")
        assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
