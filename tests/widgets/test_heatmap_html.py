"""The heatmap view's HTML picture (widgets/heatmap_html.py): the overlay has the plotly figure's colour
scale and opacity rule, the lesion outline is the mask's border, and what is drawn reads back."""

from __future__ import annotations

import numpy as np
from plotly.colors import sample_colorscale, unlabel_rgb

from widgets.figures import to_rgb
from widgets.heatmap_html import heatmap_html, outline_rgba, overlay_rgba, picture_layers


def _rgb(colorscale: str, t: float) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in unlabel_rgb(sample_colorscale(colorscale, [t])[0]))


def test_the_overlay_is_transparent_at_zero_and_opaque_at_either_end():
    amap = np.array([[-1.0, -0.5, 0.0, 0.5, 1.0]], dtype=np.float32)
    signed = overlay_rgba(amap, "RdBu_r", signed=True)
    assert signed[0, :, 3].tolist() == [255, 128, 0, 128, 255]
    assert tuple(signed[0, 0, :3]) == _rgb("RdBu_r", 0.0)  # against the class: the scale's blue end
    assert tuple(signed[0, 4, :3]) == _rgb("RdBu_r", 1.0)  # for it: the red end
    absolute = overlay_rgba(amap, "Viridis", signed=False)
    assert absolute[0, :, 3].tolist() == [255, 128, 0, 128, 255]
    assert tuple(absolute[0, 0, :3]) == tuple(absolute[0, 4, :3]) == _rgb("Viridis", 1.0)
    assert overlay_rgba(np.array([[np.nan]]))[0, 0, 3] == 0  # NaN reads as 0: transparent


def test_the_outline_is_the_border_of_the_mask():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    out = outline_rgba(mask)
    border = out[..., 3] == 255
    assert border.sum() == 16 and not border[2:5, 2:5].any() and not border[0].any()
    assert tuple(out[1, 1]) == (0, 255, 0, 255)


def test_the_picture_reads_back_with_escaped_titles():
    rng = np.random.default_rng(0)
    image = rng.random((3, 12, 16)).astype(np.float32)
    maps = [rng.uniform(-1, 1, (12, 16)).astype(np.float32) for _ in range(2)]
    mask = np.zeros((12, 16), bool)
    mask[3:8, 4:10] = True
    text = heatmap_html(image, maps, ["Grad-CAM — why <b>A</b>", "IG"], opacity=0.3, mask=mask, size=160)
    assert "<b>A</b>" not in text and "&lt;b&gt;A&lt;/b&gt;" in text
    assert "height:120px" in text  # the image's aspect kept: 12 x 16 drawn 160 px wide
    panels = picture_layers(text)
    assert [p["title"] for p in panels] == ["Grad-CAM — why <b>A</b>", "IG"]
    for panel, amap in zip(panels, maps, strict=True):
        np.testing.assert_array_equal(panel["image"], to_rgb(image))
        np.testing.assert_array_equal(panel["overlay"], overlay_rgba(amap))
        np.testing.assert_array_equal(panel["mask"], outline_rgba(mask))
        assert panel["opacity"] == 0.3
    assert "+100%" in text and "−100%" in text
    plain = heatmap_html(image, maps[:1], ["x"], signed=False)
    assert picture_layers(plain)[0]["mask"] is None and "−100%" not in plain
