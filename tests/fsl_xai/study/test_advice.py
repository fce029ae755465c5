"""Freezing prediction sets and the domain guard: what goes wrong is one clear message naming the
study-file field, and a failed freeze leaves nothing behind."""

import json

import pytest
import torch

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.guard import DomainGuard
from fsl_xai.study import StudyDesignError
from fsl_xai.study.freeze import freeze_study

BASE = {"study_id": "adv", "dataset": {"name": "synthetic"}, "model": {"checkpoint": "model.pt"},
        "episode": {"n_way": 2, "n_shot": 2, "seed": 1}, "cases": {"n": 2, "seed": 0},
        "questions": [{"id": "diagnosis", "type": "choice"}]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("advice")
    save_checkpoint(d / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    return d


def _freeze(folder, name, spec):
    (folder / f"{name}.json").write_text(json.dumps(BASE | spec))
    return freeze_study(folder / f"{name}.json", folder / name, progress=False)


@pytest.mark.parametrize("spec, message", [
    ({"conditions": ["prediction"], "guard": {"file": "missing.json"}}, r"guard.file 'missing.json': cannot read"),
    ({"conditions": [{"name": "sets", "show": ["prediction_set"]}], "conformal": {"alpha": 0.01, "episodes": 5}},
     r"conformal: the prediction sets cannot be calibrated on the val split .*too few"),
])
def test_a_bad_guard_or_calibration_is_a_clear_error_and_leaves_nothing(folder, spec, message):
    name = f"bad{len(list(folder.iterdir()))}"
    with pytest.raises(StudyDesignError, match=message):
        _freeze(folder, name, spec)
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_a_guard_of_another_model_is_refused(folder):
    torch.manual_seed(5)  # other weights than the study's model (whose weights were drawn before)
    other = F.make_model("protonet", F.make_backbone("conv4", 1, 64))
    from fsl_xai.embeddings import embedding_fingerprint

    rng = torch.Generator().manual_seed(0)
    guard = DomainGuard.fit(torch.randn(40, 1024, generator=rng), torch.randn(40, 1024, generator=rng),
                            embedding_fingerprint=embedding_fingerprint(other))
    guard.save(folder / "other.json")
    with pytest.raises(StudyDesignError, match=r"guard.file 'other.json': .*another model"):
        _freeze(folder, "other_model", {"conditions": ["prediction"], "guard": {"file": "other.json"}})
