"""plotly's FigureWidget with its front-end code evaluated once per page instead of once per figure.

plotly ships its widget front end as one ~5 MB ES module (``_esm``), and anywidget imports that module
separately for every figure model: on the 2-core test machines each import takes about 1.5 s of the
page's main thread (measured in headless Chromium). anywidget also gives each model two seconds to
initialize; a model that misses that ignores every later update from the kernel. A page that opens
three figures at once (the workbench does) therefore loses figures on a busy machine.

Here ``_esm`` is a small loader instead. It keeps plotly's module in a page-wide promise, starts
loading it when the first view needs it, and initializes each model's plotly state only then, so a
model's own setup never waits for plotly. Updates that arrive before plotly is ready are not lost:
the figure's full state (``_widget_data``, ``_widget_layout``) is what the late view draws, and
plotly's first render confirms the latest edit id to the kernel.
"""

from __future__ import annotations

import functools
from pathlib import Path

import plotly
import plotly.graph_objects as go
import traitlets

_BUNDLE = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"

# {key} is replaced by a key unique to the plotly version (two kernels in one JupyterLab tab share the page)
_LOADER = """
const KEY = Symbol.for("fsl-xai/plotly-widget/{key}");

function plotlyModule(model) {
  let loading = globalThis[KEY];
  if (!loading) {
    const url = URL.createObjectURL(new Blob([model.get("_plotly_bundle")], { type: "text/javascript" }));
    loading = import(url);
    globalThis[KEY] = loading;
    loading.then(() => URL.revokeObjectURL(url), (error) => {
      URL.revokeObjectURL(url);
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


class FigureWidget(go.FigureWidget):
    """A ``plotly.graph_objects.FigureWidget`` whose front-end module is loaded once per page."""

    _esm = _LOADER.replace("{key}", plotly.__version__)
    _plotly_bundle = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_plotly_bundle")
    def _default_plotly_bundle(self) -> str:  # part of the state the widget opens with
        return _bundle_text()
