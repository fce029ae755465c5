"""Shared pieces of the views: the inline error area (the one place views show errors), guarded callbacks,
progress-bar states, thumbnails, figure swaps."""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import re
import time
import traceback
from collections.abc import Callable

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
from ipywidgets.widgets.widget_string import HTMLStyle

from fsl_xai.data.imageset import ImageSet
from fsl_xai.errors import FslXaiError

from ._figurewidget import FigureWidget
from ._loop import kernel_loop
from .figures import class_colors, png_bytes
from .state import WorkbenchState

THUMB = 64


#: errors whose message is written for the user (what went wrong and how to fix it)
_USER_ERRORS = (FslXaiError, ValueError, KeyError, FileNotFoundError, PermissionError)


def error_text(exc: BaseException) -> str:
    """The one-line message shown for ``exc``: the library's own message for expected errors (they
    say how to fix them), a plain "this is a bug" note for anything else."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError) and not isinstance(exc, FslXaiError):
        text = f"{text} was not found"
    if isinstance(exc, _USER_ERRORS):
        return text
    return (f"unexpected {type(exc).__name__} ({text}); this is a bug in fsl-xai, not in your data: try again "
            "or reload, and report it with the details below")


def error_html(message: str, details: str = "") -> str:
    """An inline error box: the message, with any details folded away under "details"."""
    folded = (f"<details style='margin-top:2px'><summary style='cursor:pointer;color:#555'>details</summary>"
              f"<pre style='white-space:pre-wrap;max-height:160px;overflow:auto;font-size:11px'>"
              f"{html.escape(details)}</pre></details>") if details else ""
    return (f"<div role='alert' style='color:#a00;background:#fee;border:1px solid #e99;padding:4px 8px;"
            f"border-radius:4px'>⚠ {html.escape(message)}{folded}</div>")


_ERROR_PREFIX = re.compile(r"^[A-Za-z]*(Error|Exception): ")


def progress_start(bar: w.IntProgress, total: int = 1) -> None:
    """Show a progress bar at zero, running."""
    bar.layout.visibility = "visible"
    bar.bar_style = "info"
    bar.max, bar.value = max(1, int(total)), 0
    bar.description = ""


def progress_done(bar: w.IntProgress) -> None:
    """A finished progress bar: full and green."""
    bar.value = bar.max
    bar.bar_style = "success"


def progress_failed(bar: w.IntProgress, word: str = "failed") -> None:
    """A failed (or cancelled) progress bar: all red and labelled ``word``; never green."""
    bar.layout.visibility = "visible"
    bar.value = bar.max
    bar.bar_style = "danger"
    bar.description = word


class View(w.VBox):
    """A view: built from a WorkbenchState, observes it, writes user input back to it.

    Errors from this view's actions appear in ``error_area`` (inline): one message per failure,
    replacing the previous one, saying what went wrong and how to fix it, with the technical
    details folded away. This is the one place views show errors (``show_error`` / ``fail`` /
    ``guard``); the kernel and other views go on.
    """

    title = "view"

    def __init__(self, state: WorkbenchState, **kwargs):
        super().__init__(**kwargs)
        self.state = state
        self.error_area = w.HTML("", layout=w.Layout(margin="2px 0"))
        self.error_area.add_class("fsl-error")
        self.last_error = ""  # the message shown now ("" when none), for tests and scripts
        self._last_traceback = ""
        # stable hooks for the browser tests and for user CSS
        self.add_class("fsl-" + type(self).__name__.lower())

    # ------------------------------------------------------------------ deferred work
    def defer(self, fn: Callable, *args, after_s: float = 0.0) -> None:
        """Run ``fn(*args)`` after the current event when an event loop runs (a Jupyter/Voila kernel),
        so what the other views send for this event reaches the page first; at once otherwise
        (scripts, unit tests). ``after_s``: that many seconds later, for an update off the first
        screen that nobody waits for (the page draws the views first instead of both at once).
        Errors go to this view's inline error area, never to the kernel."""
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a view must survive any failing action
                self.fail(exc)
        loop = kernel_loop()
        if loop is None:
            run()
        elif after_s > 0:
            loop.call_later(after_s, run)
        else:
            loop.call_soon(run)

    # ------------------------------------------------------------------ errors
    def show_error(self, message: str, details: str = "") -> None:
        """Show one error message in this view (replacing any earlier one); ``details`` folded away."""
        self.last_error = _ERROR_PREFIX.sub("", " ".join(str(message).split()))
        self.error_area.value = error_html(self.last_error, details)

    def fail(self, exc: BaseException) -> None:
        """Show ``exc`` as this view's error: its message, the traceback folded under "details"."""
        self._last_traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.show_error(error_text(exc), self._last_traceback)

    def clear_error(self) -> None:
        self.last_error = ""
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
                self.fail(exc)
                return None
            if self.state.error:
                self.show_error(self.state.error)
            return out
        return run


