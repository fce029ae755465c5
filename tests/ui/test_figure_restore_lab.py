"""A figure survives a JupyterLab page reload: the page restores the kernel's widget models, and a
figure's model may arrive before the one holding plotly's module (widgets/_figurewidget.py waits)."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

STEP_MS = 120_000

_CELL = """
import plotly.graph_objects as go
from widgets._figurewidget import FigureWidget

FigureWidget(go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout=dict(title="restored figure", height=250)))
"""


def test_a_figure_renders_again_after_a_page_reload(servers, page, page_errors, tmp_path):
    nb = tmp_path / "restore.ipynb"
    nb.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "fig", "metadata": {}, "outputs": [],
                   "source": _CELL}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5}))
    lab = servers.lab(root_dir=tmp_path)
    page.goto(lab.url_for(f"lab/tree/{nb.name}"))
    expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).first).to_be_visible(timeout=STEP_MS)
    title = page.locator(".js-plotly-plot .gtitle", has_text="restored figure")
    for _ in range(4):  # a click can land before the kernel is connected
        page.locator(".jp-Cell-inputArea").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(title).to_have_count(1, timeout=30_000)
            break
        except AssertionError:
            pass
    expect(title).to_have_count(1, timeout=STEP_MS)
    page.keyboard.press("Control+s")
    page.wait_for_timeout(2_000)
    page.reload()
    expect(title).to_have_count(1, timeout=STEP_MS)
    page_errors.assert_none(ignore=[r"Failed to load resource: the server responded with a status of 404 "
                                    r".*(favicon|translations|lab/api/)"])
