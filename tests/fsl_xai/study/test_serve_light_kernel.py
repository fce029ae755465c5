"""The rater kernel stays light: running the rater notebook's code against a frozen study, in a
fresh interpreter, imports neither torch nor pandas (each rater page has a kernel of its own, and
the gate caps how many; a light kernel is what lets a server hold a class of raters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study.freeze import add_raters, freeze_study

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, resource, sys
nb = json.load(open(sys.argv[1]))
code = "\\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
namespace = {}
exec(compile(code, "study_rater.ipynb", "exec"), namespace)
app = namespace["app_from_environment"]()
heavy = sorted(m for m in ("torch", "pandas", "scipy", "plotly", "matplotlib", "captum") if m in sys.modules)
print(json.dumps({"app": type(app).__name__, "session": getattr(app, "session", None) is not None,
                  "header": app.header.value if hasattr(app, "header") else "", "heavy": heavy,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_the_rater_notebook_imports_neither_torch_nor_pandas(tmp_path):
    save_checkpoint(tmp_path / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    study = {"study_id": "light", "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(tmp_path / "model.pt")},
             "episode": {"n_way": 2, "n_shot": 2, "seed": 0}, "cases": {"n": 2, "seed": 0},
             "conditions": ["no_ai", "heatmap"], "method": "gradcam",
             "questions": [{"id": "diagnosis", "type": "choice"}, {"id": "confidence", "type": "likert", "scale": 5}]}
    (tmp_path / "study.json").write_text(json.dumps(study))
    db = freeze_study(tmp_path / "study.json", tmp_path / "frozen", progress=False)
    (_, token), = add_raters(db, 1)
    env = dict(os.environ, FSL_XAI_STUDY_DB=str(db), FSL_XAI_STUDY_FILE=str(db.parent / "study.json"),
               QUERY_STRING=f"token={token}",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "notebooks" / "study_rater.ipynb")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # the app was really built for this rater, on the first case
    assert result["app"] == "RaterApp" and result["session"] and "Case 1 of" in result["header"]
    assert result["heavy"] == [], f"the rater kernel imported {result['heavy']}"
