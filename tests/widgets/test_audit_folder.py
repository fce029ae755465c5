"""The failure explorer and the subgroup dashboard open an audit folder written by ``fsl-xai audit``
(run here in-process on the built-in synthetic set) and show its tables and maps without running any
episode; foreign or unfinished folders give an inline error and the views keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsl_xai.audit import AuditSpec, read_maps, run_audit
from fsl_xai.checkpoints import CheckpointInfo, save_checkpoint
from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.explain import normalize_maps
from fsl_xai.testing import tiny_model
from widgets.failures import FailureExplorer
from widgets.state import WorkbenchState
from widgets.subgroups import SubgroupDashboard
from widgets.workbench import Workbench


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 episodes of 4-way 1-shot, 3 queries per class (48 queries) of the synthetic set, two methods, by site."""
    root = tmp_path_factory.mktemp("audit")
    model = tiny_model(channels=1, size=64, width=8, seed=3)
    checkpoint = save_checkpoint(root / "model.pt", model, CheckpointInfo.for_model(model))
    spec = AuditSpec(checkpoint=str(checkpoint), dataset="synthetic", n_shot=1, n_query=3, episodes=4,
                     methods=("saliency", "gradcam"), by=("site",), chunk_episodes=2, seed=1)
    run_audit(spec, root / "out", workers=0, progress=False)
    return root / "out"


@pytest.fixture
def no_episodes(monkeypatch):
    """Fail the test if anything evaluates an episode (the library's evaluate, or the state's copy of it)."""
    import fsl_xai.evaluation as evaluation
    import widgets.state as state_module

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("an episode was evaluated while opening an audit folder")

    monkeypatch.setattr(evaluation, "evaluate", spy)
    monkeypatch.setattr(state_module, "evaluate", spy)
    return calls


@pytest.fixture
def bench(state):
    return Workbench(state, episodes=8, methods=["saliency"], badges=False, export_folder="unused", dicom=False)


def _open(view, path) -> None:
    view.opener.path.value = str(path)
    view.opener.button.click()


def test_both_views_show_the_audit_without_running_episodes(bench, audit_dir, no_episodes):
    f, d = bench.failures, bench.subgroups
    _open(f, audit_dir)
    assert f.error_area.value == "" and d.error_area.value == ""
    assert no_episodes == [] and bench.state.predictions is None
    manifest = json.loads((audit_dir / "manifest.json").read_text())
    accuracy = json.loads((audit_dir / "accuracy.json").read_text())["accuracy"]
    queries = pd.read_parquet(audit_dir / "queries.parquet")
    # provenance: data, checkpoint file, protocol, episodes, n
    for text in ("synthetic", "test", "model.pt", manifest["checkpoint"]["sha256"][:12], "4-way 1-shot",
                 "3 queries per class", "4 episodes", "n=48"):
        assert text in f.provenance.value and text in d.provenance.value, text
    # the accuracy and its interval are accuracy.json's, with n
    assert (f"n={accuracy['n']}, 95% CI {100 * accuracy['low']:.1f}-{100 * accuracy['high']:.1f}%"
            in f.summary.value)
    assert f"{100 * accuracy['value']:.1f}%" in f.summary.value and accuracy["method"] in f.summary.value
    # the confusion matrix counts the audit's queries
    counts = pd.crosstab(queries["true"], queries["pred"])
    z = np.asarray(f.figure.data[0].z, dtype=float)
    names = list(f.figure.data[0].y)
    np.testing.assert_allclose(z.sum(1), 1.0)
    for i, t in enumerate(names):
        for j, p in enumerate(names):
            n = counts.loc[t, p] if t in counts.index and p in counts.columns else 0
            assert z[i, j] == pytest.approx(n / counts.loc[t].sum())
    # cases of the most common mistake, by row (the audit has no sample ids), most confident first
    cases = f.case_table()
    assert len(cases) and (cases.true_class == f.true_class.value).all() and (~cases.correct).all()
    assert cases.margin.is_monotonic_decreasing
    assert all(label.split(" · ")[0].startswith("row ") for label, _ in f.cases.options)
    # a case opens with the audit's stored maps of every method
    f.cases.value = f.cases.options[0][1]
    f.open_button.click()
    assert f.error_area.value == "" and no_episodes == []
    row = int(cases.iloc[0]["row"])
    heat = [t for t in f.maps_slot.figure.data if t.name == "attribution"]
    assert len(heat) == 2
    for trace, method in zip(heat, ("saliency", "gradcam"), strict=True):
        rows, maps = read_maps(audit_dir, method)
        expected = normalize_maps(maps[rows == row].astype(np.float32))[0]
        np.testing.assert_allclose(np.asarray(trace.z, dtype=float), expected, atol=1e-6)
    assert f"row {row}" in f.case_note.value and "not shown" in f.case_note.value  # other images loaded
    # the dashboard shows subgroups.parquet as it is: rates, intervals, n
    table = pd.read_parquet(audit_dir / "subgroups.parquet")
    assert d.by.options == ("site",) and d.by.value == ("site",)
    np.testing.assert_allclose(d.table["error_rate"], table["error_rate"])
    np.testing.assert_allclose(d.table["error_ci_low"], table["low"])
    np.testing.assert_allclose(d.table["error_ci_high"], table["high"])
    assert list(d.table["n"]) == list(table["n"]) and list(d.figure.data[0].x) == list(table["group"])
    for _, r in table.iterrows():
        assert f"<td>{int(r['n'])}</td><td>{100 * r['error_rate']:.1f}%</td>" in d.table_html.value
    assert "95% CI" in d.table_html.value and "largest gap" in d.flag_html.value
    d.group.value = 1
    group_cases = d.cases_of(1)
    assert (~group_cases.correct).all() and (group_cases.site.astype(str) == table.iloc[1]["group"]).all()
    assert len(group_cases) == table.iloc[1]["n_errors"]
    assert bench.state.focus == {"site": table.iloc[1]["group"]}
    if d.cases.options:  # a subgroup's case opens its maps in the failure explorer
        d.cases.value = d.cases.options[0][1]
        d.open_button.click()
        assert d.error_area.value == "" and f"row {int(group_cases.iloc[0]['row'])}" in f.case_note.value
    assert no_episodes == []
    f.run_button.click()  # the spy is live: evaluating now is caught
    assert "an episode was evaluated" in f.last_error and len(no_episodes) == 1


