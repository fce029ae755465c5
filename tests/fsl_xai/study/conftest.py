import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

import fsl_xai as F
from fsl_xai.checkpoints import save_checkpoint
from fsl_xai.study import ResponseStore, parse_design
from fsl_xai.study.freeze import add_raters, freeze_study

DESIGN = {
    "study_id": "t",
    "dataset": {"name": "synthetic"},
    "model": {"default": "synthetic"},
    "episode": {"n_way": 2, "n_shot": 1},
    "cases": ["c1", "c2", "c3", "c4"],
    "conditions": ["no_ai", "prediction"],
    "questions": [{"id": "diagnosis", "type": "choice", "options": ["a", "b"]},
                  {"id": "confidence", "type": "likert", "scale": 5}],
    "assignment": {"design": "within", "seed": 3},
}


@pytest.fixture
def design():
    return parse_design(DESIGN)


def _make_study(path, design, n_raters=2, cases=None):
    """A store with items for every (case, condition) and n_raters raters; returns (store, tokens)."""
    store = ResponseStore(path)
    store.set_allow_back(design.allow_back)  # as freezing does
    store.set_reading(design.reading, design.aided_conditions)
    cases = cases or list(design.cases)
    store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k, "shown": {"case": c},
                      "provenance": {"model": "m"}} for c in cases for k in design.condition_names])
    tokens = []
    for r in range(n_raters):
        _, token = store.add_rater([f"{c}|{k}" for c, k in design.assign(cases, r)])
        tokens.append(token)
    return store, tokens


@pytest.fixture
def make_study():
    """Factory: make_study(path, design, n_raters=2, cases=None) -> (store, tokens); stores
    are closed after the test."""
    made = []

    def factory(*args, **kwargs):
        store, tokens = _make_study(*args, **kwargs)
        made.append(store)
        return store, tokens

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def design_dict():
    return dict(DESIGN)


@contextlib.contextmanager
def _read_only_folder(folder: Path):
    """Make a folder and its files read-only for this process, then writable again.

    As root, permission bits do not stop writes, so the immutable attribute (chattr +i) is used;
    the test is skipped where neither works (the check is a real attempt to write)."""
    paths = [*sorted(p for p in folder.iterdir() if p.is_file()), folder]
    as_root = os.geteuid() == 0
    modes = {p: p.stat().st_mode for p in paths}
    problem = None
    try:
        try:
            for p in paths:
                if as_root:
                    subprocess.run(["chattr", "+i", str(p)], check=True, capture_output=True)
                else:
                    p.chmod(modes[p] & ~0o222)
        except (OSError, subprocess.CalledProcessError) as exc:
            problem = f"could not set it read-only ({exc})"
        else:
            try:
                (folder / ".write-probe").write_text("x")
            except OSError:
                pass  # refused: the folder is read-only
            else:
                (folder / ".write-probe").unlink()
                problem = "neither permissions nor chattr +i stop writes here"
        if problem is None:
            yield folder
    finally:
        for p in reversed(paths):
            if as_root:
                subprocess.run(["chattr", "-i", str(p)], check=False, capture_output=True)
            else:
                p.chmod(modes[p])
    if problem is not None:
        pytest.skip(f"cannot make a folder read-only on this machine: {problem}")


@pytest.fixture
def read_only():
    """``with read_only(folder): ...`` runs the block with the folder and its files read-only."""
    return _read_only_folder


def frozen_study(tmp_path_factory, name: str, n_raters: int) -> tuple[Path, list[str]]:
    """A frozen two-case study of a Conv-4 checkpoint (synthetic images, one no-AI condition, one
    question) with ``n_raters`` raters: (its folder, their tokens)."""
    d = tmp_path_factory.mktemp(name)
    save_checkpoint(d / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 1, 64)))
    study = {"study_id": name, "dataset": {"name": "synthetic"}, "model": {"checkpoint": str(d / "model.pt")},
             "episode": {"n_way": 2, "n_shot": 2, "seed": 0}, "cases": {"n": 2, "seed": 0},
             "conditions": ["no_ai"], "questions": [{"id": "diagnosis", "type": "choice"}]}
    (d / "study.json").write_text(json.dumps(study))
    db = freeze_study(d / "study.json", d / "frozen", progress=False)
    return db.parent, [token for _, token in add_raters(db, n_raters)]


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    """A frozen two-case study of a Conv-4 checkpoint with one rater: (folder, token)."""
    folder, (token,) = frozen_study(tmp_path_factory, "serve", 1)
    return folder, token
