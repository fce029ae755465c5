"""The workbench in a real browser: notebook 01 in JupyterLab (run all cells) and the Voila app. Each
test sees the workbench render, clicks "resample" and a query, sees the heatmap and the distance plot
change, and checks that the browser console has no errors. Screenshots go to artifacts/screenshots.

The notebooks are copied to a temporary folder first, so JupyterLab's autosave can never write outputs
into the committed notebooks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SHOTS = ROOT / "artifacts" / "screenshots"
RENDER_MS = 240_000  # kernel start + imports + data + cached model on two busy cores
STEP_MS = 90_000


def _copy(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "nb"
    dest.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOKS / name, dest / name)
    return dest / name


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _show(page, selector: str) -> None:
    page.locator(selector).first.scroll_into_view_if_needed(timeout=STEP_MS)


def _heatmap_pixels(page) -> str:
    """The data URL of the first attribution layer as drawn by plotly (changes with the map)."""
    fig = page.locator(".fsl-heatmap-figure").first
    images = fig.locator("img")
    expect(images.first).to_be_attached(timeout=STEP_MS)
    return " ".join(images.nth(i).get_attribute("src") or "" for i in range(images.count()))


def _bar_texts(page) -> str:
    return " ".join(page.locator(".fsl-distance-bars .fsl-dist-value").all_text_contents())


def _drive_workbench(page, prefix: str) -> None:
    """resample, then click a query; the heatmap and distance bars must change each time."""
    wb = page.locator(".fsl-workbench").first
    expect(wb).to_be_attached(timeout=RENDER_MS)
    # JupyterLab renders only the cells near the viewport: bring each part on screen before reading it
    header = page.locator(".fsl-support-header").first
    header.scroll_into_view_if_needed(timeout=STEP_MS)
    expect(header).to_contain_text("episode", timeout=STEP_MS)
    _show(page, ".fsl-heatmap-caption")
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text("query #0", timeout=STEP_MS)
    _show(page, ".fsl-distance-bars")
    expect(page.locator(".fsl-distance-bars .fsl-dist-value").first).to_be_attached(timeout=STEP_MS)
    _show(page, ".fsl-heatmap-figure")
    _shot(page, f"{prefix}-1-rendered.png")
    episode_before, heat_before = header.inner_text(), _heatmap_pixels(page)

    header.scroll_into_view_if_needed()
    page.get_by_role("button", name="resample").first.click()
    expect(header).not_to_have_text(episode_before, timeout=STEP_MS)
    page.wait_for_function(
        """([before]) => { const el = document.querySelector('.fsl-heatmap-figure');
             if (!el) return false;
             const hrefs = Array.from(el.querySelectorAll('img')).map(i => i.getAttribute('src') || '').join(' ');
             return hrefs.length > 0 && hrefs !== before; }""", arg=[heat_before], timeout=STEP_MS)
    _shot(page, f"{prefix}-2-resampled.png")

    heat_resampled, bars_resampled = _heatmap_pixels(page), _bar_texts(page)
    _show(page, ".fsl-querygallery")
    query_button = page.locator(".fsl-querygallery button", has_text=re.compile(r"^#3 ")).first
    expect(query_button).to_be_visible(timeout=STEP_MS)
    query_button.click()
    _show(page, ".fsl-heatmap-caption")
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text("query #3", timeout=STEP_MS)
    _show(page, ".fsl-heatmap-figure")
    page.wait_for_function(
        """([before]) => { const el = document.querySelector('.fsl-heatmap-figure');
             const hrefs = Array.from(el.querySelectorAll('img')).map(i => i.getAttribute('src') || '').join(' ');
             return hrefs.length > 0 && hrefs !== before; }""", arg=[heat_resampled], timeout=STEP_MS)
    page.wait_for_function(
        """([before]) => Array.from(document.querySelectorAll('.fsl-distance-bars .fsl-dist-value'))
             .map(t => t.textContent).join(' ') !== before""", arg=[bars_resampled], timeout=STEP_MS)
    _show(page, ".fsl-distance-bars")
    _shot(page, f"{prefix}-3-query-selected.png")


# Known, harmless console noise of the servers themselves (not of our widgets).
IGNORE = [
    r"Failed to load resource: the server responded with a status of 404 .*(favicon|translations|lab/api/)",
]


def test_notebook_01_in_jupyterlab(servers, page, page_errors, tmp_path):
    nb = _copy(tmp_path, "01_guided_tour.ipynb")
    lab = servers.lab(root_dir=nb.parent)
    page.goto(lab.url_for(f"lab/tree/{nb.name}"))
    expect(page.locator(".jp-NotebookPanel").first).to_be_visible(timeout=STEP_MS)
    # wait for the kernel, then Run > Run All Cells (retried: a click can land before the kernel is connected)
    expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).first).to_be_visible(timeout=STEP_MS)
    prompts = page.locator(".jp-InputPrompt").filter(has_text=re.compile(r"\[(\*|\d+)\]"))
    for _ in range(4):
        page.get_by_text("Run", exact=True).first.click()
        page.get_by_text("Run All Cells", exact=True).first.click()
        try:
            expect(prompts.first).to_be_attached(timeout=20_000)
            break
        except AssertionError:
            page.keyboard.press("Escape")
    expect(prompts.first).to_be_attached(timeout=1_000)
    _drive_workbench(page, "lab-01")
    # no cell raised
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").filter(
        has_text=re.compile("Traceback|Error"))).to_have_count(0)
    # no errors, and nothing asked of another machine by JupyterLab or the workbench
    page_errors.assert_none(ignore=IGNORE)


def test_voila_app(servers, page, page_errors, tmp_path):
    nb = _copy(tmp_path, "app_workbench.ipynb")
    app = servers.voila(nb)
    page.goto(app.url, timeout=RENDER_MS, wait_until="commit")
    _drive_workbench(page, "voila-app")
    # an app: no code on the page
    expect(page.get_by_text("open_state(")).to_have_count(0)
    # no widget model may fail to set up: widgets/_figurewidget.py keeps plotly's front end out of
    # anywidget's two-second setup limit (tests/ui/test_figure_widgets_page.py shows why); and
    # nothing was asked of another machine (assert_none fails on any outside request)
    page_errors.assert_none(ignore=IGNORE)
