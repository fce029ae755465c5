"""The workbench's layout for people, in a real browser at 1366x768 (a common laptop screen, and a
projector's): the Voila app on the built-in synthetic image set (never the shared medical data: these
screenshots are committed).

- the selected query's prediction, its heatmaps with their titles and quality badges, and its distances
  to the prototypes are all inside the first screen, without scrolling;
- no label, button or tab shows cut-off text (one whose text is clipped must carry the full text in a
  tooltip);
- the class legend has the colours the distance bars have (one colour per class);
- teaching mode makes the type at least 1.3x larger and the essentials still fit.

Screenshots go to artifacts/screenshots/workbench-layout*.png. To refresh the README's copies in
docs/screenshots/ (small palette PNGs), run::

    FSL_XAI_UPDATE_SCREENSHOTS=1 python -m pytest -q -p no:cacheprovider tests/ui/test_workbench_layout.py
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1366, "height": 768}
RENDER_MS = 240_000  # kernel start + imports + data + cached model on two busy cores
STEP_MS = 90_000
MAX_PNG_BYTES = 300_000
#: known, harmless console noise of the server itself
IGNORE = [r"Failed to load resource: the server responded with a status of 404 .*(favicon|translations|lab/api/)"]

#: what must be on the first screen: (name, selector)
ESSENTIALS = [
    ("selected query's prediction", ".fsl-heatmap-caption"),
    ("heatmap figure", ".fsl-heatmap-figure .fsl-heatmap-row"),
    ("distance bars", ".fsl-distance-bars .fsl-dist"),
    ("selected query's card in the gallery", ".fsl-querygallery .widget-button.mod-info"),
]

#: every visible label, button, tab title, readout and HTML text of the workbench, with the ones whose
#: text is clipped (wider than their box) and no tooltip holding the full text
_CLIPPED_JS = """() => {
  const sel = ['.widget-label', 'button', '.lm-TabBar-tabLabel', '.p-TabBar-tabLabel', '.widget-readout',
               '.widget-html-content', 'select'].map(s => '.fsl-workbench ' + s).join(', ');
  const out = {checked: 0, clipped: []};
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (!el.offsetParent || r.width === 0 || r.height === 0) continue;  // not shown (hidden tab, display none)
    const text = (el.innerText || el.value || '').trim();
    if (!text) continue;
    out.checked += 1;
    let clipped = el.scrollWidth > el.clientWidth + 1;
    if (el.tagName === 'SELECT' && el.selectedIndex >= 0) {  // a dropdown clips its chosen option silently
      const probe = document.createElement('span');
      const cs = getComputedStyle(el);
      probe.style.font = cs.font; probe.style.position = 'absolute'; probe.style.visibility = 'hidden';
      probe.style.whiteSpace = 'pre'; probe.textContent = el.options[el.selectedIndex].text;
      document.body.appendChild(probe);
      const room = el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
      clipped = probe.getBoundingClientRect().width > room + 1;
      probe.remove();
    }
    if (!clipped) continue;
    const holder = el.closest('[title]');
    if (holder && holder.getAttribute('title').trim()) continue;  // the tooltip has the full text
    out.clipped.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')}: "${text.slice(0, 60)}" `
                     + `(${el.scrollWidth}px of text in ${el.clientWidth}px)`);
  }
  return out;
}"""

_BOXES_JS = """(sels) => sels.map(([name, sel, k]) => {
  const els = [...document.querySelectorAll(sel)].filter(e => e.getClientRects().length);
  if (els.length <= k) return [name, null];
  const r = els[k].getBoundingClientRect();
  return [name, [r.left, r.top, r.right, r.bottom]];
})"""

_COLOURS_JS = """() => {
  const legend = [...document.querySelectorAll('.fsl-workbench .fsl-class-chip')]
    .map(e => [e.textContent, getComputedStyle(e).backgroundColor]);
  const bars = [...document.querySelectorAll('.fsl-distance-bars .fsl-dist-bar')]
    .map(p => getComputedStyle(p).backgroundColor);
  return {legend, bars};
}"""


def _copy_app(tmp_path: Path) -> Path:
    dest = tmp_path / "nb"
    dest.mkdir(exist_ok=True)
    shutil.copy(ROOT / "notebooks" / "app_workbench.ipynb", dest / "app_workbench.ipynb")
    return dest / "app_workbench.ipynb"


def _open_app(servers, page, tmp_path, monkeypatch) -> None:
    """The Voila app on the synthetic set at 1366x768, with a query clicked and its badges drawn."""
    monkeypatch.setenv("FSL_XAI_APP_DATASET", "synthetic")  # nothing from the shared medical data on screen
    monkeypatch.setenv("FSL_XAI_SMOKE", "1")
    app = servers.voila(_copy_app(tmp_path))
    page.set_viewport_size(VIEWPORT)
    page.goto(app.url, timeout=RENDER_MS, wait_until="commit")
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text("query #0", timeout=RENDER_MS)
    expect(page.locator(".fsl-distance-bars .fsl-dist-value").first).to_be_attached(timeout=STEP_MS)
    # a click on another query: its maps come with their quality badges (✔ / ✘ / – in the caption under
    # the maps, one line per map), and the titles above the maps keep naming the method
    page.locator(".fsl-querygallery button", has_text=re.compile(r"^#1\b")).first.click()
    expect(page.locator(".fsl-heatmap-caption").first).to_contain_text("query #1", timeout=STEP_MS)
    expect(page.locator(".fsl-heatmap-caption .fsl-badges").first).to_contain_text(
        re.compile("✔|✘|undefined"), timeout=STEP_MS)
    expect(page.locator(".fsl-heatmap-figure .fsl-heatmap-title").first).to_contain_text(" — why ", timeout=STEP_MS)
    page.wait_for_timeout(300)  # let plotly finish laying out the new titles


def _off_screen(page) -> list[str]:
    """Essentials (and each heatmap title) not wholly inside the first screen."""
    assert page.evaluate("() => document.scrollingElement.scrollTop") == 0, "the page was scrolled"
    checks = [(name, sel, 0) for name, sel in ESSENTIALS]
    n_titles = page.locator(".fsl-heatmap-figure .fsl-heatmap-title").count()
    assert n_titles >= 2, f"expected a title above each of the 2 heatmaps, found {n_titles}"
    checks += [(f"heatmap title {i + 1}", ".fsl-heatmap-figure .fsl-heatmap-title", i) for i in range(n_titles)]
    problems = []
    for name, box in page.evaluate(_BOXES_JS, checks):
        if box is None:
            problems.append(f"{name}: not on the page")
            continue
        left, top, right, bottom = box
        if left < -1 or top < -1 or right > VIEWPORT["width"] + 1 or bottom > VIEWPORT["height"] + 1:
            problems.append(f"{name}: at ({left:.0f}, {top:.0f})-({right:.0f}, {bottom:.0f}), "
                            f"outside the {VIEWPORT['width']}x{VIEWPORT['height']} screen")
    return problems


def _clipped_titles(page) -> list[str]:
    """Heatmap titles (method, what it explains) drawn partly outside their map's panel (cut off)."""
    return page.evaluate("""() => [...document.querySelectorAll('.fsl-heatmap-figure .fsl-heatmap-title')]
      .map((t, i) => { const fig = t.closest('.fsl-heatmap-panel').getBoundingClientRect();
                       const r = t.getBoundingClientRect();
                       return r.top < fig.top - 1 || r.bottom > fig.bottom + 1 || r.left < fig.left - 1
                           || r.right > fig.right + 1 || t.scrollWidth > t.clientWidth + 1
                         ? `heatmap title ${i + 1} "${t.textContent.slice(0, 50)}": cut off by its figure `
                           + `(text ${r.top.toFixed(0)}-${r.bottom.toFixed(0)}, figure from ${fig.top.toFixed(0)})`
                         : ''; }).filter(Boolean)""")


