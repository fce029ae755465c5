"""View 4: the selected query with attribution maps of 1-4 methods side by side, their quality badges,
and a strip of the support images ranked by their influence on this decision. Above the maps, a banner
when the domain guard flags the query: its explanation explains a prediction the model is not fit to make.

The maps are HTML (``heatmap_html``: stacked PNGs, redrawn on every click for a few ms of the page's
time), the badges lines in the caption; what is below the first screen (the influence strip) and the
badges follow a redraw by ``SECONDARY_S``, so the page draws the decision first."""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w

from fsl_xai.explain import list_methods, method_spec

from ._base import Card, CardRow, View, thumbnail, tooltip_of
from ._loop import kernel_loop
from .figures import COLORMAPS, badge_text
from .heatmap_html import heatmap_html
from .trust_text import NOT_FIT

MAX_METHODS = 4
#: seconds after a redraw of the maps that their influence strip and badges are computed and sent: the
#: page draws the decision (maps, distances, embedding map) first, instead of all of it at once
SECONDARY_S = 0.15


def _badge_html(text: str) -> str:
    """A badge line with a failed check in red (``figures.badge_text``'s '✘ FAILED')."""
    parts = [html.escape(p) for p in text.split(" · ")]
    return " · ".join(f"<span style='color:#a00'>{p}</span>" if "FAILED" in p else p for p in parts)


