"""Many plotly figures opened at once in one Voila page: every one must render and follow updates.

plotly's own FigureWidget imports its ~5 MB front-end module once per figure (about 1.5 s each on
these machines), and anywidget drops every update to a model that took more than two seconds to
set up. With eight figures arriving together that lost figures in both tries here; the project's
FigureWidget (widgets/_figurewidget.py) loads the module once per page. The kernel then updates all
figures in place and the page must show each new title.
"""

from __future__ import annotations

import json

from playwright.sync_api import expect

N_FIGURES = 8
STEP_MS = 120_000

_CELL = f"""
import ipywidgets as w
import plotly.graph_objects as go
from widgets._figurewidget import FigureWidget

figures = [FigureWidget(go.Figure(go.Bar(x=["a", "b"], y=[i, i + 1]),
                                  layout=dict(title=f"figure {{i}}", height=220, width=320)))
           for i in range({N_FIGURES})]

def update(_):
    for i, f in enumerate(figures):
        f.update_layout(title=f"updated {{i}}")
        f.data[0].y = [i + 5, i + 6]

button = w.Button(description="update all")
button.on_click(update)
w.VBox([button, w.HBox(figures[:4]), w.HBox(figures[4:])])
"""


def _notebook(path) -> None:
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "figs", "metadata": {},
                     "outputs": [], "source": _CELL}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


def test_eight_figures_render_and_update_in_voila(servers, page, page_errors, tmp_path):
    nb = tmp_path / "figures.ipynb"
    _notebook(nb)
    app = servers.voila(nb)
    page.goto(app.url, timeout=STEP_MS, wait_until="commit")
    titles = page.locator(".js-plotly-plot .gtitle")
    expect(titles).to_have_count(N_FIGURES, timeout=STEP_MS)
    for i in range(N_FIGURES):
        expect(page.get_by_text(f"figure {i}", exact=True)).to_be_visible(timeout=STEP_MS)

    page.get_by_role("button", name="update all").click()
    for i in range(N_FIGURES):
        expect(page.get_by_text(f"updated {i}", exact=True)).to_be_visible(timeout=STEP_MS)
    page_errors.assert_none(ignore=[r"Failed to load resource: the server responded with a status of 404 .*favicon"])
    # the page evaluated plotly's module once, under the loader's page-wide key
    loaded = page.evaluate("() => Object.getOwnPropertySymbols(globalThis)"
                           ".filter(s => String(s).includes('fsl-xai/plotly-widget/')).length")
    assert loaded == 1
