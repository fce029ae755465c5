"""The workbench app as its users meet it: notebooks/app_workbench.ipynb served by Voila (the project's
fsl-xai template) and driven in headless Chromium at 1366x768.

Measures, timed inside the page (performance.now()):
  - page -> ready: navigation start until the heatmaps, the distance bars and the query gallery are
    drawn (target <= 5 s);
  - query click -> heatmap painted: a click on a query card until the heatmap view's images have
    changed to the new query's, every one of them has loaded, and two animation frames have run after
    that, i.e. the browser painted it (target p95 <= 250 ms); also split into clicks on a query not
    shown before (its maps computed on the click unless the kernel computed them in the background
    first, which it does for the episode's queries while idle) and on one shown before (maps cached);
    "settled" is the same for the last change anywhere on the workbench (badges, influence strip,
    timing line) followed by a quiet second;
  - support edit -> every view painted: "swap with selected" until the heatmaps, the distance bars,
    the projection and the support cards have all changed and been painted (target p95 <= 250 ms);
    heatmaps that stay the same (the edit did not change the explained decision's maps) count when
    the view has redrawn them (its timing line changed). Before each swap a support card is selected
    (untimed) and the page left alone for a second, as a person choosing takes at least that long:
    the workbench computes the prepared edit's maps in that idle time (``Prefetch.expect``), so what
    is timed is the click itself.

The peer, on the same Voila server and the same browser, measured in the same run and interleaved
with the app's clicks: benchmarks/peer_figurewidget.ipynb, a bare plotly FigureWidget whose button
asks the kernel for a new 64x64 map (click -> kernel callback -> figure update -> painted, timed the
same way), and its page -> ready. Ratios app / peer are printed.

Voila runs as `fsl-xai app` runs it (``fsl_xai.cli.app.app_voila_argv``), with its preheat pool by default
(``--preheat``, the app command's default, so the benchmark measures what users run): Voila's pool is
per notebook, and serving the folder gives the app and the peer a pool of N kernels each, both
preheated, so their page -> ready compare fairly (``--preheat 0``: each page starts its kernel, as
`fsl-xai app --preheat 0` runs it). Before each page load the benchmark waits until every pool is full
(kernels counted by process) and the server is idle (its process tree under 0.1 CPU s in a second),
so a load is timed neither while a pool fills nor while an earlier page still works; it checks the
page got a pooled kernel (printed as "loads from the pool"). A page that took a pooled kernel has it
replaced the app command's refill delay later (``PREHEAT_REFILL_S``); the timed clicks and edits
start only once those replacements ran and the server is idle again: they measure the app in use,
not a kernel start (about 12 CPU seconds) that a user meets once per page opened, soon after it.
"server CPU seconds per page load" is the work the server did from navigation to ready (about
10 s when the page starts its kernel, under 1 s from the pool): unlike the times, it hardly
depends on what else runs on the machine.

Every websocket frame of each page is counted: the comm messages and bytes one click costs, split by
message type and by what the update carries (plotly traces, relayouts, widget values). Requests to
another machine are answered empty, counted and printed (they must be 0).

Usage: python benchmarks/bench_browser.py [--clicks 20] [--edits 10] [--loads 2] [--preheat N] [--port P]
       [--during-refill] [--json OUT] [--strict]  (exit code 1 when a target is missed)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

from _servers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_FLAGS,
    OUTSIDE,
    cpu_seconds,
    environment,
    free_port,
    kernel_ids,
    process_tree,
    stop_server,
    wait_until_idle,
)

from fsl_xai.cli.app import DEFAULT_PREHEAT, PREHEAT_REFILL_S, app_voila_argv  # noqa: E402
from fsl_xai.files import atomic_write  # noqa: E402

APP, PEER = "app_workbench.ipynb", "peer_figurewidget.ipynb"
VIEWPORT = {"width": 1366, "height": 768}
LOAD_TIMEOUT_MS = 300_000  # kernel start, imports, data and the cached model on two busy cores
STEP_TIMEOUT_MS = 180_000  # a first click computes maps and badges; 2 busy cores are slow
QUIET_MS = 1000  # a view has "settled" when nothing on it changed for this long
TARGETS_MS = {"click -> heatmap painted": 250.0, "support edit -> all views painted": 250.0,
              "page -> ready": 5000.0}

# Installed in every page before its scripts run: fslBench.measure(click, watches) clicks and resolves
# with, per watched element, the ms from the click until it changed and two frames ran after the change.
BENCH_JS = """
window.fslBench = (() => {
  const sig = (w) => {
    if (w.kind === 'any') return JSON.stringify(w.of.map(sig));  // changed when any of w.of changed
    const el = document.querySelector(w.sel);
    if (!el) return null;
    if (w.kind === 'images' || w.kind === 'img') {  // plotly's <image> layers, or <img> elements
      const hrefs = [...el.querySelectorAll(w.kind === 'img' ? 'img' : 'image')]
        .map((i) => i.getAttribute(w.kind === 'img' ? 'src' : 'href') || '');
      return hrefs.length + ':' + hrefs.join('|');
    }
    return w.kind === 'text' ? el.textContent : el.innerHTML;
  };
  const count = (s) => Number((s || '0:').split(':', 1)[0]);
  const changed = (w, before) => {
    if (w.kind === 'any') return w.of.some((v, i) => changed(v, before === null ? null : JSON.parse(before)[i]));
    const now = sig(w);
    if (now === null || now === before) return false;
    if (w.kind === 'img') {  // every <img> decoded: a data URL loads after the element changed
      const imgs = [...document.querySelector(w.sel).querySelectorAll('img')];
      return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    }
    if (w.kind === 'images') return count(now) > 0;  // not mid-redraw (traces deleted)
    return w.want ? new RegExp(w.want).test(now) : true;  // want: a regular expression
  };
  const painted = (cb) => requestAnimationFrame(() => requestAnimationFrame(() => cb(performance.now())));
  const measure = (clickSel, clickText, watches, rootSel, quietMs, timeoutMs) => new Promise((resolve) => {
    const button = [...document.querySelectorAll(clickSel)].find((b) => b.textContent.trim().startsWith(clickText));
    if (!button) { resolve({error: `no button ${clickSel} "${clickText}"`}); return; }
    const root = document.querySelector(rootSel) || document.body;
    const before = watches.map(sig);
    const done = watches.map(() => null);
    let lastChange = null, lastPaint = null, mutations = 0;
    const start = performance.now();
    const check = () => watches.forEach((w, i) => {
      if (done[i] === null && changed(w, before[i])) { done[i] = -1; painted((t) => { done[i] = t - start; }); }
      else if (done[i] === null && w.kind === 'img' && document.querySelector(w.sel)) {  // check again once loaded
        document.querySelector(w.sel).querySelectorAll('img').forEach((im) => {
          if (!im.complete) im.addEventListener('load', check, {once: true});
        });
      }
    });
    const observer = new MutationObserver((records) => {
      mutations += records.length;
      lastChange = performance.now();
      painted((t) => { lastPaint = t; });
      check();
    });
    observer.observe(root, {subtree: true, childList: true, attributes: true, characterData: true});
    const finish = (extra) => {
      clearInterval(timer); observer.disconnect();
      resolve({watches: done.map((d) => (d >= 0 ? d : null)), settled: lastPaint === null ? null : lastPaint - start,
               mutations, ...extra});
    };
    const timer = setInterval(() => {
      const now = performance.now();
      if (done.every((d) => d !== null && d >= 0) && lastPaint !== null && now - lastChange > quietMs) finish({});
      else if (now - start > timeoutMs) finish({timeout: true});
    }, 25);
    button.click();
  });
  return {sig, measure};
})();
"""

APP_READY_JS = """() => {
  const n = (s) => document.querySelectorAll(s).length;
  return n('.fsl-workbench') && n('.fsl-heatmap-figure img') && n('.fsl-distance-bars .fsl-dist-value')
         && n('.fsl-querygallery button') ? performance.now() : false;
}"""
PEER_READY_JS = "() => document.querySelectorAll('.fsl-peer-figure image').length ? performance.now() : false"

HEATMAP = {"sel": ".fsl-heatmap-figure", "kind": "img"}  # the maps' <img> layers (widgets/heatmap_html.py)
# an edit may leave the selected query's maps as they were (a swap in another class than the explained
# one): the heatmap view has then redrawn when its timing line (data-draw) changed, with nothing to paint
HEATMAP_REDRAWN: dict[str, Any] = {"sel": ".fsl-heatmap-figure", "kind": "any",
                                   "of": [HEATMAP, {"sel": ".fsl-heatmap-timing", "kind": "html"}]}
EDIT_WATCHES: list[dict[str, Any]] = [
    HEATMAP_REDRAWN, {"sel": ".fsl-distance-bars", "kind": "html"}, {"sel": ".fsl-projection", "kind": "html"},
    {"sel": ".fsl-supportsetview .fsl-support-header", "kind": "text"}, {"sel": ".fsl-supportsetview", "kind": "img"}]


# ---------------------------------------------------------------------------- server
def start_voila(folder: Path, port: int, log_path: Path, preheat: int) -> subprocess.Popen:
    """Voila on ``folder`` (every notebook in it, each with a pool of ``preheat`` kernels) as
    `fsl-xai app` runs it."""
    argv = app_voila_argv(folder, "127.0.0.1", port, preheat)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=environment(folder / ".home"), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Voila exited with code {proc.returncode}; its log:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/voila.js", timeout=5):
                return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc, timeout=20)
    raise RuntimeError(f"Voila did not answer on port {port} within 180 s; its log:\n{log_path.read_text()[-4000:]}")


# ---------------------------------------------------------------------------- websocket frames
_MSG_TYPE = re.compile(rb'"msg_type":\s*"([a-z_]+)"')
_STATE_KEY = re.compile(rb'"state":\s*\{"([A-Za-z0-9_]+)"')
_METHOD = re.compile(rb'"method":\s*"([a-z_]+)"')
_ERROR = re.compile(rb'"ename":\s*"((?:[^"\\]|\\.)*)",\s*"evalue":\s*"((?:[^"\\]|\\.)*)"')


class Frames:
    """Every websocket frame a page received, with its message type and, for widget updates, the first
    state key it carries (plotly's ``_py2js_*`` messages, ``value``, ``children``...)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int]] = []
        self.sent = 0
        self.kernel_errors: list[str] = []  # "ename: evalue" of every error message a kernel sent

    def attach(self, ws) -> None:
        ws.on("framereceived", self._received)
        ws.on("framesent", lambda _payload: setattr(self, "sent", self.sent + 1))

    def _received(self, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        head = data[:4000]
        kind = (_MSG_TYPE.search(head) or [b"", b"?"])[1].decode()
        if kind == "comm_msg":
            method = (_METHOD.search(data) or [b"", b"?"])[1].decode()
            key = _STATE_KEY.search(data)
            kind = f"comm_msg {method}" + (f" {key[1].decode()}" if key else "")
        elif kind == "error":
            found = _ERROR.search(data)
            self.kernel_errors.append(f"{found[1].decode()}: {found[2].decode()[:300]}" if found else "?")
        self.received.append((kind, len(data)))

    def since(self, mark: int) -> dict:
        frames = self.received[mark:]
        by_kind: Counter[str] = Counter()
        size: Counter[str] = Counter()
        for kind, n in frames:
            by_kind[kind] += 1
            size[kind] += n
        return {"frames": len(frames), "bytes": sum(size.values()),
                "by_kind": {k: [by_kind[k], size[k]] for k in sorted(by_kind, key=lambda k: -size[k])}}


# ---------------------------------------------------------------------------- pages
class Browser:
    def __init__(self, playwright) -> None:
        self.chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        self.context = self.chromium.new_context(viewport=VIEWPORT)
        self.context.set_default_timeout(STEP_TIMEOUT_MS)
        self.context.add_init_script(BENCH_JS)
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route(OUTSIDE, self._block)

    def _block(self, route, request) -> None:
        self.outside.append(request.url)
        route.fulfill(status=200, body="", content_type="text/plain")

    def open(self, url: str, ready_js: str) -> tuple[Any, Frames, float]:
        """A new page on ``url``; returns it, its frame counter and ms from navigation start to ready."""
        page = self.context.new_page()
        frames = Frames()
        page.on("websocket", lambda ws: self.outside.append(ws.url) if OUTSIDE.match(ws.url) else frames.attach(ws))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.goto(url, wait_until="commit", timeout=LOAD_TIMEOUT_MS)
        ready = page.wait_for_function(ready_js, polling="raf", timeout=LOAD_TIMEOUT_MS).json_value()
        return page, frames, float(ready)

    def close(self) -> None:
        self.context.close()
        self.chromium.close()


def measure(page, frames: Frames, button_sel: str, button_text: str, watches: list[dict], root: str) -> dict:
    page.bring_to_front()
    mark = len(frames.received)
    result = page.evaluate("([a, b, c, d, e, f]) => window.fslBench.measure(a, b, c, d, e, f)",
                           [button_sel, button_text, watches, root, QUIET_MS, STEP_TIMEOUT_MS])
    if "error" in result:
        raise RuntimeError(result["error"])
    if result.get("timeout"):
        missing = [w["sel"] for w, t in zip(watches, result["watches"], strict=True) if t is None]
        shot = ROOT / "artifacts" / "screenshots" / "bench_browser-timeout.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        raise RuntimeError(f"after clicking {button_text!r} nothing changed within "
                           f"{STEP_TIMEOUT_MS // 1000} s in {missing} (the page: {shot})")
    result["ws"] = frames.since(mark)
    return result


def peer_round(page, frames: Frames) -> dict:
    return measure(page, frames, "button.fsl-peer-button", "update", [{"sel": ".fsl-peer-figure", "kind": "images"}],
                   ".fsl-peer-figure")


def query_buttons(page) -> list[str]:
    texts = page.locator(".fsl-querygallery button").all_text_contents()
    return [m[0] for t in texts if (m := re.match(r"#\d+ ", t.strip()))]


def select_support(page, k: int) -> None:
    """Select support card ``k`` (not timed) and wait until "swap with selected" can be clicked."""
    cards = page.locator(".fsl-supportsetview .widget-button", has_text=re.compile(r"^select$"))
    cards.nth(k % cards.count()).click()
    swap = page.locator(".fsl-supportsetview button", has_text="swap with selected").first
    page.wait_for_function("(b) => !b.disabled", arg=swap.element_handle(), timeout=STEP_TIMEOUT_MS)
    page.wait_for_timeout(QUIET_MS)


# ---------------------------------------------------------------------------- report
def kernel_of(page) -> str:
    """The id of the kernel Voila gave the page."""
    return str(json.loads(page.locator("#jupyter-config-data").text_content())["kernelId"])


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=20,
                        help="query clicks timed (each followed by a peer round trip)")
    parser.add_argument("--edits", type=int, default=10, help="support edits (swaps) timed")
    parser.add_argument("--loads", type=int, default=2, help="page loads of the app and of the peer (new kernels)")
    parser.add_argument("--preheat", type=int, default=DEFAULT_PREHEAT, metavar="N",
                        help=f"kernels Voila keeps ready per notebook, as `fsl-xai app --preheat N` (default "
                             f"{DEFAULT_PREHEAT}, the app command's; 0: a kernel started per page)")
    parser.add_argument("--port", type=int, default=0, help="Voila's port (default: a free one)")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--during-refill", action="store_true",
                        help="click while the pools' replacement kernels start (with --preheat), instead of after")
    parser.add_argument("--strict", action="store_true", help="exit code 1 when a target is missed")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"error: {CHROMIUM} is missing (apt-get install chromium); never run `playwright install`")
        return 2
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="fsl-bench-browser-"))
    shutil.copy(ROOT / "notebooks" / APP, work / APP)  # a copy: nothing written next to the committed notebooks
    shutil.copy(ROOT / "benchmarks" / PEER, work / PEER)
    port = args.port or free_port()
    proc = start_voila(work, port, work / "voila.log", args.preheat)
    pools = 2 * args.preheat  # the app's and the peer's
    base = f"http://127.0.0.1:{port}/voila/render"
    raw: dict[str, list] = {"page -> ready": [], "peer page -> ready": [], "click -> heatmap painted": [],
                            "click (new query) -> heatmap painted": [], "click (maps cached) -> heatmap painted": [],
                            "click -> settled": [], "peer round trip": [], "support edit -> all views painted": [],
                            "support edit -> settled": [], "peer round trip (edits)": []}
    comms: dict[str, list] = {"click": [], "edit": [], "peer": []}
    per_view: list[list[float]] = []
    pooled: dict[str, list[bool]] = {"app": [], "peer": []}
    load_cpu: dict[str, list[float]] = {"app": [], "peer": []}  # the server's CPU seconds per page load
    opened = 0  # pages opened: each keeps its kernel (closed pages too: Voila refuses their shutdown beacon)

    def load(url: str, ready_js: str, kind: str) -> tuple[Any, Frames, float]:
        nonlocal opened
        wait_until_idle(proc, pools + opened)  # every pool full, nothing else running
        ready = kernel_ids(proc.pid)
        before = cpu_seconds(process_tree(proc.pid))
        loaded = browser.open(url, ready_js)
        used = cpu_seconds(process_tree(proc.pid))
        load_cpu[kind].append(sum(t - before.get(pid, 0.0) for pid, t in used.items()))
        opened += 1
        pooled[kind].append(kernel_of(loaded[0]) in ready)
        return loaded

    try:
        with sync_playwright() as playwright:
            browser = Browser(playwright)
            try:
                app: tuple[Any, Frames, float] | None = None
                peer: tuple[Any, Frames, float] | None = None
                for _ in range(max(1, args.loads)):  # interleaved: app, peer, app, peer ...
                    if app is not None and peer is not None:
                        app[0].close()
                        peer[0].close()
                    app = load(f"{base}/{APP}", APP_READY_JS, "app")
                    raw["page -> ready"].append(app[2])
                    peer = load(f"{base}/{PEER}", PEER_READY_JS, "peer")
                    raw["peer page -> ready"].append(peer[2])
                assert app is not None and peer is not None  # loads >= 1
                # the used kernels' replacements start PREHEAT_REFILL_S after each load: the timed
                # clicks wait for them (and for the pages' own first work) to finish; --during-refill
                # clicks while they start instead (what a user meets 10-30 s after opening the page)
                time.sleep(PREHEAT_REFILL_S + 1 if args.preheat else 0)
                if not args.during_refill:
                    wait_until_idle(proc, pools + opened)
                app_page, app_frames, _ = app
                peer_page, peer_frames, _ = peer
                app_page.bring_to_front()
                app_page.wait_for_timeout(2 * QUIET_MS)  # the first maps' badges and the initial draws
                queries = query_buttons(app_page)
                if len(queries) < 2:
                    raise RuntimeError(f"the query gallery shows {len(queries)} queries; at least 2 are needed")
                # half the clicks visit new queries (maps computed on the click), half revisit them (cached);
                # never the query on screen now, never the same query twice in a row (nothing would change)
                caption_text = app_page.locator(".fsl-heatmap-caption").first.inner_text()
                shown = m[1] + " " if (m := re.search(r"query (#\d+)", caption_text)) else queries[0]
                visit = [q for q in queries if q != shown][:max(2, (args.clicks + 1) // 2)]
                seen = {shown}
                for i in range(args.clicks):
                    q = visit[i % len(visit)]
                    cached = q in seen
                    seen.add(q)
                    want = re.escape(f"query {q.strip()}") + r"(?!\d)"  # the caption names the clicked query
                    caption = {"sel": ".fsl-heatmap-caption", "kind": "text", "want": want}
                    r = measure(app_page, app_frames, ".fsl-querygallery button", q, [HEATMAP, caption],
                                ".fsl-workbench")
                    raw["click -> heatmap painted"].append(r["watches"][0])
                    raw["click (maps cached) -> heatmap painted" if cached else
                        "click (new query) -> heatmap painted"].append(r["watches"][0])
                    raw["click -> settled"].append(r["settled"])
                    comms["click"].append(r["ws"])
                    p = peer_round(peer_page, peer_frames)
                    raw["peer round trip"].append(p["watches"][0])
                    comms["peer"].append(p["ws"])
                for i in range(args.edits):
                    select_support(app_page, i)
                    r = measure(app_page, app_frames, ".fsl-supportsetview button", "swap with selected",
                                EDIT_WATCHES, ".fsl-workbench")
                    raw["support edit -> all views painted"].append(max(r["watches"]))
                    raw["support edit -> settled"].append(r["settled"])
                    per_view.append(r["watches"])
                    comms["edit"].append(r["ws"])
                    p = peer_round(peer_page, peer_frames)
                    raw["peer round trip (edits)"].append(p["watches"][0])
            finally:
                outside, errors = list(browser.outside), list(browser.errors)
                errors += [f"kernel error: {e}" for opened in (app, peer) if opened is not None
                           for e in opened[1].kernel_errors]
                browser.close()
    finally:
        stop_server(proc, timeout=20)
    shutil.rmtree(work, ignore_errors=True)
    return report(args, raw, comms, per_view, outside, errors, pooled, load_cpu)


def _mean_comms(rows: list[dict]) -> dict:
    if not rows:
        return {"frames": 0.0, "bytes": 0.0, "by_kind": {}}
    kinds: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for r in rows:
        for k, (n, b) in r["by_kind"].items():
            kinds[k] += n
            sizes[k] += b
    n = len(rows)
    return {"frames": sum(r["frames"] for r in rows) / n, "bytes": sum(r["bytes"] for r in rows) / n,
            "by_kind": {k: [kinds[k] / n, sizes[k] / n] for k in sorted(kinds, key=lambda k: -sizes[k])}}


def report(args, raw: dict, comms: dict, per_view: list, outside: list[str], errors: list[str],
           pooled: dict[str, list[bool]], load_cpu: dict[str, list[float]]) -> int:
    table = {k: stats(v) for k, v in raw.items() if v}
    peers = {"page -> ready": "peer page -> ready", "click -> heatmap painted": "peer round trip",
             "click (new query) -> heatmap painted": "peer round trip",
             "click (maps cached) -> heatmap painted": "peer round trip",
             "click -> settled": "peer round trip", "support edit -> all views painted": "peer round trip (edits)",
             "support edit -> settled": "peer round trip (edits)"}
    print(f"{'measure (ms)':<40}{'n':>4}{'p50':>9}{'p95':>9}{'max':>9}   app/peer p50  p95")
    for name, s in table.items():
        ratio = ""
        if name in peers and peers[name] in table:
            ref = table[peers[name]]
            ratio = f"   {s['p50'] / ref['p50']:8.1f}x {s['p95'] / ref['p95']:5.1f}x"
        print(f"{name:<40}{s['n']:>4}{s['p50']:>9.0f}{s['p95']:>9.0f}{s['max']:>9.0f}{ratio}")
    if per_view:
        names = [w["sel"] for w in EDIT_WATCHES]
        med = np.median(np.asarray(per_view, dtype=float), axis=0)
        print("support edit, p50 per view painted: "
              + ", ".join(f"{n} {m:.0f}" for n, m in zip(names, med, strict=True)))
    summary = {k: _mean_comms(v) for k, v in comms.items()}
    for k, c in summary.items():
        top = "; ".join(f"{kind} {n:.1f}x {b / 1024:.1f} KiB" for kind, (n, b) in list(c["by_kind"].items())[:6])
        print(f"websocket per {k}: {c['frames']:.1f} frames received, {c['bytes'] / 1024:.1f} KiB ({top})")
    missed = [f"{name} p95 {table[name]['p95']:.0f} ms > {limit:.0f} ms" for name, limit in TARGETS_MS.items()
              if name in table and (table[name]["p95"] if name != "page -> ready" else table[name]["max"]) > limit]
    print("targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    from_pool = ", ".join(f"{kind} {sum(got)}/{len(got)}" for kind, got in pooled.items())
    print(f"preheat: {args.preheat} kernel(s) per notebook, refilled {PREHEAT_REFILL_S:.0f} s after a load; "
          f"loads from the pool: {from_pool}" + ("; clicks and edits timed while the replacements started"
                                                  if args.during_refill else "")
          if args.preheat else "preheat: off (each page starts its kernel)")
    print("server CPU seconds per page load (Voila and its kernels, from navigation to ready), median: "
          + ", ".join(f"{kind} {np.median(v):.2f}" for kind, v in load_cpu.items() if v))
    unpooled = bool(args.preheat) and not all(pooled["app"] + pooled["peer"])
    if unpooled:
        print("error: a page load did not get a preheated kernel: page -> ready is not a preheated load")
    print(f"non-local requests: {len(outside)}" + (f" ({', '.join(sorted(set(outside))[:5])})" if outside else ""))
    if errors:
        print(f"page errors: {len(errors)} (first: {errors[0][:200]})")
    if args.json:
        payload = {"stats": table, "raw_ms": raw, "comms": summary, "edit_views": [w["sel"] for w in EDIT_WATCHES],
                   "edit_per_view_ms": per_view, "non_local_requests": outside, "page_errors": errors,
                   "targets_ms": TARGETS_MS, "missed": missed, "preheat": args.preheat,
                   "refill_s": PREHEAT_REFILL_S, "during_refill": args.during_refill, "loads_from_pool": pooled,
                   "page_load_server_cpu_s": load_cpu}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.json) as f:
            f.write(json.dumps(payload, indent=1).encode())
    return 1 if outside or errors or unpooled or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
