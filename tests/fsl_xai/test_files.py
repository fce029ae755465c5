"""atomic_write: the old file or the complete new one, never half of one."""

from __future__ import annotations

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
