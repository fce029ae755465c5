"""The commands an audit records (manifest ``reproduce`` and ``report_command``) name the images it read,
including your own images given with --data-file, and run as printed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from fsl_xai.audit import AuditSpec, run_audit
from fsl_xai.cli import main
from fsl_xai.data.synthetic import make_synthetic


def _option(command: str, name: str) -> str | None:
    args = shlex.split(command)
    return args[args.index(name) + 1] if name in args else None


def test_report_command_names_the_data_file() -> None:
    own = AuditSpec(checkpoint="model.pt", data_file="my scans/set.npz")
    assert shlex.split(own.report_command("out dir")) == ["fsl-xai", "report", "out dir", "--out", "report.html",
                                                           "--data-file", "my scans/set.npz"]
    assert _option(own.command("out dir"), "--data-file") == "my scans/set.npz"
    registered = AuditSpec(checkpoint="model.pt", dataset="synthetic")
    assert shlex.split(registered.report_command("out", "card.html")) == ["fsl-xai", "report", "out", "--out",
                                                                          "card.html"]


def test_audit_of_a_data_file_records_a_working_report_command(checkpoint: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    data = make_synthetic(n_per_class=6, size=64, n_classes=4, split="test")
    npz = tmp_path / "own images.npz"
    np.savez(npz, test_images=np.round(data.images[:, 0] * 255).astype(np.uint8),
             test_labels=data.labels.reshape(-1, 1), class_names=np.asarray(data.class_names))
    spec = AuditSpec(checkpoint=str(checkpoint), data_file=str(npz), n_way=4, n_shot=1, n_query=2, episodes=2,
                     methods=("saliency",), chunk_episodes=2, seed=0)
    out = tmp_path / "audit"
    result = run_audit(spec, out, workers=0, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["report_command"] == result.report_command
    assert _option(manifest["report_command"], "--data-file") == str(npz)
    assert _option(manifest["reproduce"], "--data-file") == str(npz)

    monkeypatch.chdir(tmp_path)
    args = shlex.split(manifest["report_command"])
    assert args[:2] == ["fsl-xai", "report"]
    assert main(args[1:]) == 0
    assert "wrote report.html" in capsys.readouterr().out
    assert (tmp_path / "report.html").stat().st_size > 0


def test_the_report_shows_the_query_images_of_an_audited_image_folder(checkpoint: Path, tmp_path: Path) -> None:
    """An audit of a folder of PNGs (one sub-folder per class): the report's gallery reads the folder."""
    from PIL import Image

    from fsl_xai.report.gallery import load_query_images

    data = make_synthetic(n_per_class=4, size=64, n_classes=4, split="test")
    folder = tmp_path / "my images"
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        target = folder / data.class_names[int(label)] / f"img{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(target)
    spec = AuditSpec(checkpoint=str(checkpoint), data_file=str(folder), split="all", n_way=4, n_shot=1, n_query=2,
                     episodes=1, methods=("saliency",), chunk_episodes=1, seed=0)
    result = run_audit(spec, tmp_path / "audit", workers=0, progress=False)
    manifest = json.loads((tmp_path / "audit" / "manifest.json").read_text())
    assert _option(result.report_command, "--data-file") == str(folder)
    for given in (str(folder), None):  # given, or found through the manifest's reproduce command
        found = load_query_images(manifest, given)
        assert found.problem == "" and found.images is not None and len(found.images) == len(data)
