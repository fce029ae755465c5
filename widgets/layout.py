"""The workbench's look, in one place: the app grid, the stylesheet that keeps every label whole, the
class colours, and teaching mode (larger type and controls for a projector).

The stylesheet is one ``<style>`` block (``stylesheet()``) that the workbench adds once; everything
in it is scoped to ``.fsl-workbench`` so a notebook's other outputs are left alone. Views keep their
own class names (``fsl-heatmap-figure``, ``fsl-distance-bars``, ...); this module only arranges them.

Class colours: ``class_color`` (widgets/figures.py) is the one palette, keyed by the class's name in
its image set (``_base.episode_colors`` for the episode shown). The support set, the distance bars,
the embedding map, exports and the workbench's class legend all take their colour from it, so a
class has the same colour everywhere on the page and across episodes.
"""

from __future__ import annotations

import html

import ipywidgets as w

__all__ = ["TEACHING_SCALE", "class_legend_html", "stylesheet"]

#: how much larger the base font is in teaching mode (a projector at the back of a room)
TEACHING_SCALE = 1.4
BASE_FONT_PX = 13

#: the app grid's left column (queries, support set, dataset and model); the right one takes the rest
LEFT_COLUMN = "minmax(330px, 27%)"

_CSS = """
.fsl-workbench {{ --fsl-font: {base}px; font-size: var(--fsl-font);
  --jp-widgets-font-size: var(--fsl-font); --jp-ui-font-size1: var(--fsl-font);
  --jp-content-font-size1: var(--fsl-font); }}
.fsl-workbench.fsl-teaching {{ --fsl-font: {teach}px; --jp-widgets-inline-height: {teach_h}px;
  --jp-widgets-inline-label-width: auto; }}
.fsl-workbench .widget-html-content {{ line-height: 1.35; }}
.fsl-workbench .widget-html-content, .fsl-workbench .widget-label, .fsl-workbench button,
.fsl-workbench select, .fsl-workbench input, .fsl-workbench .widget-readout {{ font-size: var(--fsl-font); }}

/* ---- the app grid: a header, a scrolling left column, the decision on the right, tools below */
.fsl-workbench .fsl-app-header {{ display: flex; flex-wrap: wrap; align-items: center; gap: 4px 14px;
  padding: 2px 4px; border-bottom: 1px solid #ddd; }}
.fsl-workbench .fsl-app-grid {{ display: grid; grid-template-columns: {left} minmax(0, 1fr); gap: 8px;
  align-items: start; width: 100%; }}
/* block, not flex: its views keep their height and the column scrolls (a flex column would squeeze them) */
.fsl-workbench .fsl-app-left {{ display: block !important; max-height: calc(100vh - 48px); overflow-y: auto;
  overflow-x: hidden; padding-right: 4px; border-right: 1px solid #eee; min-width: 0; }}
.fsl-workbench .fsl-app-right {{ min-width: 0; }}
.fsl-workbench .fsl-app-decision {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 4px 10px; }}
/* each view as wide as its figure, so that the maps and the distances sit side by side */
.fsl-workbench .fsl-app-decision > .fsl-heatmapviewer,
.fsl-workbench .fsl-app-decision > .fsl-distanceview {{ flex: 0 0 auto; width: min-content; max-width: 100%; }}
.fsl-workbench .fsl-app-tools {{ margin-top: 10px; }}
.fsl-workbench .fsl-class-chip {{ display: inline-block; padding: 0 6px; margin: 1px 2px; border-radius: 3px;
  color: #fff; font-weight: bold; white-space: nowrap; }}

/* ---- the decision first: in the heatmap view the caption (the prediction) and the maps come before
   their controls, so the explanation and what it explains are on screen together */
.fsl-workbench .fsl-heatmapviewer {{ display: flex; flex-direction: column; }}
.fsl-workbench .fsl-heatmapviewer > .fsl-error {{ order: -5; }}
.fsl-workbench .fsl-heatmapviewer > .fsl-heatmap-caption {{ order: -4; }}
.fsl-workbench .fsl-heatmapviewer > .fsl-ood-banner {{ order: -3; }}
.fsl-workbench .fsl-heatmapviewer > .fsl-heatmap-figure {{ order: -2; }}

/* ---- no truncated label: labels take the width of their text, controls wrap instead of clipping */
.fsl-workbench .widget-label, .fsl-workbench .widget-label-basic {{ width: auto !important;
  min-width: max-content; max-width: none !important; overflow: visible; text-overflow: clip;
  flex-shrink: 0; padding-right: 4px; }}
.fsl-workbench .widget-inline-hbox:not(.widget-html) {{ min-width: max-content; }}
.fsl-workbench .widget-hbox {{ flex-wrap: wrap; }}
.fsl-workbench .widget-button {{
  width: auto !important; min-width: max-content; max-width: none; overflow: visible; text-overflow: clip;
  padding: 0 10px; }}
.fsl-workbench .widget-toggle-button {{ width: auto !important; min-width: max-content; padding: 0 8px; }}
.fsl-workbench .widget-toggle-buttons .widget-toggle-button {{ overflow: visible; text-overflow: clip; }}
/* gallery cards: the caption wraps onto a second line instead of losing the predicted class */
.fsl-workbench .widget-vbox:has(> .fsl-thumb) {{ width: auto !important; min-width: 80px; }}
.fsl-workbench .widget-vbox > .fsl-thumb + .widget-button {{ width: 100% !important; min-width: min-content;
  white-space: normal !important; height: auto !important; min-height: 24px; line-height: 1.2;
  overflow-wrap: normal; text-overflow: clip; padding: 1px 3px; overflow: visible; }}
/* a slider never collapses to a dot */
.fsl-workbench .widget-hslider {{ min-width: 230px; flex-shrink: 0; }}
.fsl-workbench .widget-hslider .slider-container {{ min-width: 100px; flex: 1 1 100px; }}
/* tab titles: whole words */
.fsl-workbench .lm-TabBar-tab, .fsl-workbench .p-TabBar-tab {{ flex: 0 0 auto !important;
  min-width: max-content !important; max-width: none !important; }}
.fsl-workbench .lm-TabBar-tabLabel, .fsl-workbench .p-TabBar-tabLabel {{ overflow: visible; text-overflow: clip; }}

/* ---- the distance bars (HTML, see widgets/distances.py): name, bar, value on one row per class */
.fsl-workbench .fsl-dist {{ width: 440px; padding: 2px 0 6px 0; }}
.fsl-workbench .fsl-dist-title {{ margin-bottom: 4px; }}
.fsl-workbench .fsl-dist-row {{ display: flex; align-items: center; gap: 6px; margin: 3px 0; }}
.fsl-workbench .fsl-dist-label {{ flex: 0 0 150px; overflow-wrap: anywhere; }}
.fsl-workbench .fsl-dist-chip {{ display: inline-block; width: 0.8em; height: 0.8em; margin-right: 4px;
  vertical-align: baseline; border-radius: 2px; }}
.fsl-workbench .fsl-dist-mark {{ color: #555; font-weight: normal; }}
.fsl-workbench .fsl-dist-track {{ flex: 1 1 auto; height: 1.1em; background: #f2f2f2; }}
.fsl-workbench .fsl-dist-bar {{ display: block; height: 100%; }}
.fsl-workbench .fsl-dist-value {{ flex: 0 0 3.5em; text-align: right; font-variant-numeric: tabular-nums; }}

/* ---- teaching mode: larger type and controls (the figures keep their size) */
.fsl-workbench.fsl-teaching .widget-button, .fsl-workbench.fsl-teaching .widget-toggle-button,
.fsl-workbench.fsl-teaching select, .fsl-workbench.fsl-teaching input {{ height: auto !important;
  min-height: {teach_h}px; }}
"""


def stylesheet() -> str:
    """The workbench's one ``<style>`` block (scoped to ``.fsl-workbench``)."""
    teach = round(BASE_FONT_PX * TEACHING_SCALE)
    css = _CSS.format(base=BASE_FONT_PX, teach=teach, teach_h=round(teach * 1.9),
                      left=LEFT_COLUMN)
    return f"<style>{css}</style>"


def style_widget() -> w.HTML:
    """The stylesheet as a widget (add it once to the workbench)."""
    sheet = w.HTML(stylesheet(), layout=w.Layout(display="none"))
    sheet.add_class("fsl-stylesheet")
    return sheet


def class_legend_html(classes: list[str] | tuple[str, ...], colors: list[str] | tuple[str, ...]) -> str:
    """One chip per class in its colour (``colors``, one per class: the episode's colours by class
    name, ``_base.episode_colors``, the same as in the support set, bars and map)."""
    chips = "".join(f"<span class='fsl-class-chip' style='background:{color}' "
                    f"title='class {html.escape(c, quote=True)}'>{html.escape(c)}</span>"
                    for c, color in zip(classes, colors, strict=True))
    return f"<span class='fsl-class-legend'>classes: {chips}</span>" if chips else ""
