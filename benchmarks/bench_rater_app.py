"""The trust study's rater app under a class of raters: 20 raters at once against the real `fsl-xai
study serve` (the gate in front of Voila), on this machine.

Raters in Chromium and at the protocol level. In a class, every rater's browser runs on the rater's
own machine; only the server shares its cores. Twenty Chromium pages on this 2-core machine take
most of its CPU (about 4.5 CPU s per page opened and 100 CPU ms per click on a quiet machine, against
the server's 1 s and 31 ms) and so measure the browsers more than the server. ``--browsers K`` keeps
K raters in real headless Chromium (timed inside the page: real layout, real paint) and makes the
other raters protocol-level raters (benchmarks/_ws_rater.py): each asks the server for exactly what
a rater page asks (the page with the token through the gate, the ~100 static files a page loads,
the kernel's REST URL, the kernel websocket in the v1 protocol, the widget manager's
``request_states``, then per case the answer widgets' updates and clicks and the Submit click, and
Voila's shutdown when it leaves), at a rater's pace (0.3-1.2 s looking at each case), without
drawing anything. So the server carries a whole class while only K browsers share its cores.
Default: every rater in Chromium (--browsers = --raters).

Measures:
  - the pages opened at once -> every page ready (the first case on screen in Chromium; its widget
    states in, for a protocol-level rater); target <= 10 s on 2 cores. Split into the K Chromium
    pages, the protocol-level pages (with when their page and their static files were complete),
    the first byte through the gate (the gate holds the headers until the kernel id is in the
    page) and the server's part alone (the same page loads as raw HTTP, nothing else);
  - click "Submit answer" -> answer confirmed, p50 / p95 over every click of the raters answering
    at once, two ways: (1) for all raters, until the kernel's frame that confirms it came in (the
    protocol-level raters time it at the client; each Chromium page records the arrival of every
    kernel frame before its own code sees it); (2) for the K Chromium raters, until the next case
    and "Answer saved." are on screen (a MutationObserver). Target p95 <= 300 ms for both;
  - CPU used while the pages opened and per click, by the server (gate, Voila, kernels), by the
    browsers and by this process (the protocol-level raters, Playwright's client);
  - memory (RSS and USS) of each rater kernel, of Voila and of the serving process (the gate).

Chromium raters are different machines: their pages are spread over several Chromium processes
(--per-browser raters each, one context per rater), not one browser whose renderers would share
one process's limits. One Chromium page of each kind opens first, untimed (it warms each browser's
code cache and records which static files a page loads, for the protocol-level raters). --preheat N
serves with Voila's preheat pool of N kernels (serve_rater_app's ``preheat``), each started and run
up to the rater's token before any page is asked for.

The peer, measured in the same run on the same machine, split the same way (K in Chromium, the
others at the protocol level: the same page, static files, websocket and widget states, then a
button click -> the label's new count): a bare ipywidgets page (one button and one label, the same
Voila template) served by plain Voila, its kernels' memory included: the floor any Voila app pays.
Ratios are printed against it. Every answer is checked in the store afterwards (stored once each),
and any request the Chromium pages make off this machine is blocked and counted (it must be 0; the
protocol-level raters ask only 127.0.0.1).

Reading the numbers (benchmarks/README.md has the runs): with --browsers 2 the frame-level times
are what the server gives a whole class on its 2 cores, and the Chromium pages' on-screen times add
what a rater's own machine adds (its paint, a few ms). The server's part of opening a page is mostly
the static files (about 100 per page, each through the gate and Voila), not the page or the kernel;
the line "static files in" shows it. With every rater in Chromium the browsers take most of the
cores, and the numbers say more about 20 browsers on 2 cores than about the server.

Usage: python benchmarks/bench_rater_app.py [--raters 20] [--cases 6] [--browsers K] [--per-browser 4]
                                           [--preheat 0]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil  # type: ignore[import-untyped]  # installed with ipykernel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

import _ws_rater as protocol  # noqa: E402
from _servers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_FLAGS,
    OUTSIDE,
    cpu_seconds,
    environment,
    free_port,
    process_tree,
    stop_server,
)

import fsl_xai as F  # noqa: E402
from fsl_xai.checkpoints import save_checkpoint  # noqa: E402
from fsl_xai.study.freeze import add_raters, freeze_study  # noqa: E402
from fsl_xai.study.serve import IOPUB_TIMEOUT_S, KERNEL_START_S  # noqa: E402
from fsl_xai.study.store import ResponseStore  # noqa: E402

TIMEOUT_MS = 120_000
SERVE_PREHEATED = """
import sys
from fsl_xai.study.cli import RATER_NOTEBOOK, _store_path, _study_file
from fsl_xai.study.serve import serve_rater_app
folder, port, max_kernels, preheat = sys.argv[1:]
db = _store_path(folder)
sys.exit(serve_rater_app(db, _study_file(db.parent), RATER_NOTEBOOK, port=int(port), max_kernels=int(max_kernels),
                         preheat=int(preheat)))