def _images_cache(state: WorkbenchState, name: str) -> tuple[ImageSet, dict]:
    """The state's image set and a cache of ``name`` for it, emptied when another image set is
    loaded (held with the set itself, so a new set can never find an old one's entries)."""
    images = state.loaded()[0]
    held = state.__dict__.get(name)
    if held is None or held[0] is not images:
        held = state.__dict__[name] = (images, {})
    return held


def thumbnail(state: WorkbenchState, sample_id: str, size: int = THUMB) -> bytes:
    """PNG bytes of one image of the state's image set (cached per image set)."""
    images, cache = _images_cache(state, "_thumbs")
    key = (sample_id, size)
    if key not in cache:
        idx = int(images.indices_of([sample_id])[0])
        cache[key] = png_bytes(images.images[idx], size)
    return cache[key]


def episode_colors(state: WorkbenchState) -> list[str]:
    """The colour of each class of the shown episode, keyed by the class's name in its image set
    (``figures.class_colors``): the same in every view and export, whatever episode shows the class."""
    images, episode = state.shown()[:2]
    return class_colors(episode.classes, images.class_names)


def tooltip_of(state: WorkbenchState, sample_id: str, extra: str = "") -> str:
    """Hover text of an image: its sample id and metadata (and ``extra``); the metadata part is cached
    per image set (the views ask for dozens of them on every edit)."""
    images, cache = _images_cache(state, "_tooltips")
    if sample_id not in cache:
        row = images.metadata.iloc[int(images.indices_of([sample_id])[0])]
        cache[sample_id] = "\n".join([sample_id] + [f"{k}: {v}" for k, v in row.items()
                                                    if k not in ("sample_id", "split", "filenames")])
    return cache[sample_id] + ("\n" + extra if extra else "")


