"""The trust study's rater app under a class of raters: 20 raters in headless Chromium against the
real `fsl-xai study serve` (the gate in front of Voila), on this machine.

Measures:
  - 20 rater pages opened at once -> every page ready (the first case on screen); target <= 10 s
    on 2 cores. Split into the server's part (the same 20 page loads as raw HTTP, no browser: kernel
    start, notebook run, Voila's rendering) and the first byte through the gate (the gate holds the
    headers until the kernel id is in the page);
  - click "Submit answer" -> answer confirmed on screen (the next case and "Answer saved."), timed
    inside the page, p50 / p95 over every click of the 20 raters answering at once; target p95 <= 300 ms;
  - memory (RSS and USS) of each rater kernel, of Voila and of the serving process (the gate).

Raters are different machines: their pages are spread over several Chromium processes
(--per-browser raters each, one context per rater), not one browser whose renderers would share
one process's limits. All of them still run on this machine's cores, so the CPU seconds the
browsers and the server used while the pages opened are printed apart: on 2 shared cores the
browsers' share is work a real class does on its own machines. --preheat N serves with Voila's
preheat pool of N kernels (serve_rater_app's ``preheat``), each started and run up to the rater's
token before any page is asked for.

The peer, measured in the same run on the same machine and browser: a bare ipywidgets page (one
button and one label, the same Voila template) served by plain Voila, 20 pages at once, a click ->
label round trip, and its kernels' memory: the floor any Voila app pays. Ratios are printed
against it. Every answer is checked in the store afterwards (stored once each), and any request
the pages make off this machine is blocked and counted (it must be 0).

Usage: python benchmarks/bench_rater_app.py [--raters 20] [--cases 6] [--per-browser 4] [--preheat 0]
"""

from __future__ import annotations

import argparse
import asyncio
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

from _servers import CHROMIUM, CHROMIUM_FLAGS, OUTSIDE, environment, free_port, stop_server  # noqa: E402

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

# click -> confirmed, timed in the page: the next case's header and "Answer saved." are on screen
SUBMIT_JS = """
async ([want]) => {
  const root = document.querySelector('.fsl-rater-app');
  const button = [...root.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Submit answer');
  const done = () => root.textContent.includes(want) && root.textContent.includes('Answer saved.');
  const start = performance.now();
  return await new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => {
      if (done()) { observer.disconnect(); resolve(performance.now() - start); }
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
  const start = performance.now();
  return await new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => {
      if (Number(label.textContent) === before + 1) { observer.disconnect(); resolve(performance.now() - start); }
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
        except OSError:
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


def cpu_s(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) each process has used so far, by pid."""
    out = {}
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        out[p.pid] = t.user + t.system
    return out


def tree(root: int) -> list[psutil.Process]:
    """A process and its descendants alive now."""
    try:
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


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
    return sum(now - before.get(pid, 0.0) for pid, now in cpu_s(processes).items())


