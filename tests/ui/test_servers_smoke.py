"""The browser fixtures work end to end: Voila renders a widget notebook and round-trips a
click through the kernel; JupyterLab serves its page and the notebook."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect

KERNEL_S = 90_000  # ms: a kernel start can take long when the two cores are busy
#: true once the page has drawn text in a Font Awesome face it loaded (from this machine: nothing else is reachable)
ICON_FONT_LOADED = "() => [...document.fonts].some(f => f.family.includes('Font Awesome') && f.status === 'loaded')"

WIDGET_NOTEBOOK = """\
import os
import ipywidgets as widgets
from IPython.display import display

clicks = 0
button = widgets.Button(description="Press me", icon="check")
label = widgets.Label(value="not pressed")

def on_click(_):
    global clicks
    clicks += 1
    # computed in the kernel: the label can only change through a real round trip
    label.value = f"pressed {clicks} time(s), {sum(range(clicks + 1))} in all"

button.on_click(on_click)
display(widgets.VBox([button, label]))
"""


@pytest.fixture
def widget_notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# Smoke test"))
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_NOTEBOOK))
    path = tmp_path / "smoke.ipynb"
    nbformat.write(nb, path)
    return path


def test_voila_renders_and_round_trips_a_click(servers, page, page_errors, widget_notebook: Path) -> None:
    app = servers.voila(widget_notebook)
    page.goto(app.url)
    button = page.get_by_role("button", name="Press me")
    expect(button).to_be_visible(timeout=KERNEL_S)
    expect(page.get_by_text("not pressed")).to_be_visible()
    button.click()
    expect(page.get_by_text("pressed 1 time(s), 1 in all")).to_be_visible(timeout=KERNEL_S)
    button.click()
    expect(page.get_by_text("pressed 2 time(s), 3 in all")).to_be_visible(timeout=KERNEL_S)
    # Voila shows outputs, not code
    expect(page.get_by_text("button.on_click")).to_have_count(0)
    # the button's icon is drawn with Font Awesome from Voila itself (its template links no CDN)
    expect(button.locator("i.fa-check")).to_be_visible()
    page.wait_for_function(ICON_FONT_LOADED, timeout=KERNEL_S)
    # nothing asked of another machine (assert_none fails on any outside request)
    page_errors.assert_none()


def test_servers_are_stopped_by_pid(servers, widget_notebook: Path) -> None:
    app = servers.voila(widget_notebook)
    pid = app.pid
    assert app.process.poll() is None
    servers.stop_all()
    assert app.process.poll() is not None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


def test_jupyterlab_serves_the_page_and_the_notebook(servers, page, page_errors, widget_notebook: Path) -> None:
    lab = servers.lab(root_dir=widget_notebook.parent)
    with urllib.request.urlopen(lab.url_for("api/contents")) as response:
        listing = json.load(response)
    assert "smoke.ipynb" in {item["name"] for item in listing["content"]}
    page.goto(lab.url_for("lab/tree/smoke.ipynb"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=KERNEL_S)
    expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=KERNEL_S)
    expect(page.get_by_role("heading", name="Smoke test")).to_be_visible(timeout=KERNEL_S)
    assert "JupyterLab" in page.title() or "smoke" in page.title()
    page_errors.assert_none()


def test_lab_refuses_requests_without_the_token(servers, tmp_path: Path) -> None:
    lab = servers.lab(root_dir=tmp_path)
    request = urllib.request.Request(f"{lab.base_url}/api/contents")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    info.value.close()
    assert info.value.code == 403
    with urllib.request.urlopen(lab.url_for("api/contents")) as response:
        assert response.status == 200
