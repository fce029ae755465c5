"""Every view driven like a user would (set widget values, click buttons), asserting on the state and
on the figures' data, without a browser."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from fsl_xai.explain import method_spec
from widgets.dataset_model import DatasetModelPicker
from widgets.distances import DistanceView
from widgets.export import ExportView
from widgets.failures import FailureExplorer
from widgets.heatmap import HeatmapViewer
from widgets.heatmap_html import overlay_rgba, picture_layers
from widgets.queries import QueryGallery
from widgets.subgroups import SubgroupDashboard
from widgets.support_set import SupportSetView
from widgets.workbench import Workbench


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def _bars(view: DistanceView) -> tuple[list[float], list[str], list[str]]:
    """The distance bars as drawn: each row's distance, its bar's colour and its label text."""
    text = view.bars.value
    distances = [float(v) for v in re.findall(r"data-distance='([^']+)'", text)]
    colours = re.findall(r"class='fsl-dist-bar' style='width:[0-9.]+%;background:([^;]+);", text)
    rows = re.findall(r"class='fsl-dist-label'>(.*?)</span>(?=<span class='fsl-dist-track')", text)
    labels = [re.sub(r"<[^>]+>", "", m) for m in rows]
    return distances, colours, labels


@pytest.fixture
def bench(state):
    return Workbench(state, episodes=8, methods=["saliency"], badges=False, export_folder="unused")


def test_query_click_drives_heatmap_and_distances(bench):
    s = bench.state
    bench.queries.buttons[4].click()
    assert s.query_index == 4
    (panel,) = picture_layers(bench.heatmaps.picture.value)
    expected = s.explanations.attribution("saliency", 4).normalized[0]
    np.testing.assert_array_equal(panel["overlay"], overlay_rgba(expected))
    distances, colours, labels = _bars(bench.distances)
    np.testing.assert_allclose(distances, s.result.distances[4], rtol=1e-5)
    pred, true = int(s.result.pred[4]), int(s.result.true[4])
    assert "predicted" in labels[pred] and "true" in labels[true]
    assert sum("predicted" in t for t in labels) == 1 and int(np.argmin(distances)) == pred
    sel = _trace(bench.distances.map, "selected")
    assert sel.x[0] == pytest.approx(s.result.query_xy[4, 0])
    assert bench.queries.buttons[4].button_style == "info"
    bench.queries.buttons[2].click()  # same episode: the ring moves on the map, which is not redrawn
    assert _trace(bench.distances.map, "selected") is sel
    assert (sel.x[0], sel.y[0]) == pytest.approx(tuple(s.result.query_xy[2]))


def test_projection_click_selects_the_query(bench):
    queries = _trace(bench.distances.map, "queries")
    assert len(queries.x) == bench.state.episode.n_query
    bench.distances._on_click(queries, SimpleNamespace(point_inds=[6], xs=[], ys=[]), None)
    assert bench.state.query_index == 6


def test_swap_in_the_support_view_updates_every_other_view(bench):
    s, view = bench.state, bench.support
    old_map = [tuple(t.x) for t in bench.distances.map.data if t.name == "prototypes"][0]
    view.select(0)
    cls = s.episode.classes[s.episode.support_labels[0]]
    view.pool_class.value = cls
    target = view.pool_list.options[1][1]
    view.pool_list.value = target
    view.swap_button.click()
    assert view.error_area.value == ""
    assert s.episode.support_ids[0] == target and s.episode.seed is None
    assert "edited" in view.header.value
    np.testing.assert_allclose(np.asarray(_trace(bench.distances.map, "previous prototypes").x), old_map)
    assert not np.allclose(np.asarray(_trace(bench.distances.map, "prototypes").x), old_map)
    # the query gallery and heatmap follow the new episode
    assert s.result.episode_id == s.episode.episode_id
    assert len(bench.queries.buttons) == s.episode.n_query


def test_in_a_kernel_the_pool_list_follows_an_edit_and_its_old_pick_does_not_count(state):
    """In a running loop the pool list is refilled POOL_REFILL_S after an edit; until then its pick (the
    image just swapped in) neither enables a button nor is added when clicked."""
    import asyncio

    from widgets.support_set import POOL_REFILL_S

    view = SupportSetView(state)

    async def scenario() -> None:
        view.select(0)
        view.pool_class.value = state.episode.classes[state.episode.support_labels[0]]
        target = view.pool_list.value
        view.swap_button.click()
        assert state.episode.support_ids[0] == target
        assert view.pool_list.value == target  # not refilled yet
        assert view.add_button.disabled and view.swap_button.disabled
        with pytest.raises(ValueError, match="pool list is being updated"):
            view.add()
        await asyncio.sleep(POOL_REFILL_S + 0.2)
        assert view.pool_list.value not in state.episode.support_ids
        assert target not in [sid for _, sid in view.pool_list.options]
        assert not view.add_button.disabled

    asyncio.run(scenario())
    assert state.episode.support_ids.count(state.episode.support_ids[0]) == 1


def test_adding_a_mislabelled_image_is_marked(bench):
    s, view = bench.state, bench.support
    view.pool_class.value = s.episode.classes[0]
    sid = view.pool_list.value
    view.as_class.value = s.episode.classes[1]
    view.add_button.click()
    assert s.episode.support_ids[-1] == sid and s.episode.support_labels[-1] == 1
    row = view.classes_box.children[1]
    tips = [card.children[0].tooltip for card in row.children[1].children]
    assert any("MISLABELLED" in t for t in tips)


def test_errors_appear_inline_and_the_view_keeps_working(bench):
    view = bench.support
    view.swap_button.click()  # nothing selected
    assert "select a support image first" in view.error_area.value
    bench.state.n_shot = 1
    view.resample_button.click()
    view.select(0)
    view.remove_button.click()
    assert "only this support image" in view.error_area.value
    view.resample_button.click()  # still works, and the error is cleared
    assert view.error_area.value == ""


def test_confirm_query_button(bench):
    s = bench.state
    s.select_query(1)
    qid = s.episode.query_ids[1]
    bench.support.confirm_button.click()
    assert s.episode.support_ids[-1] == qid
    assert qid not in s.episode.query_ids


def test_resample_button_and_seed(bench):
    s, view = bench.state, bench.support
    view.seed.value = 11
    view.seed_button.click()
    assert s.seed == 11 and "seed 11" in view.header.value
    view.resample_button.click()
    assert s.seed == 12


def test_query_gallery_filters(bench):
    s, g = bench.state, bench.queries
    g.show.value = "wrong"
    assert all(not s.result.correct[i] for i in g.visible_indices())
    g.show.value = "all"
    g.true_class.value = s.episode.classes[1]
    assert all(s.result.true[i] == 1 for i in g.visible_indices())
    g.sort.value = "margin"
    margins = [s.result.margin[i] for i in g.visible_indices()]
    assert margins == sorted(margins)
    assert "n=" in g.summary.value and "95% CI" in g.summary.value


def test_heatmap_controls(bench):
    s, h = bench.state, bench.heatmaps
    h.methods.value = ("saliency", "gradcam")
    assert s.methods == ["saliency", "gradcam"]
    assert len(picture_layers(h.picture.value)) == 2
    h.opacity.value = 0.2
    assert [p["opacity"] for p in picture_layers(h.picture.value)] == [0.2, 0.2]
    h.signed.value = False  # |attribution|: the colour bar runs from 0% to 100%
    maps = [s.explanations.attribution(m).normalized[0] for m in ("saliency", "gradcam")]
    for panel, amap in zip(picture_layers(h.picture.value), maps, strict=True):
        np.testing.assert_array_equal(panel["overlay"], overlay_rgba(amap, signed=False))
    assert "−100%" not in h.picture.value and "0%" in h.picture.value
    h.colormap.value = "Viridis"
    h.target.value = s.episode.classes[0]
    h.contrast.value = "runner_up"
    amap = s.explanations.attribution("saliency")
    assert amap.targets == (0,) and amap.contrasts is not None and amap.contrasts[0] != 0
    first = picture_layers(h.picture.value)[0]
    assert "rather than" in first["title"]
    assert len(h.influence_box.children) > 0
    # the lesion mask outline is drawn for the synthetic set
    assert (first["mask"] is not None) == bool(s.query_mask().any())


def test_integrated_gradients_steps_parameter(bench):
    s, h = bench.state, bench.heatmaps
    assert "integrated_gradients" in [name for _, name in h.methods.options]
    h.methods.value = ("integrated_gradients",)
    # the slider is the registry's main parameter of the method, with its label and range
    main = method_spec("integrated_gradients").main_param
    assert h.param.layout.visibility == "visible" and h.param.description == main.label
    assert (h.param.min, h.param.max) == (main.low, main.high)
    h.param.value = 8
    assert s.params["integrated_gradients"]["n_steps"] == 8
    assert s.explanations.attribution("integrated_gradients").params.get("n_steps") == 8


def test_a_failing_method_is_shown_inline_and_others_still_draw(bench, monkeypatch):
    h = bench.heatmaps
    import fsl_xai.explain as xai

    real = xai.explain

    def flaky(fitted, x, method, **kw):
        if method == "gradcam":
            raise RuntimeError("layer not found")
        return real(fitted, x, method, **kw)

    monkeypatch.setattr(xai, "explain", flaky)
    h.methods.value = ("saliency", "gradcam")
    assert "gradcam: RuntimeError: layer not found" in h.error_area.value
    assert [p["title"].split(" — ")[0] for p in picture_layers(h.picture.value)] == ["Saliency"]


def test_failure_explorer_cells_open_cases(bench):
    s, f = bench.state, bench.failures
    f.episodes.value = 8
    f.run_button.click()
    assert f.error_area.value == "" and s.predictions is not None
    z = np.asarray(bench.failures.figure.data[0].z, dtype=float)
    np.testing.assert_allclose(z.sum(1), 1.0)
    assert "n=" in f.summary.value and "95% CI" in f.summary.value
    wrong = s.predictions[~s.predictions.correct]
    t, p = wrong.iloc[0].true_class, wrong.iloc[0].pred_class
    f._on_click(None, SimpleNamespace(xs=[p], ys=[t], point_inds=[]), None)
    cases = f.case_table()
    assert (cases.true_class == t).all() and (cases.pred_class == p).all()
    assert cases.margin.is_monotonic_decreasing
    f.cases.value = f.cases.options[0][1]
    f.open_button.click()
    ep, qi = f.cases.value
    assert s.episode.query_ids[s.query_index] == cases.iloc[0].sample_id
    assert len(f.nearest.children) == 5
    assert s.episode.index == ep


def test_subgroup_dashboard(bench):
    s, d = bench.state, bench.subgroups
    d.by.value = ("site",)
    d.min_n.value = 5
    d.run_button.click()
    assert d.error_area.value == ""
    table = d.table
    assert set(table["site"]) == {"A", "B"}
    assert (table["error_ci_low"] <= table["error_rate"]).all()
    assert (table["error_rate"] <= table["error_ci_high"]).all()
    bar = d.figure.data[0]
    assert list(bar.x) == table["group"].tolist()
    assert "95% CI" in d.table_html.value
    d._on_click(bar, SimpleNamespace(point_inds=[1], xs=[], ys=[]), None)
    cases = d.cases_of(1)
    assert (~cases.correct).all() and (cases.site == table.iloc[1]["site"]).all()
    assert s.focus == {"site": table.iloc[1]["site"]}
    if d.cases.options:
        d.cases.value = d.cases.options[0][1]
        d.open_button.click()
        assert s.episode.query_ids[s.query_index] == cases.iloc[0].sample_id


def test_export_and_reopen(bench, tmp_path, synthetic_images):
    s, e = bench.state, bench.export
    s.select_query(3)
    e.folder.value = str(tmp_path / "out")
    e.export_button.click()
    assert e.error_area.value == ""
    for name in ("state.json", "projection.html", "distances.html", "heatmaps.html"):
        assert (tmp_path / "out" / name).exists()
    assert "plotly" in (tmp_path / "out" / "heatmaps.html").read_text()[:20000].lower()
    from widgets.export import off_machine_addresses, png_available

    for name in ("projection", "distances", "heatmaps"):  # opens offline, offers no cloud links
        page = (tmp_path / "out" / f"{name}.html").read_text()
        assert off_machine_addresses(page) == [] and '"showSendToCloud": false' in page

    if png_available():  # kaleido and Chromium are installed by `make test` (the export extra)
        for name in ("projection", "distances", "heatmaps"):
            png = (tmp_path / "out" / f"{name}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    else:
        assert "PNG export needs the kaleido package" in e.children[0].value
    episode = s.episode
    s.resample()
    assert s.episode != episode
    e.state_file.value = str(tmp_path / "out" / "state.json")
    e.reopen_button.click()
    assert e.error_area.value == ""
    assert s.episode == episode and s.query_index == 3


def test_a_failing_png_renderer_is_inline_and_loses_nothing(bench, tmp_path, monkeypatch):
    import widgets.export as export

    def broken(figs, folder):
        raise OSError("no Chrome could be started")

    monkeypatch.setattr(export, "png_available", lambda: True)
    monkeypatch.setattr(export, "_write_pngs", broken)
    bench.export.folder.value = str(tmp_path / "out")
    bench.export.export_button.click()
    assert "PNG export failed" in bench.export.error_area.value and "no Chrome" in bench.export.error_area.value
    for name in ("state.json", "projection.html", "distances.html", "heatmaps.html"):
        assert (tmp_path / "out" / name).exists()


def test_reopen_a_bad_file_is_inline(bench, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    bench.export.state_file.value = str(bad)
    bench.export.reopen_button.click()
    assert "cannot read the workbench state file" in bench.export.error_area.value


def test_picker_loads_with_progress(state, monkeypatch, synthetic_images):
    import fsl_xai.training as training
    from fsl_xai.data import registry
    from fsl_xai.testing import tiny_model

    monkeypatch.setattr(registry, "load_dataset", lambda name, split="test", progress=False, **_: synthetic_images)
    monkeypatch.setattr(training, "default_model", lambda *a, **k: (tiny_model(channels=1, size=32, width=8, seed=3),
                                                                   None))
    picker = DatasetModelPicker(state)
    picker.dataset.value = "synthetic"
    picker.n_shot.value = 2
    picker.load_button.click()
    assert picker.error_area.value == ""
    assert picker.progress.bar_style == "success"
    assert state.episode.n_shot == 2
    assert "fingerprint" in picker.info.value and "95% CI" in picker.info.value


def test_views_work_alone(state):
    for cls in (SupportSetView, QueryGallery, HeatmapViewer, DistanceView, FailureExplorer, SubgroupDashboard,
                ExportView):
        view = cls(state)
        assert view.children
    state.resample()


def test_heatmap_badges_are_drawn_from_the_library_result(state):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=True)
    viewer.refresh()
    assert viewer.error_area.value == ""
    badges = state.explanations.badges("saliency")
    assert [c.name for c in badges.checks][:3] == ["randomization", "deletion", "insertion"]
    caption = viewer.badge_html.value
    # every check is under the maps with its status ("✔", "✘ FAILED" or "– undefined"); the map's title
    # stays the method and what it explains
    for label in ("randomisation", "deletion AUC", "insertion AUC", "pointing", "in mask"):
        assert label in caption
    assert picture_layers(viewer.picture.value)[0]["title"].startswith("Saliency — why ")
    assert state.explanations.badges("saliency") is badges  # cached


def test_failure_explorer_progress_bar_follows_the_evaluation(bench):
    f = bench.failures
    f.episodes.value = 8
    seen = []
    f.progress.observe(lambda change: seen.append(change["new"]), names="value")
    f.run_button.click()
    assert f.error_area.value == ""
    # the bar moved through the episodes as they were scored, not only at the end
    assert seen[-1] == 8 and len([v for v in seen if 0 < v < 8]) >= 3
    assert seen == sorted(seen)


def test_a_class_keeps_its_colour_in_every_view_whatever_episode_shows_it(bench):
    from widgets.export import state_figures
    from widgets.figures import class_color

    s = bench.state
    names = list(s.loaded()[0].class_names)

    def colours() -> dict[str, str]:
        ep = s.episode
        stars = _trace(bench.distances.map, "prototypes")
        by_bars = dict(zip(ep.classes, _bars(bench.distances)[1], strict=True))
        assert by_bars == {c: col for c, col in zip(ep.classes, stars.marker.color, strict=True)}
        for c, (label, _) in zip(ep.classes, (row.children for row in bench.support.classes_box.children),
                                 strict=True):
            assert f"color:{by_bars[c]};" in label.value
        exported = state_figures(s)["distances"].data[0].marker.color
        assert list(exported) == [by_bars[c] for c in ep.classes]
        return by_bars

    seen: dict[str, str] = {}
    for seed in range(4):  # episodes draw the classes in other orders and subsets
        s.resample(seed)
        for c, col in colours().items():
            assert col == class_color(c, names) == class_color(names.index(c))
            assert seen.setdefault(c, col) == col
    assert len(set(seen.values())) == len(seen)  # distinct classes, distinct colours


def test_the_method_list_offers_only_what_the_network_can_explain(state, synthetic_images):
    from fsl_xai.testing import tiny_model

    state.methods = ["saliency", "guided_backprop"]
    viewer = HeatmapViewer(state, badges=False)
    offered = [v for _, v in viewer.methods.options]
    assert "guided_backprop" in offered and viewer.refused_note.value == ""  # conv4: ReLU only
    state.load("synthetic", images=synthetic_images, model=tiny_model(channels=1, size=32, width=8,
                                                                       backbone="resnet12"))
    offered = [v for _, v in viewer.methods.options]
    assert "guided_backprop" not in offered and "guided_gradcam" not in offered and "saliency" in offered
    assert state.methods == ["saliency"] and viewer.methods.value == ("saliency",)
    note = viewer.refused_note.value
    assert method_spec("guided_backprop").label in note and "LeakyReLU" in note  # the reason, on hover
    assert viewer.error_area.layout.display in (None, "none", "") and set(viewer.last_maps) == {"saliency"}