def _clipped(page) -> list[str]:
    found = page.evaluate(_CLIPPED_JS)
    assert found["checked"] > 30, f"only {found['checked']} texts found: is the workbench on the page?"
    return found["clipped"]


def _shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))  # the first screen, as a user sees it
    if os.environ.get("FSL_XAI_UPDATE_SCREENSHOTS") == "1":
        docs_copy(path)
    return path


def docs_copy(path: Path) -> Path:
    """The README's copy of a screenshot: docs/screenshots/workbench*.png as a 256-colour PNG (small, and
    the colour bars keep their colours)."""
    DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
    small = DOCS_SHOTS / path.name.replace("workbench-layout", "workbench")
    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(small, optimize=True)
    assert small.stat().st_size < MAX_PNG_BYTES, f"{small} is {small.stat().st_size} bytes"
    return small


def _font_px(page, selector: str) -> float:
    return float(page.evaluate(f"() => parseFloat(getComputedStyle(document.querySelector('{selector}')).fontSize)"))


def test_workbench_composition_and_teaching_switch():
    """Without a browser: one stylesheet, the decision views side by side, the legend in the class
    colours of the figures, teaching mode from the argument and from the switch."""
    from fsl_xai.data.synthetic import make_synthetic
    from fsl_xai.testing import tiny_model
    from widgets._base import episode_colors
    from widgets.layout import stylesheet
    from widgets.state import WorkbenchState
    from widgets.workbench import Workbench

    state = WorkbenchState(n_way=3, n_shot=2, n_query=2)
    state.load("synthetic", images=make_synthetic(n_per_class=12, size=32, n_classes=4, seed=0, split="test"),
               model=tiny_model(channels=1, size=32, width=8))
    assert state.error == ""
    bench = Workbench(state, episodes=4, methods=["saliency"], badges=False, dicom=False, teaching=True)
    sheets = [c for c in bench.children if "fsl-stylesheet" in c._dom_classes]
    assert len(sheets) == 1 and sheets[0].value == stylesheet()
    assert "fsl-teaching" in bench._dom_classes
    bench.teaching.value = False
    assert "fsl-teaching" not in bench._dom_classes and "fsl-workbench" in bench._dom_classes
    decision = bench.children[2].children[1].children[0]
    assert list(decision.children) == [bench.heatmaps, bench.distances]
    assert bench.tabs.titles[0] == "dataset and model" and bench.tabs.children[0] is bench.picker
    colors = dict(zip(state.episode.classes, episode_colors(state), strict=True))
    for name, color in colors.items():
        assert f"background:{color}' title='class {name}'>{name}</span>" in bench.legend.value
    state.resample(5)
    for name, color in zip(state.episode.classes, episode_colors(state), strict=True):
        assert f"background:{color}' title='class {name}'>{name}</span>" in bench.legend.value
        assert colors.get(name, color) == color  # a class keeps its colour across episodes
    # teaching mode is at least 1.3x the base font
    sizes = [int(x) for x in re.findall(r"--fsl-font: (\d+)px", stylesheet())]
    assert len(sizes) == 2 and sizes[1] >= 1.3 * sizes[0]