"""
BARE_NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "bare", "metadata": {}, "outputs": [],
               "source": ["import ipywidgets as W\n", "button, label = W.Button(description='Click'), W.Label('0')\n",
                          "button.on_click(lambda _: setattr(label, 'value', str(int(label.value) + 1)))\n",
                          "W.VBox([button, label])"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}

# every page records when each kernel frame came in (before the page's own code sees it), so a
# click is timed twice: to the confirmation on screen, and to the frame that brought it (what the
# protocol-level raters time); frames over 64 KiB (images, the first state) are not read
FRAMES_JS = """
(() => {
  const Native = window.WebSocket;
  const decoder = new TextDecoder();
  window.__fslFrames = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (event) => {
        if (event.data instanceof ArrayBuffer && event.data.byteLength < 65536) {
          window.__fslFrames.push([performance.now(), decoder.decode(event.data)]);
        }
      });
    }
  };
})();
"""
# click -> confirmed, timed in the page: the next case's header and "Answer saved." are on screen;
# [on screen, frame in] in ms (frame in: the header's frame, or the status line's if that came later)
SUBMIT_JS = """
async ([want]) => {
  const root = document.querySelector('.fsl-rater-app');
  const button = [...root.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Submit answer');
  const done = () => root.textContent.includes(want) && root.textContent.includes('Answer saved.');
  const frameIn = (start) => {
    const header = window.__fslFrames.find(([, text]) => text.includes(want));
    const saved = window.__fslFrames.find(([, text]) => text.includes('fsl-saved'));
    return header ? Math.max(header[0], saved ? saved[0] : 0) - start : null;
  };
  window.__fslFrames = [];
  const start = performance.now();
  return await new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => {
      if (done()) { observer.disconnect(); resolve([performance.now() - start, frameIn(start)]); }
    });
    observer.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
    setTimeout(() => { observer.disconnect(); reject(new Error('no confirmation within 60 s')); }, 60000);
    button.click();
  });
}
"""
BARE_JS = """
async () => {
  const label = [...document.querySelectorAll('.widget-label')].pop();
  const before = Number(label.textContent);
  const button = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Click');
  const counts = [`"value": "${before + 1}"`, `"value":"${before + 1}"`];
  window.__fslFrames = [];
  const start = performance.now();
  return await new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => {
      if (Number(label.textContent) === before + 1) {
        observer.disconnect();
        const frame = window.__fslFrames.find(([, text]) => counts.some((c) => text.includes(c)));
        resolve([performance.now() - start, frame ? frame[0] - start : null]);
      }
    });
    observer.observe(label, {subtree: true, childList: true, characterData: true});
    setTimeout(() => { observer.disconnect(); reject(new Error('no answer within 60 s')); }, 60000);
    button.click();
  });
}
"""


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/voila.js", timeout=5):
                return
        except (OSError, http.client.HTTPException):  # not up yet (or another program took the port: it exits)
            time.sleep(0.3)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f} s")


def kernels(proc: subprocess.Popen) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if any("ipykernel" in part for part in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def memory_mib(processes: list[psutil.Process]) -> tuple[float, float]:
    """Median RSS and USS in MiB."""
    rss, uss = [], []
    for p in processes:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss.append(info.rss / 2**20)
        uss.append(info.uss / 2**20)
    return (statistics.median(rss), statistics.median(uss)) if rss else (float("nan"), float("nan"))


def browsers_of_this_run() -> list[psutil.Process]:
    """The Chromium processes this benchmark started (through Playwright's driver)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name().lower():
                found.append(p)
        except psutil.Error:
            continue
    return found


def used_since(before: dict[int, float], processes: list[psutil.Process]) -> float:
    """CPU seconds used since ``before`` by ``processes`` (those started since count in full)."""
    return sum(now - before.get(pid, 0.0) for pid, now in cpu_seconds(processes).items())


def used_by_part(before: dict[int, float], server: subprocess.Popen) -> dict[str, float]:
    """CPU seconds used since ``before`` by each part of a server: its kernels, Voila, and (for
    `study serve`) the serving process itself, which runs the gate."""
    parts = {"gate": 0.0, "Voila": 0.0, "kernels": 0.0}
    for p in process_tree(server.pid):
        try:
            command = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:
            continue
        part = "kernels" if "ipykernel" in command else "Voila" if "voila" in command else "gate"
        parts[part] += t.user + t.system - before.get(p.pid, 0.0)
    return parts


def used_by_new(before: dict[int, float], processes: list[psutil.Process]) -> float:
    """CPU seconds of the ``processes`` started since ``before`` (for the server: kernels started
    meanwhile, such as Voila refilling its preheat pool)."""
    return sum(now for pid, now in cpu_seconds(processes).items() if pid not in before)


def settle(proc: subprocess.Popen, kernels_at_least: int = 0, timeout: float = 180) -> None:
    """Wait until the server has its preheated kernels and is idle (under 0.1 CPU seconds in a
    second, its kernels included), so a timed phase does not share the cores with its start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(process_tree(proc.pid))
        time.sleep(1.0)
        if len(kernels(proc)) >= kernels_at_least and used_since(before, process_tree(proc.pid)) < 0.1:
            return


def make_study(folder: Path, n_raters: int, n_cases: int) -> tuple[Path, list[str]]:
    save_checkpoint(folder / "model.pt", F.make_model("protonet", F.make_backbone("conv4", 3, 64)))
    study = {"study_id": "bench-rater-app", "dataset": {"name": "pbc-blood-64", "split": "test"},
             "model": {"checkpoint": str(folder / "model.pt")},
             "episode": {"n_way": 3, "n_shot": 2, "seed": 0}, "cases": {"n": n_cases, "seed": 0},
             "conditions": ["no_ai", "prediction", "heatmap"], "method": "gradcam",
             "questions": [{"id": "diagnosis", "type": "choice", "text": "Diagnosis"},
                           {"id": "confidence", "type": "likert", "scale": 5, "text": "Confidence"}],
             "assignment": {"design": "within", "seed": 1}}
    (folder / "study.json").write_text(json.dumps(study))
    db = freeze_study(folder / "study.json", folder / "frozen", progress=False)
    return db, [token for _, token in add_raters(db, n_raters)]


def kernel_id_in(page: str) -> str:
    found = re.search(r'"kernelId": "([0-9a-f-]{36})"', page)
    if found is None:
        raise RuntimeError(f"no kernel id in the page: {page[-500:]!r}")
    return found.group(1)


def raw_page_loads(port: int, tokens: list[str]) -> tuple[float, list[tuple[str, str]]]:
    """The server's part: every page loaded at once as raw HTTP; seconds until the last is complete,
    and (kernel id, cookie) of each, to shut the kernels down afterwards."""
    out: list[tuple[str, str]] = []

    def load(token: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=600) as response:
            body = response.read().decode()
            cookie = response.headers.get_all("Set-Cookie")[0].split(";")[0]
        out.append((kernel_id_in(body), cookie))

    threads = [threading.Thread(target=load, args=(t,)) for t in tokens]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, out


def kernel_info_ms(url: str, cookie: str | None, n: int) -> list[float]:
    """Round trips of kernel_info_request -> reply over one kernel websocket (v1 protocol)."""
    import uuid

    import websocket  # websocket-client, installed with jupyter_server

    def frame() -> bytes:
        header = {"msg_id": uuid.uuid4().hex, "msg_type": "kernel_info_request", "username": "", "session": "bench",
                  "date": "2026-01-01T00:00:00Z", "version": "5.3"}
        parts = [b"shell", json.dumps(header).encode(), b"{}", b"{}", b"{}"]
        offsets = [8 * (len(parts) + 2)]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        return b"".join([len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])

    ws = websocket.create_connection(url, subprotocols=["v1.kernel.websocket.jupyter.org"], cookie=cookie, timeout=60)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            ws.send_binary(frame())
            while True:
                data = ws.recv()
                if isinstance(data, bytes) and b'"kernel_info_reply"' in data[:2000]:
                    break
            times.append((time.perf_counter() - start) * 1000)
    finally:
        ws.close()
    return times


def shut_down(port: int, pages: list[tuple[str, str]]) -> None:
    for kernel_id, cookie in pages:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/voila/api/shutdown/{kernel_id}", data=b"",
                                         method="POST", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=60):
            pass


async def open_pages(browsers: list, urls: list[str], ready: str, outside: list[str],
                     requests: list[str] | None = None):
    """Open every URL at once, each in its own context, page i in browser i mod len(browsers) (each
    browser a process of its own, as raters' machines are); (seconds until each page was ready,
    None for a page not ready, first-byte seconds, the ready pages, every context, what the pages
    not ready show). ``requests`` collects the URL of every request the pages make."""
    contexts = [await browsers[i % len(browsers)].new_context(viewport={"width": 1280, "height": 900})
                for i in range(len(urls))]
    async def block(route, request) -> None:
        outside.append(request.url)
        await route.abort()

    for context in contexts:
        await context.route(OUTSIDE, block)
        await context.add_init_script(FRAMES_JS)
        if requests is not None:
            context.on("request", lambda r: requests.append(r.url) if r.method == "GET" else None)
    pages = [await c.new_page() for c in contexts]
    start = time.perf_counter()

    async def one(page, url: str) -> tuple[float, float | None, str]:
        await page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
        first_byte = time.perf_counter() - start
        try:
            await page.get_by_text(re.compile(ready)).first.wait_for(state="visible", timeout=TIMEOUT_MS)
        except Exception:  # counted as not ready; say what it shows instead
            return first_byte, None, await page.evaluate("document.body ? document.body.innerText : ''")
        return first_byte, time.perf_counter() - start, ""

    results = await asyncio.gather(*(one(p, u) for p, u in zip(pages, urls, strict=True)))
    return ([r[1] for r in results], [r[0] for r in results],
            [p for p, r in zip(pages, results, strict=True) if r[1] is not None], contexts,
            [r[2][:200] for r in results if r[1] is None])


async def rater(page, n_cases: int, seed: int) -> list[list[float | None]]:
    """Answer every case; [ms to the confirmation on screen, ms to its frame] per click."""
    rng = random.Random(seed)
    times = []
    for k in range(n_cases):
        await page.get_by_text(f"Case {k + 1} of {n_cases}").wait_for(state="visible", timeout=TIMEOUT_MS)
        await asyncio.sleep(rng.uniform(0.3, 1.2))  # looking at the case
        await page.locator(".fsl-q-diagnosis button").nth(rng.randrange(3)).click()
        await page.locator(".fsl-q-confidence button").nth(rng.randrange(5)).click()
        want = f"Case {k + 2} of {n_cases}" if k + 1 < n_cases else f"All {n_cases} cases are answered"
        times.append(await page.evaluate(SUBMIT_JS, [want]))
    return times


async def clicker(page, n_clicks: int, seed: int) -> list[list[float | None]]:
    rng = random.Random(seed)
    times = []
    for _ in range(n_clicks):
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        times.append(await page.evaluate(BARE_JS))
    return times


def static_paths(requests: list[str], port: int) -> list[str]:
    """What a page of the server on ``port`` loaded besides itself and its kernel (paths with their
    query, once each, in the order asked), from the URLs a real page requested."""
    prefix, out = f"http://127.0.0.1:{port}/", []
    for url in requests:
        path = "/" + url[len(prefix):] if url.startswith(prefix) else ""
        if path.startswith("/voila/") and path not in out:
            out.append(path)
    return out


async def open_clients(urls: list[str], statics: list[str], ready):
    """Open every URL at once as a protocol-level page (benchmarks/_ws_rater.py); (seconds until
    each was ready, None for one not ready, the times of each (first byte, page, static files), the
    ready clients, every client, why those not ready are not)."""
    clients = [protocol.WidgetPage(int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3], statics)
               for url in urls]
    start = time.perf_counter()
    results = await asyncio.gather(*(c.open(ready, start) for c in clients), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    return ([None if isinstance(r, BaseException) else r.ready_s for r in results],
            [c.times for c in clients],
            [c for c, r in zip(clients, results, strict=True) if not isinstance(r, BaseException)], clients,
            [f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" for e in failed])


def own_cpu_s() -> float:
    """CPU seconds this process has used (the protocol-level raters and Playwright's client side)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def cpu_snapshot(server: subprocess.Popen) -> tuple[dict[int, float], dict[int, float], float]:
    """CPU seconds used so far by the server's processes, by this run's browsers, and by this process."""
    return cpu_seconds(process_tree(server.pid)), cpu_seconds(browsers_of_this_run()), own_cpu_s()


def cpu_spent(before: tuple[dict[int, float], dict[int, float], float],
              server: subprocess.Popen) -> tuple[float, float, float, float]:
    """CPU seconds since ``before`` (a cpu_snapshot): the server, the browsers, this process, and the
    server's processes started meanwhile (part of the first)."""
    return (used_since(before[0], process_tree(server.pid)), used_since(before[1], browsers_of_this_run()),
            own_cpu_s() - before[2], used_by_new(before[0], process_tree(server.pid)))


async def browse(args, rater_urls: list[str], bare_urls: list[str], serve: subprocess.Popen,
                 voila: subprocess.Popen) -> dict:
    """Warm the browsers up (one page of each kind per browser, which also records the files a page
    loads), then per kind: every page opened at once (the first --browsers in Chromium, the others
    as protocol-level raters), then every rater answering at once."""
    from playwright.async_api import async_playwright

    outside: list[str] = []
    out: dict = {}
    k = args.browsers
    async with async_playwright() as pw:
        n_browsers = max(1, -(-k // args.per_browser))  # one at least: the warm-up records what a page loads
        browsers = list(await asyncio.gather(*(
            pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            for _ in range(n_browsers))))
        out["browsers"] = n_browsers
        try:
            # warm each browser (its code cache) with one page of each, not timed
            statics: dict[str, list[str]] = {}
            for kind, urls, ready in (("bare", bare_urls[:1], "^Click$"), ("rater", rater_urls[:1], "^Case 1 of")):
                for n, browser in enumerate(browsers):
                    requests: list[str] = []
                    _, _, pages, contexts, _ = await open_pages([browser], urls, ready, outside, requests)
                    if n == 0:  # the widgets' own chunks may come just after the first screen
                        await asyncio.sleep(1.0)
                        statics[kind] = static_paths(requests, int(urls[0].split(":")[2].split("/")[0]))
                    for c in contexts:
                        await c.close()
            out["static_requests"] = {kind: len(paths) for kind, paths in statics.items()}
            for kind, urls, ready, client_ready in (
                    ("bare", bare_urls[1:], "^Click$", protocol.bare_ready),
                    ("rater", rater_urls[1:], f"^Case 1 of {args.cases}$", protocol.rater_ready(args.cases))):
                server = serve if kind == "rater" else voila
                settle(server, args.preheat if kind == "rater" else 0)  # the pool refilled after the warm-up
                cpu_before = cpu_snapshot(server)
                in_browsers, protocol_level = await asyncio.gather(
                    open_pages(browsers, urls[:k], ready, outside), open_clients(urls[k:], statics[kind], client_ready))
                ready_at, first_bytes, pages, contexts, stuck = in_browsers
                ws_ready, ws_times, clients, all_clients, ws_stuck = protocol_level
                # where the CPU went while the pages opened: the server (gate, Voila, kernels), the
                # browsers, or this process (the protocol-level raters)
                out[f"{kind}_open_parts_s"] = used_by_part(cpu_before[0], server)
                out[f"{kind}_open_cpu_s"] = cpu_spent(cpu_before, server)
                done = [t for t in ready_at if t is not None]
                ws_done = [t for t in ws_ready if t is not None]
                out[f"{kind}_ready_s"] = max(done + ws_done) if done + ws_done else float("nan")
                out[f"{kind}_ready_each_s"], out[f"{kind}_ws_ready_each_s"] = done, ws_done
                for key, times in (("ws_first_byte_s", [t.first_byte_s for t in ws_times]),
                                   ("ws_page_s", [t.page_s for t in ws_times]),
                                   ("ws_statics_s", [t.statics_s for t in ws_times])):
                    out[f"{kind}_{key}"] = [t for t in times if t == t]  # NaN: that page got no further
                out[f"{kind}_first_byte_s"] = first_bytes + out[f"{kind}_ws_first_byte_s"]
                out[f"{kind}_not_ready"] = stuck + ws_stuck
                cpu_before = cpu_snapshot(server)
                if kind == "bare":
                    per_page = await asyncio.gather(
                        *(clicker(p, args.cases, i) for i, p in enumerate(pages)),
                        *(protocol.click_counter(c, args.cases, k + j) for j, c in enumerate(clients)),
                        return_exceptions=True)
                    out["bare_memory"] = memory_mib(kernels(voila))
                else:
                    per_page = await asyncio.gather(
                        *(rater(p, args.cases, i) for i, p in enumerate(pages)),
                        *(protocol.answer_screens(c, k + j) for j, c in enumerate(clients)),
                        return_exceptions=True)
                    out["rater_memory"] = memory_mib(kernels(serve))
                    out["rater_kernels"] = len(kernels(serve))
                in_page = [times for times in per_page[:len(pages)] if isinstance(times, list)]
                out[f"{kind}_click_ms"] = [shown for times in in_page for shown, _ in times]
                out[f"{kind}_frame_ms"] = [frame for times in in_page for _, frame in times if frame is not None]
                out[f"{kind}_ws_click_ms"] = [t for times in per_page[len(pages):] if isinstance(times, list)
                                              for t in times]
                out[f"{kind}_click_cpu_s"] = cpu_spent(cpu_before, server)
                out[f"{kind}_failed"] = [f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" for e in per_page
                                         if isinstance(e, BaseException)]
                for c in contexts:
                    await c.close()
                for client in all_clients:  # leave as a page does: Voila's shutdown for the kernel
                    await client.close()
        finally:
            for browser in browsers:
                await browser.close()
    out["outside"] = outside
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--cases", type=int, default=6, help="cases per rater (clicks per page)")
    parser.add_argument("--per-browser", type=int, default=4,
                        help="raters per Chromium process (each rater in a context of its own); "
                             "--per-browser 20 puts the class in one browser")
    parser.add_argument("--preheat", type=int, default=0,
                        help="kernels Voila starts ahead for the rater app (serve_rater_app's preheat)")
    parser.add_argument("--browsers", type=int, default=None,
                        help="raters in real Chromium pages (default: all); the others are protocol-level "
                             "raters (benchmarks/_ws_rater.py): the same requests, frames and pace, no browser")
    args = parser.parse_args()
    args.browsers = args.raters if args.browsers is None else args.browsers
    if not 0 <= args.browsers <= args.raters:
        parser.error(f"--browsers {args.browsers}: give 0 to --raters ({args.raters}) raters in Chromium")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db, tokens = make_study(work, args.raters + 1, args.cases)  # one more rater warms the browser
        (work / "bare.ipynb").write_text(json.dumps(BARE_NOTEBOOK))
        serve_port, voila_port = free_port(), free_port()
        env = environment(work / "home")
        if args.preheat:  # `study serve` with Voila's preheat pool (serve_rater_app's ``preheat``)
            command = [sys.executable, "-c", SERVE_PREHEATED, str(db.parent), str(serve_port), str(3 * args.raters),
                       str(args.preheat)]
        else:
            command = [sys.executable, "-m", "fsl_xai.cli", "study", "serve", str(db.parent),
                       "--port", str(serve_port), "--max-kernels", str(3 * args.raters)]
        serve = subprocess.Popen(command,
                                 cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=open(work / "serve.log", "wb"), start_new_session=True)
        voila = subprocess.Popen([sys.executable, "-m", "voila", str(work / "bare.ipynb"), "--no-browser",
                                  f"--port={voila_port}", "--Voila.ip=127.0.0.1", "--Voila.port_retries=0",
                                  "--template=fsl-xai", "--Voila.log_level=WARN",
                                  # as `study serve` runs Voila (a loaded machine must not drop the output)
                                  f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT_S}",
                                  f"--VoilaExecutor.startup_timeout={KERNEL_START_S}"], cwd=work, env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=open(work / "voila.log", "wb"), start_new_session=True)
        try:
            wait_listening(serve_port, serve)
            wait_listening(voila_port, voila)
            settle(serve, args.preheat)
            before = cpu_seconds(process_tree(serve.pid))
            server_s, pages = raw_page_loads(serve_port, tokens[1:])
            raw_cpu_s = used_since(before, process_tree(serve.pid))
            # the gate's own cost: a kernel's round trip through the gate, and one of the peer's kernels
            # straight from plain Voila (the gate's Voila answers only the gate: its port needs a secret)
            kernel_id, cookie = pages[0]
            via_gate = kernel_info_ms(f"ws://127.0.0.1:{serve_port}/api/kernels/{kernel_id}/channels?session_id=bench",
                                      cookie, 100)
            with urllib.request.urlopen(f"http://127.0.0.1:{voila_port}/", timeout=600) as response:
                bare_kernel = kernel_id_in(response.read().decode())
            direct = kernel_info_ms(f"ws://127.0.0.1:{voila_port}/api/kernels/{bare_kernel}/channels?session_id=bench",
                                    None, 100)
            shut_down(serve_port, pages)
            deadline = time.monotonic() + 60
            while kernels(serve) and time.monotonic() < deadline:
                time.sleep(0.5)
            rater_urls = [f"http://127.0.0.1:{serve_port}/?token={t}" for t in tokens]
            bare_urls = [f"http://127.0.0.1:{voila_port}/"] * (args.raters + 1)
            # the first URL of each warms the browser up (the extra rater R001 answers nothing)
            try:
                found = asyncio.run(browse(args, rater_urls, bare_urls, serve, voila))
            except Exception:
                print("the server's log ends with:\n" + (work / "serve.log").read_text(errors="replace")[-4000:])
                raise
            if found["rater_not_ready"]:
                print("the server's log ends with:\n" + (work / "serve.log").read_text(errors="replace")[-3000:])
            serve_rss = psutil.Process(serve.pid).memory_info().rss / 2**20
            voila_rss = [p for p in psutil.Process(serve.pid).children() if "voila" in " ".join(p.cmdline())]
            voila_mib = voila_rss[0].memory_info().rss / 2**20 if voila_rss else float("nan")
        finally:
            stop_server(serve)
            stop_server(voila)
        with ResponseStore(db, read_only=True) as store:
            rows = store.all_answers()
        expected = (args.raters - len(found["rater_not_ready"])) * args.cases * 2  # two questions per case
        keys = {(r["rater"], r["item_id"], r["question"]) for r in rows}
        warmup = [r for r in rows if r["rater"] == "R001"]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    for kind in ("rater", "bare"):
        if found[f"{kind}_failed"]:
            print(f"{kind} pages that stopped answering: {len(found[kind + '_failed'])} {found[kind + '_failed']}")
        if found[f"{kind}_not_ready"]:
            print(f"{kind} pages not ready after {TIMEOUT_MS / 1000:.0f} s: {len(found[kind + '_not_ready'])} "
                  f"(showing {sorted(set(found[kind + '_not_ready']))})")

    k, n = args.browsers, args.raters
    rater_ms, bare_ms = found["rater_click_ms"], found["bare_click_ms"]
    rater_ws, bare_ws = found["rater_ws_click_ms"], found["bare_ws_click_ms"]
    # the protocol-level number of every rater: frame in at the page (Chromium) or at the client
    rater_frames, bare_frames = found["rater_frame_ms"] + rater_ws, found["bare_frame_ms"] + bare_ws
    rss, uss = found["rater_memory"]
    bare_rss, bare_uss = found["bare_memory"]
    load = os.getloadavg()
    print(f"rater app, {n} raters x {args.cases} cases: {k} in Chromium ({found['browsers']} Chromium processes), "
          f"{n - k} protocol-level; {os.cpu_count()} cores (load average before {load_before[0]:.1f} "
          f"{load_before[1]:.1f} {load_before[2]:.1f}, after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print(f"{'measure':68s} {'rater app':>12s} {'bare peer':>12s} {'ratio':>7s} {'target':>10s}")

    def most(values: list[float]) -> float:
        return max(values) if values else float("nan")

    rows_out = [
        (f"{n} pages opened at once -> all ready (s)", found["rater_ready_s"], found["bare_ready_s"], "<= 10"),
        (f"  the {k} Chromium pages: last ready (s)", most(found["rater_ready_each_s"]),
         most(found["bare_ready_each_s"]), ""),
        (f"  the {n - k} protocol-level pages: last ready (s)", most(found["rater_ws_ready_each_s"]),
         most(found["bare_ws_ready_each_s"]), ""),
        ("  first byte through the gate, median (s)", statistics.median(found["rater_first_byte_s"]),
         statistics.median(found["bare_first_byte_s"]), ""),
        (f"  the {n - k} protocol-level pages: last page complete (s)", most(found["rater_ws_page_s"]),
         most(found["bare_ws_page_s"]), ""),
        (f"  the {n - k} protocol-level pages: last static files in (s)", most(found["rater_ws_statics_s"]),
         most(found["bare_ws_statics_s"]), ""),
        (f"  server only: {n} raw page loads at once (s)", server_s, float("nan"), ""),
        (f"click -> confirmation frame in, p50, all {n} raters (ms)", pct(rater_frames, 50), pct(bare_frames, 50), ""),
        (f"click -> confirmation frame in, p95, all {n} raters (ms)", pct(rater_frames, 95), pct(bare_frames, 95),
         "<= 300"),
        (f"  p95 of the {n - k} protocol-level raters (ms)", pct(rater_ws, 95), pct(bare_ws, 95), ""),
        (f"  p95 in the {k} Chromium pages (ms)", pct(found["rater_frame_ms"], 95), pct(found["bare_frame_ms"], 95),
         ""),
        (f"click -> confirmed on screen, p50, the {k} Chromium pages (ms)", pct(rater_ms, 50), pct(bare_ms, 50), ""),
        (f"click -> confirmed on screen, p95, the {k} Chromium pages (ms)", pct(rater_ms, 95), pct(bare_ms, 95),
         "<= 300"),
        ("kernel_info round trip via the gate vs straight to plain Voila, p50 (ms)", pct(via_gate, 50), pct(direct, 50),
         ""),
        ("memory per kernel, RSS median (MiB)", rss, bare_rss, ""),
        ("memory per kernel, USS median (MiB)", uss, bare_uss, ""),
    ]
    for name, ours, peer, target in rows_out:
        ratio = f"{ours / peer:6.2f}x" if peer == peer and peer else "      -"
        print(f"{name:68s} {ours:12.2f} {peer:12.2f} {ratio:>7s} {target:>10s}")
    print(f"rater: CPU seconds the server used for the {n} raw page loads: {raw_cpu_s:.1f}")
    for kind in ("rater", "bare"):
        server_cpu, browser_cpu, own_cpu, new_cpu = found[f"{kind}_open_cpu_s"]
        print(f"{kind}: CPU seconds used while the pages opened: server {server_cpu:.1f} (kernels started "
              f"meanwhile {new_cpu:.1f}), browsers {browser_cpu:.1f}, this process (protocol-level raters) "
              f"{own_cpu:.1f}; the server's by part: "
              + ", ".join(f"{part} {cpu:.1f}" for part, cpu in found[f"{kind}_open_parts_s"].items()))
        clicks = max(1, len(found[f"{kind}_click_ms"]) + len(found[f"{kind}_ws_click_ms"]))
        server_cpu, browser_cpu, own_cpu, new_cpu = found[f"{kind}_click_cpu_s"]
        own_server_ms = 1000 * (server_cpu - new_cpu) / clicks
        print(f"{kind}: CPU milliseconds per click while answering: server {own_server_ms:.0f} (besides "
              f"{new_cpu:.1f} s in kernels started meanwhile: the preheat pool refilling), browsers "
              f"{1000 * browser_cpu / clicks:.0f}, this process {1000 * own_cpu / clicks:.0f}")
        for how, key in (("Chromium", "ready_each_s"), ("protocol-level", "ws_ready_each_s")):
            if found[f"{kind}_{key}"]:
                each = " ".join(f"{t:.1f}" for t in sorted(found[f"{kind}_{key}"]))
                print(f"{kind} pages ready at ({how}, s): {each}")
    print(f"clicks timed: {len(rater_ms)} + {len(rater_ws)} (rater, Chromium + protocol-level; frames seen in "
          f"Chromium {len(found['rater_frame_ms'])}), {len(bare_ms)} + {len(bare_ws)} (peer; frames seen "
          f"{len(found['bare_frame_ms'])}); static files a page loads: {found['static_requests']}; rater kernels while "
          f"answering: {found['rater_kernels']}; Voila RSS {voila_mib:.0f} MiB; gate (serve process) RSS "
          f"{serve_rss:.0f} MiB")
    stored = len(rows) - len(warmup)
    print(f"answers stored: {stored} of {expected} expected, {len(keys)} distinct of {len(rows)} rows; "
          f"requests off this machine: {len(found['outside'])}")
    ok = (stored == expected and len(keys) == len(rows) and not found["outside"] and not found["rater_not_ready"]
          and not found["rater_failed"]
          and found["rater_ready_s"] <= 10 and pct(rater_frames, 95) <= 300 and (k == 0 or pct(rater_ms, 95) <= 300))
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
