"""Exported figures open offline and lead nowhere off the machine: plotly.js inlined, no address of
another machine that a browser would load, no "Share chart" and no logo link (tests/ui opens such a
file in Chromium and fails on any outside request)."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest

from widgets.export import off_machine_addresses, write_figure_html
from widgets.figures import PLOTLY_CONFIG, heatmap_figure


def test_every_kind_of_outside_load_is_found():
    page = """<html><head>
      <link rel="stylesheet" href="https://cdn.example/a.css"><script src="//cdn.example/b.js"></script>
      <meta http-equiv="refresh" content="1;url=http://example.org/">
      <style>@import "https://fonts.example/c.css"; .x { background: url('http://img.example/d.png') }</style>
    </head><body>
      <img srcset="e.png 1x, https://img.example/e2.png 2x"><iframe src="https://frame.example/"></iframe>
      <div style="background-image:url(https://img.example/f.png)"></div><svg><image xlink:href="ftp://g.example/g.png"/></svg>
      <script>const notLoaded = "https://only.text.example/";</script>
      <img src="data:image/png;base64,AAAA"><a href="#top">top</a><script src="local.js"></script>
    </body></html>"""
    assert off_machine_addresses(page) == [
        "https://cdn.example/a.css", "//cdn.example/b.js", "http://example.org/", "https://fonts.example/c.css",
        "http://img.example/d.png", "https://img.example/e2.png", "https://frame.example/",
        "https://img.example/f.png", "ftp://g.example/g.png"]


def test_a_figure_page_is_self_contained_and_offers_no_cloud_link(tmp_path):
    image = np.random.default_rng(0).random((1, 16, 16))
    fig = heatmap_figure(image, [np.zeros((16, 16))], ["saliency"])
    page = write_figure_html(fig, tmp_path / "heatmaps.html").read_text()
    assert off_machine_addresses(page) == []
    assert re.search(r"<script[^>]*\ssrc\s*=", page, re.IGNORECASE) is None  # no script from any other file
    assert "plotly.js v" in page and len(page) > 1_000_000  # plotly.js itself is in the file
    call = page.split("Plotly.newPlot(")[-1]  # the figure's own call: data, layout, config
    assert '"showSendToCloud": false' in call and '"displaylogo": false' in call and "plotlyServerURL" not in call


def test_a_page_that_would_load_from_outside_is_not_kept(tmp_path, monkeypatch):
    write_html = go.Figure.write_html

    def from_cdn(self, path, **kwargs):  # what plotly writes with include_plotlyjs="cdn"
        write_html(self, path, **{**kwargs, "include_plotlyjs": "cdn"})

    monkeypatch.setattr(go.Figure, "write_html", from_cdn)
    with pytest.raises(RuntimeError, match=r"figure\.html would load https://cdn\.plot\.ly/.*not kept"):
        write_figure_html(go.Figure(go.Bar(y=[1, 2])), tmp_path / "figure.html")
    assert not (tmp_path / "figure.html").exists()


def test_the_config_turns_off_every_cloud_link():
    assert PLOTLY_CONFIG == {"showSendToCloud": False, "displaylogo": False, "plotlyServerURL": ""}
