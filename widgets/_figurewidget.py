"""plotly's FigureWidget with its front-end code sent and evaluated once per page, not once per figure.

plotly ships its widget front end as one ~5 MB ES module (``_esm``). Every figure widget sends that
module to the page, and anywidget imports it separately for each figure model: on the 2-core test
machines each import takes about 1.5 s of the page's main thread (measured in headless Chromium).
anywidget also gives each model two seconds to initialize; a model that misses that ignores every
later update from the kernel. A page that opens three figures at once (the workbench does)
therefore lost figures on a busy machine, after receiving 15 MB of the same code.

Here ``_esm`` is a small loader instead, and the module's source travels once per kernel, in one
plain widget model (``PlotlyModule``) that every figure names by id. The loader keeps plotly's
module in a page-wide promise, starts loading it when the first view needs it, and initializes each
model's plotly state only then, so a model's own setup never waits for plotly. Updates that arrive
before plotly is ready are not lost: the figure's full state (``_widget_data``, ``_widget_layout``)
is what the late view draws, and plotly's first render confirms the latest edit id to the kernel.

A redraw in place (``_base.FigureSlot``) reaches the connected front ends as plotly's update messages,
which also keep each front end's own copy of the figure (its ``_widget_data``, ``_widget_layout``)
current. A front end that connects later (Voila shows the page after the notebook ran; JupyterLab
restores a reloaded page) asks the kernel for the widget's full state instead: ``get_state`` answers
with the figure as it is now, so the kernel never sends the figure a second time just in case.
The front end's replies (``_js2py_*``: the deltas plotly computed, clicks) are meant for the kernel
alone and are not echoed back to the page.

Every figure also carries ``figures.PLOTLY_CONFIG``: no "Share chart" button and no plotly logo link, so
nothing on a figure leads off the machine.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import ipywidgets
import plotly
import plotly.graph_objects as go
import traitlets
from plotly.serializers import custom_serializers

from .figures import PLOTLY_CONFIG

_BUNDLE = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"

# {key} is replaced by a key unique to the plotly version (two kernels in one JupyterLab tab share the page)
_LOADER = """
const KEY = Symbol.for("fsl-xai/plotly-widget/{key}");

