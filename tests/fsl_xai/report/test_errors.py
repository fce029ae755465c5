"""Bad audit folders: a clear error naming the file and the fix, or a clearly marked partial section."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from fsl_xai.cli import main
from fsl_xai.report import AuditFolderError, load_audit, write_report

from .page import read_page


@pytest.fixture
def folder(audit_dir, tmp_path):
    """A copy of the real audit folder that a test may damage."""
    return shutil.copytree(audit_dir.folder, tmp_path / "audit")


def _edit_manifest(folder, **changes) -> dict:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
    return manifest


def _error(folder, tmp_path, **kwargs) -> str:
    with pytest.raises(AuditFolderError) as info:
        write_report(folder, tmp_path / "report.html", **kwargs)
    assert not (tmp_path / "report.html").exists()
    return " ".join(str(info.value).split())


def test_not_an_audit_folder(tmp_path):
    message = _error(tmp_path / "nowhere", tmp_path)
    assert "nowhere is not a folder" in message and "fsl-xai audit" in message
    (tmp_path / "empty").mkdir()
    message = _error(tmp_path / "empty", tmp_path)
    assert "manifest.json is missing" in message and "not an audit folder" in message and "fsl-xai audit" in message


def test_unreadable_or_foreign_manifest(folder, tmp_path):
    (folder / "manifest.json").write_text("{not json")
    assert "manifest.json is not readable JSON" in _error(folder, tmp_path)
    (folder / "manifest.json").write_text(json.dumps({"format": "fsl-xai-audit/9", "complete": True}))
    message = _error(folder, tmp_path)
    assert "'fsl-xai-audit/9'" in message and "'fsl-xai-audit/1'" in message and "rerun the audit" in message


def test_unfinished_audit_says_how_to_finish(folder, tmp_path):
    manifest = _edit_manifest(folder, complete=False)
    message = _error(folder, tmp_path)
    assert "manifest.json says the audit is not complete" in message
    assert manifest["reproduce"] in message and "rerun the same command to finish it" in message


@pytest.mark.parametrize("name", ["queries.parquet", "accuracy.json"])
def test_missing_core_table(folder, tmp_path, name):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / name).unlink()
    message = _error(folder, tmp_path)
    assert f"{folder / name} is missing" in message and f"rerun the audit ({manifest['reproduce']})" in message


def test_malformed_tables(folder, tmp_path):
    queries = pd.read_parquet(folder / "queries.parquet")
    queries.drop(columns=["confidence"]).to_parquet(folder / "queries.parquet")
    message = _error(folder, tmp_path)
    assert "queries.parquet lacks the columns ['confidence']" in message
    queries.to_parquet(folder / "queries.parquet")
    accuracy = json.loads((folder / "accuracy.json").read_text())
    accuracy["accuracy"]["n"] += 1
    (folder / "accuracy.json").write_text(json.dumps(accuracy))
    assert "different runs" in _error(folder, tmp_path)
    (folder / "queries.parquet").write_bytes(b"PAR1 damaged")
    assert "queries.parquet is not a readable Parquet table" in _error(folder, tmp_path)


def test_damaged_map_chunk(folder, tmp_path):
    chunk = sorted((folder / "maps" / "saliency").glob("chunk-*.npz"))[0]
    whole = chunk.read_bytes()
    for damaged in (b"not an npz", whole[: len(whole) // 2]):
        chunk.write_bytes(damaged)
        message = _error(folder, tmp_path)
        assert f"{chunk} cannot be read" in message and "the map chunk is damaged" in message
        assert "rerun the audit" in message
    np.savez(chunk, rows=np.arange(3))  # a readable npz without maps
    message = _error(folder, tmp_path)
    assert f"{chunk} has arrays ['rows'], not 'rows' and 'maps'" in message


def test_missing_optional_table_gives_a_partial_section(folder, tmp_path, capsys):
    (folder / "subgroups.parquet").unlink()
    shutil.rmtree(folder / "maps" / "gradcam")
    problems = write_report(folder, tmp_path / "report.html")
    assert [where for where, _ in problems] == ["subgroups", "gallery"]
    text = (tmp_path / "report.html").read_text()
    assert "This report is partial." in text and 'class="partial"' in text
    assert "subgroups.parquet is missing" in text
    page = read_page(text)
    assert page.cases and all(case["images"][1][0] == "saliency map" for case in page.cases)
    assert all("no map" in " ".join(case["text"]) for case in page.cases)  # gradcam's place says so
    # the command line warns per partial section and still writes the report
    assert main(["report", str(folder), "--out", str(tmp_path / "cli.html")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("fsl-xai report: warning: the ") for line in err)


def test_images_that_cannot_be_found_or_do_not_match(folder, tmp_path, hostile_file):
    _edit_manifest(folder, data={**json.loads((folder / "manifest.json").read_text())["data"], "source": "file",
                                 "name": "mine.npz"})
    problems = write_report(folder, tmp_path / "report.html")
    assert problems == [("gallery", "the audit read your own images (mine.npz); pass --data-file with that file or "
                                    "folder to show the query images")]
    page = read_page((tmp_path / "report.html").read_text())
    assert page.cases and all(alt != "query image" for case in page.cases for alt, _ in case["images"])
    # a file that is not the audited one is refused, not shown as if it were
    problems = write_report(folder, tmp_path / "report.html", data_file=hostile_file)
    assert len(problems) == 1 and "number 48, but the audit ran on 240" in problems[0][1]


def test_audit_folder_loads_its_tables(audit_dir):
    audit = load_audit(audit_dir.folder)
    assert audit.problems == [] and audit.methods == ["gradcam", "saliency"]
    assert audit.subgroups is not None and audit.quality is not None
    assert list(audit.queries["row"]) == list(range(len(audit.queries)))


def test_cli_errors_are_one_line(tmp_path, capsys, audit_dir):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsl-xai report: error: ") and "manifest.json is missing" in err[0]
    assert main(["report", str(audit_dir.folder), "--out", str(tmp_path / "r.html"), "--gallery", "-1"]) == 2
    assert "--gallery must be 0 or more" in capsys.readouterr().err
    assert main(["report", str(audit_dir.folder), "--out", str(tmp_path)]) == 2
    assert "is a folder; give the HTML file to write" in capsys.readouterr().err
