"""benchmarks/bench_browser.py runs end to end: Voila on the workbench app and on the FigureWidget peer,
two query clicks and one support edit in headless Chromium, every measure printed with its ratio to
the peer, and no request off the machine. Speed itself is judged by the benchmark's ratios, never here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEASURES = ("page -> ready", "click -> heatmap painted", "support edit -> all views painted", "peer round trip",
            "peer page -> ready")


def test_bench_browser_prints_every_measure(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_browser.py"), "--clicks", "2",
                          "--edits", "1", "--loads", "1", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-4000:]}"
    for name in MEASURES:
        assert name in run.stdout, f"{name!r} missing from the output:\n{run.stdout}"
    assert "app/peer" in run.stdout and "websocket per click" in run.stdout
    assert "non-local requests: 0" in run.stdout, run.stdout
    result = json.loads(out.read_text())
    assert result["non_local_requests"] == []
    stats = result["stats"]
    assert stats["click -> heatmap painted"]["n"] == 2 and stats["support edit -> all views painted"]["n"] == 1
    for name in MEASURES:
        assert 0 < stats[name]["p50"] <= stats[name]["max"] and math.isfinite(stats[name]["max"]), (name, stats[name])
    # a click sends the new maps: the websocket carried plotly trace messages
    assert any(key in kind for kind in result["comms"]["click"]["by_kind"]
               for key in ("_py2js_addTraces", "_py2js_restyle", "_py2js_update"))