def test_layout_fits_the_screen_without_clipped_labels(servers, page, page_errors, tmp_path, monkeypatch):
    _open_app(servers, page, tmp_path, monkeypatch)
    _shot(page, "workbench-layout.png")
    problems = _off_screen(page)
    assert not problems, "not on the first screen at 1366x768:\n" + "\n".join(problems)
    clipped = _clipped(page)
    assert not clipped, "clipped text without a tooltip:\n" + "\n".join(clipped)
    # one colour per class: the legend's colours are the distance bars' colours, class by class
    colours = page.evaluate(_COLOURS_JS)
    assert len(colours["legend"]) == 3, colours
    assert [c for _, c in colours["legend"]] == colours["bars"], colours
    page_errors.assert_none(ignore=IGNORE)


def test_teaching_mode_is_larger_and_still_fits(servers, page, page_errors, tmp_path, monkeypatch):
    _open_app(servers, page, tmp_path, monkeypatch)
    body = _font_px(page, ".fsl-workbench")
    label = _font_px(page, ".fsl-workbench .widget-label")
    caption = _font_px(page, ".fsl-heatmap-caption .widget-html-content")
    page.locator(".fsl-teaching-toggle").first.click()
    expect(page.locator(".fsl-workbench.fsl-teaching").first).to_be_attached(timeout=STEP_MS)
    page.wait_for_timeout(300)
    ratios = {name: _font_px(page, sel) / before for name, sel, before in (
        ("base font", ".fsl-workbench", body), ("labels", ".fsl-workbench .widget-label", label),
        ("prediction", ".fsl-heatmap-caption .widget-html-content", caption))}
    assert all(r >= 1.3 for r in ratios.values()), f"teaching mode enlarges too little: {ratios}"
    page.evaluate("() => document.scrollingElement.scrollTo(0, 0)")
    _shot(page, "workbench-layout-teaching.png")
    problems = _off_screen(page)
    assert not problems, "teaching mode: not on the first screen at 1366x768:\n" + "\n".join(problems)
    clipped = _clipped(page)
    assert not clipped, "teaching mode: clipped text without a tooltip:\n" + "\n".join(clipped)
    page_errors.assert_none(ignore=IGNORE)


def test_heatmap_titles_are_not_cut_off(servers, page, page_errors, tmp_path, monkeypatch):
    _open_app(servers, page, tmp_path, monkeypatch)
    cut = _clipped_titles(page)
    assert not cut, "\n".join(cut)
