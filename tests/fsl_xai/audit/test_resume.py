"""A stopped audit resumes: finished chunks are kept, the rest computed, the results unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fsl_xai.audit import AuditError, run_audit

from .common import assert_same_audit, small_spec


class Stop(Exception):
    pass


def test_resume_after_a_stop_and_after_lost_files(checkpoint: Path, reference: Path, tmp_path: Path) -> None:
    spec = small_spec(checkpoint)

    def stop_after_one(done: int, total: int) -> None:
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        run_audit(spec, tmp_path, progress=stop_after_one)
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["chunk-00000.done"]
    kept = tmp_path / "maps" / "saliency" / "chunk-00000.npz"
    stamp = kept.stat().st_mtime_ns

    again = run_audit(spec, tmp_path, progress=False)
    assert (again.computed, again.skipped) == (2, 1)
    assert kept.stat().st_mtime_ns == stamp  # the finished chunk was not recomputed
    assert_same_audit(reference, tmp_path)

    (tmp_path / "maps" / "gradcam" / "chunk-00002.npz").unlink()  # a lost shard: only its chunk is redone
    third = run_audit(spec, tmp_path, progress=False)
    assert (third.computed, third.skipped) == (1, 2)
    assert kept.stat().st_mtime_ns == stamp
    assert_same_audit(reference, tmp_path)


def test_another_spec_in_the_folder_needs_force(checkpoint: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    shutil.copytree(reference, out)
    other = small_spec(checkpoint, episodes=2, methods=("saliency",))
    with pytest.raises(AuditError, match="another checkpoint, data or settings.*--force"):
        run_audit(other, out, progress=False)
    result = run_audit(other, out, progress=False, force=True)
    assert (result.computed, result.n_chunks) == (1, 1)
    assert not (out / "maps" / "gradcam").exists()  # the old audit's files are gone
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "mine.txt").write_text("not an audit")
    with pytest.raises(AuditError, match="not an audit folder"):
        run_audit(other, stranger, progress=False)