async function moduleSource(model) {
  // the holder's model can arrive after a figure's (a page restoring the kernel's widgets): retry
  const id = model.get("_plotly_module");
  const deadline = Date.now() + 60000;
  for (let wait = 50; ; wait = Math.min(2 * wait, 1000)) {
    try {
      const holder = await model.widget_manager.get_model(id);
      if (holder) return holder.get("source");
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    if (Date.now() > deadline) throw new Error(`plotly's module holder ${id} never arrived`);
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

function plotlyModule(model) {
  let loading = globalThis[KEY];
  if (!loading) {
    loading = moduleSource(model).then(async (source) => {
      const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
      try {
        return await import(url);
      } finally {
        URL.revokeObjectURL(url);
      }
    });
    globalThis[KEY] = loading;
    loading.catch((error) => {
      if (globalThis[KEY] === loading) delete globalThis[KEY];  // let the next view try again
      console.error("[fsl-xai] plotly's widget module failed to load", error);
    });
  }
  return loading;
}

export default () => {
  let setup = null;    // the context anywidget gave initialize()
  let figure = null;   // plotly's own widget object for this model, once loaded
  let ready = null;
  const start = () => {
    ready ??= plotlyModule(setup.model).then((mod) => {
      if (setup.signal?.aborted) return;
      figure = mod.default();
      figure.initialize(setup);
    });
    return ready;
  };
  return {
    initialize(context) {
      setup = context;  // nothing awaited here: anywidget allows a model two seconds to initialize
    },
    async render(context) {
      await start();
      if (!figure || context.signal?.aborted) return undefined;
      return figure.render(context);
    },
  };
};
"""


@functools.lru_cache(maxsize=1)
def _bundle_text() -> str:
    return _BUNDLE.read_text(encoding="utf-8")


class PlotlyModule(ipywidgets.Widget):
    """A plain widget model (no view) holding the source of plotly's widget front end."""

    source = traitlets.Unicode().tag(sync=True)


_module: PlotlyModule | None = None


def plotly_module() -> PlotlyModule:
    """The kernel's one ``PlotlyModule`` (made again if it was closed, e.g. by ``Widget.close_all``)."""
    global _module
    if _module is None or _module.comm is None:
        _module = PlotlyModule(source=_bundle_text())
    return _module


def _reply() -> traitlets.Dict:
    return traitlets.Dict(allow_none=True).tag(sync=True, echo_update=False, **custom_serializers)


class FigureWidget(go.FigureWidget):
    """A ``plotly.graph_objects.FigureWidget`` whose front-end module comes once per page, with
    ``PLOTLY_CONFIG`` (no cloud links) under any config it is given."""

    _esm = _LOADER.replace("{key}", plotly.__version__)
    _plotly_module = traitlets.Unicode().tag(sync=True)  # model id of the PlotlyModule

    # the front end's replies to the kernel (plotly's own traits, but never echoed back to the page:
    # ipywidgets 8 echoes every update a front end sends unless the trait says otherwise)
    _js2py_traceDeltas = _reply()
    _js2py_layoutDelta = _reply()
    _js2py_restyle = _reply()
    _js2py_relayout = _reply()
    _js2py_update = _reply()
    _js2py_pointsCallback = _reply()

    @traitlets.default("_plotly_module")
    def _default_plotly_module(self) -> str:  # part of the state the widget opens with
        return plotly_module().model_id

    @traitlets.default("_config")
    def _default_config(self) -> dict:  # part of the state the widget opens with
        return dict(PLOTLY_CONFIG)

    @traitlets.validate("_config")
    def _offline_config(self, proposal: traitlets.Bunch) -> dict:
        # plotly's constructor assigns its own (empty) config: the offline keys always win
        return {**proposal["value"], **PLOTLY_CONFIG}

    @traitlets.observe("_js2py_traceDeltas")  # replaces plotly's observer of the same name
    def _handler_js2py_traceDeltas(self, change: dict) -> None:
        """The front end's report of the trace defaults it filled in: only the edit bookkeeping is kept.

        Plotly would merge the defaults into the kernel's traces and send back removals of what
        overlaps. Nothing here reads a front end default, and the merge fails on the traces' numpy
        arrays (the front end reports a typed array as an object, and plotly then asks an array for
        its truth value: a ValueError in the kernel on every support edit).
        """
        msg = change["new"]
        if msg and msg.get("trace_edit_id") == self._last_trace_edit_id:
            self._trace_edit_in_process = False
            if not self._layout_edit_in_process:
                while self._waiting_edit_callbacks:
                    self._waiting_edit_callbacks.pop()()
        self._js2py_traceDeltas = None  # type: ignore[assignment]  # the trait allows None

    def get_state(self, key=None, drop_defaults=False):
        """The widget's state as a front end that connects now must start from: the figure's current
        traces and layout, not the ones it was created (or last displayed) with."""
        names = self.keys if key is None else [key] if isinstance(key, str) else list(key)
        # (the widget opens its comm while plotly's constructor runs: the figure is not there yet)
        if ("_widget_data" in names or "_widget_layout" in names) and "_layout_obj" in self.__dict__:
            self.remember_figure()
        return super().get_state(key, drop_defaults)

    def remember_figure(self, data: bool = True) -> None:
        """Store the current figure as the widget's initial state without sending it anywhere (the
        connected front ends got the change as update messages already). ``data=False``: the layout
        only (plotly's handler of the front end's layout deltas reads it)."""
        values = self._trait_values  # set directly: assigning the traits would send them to the page
        values["_widget_layout"] = copy.deepcopy(self._layout_obj._props)
        if data:
            values["_widget_data"] = copy.deepcopy(self._data)

