"""The heatmap view's picture in HTML: per map, its title above the query image with the attribution
overlay and the lesion outline stacked on it (each a small PNG), and one colour bar.

The view redraws this on every query click and support edit. As a plotly figure (what exports still
use, ``figures.heatmap_figure``) each redraw cost the page a full plotly replot, 20-100 ms of its main
thread in the workbench (measured in headless Chromium); swapping a few <img> sources costs a few.
The overlay's colour scale is the figure's: opacity grows with |attribution|, so weak attribution leaves
the image visible (``figures.overlay_colorscale``). Pure: arrays in, an HTML string out.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import re
from collections.abc import Sequence

import numpy as np

from .figures import data_url, pixels_data_url

#: the side of each map on the page, in CSS pixels (three maps and the colour bar fit the decision column)
SIZE = 190


@functools.lru_cache(maxsize=16)
def _lut(colorscale: str) -> np.ndarray:
    """(256, 3) uint8: the plotly colour scale ``colorscale`` sampled at 256 points."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    colors = sample_colorscale(colorscale, list(np.linspace(0, 1, 256)))
    return np.asarray([[int(round(v)) for v in unlabel_rgb(c)] for c in colors], dtype=np.uint8)


def overlay_rgba(amap: np.ndarray, colorscale: str = "RdBu_r", signed: bool = True) -> np.ndarray:
    """(H, W, 4) uint8: a normalized map in [-1, 1] in the colour scale's colours, opaque where the
    attribution is strong and transparent where it is 0 (signed: both ends of the scale are strong;
    absolute: |value| from the scale's start to its end)."""
    v = np.clip(np.nan_to_num(np.asarray(amap, dtype=np.float32)), -1.0, 1.0)
    t = (v + 1.0) / 2.0 if signed else np.abs(v)
    alpha = np.abs(v)
    rgb = _lut(colorscale)[np.round(t * 255).astype(np.intp)]
    return np.concatenate([rgb, np.round(alpha * 255).astype(np.uint8)[..., None]], axis=-1)


def outline_rgba(mask: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8: the border pixels of a boolean mask in lime, the rest transparent."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    border = m & ~inner
    out = np.zeros(m.shape + (4,), dtype=np.uint8)
    out[border] = (0, 255, 0, 255)
    return out


def _colorbar(colorscale: str, signed: bool, height: int) -> str:
    lut = _lut(colorscale)
    stops = []
    for t in np.linspace(0, 1, 11):
        r, g, b = (int(x) for x in lut[int(round(t * 255))])
        alpha = abs(2 * t - 1) if signed else t
        stops.append(f"rgba({r},{g},{b},{alpha:.2f}) {100 * (1 - t):.0f}%")
    gradient = f"linear-gradient(to bottom, {', '.join(reversed(stops))})"
    ticks = ("+100%", "0", "−100%") if signed else ("100%", "50%", "0%")
    labels = "".join(f"<span>{t}</span>" for t in ticks)
    return (f"<div class='fsl-heatmap-colorbar' style='display:flex;align-items:stretch;gap:3px;height:{height}px;"
            f"margin-top:2.6em' title='attribution, as a share of the largest on the map'>"
            f"<div style='width:10px;border:1px solid #ccc;background:{gradient}'></div>"
            f"<div style='display:flex;flex-direction:column;justify-content:space-between;font-size:85%;"
            f"color:#555'>{labels}</div></div>")


def heatmap_html(image: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str], opacity: float = 0.5,
                 colorscale: str = "RdBu_r", signed: bool = True, mask: np.ndarray | None = None,
                 size: int = SIZE) -> str:
    """The query image with each attribution map overlaid, side by side under their titles.

    Args:
        image: (C, H, W) in [0, 1].
        maps: one (H, W) normalized map in [-1, 1] per method.
        titles: one title per map (plain text).
        opacity: of the overlay, 0..1.
        signed: show signed values (red for, blue against) or their absolute value.
        mask: optional (H, W) bool lesion mask drawn as a lime outline.
        size: each map's width on the page in CSS pixels (its height keeps the image's aspect).
    """
    h, w = np.shape(image)[-2:]
    height = max(1, round(size * h / w))
    picture = data_url(image)
    outline = pixels_data_url(outline_rgba(mask)) if mask is not None and np.asarray(mask).any() else ""
    layer = (f"position:absolute;left:0;top:0;width:{size}px;height:{height}px;image-rendering:pixelated;"
             "display:block")
    panels = []
    for amap, title in zip(maps, titles, strict=True):
        text = html.escape(str(title))
        overlay = pixels_data_url(overlay_rgba(amap, colorscale, signed))
        layers = [f"<img class='fsl-heatmap-image' alt='query image' src='{picture}' style='{layer}'>",
                  f"<img class='fsl-heatmap-overlay' alt='attribution map' src='{overlay}' "
                  f"style='{layer};opacity:{opacity:.2f}'>"]
        if outline:
            layers.append(f"<img class='fsl-heatmap-mask' alt='lesion mask outline' src='{outline}' style='{layer}'>")
        panels.append(f"<div class='fsl-heatmap-panel' style='width:{size}px'>"
                      f"<div class='fsl-heatmap-title' title='{text}' style='font-size:90%;text-align:center;"
                      f"min-height:2.6em;line-height:1.3'>{text}</div>"
                      f"<div style='position:relative;width:{size}px;height:{height}px;border:1px solid #ddd'>"
                      f"{''.join(layers)}</div></div>")
    return (f"<div class='fsl-heatmap-row' style='display:flex;align-items:flex-start;gap:10px;flex-wrap:nowrap'>"
            f"{''.join(panels)}{_colorbar(colorscale, signed, height) if panels else ''}</div>")


_PANEL = re.compile(r"<div class='fsl-heatmap-panel'.*?"
                    r"(?=<div class='fsl-heatmap-panel'|<div class='fsl-heatmap-colorbar')", re.S)
_LAYER = re.compile(r"<img class='fsl-heatmap-(image|overlay|mask)'[^>]*? src='data:image/png;base64,([^']+)' "
                    r"style='([^']*)'>")


def picture_layers(text: str) -> list[dict]:
    """Read back what ``heatmap_html`` drew, per map: its ``title``, the ``image`` (H, W, 3), the
    ``overlay`` (H, W, 4) with its ``opacity``, and the lesion ``mask`` outline (H, W, 4) or None
    (for tests and scripts that check the picture)."""
    from PIL import Image

    panels = []
    for block in _PANEL.findall(text):
        title = re.search(r"class='fsl-heatmap-title' title='([^']*)'", block)
        panel: dict = {"title": html.unescape(title[1]) if title else "", "mask": None}
        for kind, data, style in _LAYER.findall(block):
            with Image.open(io.BytesIO(base64.b64decode(data))) as png:
                panel[kind] = np.asarray(png)
            opacity = re.search(r"opacity:([0-9.]+)", style)
            if kind == "overlay" and opacity:
                panel["opacity"] = float(opacity[1])
        panels.append(panel)
    return panels
