"""The figures redrawn on every click, ``heatmap_figure`` (from a cached skeleton), ``distance_figure`` and
``projection_figure``, are taken by plotly unchecked: each must be the very figure plotly builds
property by property, for every layout the views and exports use, and no figure may share anything
with the cached skeleton."""

from __future__ import annotations

import numpy as np
import pytest

from widgets._base import same_value
from widgets.figures import _checked_heatmap_figure, heatmap_figure, map_values

LAYOUTS = [dict(), dict(compact=True), dict(n=1, titles=["saliency"]), dict(n=3, signed=False, compact=True),
           dict(mask=np.eye(20, 24, dtype=bool)), dict(mask=np.zeros((20, 24), bool), compact=True),
           dict(warning="out-of-distribution query: " * 6), dict(n=0, titles=[]),
           dict(channels=1, titles=["", "b<br>c"]),
           dict(colorscale="Viridis", opacity=0.2, height=200)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=range(len(LAYOUTS)))
def test_the_fast_figure_is_the_checked_figure(layout):
    rng = np.random.default_rng(len(layout))
    layout = dict(layout)
    image = rng.random((layout.pop("channels", 3), 20, 24)).astype(np.float32)
    maps = [rng.random((20, 24)) * 2 - 1 for _ in range(layout.pop("n", 2))]
    titles = layout.pop("titles", [f"method {i} — why a<br>deletion ✔" for i in range(len(maps))])
    args = dict(opacity=0.5, colorscale="RdBu_r", signed=True, mask=None, height=300, warning="", compact=False)
    args |= layout
    for _ in range(2):  # the second one from the cached skeleton too
        fast = heatmap_figure(image, maps, titles, **args)
        assert same_value(fast.to_plotly_json(), _checked_heatmap_figure(image, maps, titles, **args).to_plotly_json())
    for trace, m in zip([t for t in fast.data if t.name == "attribution"], maps, strict=True):
        expected = m if args["signed"] else np.abs(m)
        np.testing.assert_allclose(map_values(trace), expected, atol=0.006 if args["compact"] else 1e-6)


def test_a_figure_shares_nothing_with_the_skeleton():
    image, maps = np.zeros((3, 16, 16), np.float32), [np.ones((16, 16))]
    first = heatmap_figure(image, maps, ["a"], compact=True)
    first.data[1].colorbar.len = 0.1
    first.layout.annotations[0].font.size = 30
    first.layout.margin.t = 99
    again = heatmap_figure(image, maps, ["a"], compact=True)
    assert again.data[1].colorbar.len == 0.8 and again.layout.annotations[0].font.size == 11
    assert again.layout.margin.t != 99


@pytest.mark.parametrize("moved", [True, False])
def test_the_unchecked_projection_is_the_checked_one(moved):
    from types import SimpleNamespace

    from widgets.figures import projection_figure

    rng = np.random.default_rng(3)
    result = SimpleNamespace(
        classes=("a", "b", "c"), support_labels=np.array([0, 0, 1, 1, 2, 2]), support_xy=rng.random((6, 2)),
        prev_proto_xy=rng.random((3, 2)) if moved else None, proto_xy=rng.random((3, 2)),
        query_xy=rng.random((5, 2)), true=np.array([0, 1, 2, -1, 0]), pred=np.array([0, 1, 1, 0, 0]),
        correct=np.array([1, 1, 0, 0, 1], bool), projection="pca")
    support, queries = [f"s{i}" for i in range(6)], [f"q{i}" for i in range(5)]
    for selected in (2, -1):
        fast = projection_figure(result, support, queries, selected)
        checked = projection_figure(result, support, queries, selected, checked=True)  # plotly raises on a bad key
        assert same_value(fast.to_plotly_json(), checked.to_plotly_json())
    assert [t.name for t in fast.data][-3:] == ["queries", "prototypes", "selected"]


def test_the_unchecked_distance_bars_are_the_checked_ones():
    from widgets.figures import distance_figure

    for pred, true in [(1, 2), (0, 0), (2, -1)]:
        args = (["a", "b", "c"], np.array([1.5, 0.3, 2.0]), pred, true)
        fast, checked = distance_figure(*args), distance_figure(*args, checked=True)
        assert same_value(fast.to_plotly_json(), checked.to_plotly_json())
