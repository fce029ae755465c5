"""Many plotly figures opened at once in one Voila page: every one must render and follow updates.

plotly's own FigureWidget imports its ~5 MB front-end module once per figure (about 1.5 s each on
these machines), and anywidget drops every update to a model that took more than two seconds to
set up. With eight figures arriving together that lost figures in both tries here; the project's
FigureWidget (widgets/_figurewidget.py) loads the module once per page. The kernel then updates all
figures in place and the page must show each new title.

Neither those figures nor a figure exported as a standalone HTML file (widgets/export.py) may lead off
the machine: no "Share chart" button to Plotly's cloud, no logo link to plotly.com, and no request to
another machine while the figure is drawn and used.
"""

from __future__ import annotations

import json

import plotly.graph_objects as go
from playwright.sync_api import expect

from widgets.export import write_figure_html

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
    _assert_modebar_stays_local(page)


def test_an_exported_figure_opens_offline_without_cloud_links(page, page_errors, tmp_path):
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout=dict(title="exported figure", height=300, width=400))
    path = write_figure_html(fig, tmp_path / "figure.html")
    page.goto(path.as_uri(), timeout=STEP_MS)
    expect(page.get_by_text("exported figure", exact=True)).to_be_visible(timeout=STEP_MS)
    _assert_modebar_stays_local(page)
    page_errors.assert_none()  # includes: no request off the machine (plotly.js is inlined)


def _assert_modebar_stays_local(page) -> None:
    """Every plotly modebar on the page, shown by hovering its figure, offers its local tools (zoom,
    download as PNG) and nothing that leads off the machine."""
    plots = page.locator(".js-plotly-plot")
    for i in range(plots.count()):
        plots.nth(i).hover()
        buttons = plots.nth(i).locator(".modebar-btn")
        expect(buttons.first).to_be_attached(timeout=STEP_MS)
        titles = [buttons.nth(j).get_attribute("data-title") or "" for j in range(buttons.count())]
        assert any("Download" in title for title in titles), titles
        assert not [title for title in titles if "Share" in title or "Plotly" in title], titles
    assert page.locator(".modebar-btn--logo, .js-plotly-plot a[href^='http']").count() == 0
