"""View 8: export the current state (episode JSON, model fingerprint, method and parameters, selected
query), the figures (standalone HTML that opens offline and links nowhere off the machine; PNG when a
static renderer is installed) and the episode's query table (``queries.csv``: predictions, prediction sets,
the domain guard's score, flag and warning; no sample ids) for a report; a saved state re-opens to the
same view. A query the domain guard flags carries its warning into the heatmap figure and the table."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import ipywidgets as w
import pandas as pd
import plotly
import plotly.graph_objects as go

from fsl_xai.evaluation import accuracy_interval, confusion_matrix
from fsl_xai.files import atomic_write

from ._base import View, episode_colors
from .figures import PLOTLY_CONFIG, confusion_figure, distance_figure, heatmap_figure, projection_figure
from .trust_text import NOT_FIT, header_lines


def state_figures(state, methods: list[str] | None = None) -> dict[str, go.Figure]:
    """The figures of the current view, rebuilt from the state (pure: no widgets involved)."""
    r, ep, qi = state.result, state.episode, state.query_index
    colors = episode_colors(state)  # each class in the colour it has on the page
    figs = {"projection": projection_figure(r, ep.support_ids, ep.query_ids, qi, colors=colors)}
    if qi >= 0:
        figs["distances"] = distance_figure(ep.classes, r.distances[qi], int(r.pred[qi]), int(r.true[qi]),
                                            colors=colors)
        maps, titles = [], []
        for m in (methods or state.methods):
            maps.append(state.explanations.attribution(m).normalized[0])
            titles.append(m)
        warning = r.warning(qi)
        figs["heatmaps"] = heatmap_figure(state.query_image(), maps, titles, mask=state.query_mask(), compact=True,
                                          warning=f"out-of-distribution query: {NOT_FIT}. {warning}" if warning else "")
    if state.predictions is not None:
        table = state.predictions
        flagged = int(table["ood_flag"].sum()) if "ood_flag" in table.columns else None
        figs["confusion"] = confusion_figure(confusion_matrix(table), accuracy_interval(table),
                                             table["episode"].nunique(), flagged=flagged)
    return figs


def export_query_table(state) -> pd.DataFrame:
    """The shown episode's query table as exported: no sample ids (they may identify patients); the
    domain guard's warning in ``ood_warning`` (empty where a query is not flagged)."""
    _, episode, _, result = state.shown()
    table = result.query_table(episode).drop(columns=["sample_id"])
    if result.guard is not None:
        table["ood_warning"] = [result.warning(i) or "" for i in range(len(table))]
    return table


# ---------------------------------------------------------------------------------------- offline HTML
#: an address off this machine: http(s), ws(s) or ftp, or protocol-relative (//host/...)
_REMOTE = re.compile(r"^\s*(?:(?:https?|wss?|ftp):)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)['"]""", re.IGNORECASE)
#: attributes whose value the browser loads (or, for a link or form, goes to) by itself
_URL_ATTRIBUTES = frozenset({"src", "href", "xlink:href", "poster", "data", "background", "action", "formaction",
                             "ping", "manifest", "cite", "longdesc"})


class _AddressCollector(HTMLParser):
    """Every address in an HTML page that a browser would load: attributes (src, href, srcset, ...), a meta
    refresh, and CSS ``url()`` / ``@import`` in style elements and style attributes. Script text is code,
    not markup: an address inside it is loaded only if the code asks for it (the browser test checks that)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.addresses: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in _URL_ATTRIBUTES:
                self.addresses.append(value)
            elif name in ("srcset", "imagesrcset"):
                self.addresses.extend(part.split()[0] for part in value.split(",") if part.strip())
            elif name == "style":
                self.addresses.extend(_css_addresses(value))
            elif name == "content" and tag == "meta" and "url=" in value.lower():
                self.addresses.append(value[value.lower().index("url=") + 4:].strip("'\" "))
        self._in_style = tag == "style"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.addresses.extend(_css_addresses(data))


def _css_addresses(css: str) -> list[str]:
    return [a or b for a, b in _CSS_URL.findall(css)]


def off_machine_addresses(page: str) -> list[str]:
    """The addresses off this machine that an HTML page would load or link to (each once, in order):
    http(s), ws(s), ftp and protocol-relative URLs in loading attributes, meta refresh and CSS."""
    collector = _AddressCollector()
    collector.feed(page)
    collector.close()
    return list(dict.fromkeys(a for a in collector.addresses if _REMOTE.match(a)))


def write_figure_html(fig: go.Figure, path: str | Path) -> Path:
    """One figure as a standalone HTML file that opens offline and leads nowhere off the machine:
    plotly.js inlined, no MathJax, ``PLOTLY_CONFIG`` (no "Share chart", no logo link).

    Raises:
        RuntimeError: the written page would still load something from another machine (a plotly
            release that links a CDN); the file is removed.
    """
    path = Path(path)
    # plotly.js is embedded so the file opens offline, e.g. attached to a report
    fig.write_html(path, include_plotlyjs=True, include_mathjax=False, full_html=True, config=dict(PLOTLY_CONFIG))
    outside = off_machine_addresses(path.read_text(encoding="utf-8"))
    if outside:
        path.unlink()
        raise RuntimeError(f"the figure page {path.name} would load {', '.join(outside)} from another machine, "
                           f"so it was not kept: plotly {plotly.__version__} writes pages that are not "
                           "self-contained; use a plotly whose write_html(include_plotlyjs=True) inlines "
                           "everything (7.1 does)")
    return path