def settle(proc: subprocess.Popen, kernels_at_least: int = 0, timeout: float = 180) -> None:
    """Wait until the server has its preheated kernels and is idle (under 0.1 CPU seconds in a
    second, its kernels included), so a timed phase does not share the cores with its start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_s(tree(proc.pid))
        time.sleep(1.0)
        if len(kernels(proc)) >= kernels_at_least and used_since(before, tree(proc.pid)) < 0.1:
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


async def open_pages(browsers: list, urls: list[str], ready: str, outside: list[str]):
    """Open every URL at once, each in its own context, page i in browser i mod len(browsers) (each
    browser a process of its own, as raters' machines are); (seconds until each page was ready,
    None for a page not ready, first-byte seconds, the ready pages, every context, what the pages
    not ready show)."""
    contexts = [await browsers[i % len(browsers)].new_context(viewport={"width": 1280, "height": 900})
                for i in range(len(urls))]
    async def block(route, request) -> None:
        outside.append(request.url)
        await route.abort()

    for context in contexts:
        await context.route(OUTSIDE, block)
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


async def rater(page, n_cases: int, seed: int) -> list[float]:
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


async def clicker(page, n_clicks: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    times = []
    for _ in range(n_clicks):
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        times.append(await page.evaluate(BARE_JS))
    return times


async def browse(args, rater_urls: list[str], bare_urls: list[str], serve: subprocess.Popen,
                 voila: subprocess.Popen) -> dict:
    from playwright.async_api import async_playwright

    outside: list[str] = []
    out: dict = {}
    async with async_playwright() as pw:
        n_browsers = max(1, -(-args.raters // args.per_browser))
        browsers = list(await asyncio.gather(*(
            pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            for _ in range(n_browsers))))
        out["browsers"] = n_browsers
        try:
            # warm each browser (its code cache) with one page of each, not timed
            for urls, ready in ((bare_urls[:1], "^Click$"), (rater_urls[:1], "^Case 1 of")):
                for browser in browsers:
                    _, _, pages, contexts, _ = await open_pages([browser], urls, ready, outside)
                    for c in contexts:
                        await c.close()
            for kind, urls, ready in (("bare", bare_urls[1:], "^Click$"),
                                      ("rater", rater_urls[1:], f"^Case 1 of {args.cases}$")):
                server = serve if kind == "rater" else voila
                settle(server, args.preheat if kind == "rater" else 0)  # the pool refilled after the warm-up
                cpu_before = cpu_s(tree(server.pid)), cpu_s(browsers_of_this_run())
                ready_at, first_bytes, pages, contexts, stuck = await open_pages(browsers, urls, ready, outside)
                # where the CPU went while the pages opened: the server (gate, Voila, kernels) or the browsers
                out[f"{kind}_open_cpu_s"] = (used_since(cpu_before[0], tree(server.pid)),
                                             used_since(cpu_before[1], browsers_of_this_run()))
                done = [t for t in ready_at if t is not None]
                out[f"{kind}_ready_s"] = max(done) if done else float("nan")
                out[f"{kind}_ready_each_s"], out[f"{kind}_first_byte_s"] = done, first_bytes
                out[f"{kind}_not_ready"] = stuck
                cpu_before = cpu_s(tree(server.pid)), cpu_s(browsers_of_this_run())
                if kind == "bare":
                    per_page = await asyncio.gather(*(clicker(p, args.cases, i) for i, p in enumerate(pages)),
                                                    return_exceptions=True)
                    out["bare_memory"] = memory_mib(kernels(voila))
                else:
                    per_page = await asyncio.gather(*(rater(p, args.cases, i) for i, p in enumerate(pages)),
                                                    return_exceptions=True)
                    out["rater_memory"] = memory_mib(kernels(serve))
                    out["rater_kernels"] = len(kernels(serve))
                out[f"{kind}_click_ms"] = [t for times in per_page if isinstance(times, list) for t in times]
                out[f"{kind}_click_cpu_s"] = (used_since(cpu_before[0], tree(server.pid)),
                                              used_since(cpu_before[1], browsers_of_this_run()))
                out[f"{kind}_failed"] = [str(e).splitlines()[0][:160] for e in per_page if isinstance(e, BaseException)]
                for c in contexts:
                    await c.close()
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
    args = parser.parse_args()
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
            server_s, pages = raw_page_loads(serve_port, tokens[1:])
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

    rater_ms, bare_ms = found["rater_click_ms"], found["bare_click_ms"]
    rss, uss = found["rater_memory"]
    bare_rss, bare_uss = found["bare_memory"]
    load = os.getloadavg()
    print(f"rater app, {args.raters} raters x {args.cases} cases, {os.cpu_count()} cores, {found['browsers']} "
          f"Chromium processes (load average before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print(f"{'measure':68s} {'rater app':>12s} {'bare peer':>12s} {'ratio':>7s} {'target':>10s}")
    rows_out = [
        (f"{args.raters} pages opened at once -> all ready (s)", found["rater_ready_s"], found["bare_ready_s"],
         "<= 10"),
        ("  first byte through the gate, median (s)", statistics.median(found["rater_first_byte_s"]),
         statistics.median(found["bare_first_byte_s"]), ""),
        (f"  server only: {args.raters} raw page loads at once (s)", server_s, float("nan"), ""),
        ("click -> confirmed p50 (ms)", pct(rater_ms, 50), pct(bare_ms, 50), ""),
        ("click -> confirmed p95 (ms)", pct(rater_ms, 95), pct(bare_ms, 95), "<= 300"),
        ("kernel_info round trip via the gate vs straight to plain Voila, p50 (ms)", pct(via_gate, 50), pct(direct, 50),
         ""),
        ("memory per kernel, RSS median (MiB)", rss, bare_rss, ""),
        ("memory per kernel, USS median (MiB)", uss, bare_uss, ""),
    ]
    for name, ours, peer, target in rows_out:
        ratio = f"{ours / peer:6.2f}x" if peer == peer and peer else "      -"
        print(f"{name:68s} {ours:12.2f} {peer:12.2f} {ratio:>7s} {target:>10s}")
    for kind in ("rater", "bare"):
        server_cpu, browser_cpu = found[f"{kind}_open_cpu_s"]
        print(f"{kind}: CPU seconds used while the pages opened: server {server_cpu:.1f}, browsers {browser_cpu:.1f}")
        clicks = max(1, len(found[f"{kind}_click_ms"]))
        server_cpu, browser_cpu = found[f"{kind}_click_cpu_s"]
        print(f"{kind}: CPU milliseconds per click while answering: server {1000 * server_cpu / clicks:.0f}, "
              f"browsers {1000 * browser_cpu / clicks:.0f}")
        print(f"{kind} pages ready at (s): " + " ".join(f"{t:.1f}" for t in sorted(found[f"{kind}_ready_each_s"])))
    print(f"clicks timed: {len(rater_ms)} (rater), {len(bare_ms)} (peer); rater kernels while answering: "
          f"{found['rater_kernels']}; Voila RSS {voila_mib:.0f} MiB; gate (serve process) RSS {serve_rss:.0f} MiB")
    stored = len(rows) - len(warmup)
    print(f"answers stored: {stored} of {expected} expected, {len(keys)} distinct of {len(rows)} rows; "
          f"requests off this machine: {len(found['outside'])}")
    ok = (stored == expected and len(keys) == len(rows) and not found["outside"] and not found["rater_not_ready"]
          and not found["rater_failed"]
          and found["rater_ready_s"] <= 10 and pct(rater_ms, 95) <= 300)
    print("targets met" if ok else "targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