class HeatmapViewer(View):
    title = "Heatmaps"

    def __init__(self, state, methods: list[str] | None = None, badges: bool = True, **kwargs):
        super().__init__(state, **kwargs)
        available = list_methods()
        if methods:  # shown from the start (the state's methods drive every redraw)
            state.methods = [m for m in methods if m in available][:MAX_METHODS] or state.methods
        # menu labels come from the registry; the values stay the method names
        self.methods = w.SelectMultiple(options=[(method_spec(m).label, m) for m in available],
                                        rows=min(6, len(available)), description="methods",
                                        value=tuple(m for m in (methods or state.methods)
                                                    if m in available)[:MAX_METHODS] or (available[0],),
                                        layout=w.Layout(width="280px"),
                                        style={"description_width": "55px"})
        self.target = w.Dropdown(description="explain", layout=w.Layout(width="230px"),
                                 style={"description_width": "50px"})
        self.contrast = w.Dropdown(description="rather than", layout=w.Layout(width="230px"),
                                   style={"description_width": "75px"})
        self.opacity = w.FloatSlider(value=0.8, min=0, max=1, step=0.05, description="opacity",
                                     layout=w.Layout(width="260px"), style={"description_width": "50px"})
        self.colormap = w.Dropdown(options=COLORMAPS, value="RdBu_r", description="colours",
                                   layout=w.Layout(width="200px"), style={"description_width": "50px"})
        self.signed = w.ToggleButtons(options=[("signed", True), ("absolute", False)], value=True,
                                      style={"button_width": "70px"})
        self.param = w.BoundedIntText(description="steps", value=32, min=1, max=200, layout=w.Layout(width="150px"),
                                      style={"description_width": "70px"})
        self.show_badges = w.Checkbox(value=badges, description="quality badges", indent=False)
        self.refused_note = w.HTML()  # the methods this network cannot give a faithful map of, and why
        self.refused_note.add_class("fsl-refused-methods")
        # the maps as HTML images (widgets/heatmap_html.py): a redraw swaps a few PNGs, no plotly replot
        self.picture = w.HTML()
        self.picture.add_class("fsl-heatmap-figure")
        self.badge_html = w.HTML()
        self.badge_html.add_class("fsl-heatmap-caption")
        self.banner = w.HTML()
        self.banner.add_class("fsl-ood-banner")
        self.influence_box = CardRow()
        self.timing = w.HTML()
        self.timing.add_class("fsl-heatmap-timing")
        self.last_maps: dict[str, Any] = {}
        self._badges: dict[str, Any] = {}  # method -> fsl_xai.explain.Badges of the shown map
        self._badges_due = False  # the shown maps' badges are being computed (deferred)
        self._badge_errors: dict[str, str] = {}
        self._busy = False
        self._refreshes = 0  # counts refresh calls: deferred work of an older one is skipped
        self.methods.observe(self.guard(self._on_methods), names="value")
        for widget in (self.target, self.contrast):
            widget.observe(self.guard(self._on_target), names="value")
        self.param.observe(self.guard(self._on_param), names="value")
        for widget in (self.opacity, self.colormap, self.signed):
            widget.observe(self.guard(lambda _: self._draw()), names="value")
        self.show_badges.observe(self.guard(lambda _: self.refresh()), names="value")
        controls = w.VBox([w.HBox([w.VBox([self.methods, self.refused_note]),
                                   w.VBox([self.target, self.contrast, self.param])]),
                           w.HBox([self.opacity, self.colormap, self.signed, self.show_badges])])
        self.children = [w.HTML("<b>heatmaps</b> (red: pushes towards the explained class; blue: against; "
                                "green outline: lesion mask where known)"),
                         controls, self.error_area, self.banner, self.picture, self.badge_html,
                         w.HTML("<b>support images ranked by influence on this decision</b> "
                                "(how much the margin drops without each one)"),
                         self.influence_box, self.timing]
        state.observe(self._on_episode, names=["episode"])
        state.observe(self.guard(self._offer_methods), names=["model"])
        state.observe(self.guard(lambda _: self._on_selection()), names=["query_index", "result"])
        state.observe(self._sync_from_state, names=["methods", "target", "contrast"])
        self._offer_methods()
        self._on_episode()
        # the first maps are drawn at once; in a kernel their badges follow once the page is shown (a
        # preheated kernel has them before a page asks for it); scripts and tests get them on the next refresh
        self.guard(self.refresh)(with_badges=kernel_loop() is not None)

    # ------------------------------------------------------------------ state <-> controls
    def _on_episode(self, change=None) -> None:
        ep = self.state.episode
        if ep is None:
            return
        targets = [("predicted class", "predicted"), ("true class", "true")] + [(c, c) for c in ep.classes]
        contrasts = [("(nothing)", "none"), ("runner-up class", "runner_up")] + [(c, c) for c in ep.classes]
        self._busy = True
        try:
            self.target.options, self.contrast.options = targets, contrasts
            self._sync_from_state()
        finally:
            self._busy = False

    def _offer_methods(self, change=None) -> None:
        """Offer only the methods the state's network can give a faithful map of (Guided Backprop needs
        nn.ReLU activations, DeepLIFT its rules, both hookable modules); the others are named below
        the list with the reason on hover. A refused method that was shown is dropped from the state's."""
        from fsl_xai.explain.core import refused_methods

        available = list_methods()
        model = self.state.model
        refused = refused_methods(model, available) if model is not None else {}
        offered = [m for m in available if m not in refused]
        shown = [m for m in self.state.methods if m in offered][:MAX_METHODS] or offered[:1]
        self._busy = True
        try:
            if [v for _, v in self.methods.options] != offered:
                self.methods.options = [(method_spec(m).label, m) for m in offered]
            self.methods.value = tuple(shown)
        finally:
            self._busy = False
        if shown != list(self.state.methods):
            self.state.methods = shown
        self.refused_note.value = "" if not refused else (
            "<div style='font-size:85%;color:#666;max-width:280px'>not for this network: "
            + ", ".join(f"<span title='{html.escape(reason, quote=True)}' style='text-decoration:underline dotted'>"
                        f"{html.escape(method_spec(m).label)}</span>" for m, reason in refused.items())
            + "</div>")

    def _sync_from_state(self, change=None) -> None:
        s = self.state
        if s.episode is None:
            return
        values = [v for _, v in self.target.options]
        tgt = s.target if not isinstance(s.target, int) else s.episode.classes[s.target]
        if tgt in values:
            self.target.value = tgt
        con = "none" if s.contrast is None else (s.contrast if not isinstance(s.contrast, int)
                                                 else s.episode.classes[s.contrast])
        if con in [v for _, v in self.contrast.options]:
            self.contrast.value = con
        names = [value for _, value in self.methods.options]
        wanted = tuple(m for m in s.methods if m in names)[:MAX_METHODS]
        if wanted and wanted != self.methods.value:
            self.methods.value = wanted
        self._update_param_box()

    def _on_methods(self, change) -> None:
        if self._busy:
            return
        chosen = list(self.methods.value)
        if len(chosen) > MAX_METHODS:
            self.show_error(f"at most {MAX_METHODS} methods side by side; showing the first {MAX_METHODS}")
            chosen = chosen[:MAX_METHODS]
        if chosen and chosen != list(self.state.methods):
            self.state.methods = chosen
            self._update_param_box()
            self.refresh()

    def _on_target(self, change) -> None:
        if self._busy:
            return
        con = None if self.contrast.value in (None, "none") else self.contrast.value
        if self.target.value != self.state.target or con != self.state.contrast:
            with self.state.hold_trait_notifications():
                self.state.target = self.target.value
                self.state.contrast = con
            self.refresh()

    def _param_method(self) -> str | None:
        """The first shown method that has a main parameter (the one the slider sets)."""
        return next((m for m in self.state.methods if method_spec(m).main_param is not None), None)

    def _update_param_box(self) -> None:
        m = self._param_method()
        main = None if m is None else method_spec(m).main_param
        if m is None or main is None:
            self.param.layout.visibility = "hidden"
            return
        self.param.layout.visibility = "visible"
        self.param.description = main.label
        self.param.min, self.param.max = main.low, main.high
        self._busy = True
        self.param.value = int(self.state.params.get(m, {}).get(main.name, main.default))
        self._busy = False

    def _on_param(self, change) -> None:
        m = self._param_method()
        main = None if m is None else method_spec(m).main_param
        if m is None or main is None or self._busy:
            return
        params = dict(self.state.params)
        params[m] = dict(params.get(m, {}), **{main.name: int(self.param.value)})
        self.state.params = params
        self.refresh()

    # ------------------------------------------------------------------ compute and draw
    def _on_selection(self) -> None:
        # a resample changes both the result and the query: draw once per (result, query)
        last_result, last_query = getattr(self, "_drawn_for", (None, -2))
        s = self.state
        if s.result is last_result and s.query_index == last_query:
            return
        self._drawn_for = (s.result, s.query_index)
        if s.query_index == last_query and last_result is not None and not all(
                s.explanations.is_cached(m, s.query_index) for m in s.methods[:MAX_METHODS]):
            # the same query under a new support set, its maps not computed ahead (``Prefetch.expect``):
            # the distances and the projection go to the page first, and the browser draws them while
            # the maps are computed
            self.defer(self._refresh_if_current, s.result, s.query_index)
        else:
            self.refresh()

    def _refresh_if_current(self, result, query: int) -> None:
        if self.state.result is result and self.state.query_index == query:
            self.refresh()

    def refresh(self, with_badges: bool = True) -> None:
        """Compute (or fetch from the cache) the maps of the selected query and redraw; then (deferred
        while a kernel's event loop runs) the influence strip and, if the badges are on, the badges in
        the titles (the map is on screen meanwhile)."""
        s = self.state
        if s.result is None or s.query_index < 0:
            return
        t0 = time.perf_counter()
        s.explanations.prefetch.touch()  # background maps wait until the kernel is idle again
        self.last_maps, errors = {}, []
        for m in s.methods[:MAX_METHODS]:
            try:
                self.last_maps[m] = s.explanations.attribution(m)
            except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others
                errors.append(f"{m}: {type(exc).__name__}: {exc}")
        if errors:
            self.show_error("; ".join(errors))
        else:
            self.clear_error()
        self._badges, self._badge_errors = {}, {}
        self._badges_due = with_badges and self.show_badges.value
        self._draw()
        elapsed = time.perf_counter() - t0
        # data-draw: a hook for benchmarks (changes on every redraw, also one that leaves the maps as they were)
        self.timing.value = (f"<span style='color:#888;font-size:90%' data-draw='{self._refreshes + 1}'>maps ready in "
                             f"{1000 * elapsed:.0f} ms</span>")
        self._refreshes += 1
        # the influence strip (below the first screen) and the badges once the page has drawn the maps
        self.defer(self._after_maps, self._refreshes, s.result, s.query_index,
                   with_badges and self.show_badges.value and bool(self.last_maps), after_s=SECONDARY_S)

    def _after_maps(self, refresh: int, result, query: int, with_badges: bool) -> None:
        """The influence strip and the quality badges of the maps drawn by refresh number ``refresh``
        (one method's badges per event, so a click arriving meanwhile waits for one check at most),
        then the maps of the episode's other queries in the background (``Explanations.prefetch``);
        nothing if a later refresh or another result or query came meanwhile (their work is stale)."""
        if self._stale(refresh, result, query):
            return
        self._draw_influence()
        if with_badges and self.last_maps:
            self.defer(self._badges_of, refresh, result, query, list(self.last_maps))
        else:
            self.state.explanations.prefetch.start(query, self.state.methods[:MAX_METHODS])

    def _stale(self, refresh: int, result, query: int) -> bool:
        s = self.state
        return refresh != self._refreshes or s.result is not result or s.query_index != query

    def _badges_of(self, refresh: int, result, query: int, methods: list[str]) -> None:
        """The badges of ``methods[0]`` into its title, then (deferred) those of the rest."""
        if self._stale(refresh, result, query):
            return
        m, rest = methods[0], methods[1:]
        try:
            self._badges[m] = self.state.explanations.badges(m)
        except Exception as exc:  # noqa: BLE001 - a failing check is shown, the map stays
            self._badge_errors[m] = f"{type(exc).__name__}: {exc}"
        self._caption()  # the badges so far, under the maps (which stay as they are)
        if rest:
            self.defer(self._badges_of, refresh, result, query, rest)
        else:
            self.state.explanations.prefetch.start(query, self.state.methods[:MAX_METHODS])

    def _titles(self) -> list[str]:
        """One title per map: the method and the decision it explains (its badges are in the caption
        below the maps, so drawing them changes no figure)."""
        ep = self.state.shown()[1]
        titles = []
        for m, amap in self.last_maps.items():
            tgt = getattr(amap, "targets", ()) or ()
            con = getattr(amap, "contrasts", None)
            what = ep.classes[tgt[0]] if tgt else ""
            if con:
                what += f" rather than {ep.classes[con[0]]}"
            titles.append(f"{method_spec(m).label} — why {what}")
        return titles

    def _badge_lines(self) -> list[str]:
        """Per shown map, its quality badges ('checking…' until computed, the error if the check failed)."""
        if not self.show_badges.value:
            return []
        lines = []
        for m in self.last_maps:
            label = f"<b>{html.escape(method_spec(m).label)}</b>"
            if m in self._badge_errors:
                lines.append(f"{label}: <span style='color:#a00'>quality check failed "
                             f"({html.escape(self._badge_errors[m])})</span>")
            elif m in self._badges:
                lines.append(f"{label}: {_badge_html(badge_text(self._badges[m]))}")
            else:
                lines.append(f"{label}: <span style='color:#888'>" + ("quality checks: computing…</span>"
                             if self._badges_due else "quality checks: not run yet (they run on the next "
                             "click)</span>"))
        return lines

    def _draw(self) -> None:
        s = self.state
        if s.result is None or s.query_index < 0:
            return
        maps = [amap.normalized[0] for amap in self.last_maps.values()]
        text = heatmap_html(s.query_image(), maps, self._titles(), opacity=self.opacity.value,
                            colorscale=self.colormap.value, signed=self.signed.value, mask=s.query_mask())
        if self.picture.value != text:
            self.picture.value = text
        self._caption()

    def _caption(self) -> None:
        s = self.state
        _, ep, _, r = s.shown()
        qi = s.query_index
        self._banner(r.warning(qi))
        true = ep.classes[r.true[qi]] if r.true[qi] >= 0 else "unknown"
        head = (f"query #{qi}: true <b>{html.escape(true)}</b>, "
                f"predicted <b>{html.escape(ep.classes[r.pred[qi]])}</b> (margin {r.margin[qi]:.3f})")
        badges = self._badge_lines()
        text = head + ("<div class='fsl-badges' style='font-size:90%;line-height:1.35'>"
                       + "<br>".join(badges) + "</div>" if badges else "")
        if self.badge_html.value != text:
            self.badge_html.value = text

    def _banner(self, warning: str | None) -> None:
        """The out-of-distribution banner above the maps (empty for a query the guard does not flag)."""
        text = "" if not warning else (
            "<div style='color:#a00;background:#fff3e0;border:1px solid #e99;padding:4px 8px;border-radius:4px'>"
            f"⚠ <b>out-of-distribution query: {html.escape(NOT_FIT)}</b><br>{html.escape(warning)}</div>")
        if self.banner.value != text:
            self.banner.value = text

    def _draw_influence(self, k: int = 8) -> None:
        s = self.state
        table = s.explanations.influence().head(k)
        self.influence_box.show([
            Card(thumbnail(s, row["sample_id"]),
                 # the hover text stays the same from query to query (the card's image is then not sent again)
                 tooltip_of(s, row["sample_id"], f"class {row['class']}"),
                 f"<span style='font-size:85%' title='influence {row['influence']:+.4f}'>"
                 f"{row['influence']:+.3f}</span>",
                 border="#2ca02c" if row["influence"] > 0 else "#d62728")
            for _, row in table.iterrows()])