class FigureSlot(w.Box):
    """A place on the page for one plotly FigureWidget, redrawn in place.

    The first ``show`` creates the FigureWidget; later calls change it in place with plotly's update
    messages, so the page keeps one widget model per slot instead of opening a new figure model (and
    view) on every redraw. A figure with the same traces (count and types) as the one shown costs one
    update message with only the trace properties and top-level layout keys that differ (the
    embedding map after an edit: the points that moved); other figures replace the traces (delete,
    add) and then send the layout's differences. Nothing is sent twice: a front end that connects
    later gets the current figure when it asks for the widget's state (``_figurewidget``).

    The widget is ``_figurewidget.FigureWidget`` (plotly's front end loaded once per page). Should
    a front end still drop updates (anywidget gives a model two seconds to set up in the browser,
    and a model that misses that renders but ignores every later update), the slot recovers: a working
    plotly front-end confirms each relayout, so when a redraw stays unconfirmed for
    ``ack_timeout_s`` seconds while the kernel is idle, the slot swaps in a fresh FigureWidget with
    the current figure. ``on_figure(widget)`` is called for every new widget (attach click
    handlers there: trace objects change on each redraw).
    """

    #: seconds a front-end gets to confirm an in-place redraw before the slot rebuilds the widget
    ack_timeout_s = 4.0
    #: a replaced widget is closed once it is this old and ten newer widgets exist (closing one
    #: while a page is still creating its view makes anywidget report a failed model)
    close_after_s = 60.0

    def __init__(self, fig: go.Figure | None = None, css_class: str = "",
                 on_figure: Callable[[go.FigureWidget], None] | None = None, **kwargs):
        super().__init__(**kwargs)
        if css_class:
            self.add_class(css_class)
        self.on_figure = on_figure
        self.figure: go.FigureWidget | None = None
        self.rebuilds = 0  # widgets replaced because a front-end never confirmed a redraw
        self._retired: list[tuple[float, go.FigureWidget]] = []
        if fig is not None:
            self.show(fig)

    def show(self, fig: go.Figure) -> go.FigureWidget:
        fw = self.figure
        if fw is None:
            return self._new_widget(fig)
        same = len(fw.data) == len(fig.data) and all(
            a.type == b.type for a, b in zip(fw.data, fig.data, strict=True))
        if not same:
            fw.data = []  # one deleteTraces message
            if fig.data:
                fw.add_traces(list(fig.data))  # one addTraces message
        with fw.batch_update():  # one update message: what changed in the traces and in the layout
            if same:
                for old, new in zip(fw.data, fig.data, strict=True):
                    _restyle(old, new)
            _relayout(fw, fig)
        # a front end that connects later asks for the widget's state: _figurewidget.FigureWidget answers
        # with the figure as it is then (plotly's handler of the front end's layout deltas reads the layout)
        if isinstance(fw, FigureWidget):
            fw.remember_figure(data=False)
        self._expect_ack(fw)
        if self.on_figure is not None:
            self.on_figure(fw)
        return fw

    def _new_widget(self, fig: go.Figure | go.FigureWidget) -> go.FigureWidget:
        old = self.figure
        self.figure = FigureWidget(fig)
        self.children = [self.figure]
        now = time.monotonic()
        if old is not None:
            self._retired.append((now, old))
        while len(self._retired) > 10 and now - self._retired[0][0] > self.close_after_s:
            self._retired.pop(0)[1].close()
        if self.on_figure is not None:
            self.on_figure(self.figure)
        return self.figure

    def _expect_ack(self, fw: go.FigureWidget) -> None:
        """In a running kernel, check later that a front-end confirmed this redraw."""
        loop = kernel_loop()
        if loop is None:  # plain Python (scripts, tests): no front-end to wait for
            return
        loop.call_later(self.ack_timeout_s, self._check_ack, fw, fw._last_layout_edit_id)

    def _check_ack(self, fw: go.FigureWidget, edit_id: int) -> None:
        if fw._last_layout_edit_id != edit_id or not fw._layout_edit_in_process or self.figure is not fw:
            return  # redrawn again since, or confirmed
        self.rebuilds += 1
        self._new_widget(go.Figure(fw))


def same_value(a, b) -> bool:
    """Whether two plotly property values (numbers, strings, arrays, nested dicts and lists) are equal."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        try:
            return x.shape == y.shape and bool(np.array_equal(x, y))
        except (TypeError, ValueError):
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


_MISSING = object()


def _restyle(old, new) -> None:
    """Give the trace ``old`` (of a figure widget in batch mode) the properties of ``new``: only the
    top-level properties that differ are set (and sent), those ``new`` lacks are removed."""
    have, want = old._props, new._props
    changed = {k: v for k, v in want.items() if k != "uid" and not same_value(have.get(k, _MISSING), v)}
    if changed:
        old.update(changed, overwrite=True)
    for k in [k for k in have if k not in want and k not in ("uid", "type")]:
        old[k] = None


def _relayout(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Give ``fw``'s layout (in batch mode) the layout of ``fig``: only the top-level keys that differ
    (the template, the same on every redraw, is neither validated again nor sent)."""
    have, want = fw.layout._props, fig.layout._props
    changed = {k: v for k, v in want.items() if not same_value(have.get(k, _MISSING), v)}
    stale = [k for k in have if k not in want]
    for key in stale:
        fw.layout[key] = None
    if changed:
        fw.layout.update({k: fig.layout[k] for k in changed}, overwrite=True)


_SHARED: dict[tuple, w.Widget] = {}