def test_evaluating_leaves_the_audit(bench, audit_dir):
    f, d = bench.failures, bench.subgroups
    f.open_audit(audit_dir)
    f.episodes.value = 4
    f.run_button.click()
    assert f.error_area.value == "" and bench.state.predictions is not None
    assert f.audit is None and d.audit is None and f.provenance.value == "" and d.provenance.value == ""
    assert bench.state.predictions["episode"].nunique() == 4 and "n=" in f.summary.value
    d.by.value = ("site",)
    d.min_n.value = 5
    d.run_button.click()
    assert d.error_area.value == "" and "sample_id" in d.report.predictions.columns


def test_the_query_image_is_shown_when_the_audited_split_is_loaded(audit_dir, no_episodes):
    s = WorkbenchState(n_way=4, n_shot=1, n_query=3)
    s.load("synthetic", images=make_synthetic(split="test", name="synthetic"),
           model=tiny_model(channels=1, size=64, width=8, seed=5))  # any model: the maps are the audit's
    assert s.error == ""
    f = FailureExplorer(s)
    f.open_audit(audit_dir)
    episode, query = f.cases.options[0][1]
    f.open_case(episode, query)
    assert f.error_area.value == "" and "not shown" not in f.case_note.value
    row = f.audit_table[(f.audit_table.episode == episode) & (f.audit_table.query_index == query)].iloc[0]
    image = next(t for t in f.maps_slot.figure.data if t.name == "image")
    expected = (s.images.images[int(row["image_index"])][0] * 255).round()
    np.testing.assert_allclose(np.asarray(image.z, dtype=float)[..., 0], expected, atol=1)
    assert no_episodes == []


def _broken(tmp_path: Path, audit_dir: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(audit_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    if name == "unfinished":
        manifest["complete"] = False
    elif name == "foreign":
        manifest["format"] = "someone-else/3"
    elif name == "no-queries":
        (out / "queries.parquet").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize(("name", "message"), [
    ("unfinished", "not complete"), ("foreign", "this fsl-xai reads 'fsl-xai-audit/1'"),
    ("no-queries", "queries.parquet is missing"), ("empty", "is not an audit folder"),
    ("absent", "is not a folder"), ("", "type the path of an audit folder")])
def test_a_bad_folder_is_an_inline_error_and_the_views_keep_working(bench, audit_dir, tmp_path, name, message,
                                                                    no_episodes):
    f, d = bench.failures, bench.subgroups
    f.open_audit(audit_dir)
    shown = f.provenance.value
    if name == "empty":
        path: Path | str = tmp_path / "empty"
        Path(path).mkdir()
    elif name == "absent":
        path = tmp_path / "absent"
    elif name == "":
        path = "  "
    else:
        path = _broken(tmp_path, audit_dir, name)
    _open(f, path)
    assert message in f.last_error and "fsl-error" in f.error_area._dom_classes
    assert "role='alert'" in f.error_area.value
    assert f.provenance.value == shown and d.provenance.value == shown  # what was shown stays
    d.by.value = ("site",)
    d.run_button.click()  # the dashboard still shows the audit's table
    assert d.error_area.value == "" and d.table is not None
    _open(f, audit_dir)  # and the view opens a good folder afterwards, clearing the error
    assert f.error_area.value == "" and f.audit is not None
    assert no_episodes == []


def test_an_audit_without_subgroups_says_how_to_get_them(bench, audit_dir, tmp_path, no_episodes):
    out = tmp_path / "no-by"
    shutil.copytree(audit_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["by"] = []
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "subgroups.parquet").unlink()
    _open(bench.failures, out)
    assert bench.failures.error_area.value == "" and "n=48" in bench.failures.summary.value
    assert "ran without --by" in bench.subgroups.last_error and bench.subgroups.table is None
    missing = tmp_path / "missing-subgroups"
    shutil.copytree(audit_dir, missing)
    (missing / "subgroups.parquet").unlink()
    _open(bench.failures, missing)
    assert bench.failures.error_area.value == "" and "subgroups.parquet is missing" in bench.subgroups.last_error
    assert no_episodes == []


def test_the_dashboard_opens_an_audit_alone(state, audit_dir, no_episodes):
    d = SubgroupDashboard(state)
    audit = d.open_audit(audit_dir)
    assert d.error_area.value == "" and d.audit is audit and "model.pt" in d.provenance.value
    assert len(d.table) == len(pd.read_parquet(audit_dir / "subgroups.parquet"))
    d.group.value = 0
    if d.cases.options:
        d.cases.value = d.cases.options[0][1]
        d.open_button.click()
        assert "open the audit folder there" in d.last_error
    assert no_episodes == []
