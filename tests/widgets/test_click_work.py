"""The work a query click does in the heatmap view: the maps at once; the influence strip and the quality
badges after the current event when an event loop runs (as in a Jupyter/Voila kernel), skipped when
stale, their errors shown inline."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
from PIL import Image

from fsl_xai.errors import FslXaiError
from widgets.figures import heatmap_figure, map_values, to_rgb
from widgets.heatmap import SECONDARY_S, HeatmapViewer
from widgets.heatmap_html import overlay_rgba, picture_layers


def _in_loop(fn):
    """Run ``fn`` inside a running event loop, then let the loop run what it deferred (also what it
    deferred by ``SECONDARY_S``); returns what ``fn`` returned and the errors that escaped to the loop."""
    escaped: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: escaped.append(context))
        out = fn()
        for _ in range(5):
            await asyncio.sleep(0)
        await asyncio.sleep(SECONDARY_S + 0.1)  # the influence strip and the badges come this much later
        for _ in range(5):
            await asyncio.sleep(0)
        return out

    return asyncio.run(main()), escaped


def test_without_a_loop_badges_and_influence_are_drawn_at_once(state):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=True)
    viewer.influence_box.children = ()
    viewer.refresh()
    assert "deletion AUC" in viewer.badge_html.value
    assert len(viewer.influence_box.children) > 0
    assert viewer.last_error == ""


def test_in_a_loop_badges_follow_after_the_event(state):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=True)
    viewer.influence_box.children = ()

    def click():
        state.query_index = 1
        # the maps are on screen, the badges and the influence strip not yet
        seen = (viewer.badge_html.value, len(viewer.influence_box.children))
        return seen

    (caption_before, strip_before), escaped = _in_loop(click)
    assert "deletion AUC" not in caption_before and strip_before == 0
    assert "deletion AUC" in viewer.badge_html.value
    assert len(viewer.influence_box.children) > 0
    assert escaped == [] and viewer.last_error == ""


def test_stale_deferred_work_is_skipped(state, monkeypatch):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=True)
    asked: list[int] = []
    real = state.explanations.badges

    def counting(method, query_index=None):
        asked.append(state.query_index)
        return real(method, query_index)

    monkeypatch.setattr(state.explanations, "badges", counting)

    def two_clicks():
        state.query_index = 1
        state.query_index = 2  # before the first click's badges ran

    _, escaped = _in_loop(two_clicks)
    assert asked == [2]  # only the last click's badges were computed
    assert "deletion AUC" in viewer.badge_html.value
    assert escaped == []


def test_errors_of_the_deferred_work_are_shown_inline(state, monkeypatch):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=True)

    def broken(query_index=None):
        raise FslXaiError("influence could not be computed; pick another query")

    monkeypatch.setattr(state.explanations, "influence", broken)
    _, escaped = _in_loop(lambda: setattr(state, "query_index", 1))
    assert escaped == []
    assert "influence could not be computed" in viewer.last_error
    assert "influence could not be computed" in viewer.error_area.value


def test_the_live_heatmap_is_pngs_of_the_image_and_its_maps(state):
    viewer = HeatmapViewer(state, methods=["saliency"], badges=False)
    (panel,) = picture_layers(viewer.picture.value)
    np.testing.assert_array_equal(panel["image"][..., :3], to_rgb(state.query_image()))
    exact = next(iter(viewer.last_maps.values())).normalized[0]  # the first map shown
    # the overlay's opacity is |attribution| (to 1/255), its colour the scale's colour of the value
    np.testing.assert_allclose(panel["overlay"][..., 3] / 255, np.abs(exact), atol=1 / 255 + 1e-6)
    np.testing.assert_array_equal(panel["overlay"], overlay_rgba(exact))
    # a page gets the picture as PNGs: a few kB, less than the plotly figure exports draw (compact)
    compact = heatmap_figure(state.query_image(), [exact], ["saliency"], mask=state.query_mask(), compact=True)
    assert len(viewer.picture.value) < len(json.dumps([t.to_plotly_json() for t in compact.data],
                                                      default=lambda a: np.asarray(a).tolist()))


def test_exports_draw_the_heatmap_compact(state):
    """Exports (``figures.heatmap_figure(compact=True)``): the image as a PNG and each map as whole percent."""
    viewer = HeatmapViewer(state, methods=["saliency"], badges=False)
    exact = next(iter(viewer.last_maps.values())).normalized[0]

    def sent(fig) -> int:
        # plotly's serializer sends arrays of 2 or more dimensions as JSON lists (tolist)
        return len(json.dumps([t.to_plotly_json() for t in fig.data], default=lambda a: np.asarray(a).tolist()))

    # the same figure with pixel values and float32 maps is several times larger
    full = heatmap_figure(state.query_image(), [exact], ["saliency"], mask=state.query_mask())
    compact = heatmap_figure(state.query_image(), [exact], ["saliency"], mask=state.query_mask(), compact=True)
    image = next(t for t in compact.data if t.name == "image")
    heat = next(t for t in compact.data if t.name == "attribution")
    assert image.z is None and image.source.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(image.source.split(",", 1)[1]))) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), to_rgb(state.query_image()))
    np.testing.assert_allclose(map_values(heat), exact, atol=5e-3)  # whole percent
    assert 2 * sent(compact) < sent(full)