def shared(cls: type[w.Widget], **traits) -> w.Widget:
    """One Layout or style widget per distinct set of values, shared by every widget that uses it.

    Each ipywidgets widget otherwise brings its own layout and style models: a gallery card (box,
    image, button) took eight widget models where it now takes three, and a page creates all of them
    before it shows anything."""
    key = (cls, tuple(sorted(traits.items())))
    widget = _SHARED.get(key)
    if widget is None or widget.comm is None:  # never made, or closed since
        widget = _SHARED[key] = cls(**traits)
    return widget


@dataclasses.dataclass(frozen=True)
class Card:
    """What one gallery card shows: a thumbnail with hover text, a caption, a border colour."""

    png: bytes
    tooltip: str
    caption: str
    border: str = "#ddd"
    button_style: str = ""  # for button captions
    button_tooltip: str = ""
    payload: object = None  # handed to the row's on_pick when the card's button is clicked


class CardRow(w.HBox):
    """A wrapping row of thumbnail cards, each a thumbnail above a button (``on_pick`` given) or a label.

    ``show(cards)`` reuses the card widgets already on the page and changes only what differs, so a
    new episode sends a few values instead of opening dozens of widget models; a card whose image is
    on the page already keeps its widget (moved, not sent again). The image is an <img> in an HTML
    widget (ipywidgets 8's Image view fails to render when given a tooltip, and an <img> needs no
    extra binary message); the hover text is the HTML widget's own ``tooltip``, so a support edit that
    changes a query's margin or prediction set sends that short text, not the image again."""

    def __init__(self, on_pick: Callable[[object], None] | None = None, button_width: str = "74px", **kwargs):
        super().__init__(layout=shared(w.Layout, flex_flow="row wrap"), **kwargs)
        self.on_pick = on_pick
        self.button_width = button_width
        self._pool: list[w.VBox] = []
        self._payloads: dict[int, object] = {}  # pool index -> payload of the card it shows

    @property
    def footers(self) -> list[w.Widget]:
        """The button (or label) of each card shown, in order."""
        return [card.children[1] for card in self.children]

    def _new_card(self, k: int) -> w.VBox:
        img = w.HTML(layout=shared(w.Layout), style=shared(HTMLStyle))
        img.add_class("fsl-thumb")
        if self.on_pick is not None:
            footer = w.Button(layout=shared(w.Layout, width=self.button_width, height="24px"),
                              style=shared(w.ButtonStyle))
            footer.on_click(lambda _: self.on_pick(self._payloads.get(k)))
        else:
            footer = w.HTML(layout=shared(w.Layout), style=shared(HTMLStyle))
        return w.VBox([img, footer])

    @staticmethod
    def _image_html(c: Card) -> str:
        src = "data:image/png;base64," + base64.b64encode(c.png).decode()
        return f"<img src='{src}' width='{THUMB}' height='{THUMB}' style='image-rendering:pixelated;display:block'>"

    def show(self, cards: list[Card]) -> None:
        while len(self._pool) < len(cards):
            self._pool.append(self._new_card(len(self._pool)))
        images = [self._image_html(c) for c in cards]
        # a card that shows the same image as one on the page now keeps that card
        # widget, only moved: the image is not sent again (the influence strip reorders its images)
        free = dict.fromkeys(range(len(self._pool)))
        chosen: list[int | None] = [None] * len(cards)
        by_image: dict[str, list[int]] = {}
        for k, box in enumerate(self._pool):
            by_image.setdefault(box.children[0].value, []).append(k)
        for i, value in enumerate(images):
            for k in by_image.get(value, []):
                if k in free:
                    chosen[i] = k
                    del free[k]
                    break
        rest = iter(free)
        slots = [k if k is not None else next(rest) for k in chosen]
        self._payloads = {k: c.payload for k, c in zip(slots, cards, strict=True)}
        for k, c, value in zip(slots, cards, images, strict=True):
            img, footer = self._pool[k].children
            img.value, img.tooltip = value, c.tooltip
            if isinstance(footer, w.Button):
                footer.description, footer.button_style, footer.tooltip = c.caption, c.button_style, c.button_tooltip
            else:
                footer.value = c.caption
            self._pool[k].layout = shared(w.Layout, border=f"2px solid {c.border}", padding="2px", margin="2px",
                                          align_items="center", width=f"{THUMB + 16}px")
        self.children = [self._pool[k] for k in slots]
