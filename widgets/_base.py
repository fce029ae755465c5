"""Shared pieces of the views: the inline error area, guarded callbacks, thumbnails, figure swaps."""

from __future__ import annotations

import base64
import functools
import html
import time
import traceback
from typing import Callable

import ipywidgets as w
import plotly.graph_objects as go

from .figures import png_bytes
from .state import WorkbenchState

THUMB = 64


class View(w.VBox):
    """A view: built from a WorkbenchState, observes it, writes user input back to it.

    Errors from this view's actions appear in ``error_area`` (inline); the kernel and other views go on.
    """

    title = "view"

    def __init__(self, state: WorkbenchState, **kwargs):
        super().__init__(**kwargs)
        self.state = state
        self.error_area = w.HTML("", layout=w.Layout(margin="2px 0"))
        self.error_area.add_class("fsl-error")
        # stable hooks for the browser tests and for user CSS
        self.add_class("fsl-" + type(self).__name__.lower())

    # ------------------------------------------------------------------ errors
    def show_error(self, message: str) -> None:
        self.error_area.value = (f"<div style='color:#a00;background:#fee;border:1px solid #e99;padding:4px 8px;"
                                 f"border-radius:4px'>⚠ {html.escape(message)}</div>")

    def clear_error(self) -> None:
        self.error_area.value = ""

    def guard(self, fn: Callable) -> Callable:
        """Wrap a callback so that any error is shown in this view instead of escaping to the kernel."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            self.clear_error()
            self.state.error = ""
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a view must survive any failing action
                self.show_error(f"{type(exc).__name__}: {exc}")
                self._last_traceback = traceback.format_exc()
                return None
            if self.state.error:
                self.show_error(self.state.error)
            return out
        return run


def thumbnail(state: WorkbenchState, sample_id: str, size: int = THUMB) -> bytes:
    """PNG bytes of one image of the state's image set (cached per image set)."""
    cache = state.__dict__.setdefault("_thumbs", {})
    key = (id(state.images), sample_id, size)
    if key not in cache:
        idx = int(state.images.indices_of([sample_id])[0])
        cache[key] = png_bytes(state.images.images[idx], size)
    return cache[key]


def tooltip_of(state: WorkbenchState, sample_id: str, extra: str = "") -> str:
    meta = state.metadata_of(sample_id)
    lines = [sample_id] + [f"{k}: {v}" for k, v in meta.items() if k not in ("split", "filenames")]
    return "\n".join(lines + ([extra] if extra else []))


class FigureSlot(w.Box):
    """A place on the page for one plotly FigureWidget that is swapped for a new one on every redraw.

    Replacing a FigureWidget's traces in place (``data = []`` then ``add_traces``) is not reliably
    mirrored by plotly's front-end, so each redraw builds a fresh FigureWidget from the figure. Old
    widgets are closed only once they are both ten redraws old and a minute old: closing one while
    the page is still creating its view (Voila renders after the whole notebook ran, which can
    redraw a slot many times) makes anywidget report "Failed to initialize model".
    ``figure`` is the widget currently shown."""

    #: a retired figure is closed only after this many seconds (and ten newer redraws)
    close_after_s = 60.0

    def __init__(self, fig: go.Figure | None = None, css_class: str = "", **kwargs):
        super().__init__(**kwargs)
        if css_class:
            self.add_class(css_class)
        self._retired: list[tuple[float, go.FigureWidget]] = []
        self.figure: go.FigureWidget | None = None
        if fig is not None:
            self.show(fig)

    def show(self, fig: go.Figure) -> go.FigureWidget:
        old = self.figure
        self.figure = go.FigureWidget(fig)
        self.children = [self.figure]
        now = time.monotonic()
        if old is not None:
            self._retired.append((now, old))
        while len(self._retired) > 10 and now - self._retired[0][0] > self.close_after_s:
            self._retired.pop(0)[1].close()
        return self.figure


def image_card(png: bytes, tooltip: str, button: w.Widget, border: str = "#ddd") -> w.VBox:
    """A thumbnail with its sample id and metadata on hover, above a button or label.

    The image is an <img> in an HTML widget: its ``title`` gives the hover text (ipywidgets 8's Image view
    fails to render when given a tooltip, and an <img> needs no extra binary message)."""
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    img = w.HTML(f"<img src='{src}' title='{html.escape(tooltip, quote=True)}' width='{THUMB}' height='{THUMB}' "
                 "style='image-rendering:pixelated;display:block'>")
    img.add_class("fsl-thumb")
    return w.VBox([img, button], layout=w.Layout(border=f"2px solid {border}", padding="2px", margin="2px",
                                                 align_items="center", width=f"{THUMB + 16}px"))
