"""The domain guard and conformal prediction sets in the workbench, on real data: PBC blood cells
(64 px) with their cached default model, and a MedNIST chest X-ray added as an out-of-distribution
query. Flags are checked against the guard's own threshold, never against hard-coded scores."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pytest

import widgets.trust as trust
from fsl_xai.conformal import set_text
from fsl_xai.data.imageset import ImageSet
from fsl_xai.data.registry import load_dataset
from fsl_xai.embeddings import images_for_model
from widgets.export import export_state
from widgets.heatmap import HeatmapViewer
from widgets.queries import FLAG, QueryGallery
from widgets.state import WorkbenchState
from widgets.trust_text import NOT_FIT

XRAY = "outside-cxr-0"


@pytest.fixture(scope="module")
def blood() -> WorkbenchState:
    state = WorkbenchState(n_way=3, n_shot=5, n_query=5)
    state.load("pbc-blood-64", progress=False)
    assert state.error == ""
    return state


def _with_xray(state: WorkbenchState) -> int:
    """Append a MedNIST chest X-ray (converted to the model's input) to the image set and add it as a
    query labelled with the episode's first class (so that it counts in the accuracy); its index.
    In the image set it carries a class no episode draws from, so no episode samples it by itself."""
    if XRAY not in state.images.sample_ids:
        med = load_dataset("mednist", "test", progress=False)
        xray = images_for_model(med.subset(np.flatnonzero(med.labels == med.class_index("CXR"))[:1]), state.model)
        base = state.images
        label = next(i for i, c in enumerate(base.class_names) if c not in state.episode_classes)
        state.use_images(ImageSet(np.concatenate([base.images, xray.images]), np.append(base.labels, label),
                                  base.class_names, pd.concat([base.metadata, pd.DataFrame({"sample_id": [XRAY]})],
                                                              ignore_index=True), base.name))
    state.resample(0)
    state.add_query(XRAY, state.episode.classes[0])
    assert state.error == ""
    return len(state.episode.query_ids) - 1


def test_every_query_has_a_guard_score_and_flag_from_the_models_training_data(blood):
    guard = blood.trust.guard
    assert guard is not None and "pbc-blood-64 train split" in blood.trust.guard_text
    table = blood.query_table()
    assert {"ood_score", "ood_flag", "pred_set", "set_size"} <= set(table.columns)
    np.testing.assert_array_equal(table["ood_flag"].to_numpy(), table["ood_score"].to_numpy() > guard.threshold)
    # the guard belongs to the model and data: a second workbench on them reuses it, fitted once
    again = WorkbenchState(n_way=3, n_shot=5, n_query=5)
    again.load("pbc-blood-64", progress=False, images=blood.images, model=blood.model, model_info=blood.model_info)
    assert again.trust.guard is guard and again.trust.validation == blood.trust.validation


def test_a_chest_xray_among_blood_cells_is_flagged_in_gallery_heatmap_accuracy_and_export(blood, tmp_path):
    qi = _with_xray(blood)
    r, guard = blood.result, blood.trust.guard
    assert r.guard.scores[qi] > guard.threshold and r.ood_flag[qi]
    np.testing.assert_array_equal(r.ood_flag, r.guard.scores > guard.threshold)
    # the accuracy says how many flagged queries it counts
    gallery = QueryGallery(blood)
    assert f"; {r.n_flagged} flagged out-of-distribution)" in gallery.summary.value and r.n_flagged >= 1
    card = gallery.buttons[qi]
    assert card.description.startswith(FLAG) and "not fit" not in card.description
    assert "out of the model's depth" in card.tooltip and "do not trust its prediction" in card.tooltip
    unflagged = int(np.flatnonzero(~r.ood_flag)[0])
    assert not gallery.buttons[unflagged].description.startswith(FLAG)
    # the heatmap view: a banner above the maps for the flagged query only
    viewer = HeatmapViewer(blood, badges=False)
    blood.select_query(qi)
    assert NOT_FIT in html.unescape(viewer.banner.value)
    assert viewer.children.index(viewer.banner) < viewer.children.index(viewer.picture)
    blood.select_query(unflagged)
    assert viewer.banner.value == ""
    # exports carry the flag and the warning, and no sample id
    blood.select_query(qi)
    export_state(blood, tmp_path, png=False)
    table = pd.read_csv(tmp_path / "queries.csv", keep_default_na=False)
    assert "sample_id" not in table.columns and XRAY not in (tmp_path / "queries.csv").read_text()
    assert bool(table.loc[qi, "ood_flag"]) and "out of the model's depth" in table.loc[qi, "ood_warning"]
    assert table.loc[unflagged, "ood_warning"] == ""
    assert "out-of-distribution query" in (tmp_path / "heatmaps.html").read_text()
    readme = (tmp_path / "README.txt").read_text()
    assert "WARNING: the selected query is flagged out-of-distribution" in readme
    assert f"{r.n_flagged} flagged out-of-distribution" in readme


def test_prediction_sets_are_shown_and_alpha_recalibrates_without_new_episodes(blood, monkeypatch):
    blood.resample(0)
    gallery = QueryGallery(blood)
    r = blood.result
    cal = blood.trust.calibration
    assert cal is not None and cal.alpha == pytest.approx(0.1) and "pbc-blood-64 val split" in cal.calibration_data
    ep = blood.episode
    for i in range(len(r.pred)):
        members = r.pred_sets[i].split("|")
        assert members[0] == ep.classes[r.pred[i]] and len(members) == r.set_size[i] >= 1
    blood.select_query(0)
    assert f"<b>{html.escape(set_text(r.pred_sets[0]))}</b> ({r.set_size[0]} class" in gallery.detail.value
    assert "hold the true class 90% of the time" in gallery.summary.value

    # nothing is evaluated or fitted again on a click or an alpha change: the held-in episodes are cached
    def refuse(*args, **kwargs):
        raise AssertionError("held-in episodes evaluated again")

    monkeypatch.setattr(trust, "evaluate", refuse)
    monkeypatch.setattr(trust.DomainGuard, "fit", refuse)
    before = r.set_size.copy()
    gallery.alpha.value = 0.02  # smaller miss rate: each set holds at least the classes it held
    assert blood.error == "" and blood.trust.calibration.alpha == pytest.approx(0.02)
    assert (blood.result.set_size >= before).all() and blood.result.alpha == pytest.approx(0.02)
    assert "hold the true class 98% of the time" in gallery.summary.value
    for qi in (1, 2, 0):
        blood.select_query(qi)
    blood.resample(1)  # same protocol: the cached calibration serves the new episode
    assert blood.error == "" and blood.result.pred_sets is not None
    gallery.alpha.value = 0.1


def test_many_episode_views_say_how_many_flagged_queries_their_accuracy_includes(blood):
    from widgets.failures import FailureExplorer
    from widgets.subgroups import SubgroupDashboard

    blood.resample(0)
    failures = FailureExplorer(blood, episodes=20)
    failures.run()
    table = blood.predictions
    guard = blood.trust.guard
    assert {"ood_score", "ood_flag"} <= set(table.columns)
    np.testing.assert_array_equal(table["ood_flag"].to_numpy(), table["ood_score"].to_numpy() > guard.threshold)
    n_flagged = int(table["ood_flag"].sum())
    assert f"; {n_flagged} flagged out-of-distribution)" in failures.summary.value
    assert f"{n_flagged} flagged out-of-distribution" in failures.figure.layout.title.text
    dashboard = SubgroupDashboard(blood, failures=failures, episodes=20)
    dashboard.by.value = ("true_class",)
    shown = dashboard.compute()
    assert "flags as out-of-distribution'>flagged</th>" in dashboard.table_html.value
    assert len(shown) == len(blood.episode_classes)  # the classes partition the queries: every flag is counted once
    assert sum(SubgroupDashboard._flagged(dashboard.report, shown)) == n_flagged