#: Chrome or Chromium executables kaleido can drive (it finds them on PATH or via BROWSER_PATH)
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def png_available() -> bool:
    """Whether plotly can write PNG here: the kaleido package (the ``export`` extra) and a Chrome or
    Chromium (``make browser`` installs Debian's; kaleido also honours ``BROWSER_PATH``)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("BROWSER_PATH") and Path(os.environ["BROWSER_PATH"]).exists():
        return True
    return any(shutil.which(name) for name in _BROWSERS)


def _write_pngs(figs: dict, folder: Path) -> list[Path]:
    """All figures as PNG (twice the on-screen size) in one browser session."""
    import plotly.io as pio

    paths = [folder / f"{name}.png" for name in figs]
    pio.write_images(list(figs.values()), paths, scale=2)  # one Chrome for all figures
    return paths


def export_state(state, folder: str | Path, png: bool | None = None) -> list[Path]:
    """Write ``state.json``, ``queries.csv`` (:func:`export_query_table`), ``README.txt`` (what was shown,
    with the validation score, the guard and any warning) and one standalone HTML (and PNG, if possible)
    per figure into ``folder``.

    Returns:
        The written paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [state.save(folder / "state.json")]
    png = png_available() if png is None else png
    figs = state_figures(state)
    for name, fig in figs.items():
        written.append(write_figure_html(fig, folder / f"{name}.html"))
    with atomic_write(folder / "queries.csv") as handle:
        export_query_table(state).to_csv(handle, index=False)
    written.append(folder / "queries.csv")
    if png:
        try:
            written.extend(_write_pngs(figs, folder))
        except Exception as exc:  # the state and HTML files are written already: say so
            raise RuntimeError(f"PNG export failed ({type(exc).__name__}: {exc}); state.json and the HTML figures "
                               f"were written to {folder}") from exc
    result, qi = state.result, state.query_index
    warning = result.warning(qi) if 0 <= qi < len(result.pred) else None
    facts = "".join(f"{html.unescape(re.sub('<[^>]+>', '', line))}\n" for line in header_lines(state))
    flag_line = f"WARNING: the selected query is flagged out-of-distribution: {NOT_FIT}. {warning}\n" if warning else ""
    readme = ("fsl-xai workbench export\n"
              f"dataset: {state.dataset_name}\nmodel: {state.model_name} (fingerprint {state.fingerprint})\n"
              f"episode: {state.episode.episode_id}\nselected query: {qi}\n"
              + flag_line + facts
              + f"methods: {', '.join(state.methods)} params: {json.dumps(state.params)}\n"
              "queries.csv: one row per query (ood_flag, ood_warning: the domain guard; pred_set: the "
              "prediction set)\n"
              "re-open: WorkbenchState().restore('state.json') or the workbench's Export > re-open\n")
    with atomic_write(folder / "README.txt") as handle:
        handle.write(readme.encode())
    written.append(folder / "README.txt")
    return written


class ExportView(View):
    title = "Export"

    def __init__(self, state, folder: str = "artifacts/workbench_export", **kwargs):
        super().__init__(state, **kwargs)
        self.folder = w.Text(value=folder, description="folder", layout=w.Layout(width="420px"),
                             style={"description_width": "45px"})
        self.export_button = w.Button(description="export state + figures", icon="save", button_style="primary")
        self.export_button.on_click(self.guard(lambda _: self.export()))
        self.state_file = w.Text(value=str(Path(folder) / "state.json"), description="state file",
                                 layout=w.Layout(width="420px"), style={"description_width": "60px"})
        self.upload = w.FileUpload(accept=".json", multiple=False, description="upload state")
        self.reopen_button = w.Button(description="re-open", icon="folder-open")
        self.reopen_button.on_click(self.guard(lambda _: self.reopen()))
        self.result = w.HTML()
        note = ("" if png_available() else
                "<span style='color:#666'>PNG export needs the kaleido package (pip install 'fsl-xai[export]') "
                "and Chrome or Chromium; HTML is written.</span>")
        self.children = [w.HTML("<b>export</b> " + note), w.HBox([self.folder, self.export_button]),
                         w.HBox([self.state_file, self.upload, self.reopen_button]), self.error_area, self.result]

    def export(self) -> list[Path]:
        paths = export_state(self.state, self.folder.value)
        self.result.value = "written:<br>" + "<br>".join(f"<code>{html.escape(str(p))}</code>" for p in paths)
        self.state_file.value = str(paths[0])
        return paths

    def reopen(self) -> None:
        """Restore from the uploaded file if any, else from the state-file path."""
        if self.upload.value:
            item = self.upload.value[0]
            try:
                data = json.loads(bytes(item["content"]).decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{item['name']} is not a JSON state file ({exc}); "
                                 "upload a state.json from Export") from exc
            self.state.restore(data)
        else:
            self.state.restore(self.state_file.value)
        episode_id = self.state.episode.episode_id if self.state.episode is not None else "?"
        self.result.value = f"re-opened episode <code>{episode_id}</code>, query {self.state.query_index}"
