"""The README shows the bundle's predictor verbatim (the lead inserts the section; see /tmp/plan)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
START, END = "<!-- onnx-predictor:start -->", "<!-- onnx-predictor:end -->"


def test_readme_shows_the_predictor_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert readme.count(START) == 1 and readme.count(END) == 1, f"README.md needs one {START} ... {END} section"
    section = readme[readme.index(START) + len(START): readme.index(END)]
    source = (ROOT / "fsl_xai" / "deploy" / "predict.py").read_text()
    assert source.strip() in section, "the README's predictor differs from fsl_xai/deploy/predict.py"
