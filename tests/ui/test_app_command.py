"""`fsl-xai app` serves the workbench app and owns what it starts: the real command, on 127.0.0.1
and a free port with one kernel preheated, prints its address once Voila answers; a page is
served by the kernel that ran the app before the page was asked for, and a page asked for while
the pool's replacement waits starts its own kernel; SIGTERM stops Voila and every kernel (checked
by pid), also the pool's replacement while it starts, and prints no traceback; a taken port or a bad
--preheat is a one-line error with exit code 2."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel, which ships no stubs
import pytest

from fsl_xai.cli.app import PREHEAT_REFILL_S
from tests.fsl_xai.study.test_serve import (
    _assert_port_free,
    _descendants,
    _env,
    _free_port,
    _is_kernel,
    _lines,
    _reap,
)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # the default model is cached (make models); Voila and a kernel start on busy cores
KERNEL_TIMEOUT_S = 300  # the pooled kernel imports torch, opens the data and the model, runs the app
KERNEL_ID = re.compile(r"(\S*)/kernel-([0-9a-f-]{36})\.json")


def _app(port: int, home: Path, *options: str, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsl_xai.cli", "app", "--port", str(port), *options], cwd=home,
                            env=_env(home), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True)


def _get_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=KERNEL_TIMEOUT_S) as response:
        return str(response.read().decode())


def _kernel_of(page: str) -> str:
    found = re.search(r'"kernelId": "([0-9a-f-]{36})"', page)
    assert found, page[-2000:]
    return found[1]


def _pooled_kernel(proc: subprocess.Popen, seen: dict[int, psutil.Process]) -> tuple[str, str]:
    """The id of the kernel Voila started ahead of any page, once one runs, and the folder of its
    connection file (Voila's own, shared by every kernel it starts)."""
    deadline = time.monotonic() + KERNEL_TIMEOUT_S
    while time.monotonic() < deadline:
        seen.update({p.pid: p for p in _descendants(proc.pid)})
        for p in seen.values():
            if _is_kernel(p):
                found = KERNEL_ID.search(" ".join(p.cmdline()))
                assert found, p.cmdline()
                return found[2], found[1]
        time.sleep(0.2)
    raise AssertionError("no kernel was started ahead of a page (the preheat pool)")


def _wait_until_idle(kernel: psutil.Process) -> None:
    """Wait until the pooled kernel has run the app: a page asked for before that starts a kernel of
    its own (StartedPoolKernelManager), and the kernel is busy until then (the notebook, then the
    app's deferred checks); idle is under 0.05 CPU s in a second."""
    deadline = time.monotonic() + KERNEL_TIMEOUT_S
    used = sum(kernel.cpu_times()[:2])
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sum(kernel.cpu_times()[:2])
        if now - used < 0.05:
            return
        used = now
    raise AssertionError(f"the pooled kernel was still busy after {KERNEL_TIMEOUT_S} s")


def test_app_serves_a_preheated_page_and_sigterm_stops_everything(tmp_path):
    port = _free_port()
    log = tmp_path / "app.log"
    seen: dict[int, psutil.Process] = {}
    with open(log, "w") as err:
        proc = _app(port, tmp_path, "--preheat", "1", stderr=err)
    try:
        line = _lines(proc.stdout).get(timeout=START_TIMEOUT_S)
        assert line == f"serving the workbench app on http://127.0.0.1:{port}/ ; stop with Ctrl-C\n", (
            f"{line!r}; log: {log.read_text()[-3000:]}")
        pooled, connections = _pooled_kernel(proc, seen)
        _wait_until_idle(next(p for p in seen.values() if pooled in " ".join(p.cmdline())))
        # the page is served by the preheated kernel, with the app it already ran
        asked = time.time()
        page = _get_page(port)
        assert _kernel_of(page) == pooled, "the page did not get the preheated kernel"
        assert "application/vnd.jupyter.widget-view+json" in page, "the page holds no rendered app"
        assert "Traceback" not in page and "open_state(" not in page  # no error, and no sources
        # a page opened while the replacement waits out its delay starts a kernel of its own at once
        # (Voila's pool would make it wait for the delay and the replacement's whole start)
        if time.time() < asked + PREHEAT_REFILL_S - 2:
            second = _kernel_of(_get_page(port))
            seen.update({p.pid: p for p in _descendants(proc.pid)})
            (started,) = [p for p in seen.values() if second in " ".join(p.cmdline())]
            assert started.create_time() < asked + PREHEAT_REFILL_S, "the second page waited for the refill"
        # Voila refills the pool later: another kernel, which SIGTERM must stop too, here while it is still
        # starting or running the app. A kernel stopped in the middle of a cell prints a traceback of its
        # own; the app shows none of what Voila and its kernels print once a stop was asked
        served = {p.pid for p in seen.values() if _is_kernel(p)}
        deadline = time.monotonic() + KERNEL_TIMEOUT_S
        while time.monotonic() < deadline:
            seen.update({p.pid: p for p in _descendants(proc.pid)})
            refills = [p for p in seen.values() if _is_kernel(p) and p.pid not in served]
            if refills:
                break
            time.sleep(0.5)
        assert refills, "Voila did not refill its pool"
        kernels = [p for p in seen.values() if _is_kernel(p)]
        assert kernels and all(p.is_running() for p in kernels)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"left running: {alive}"
        # nor any kernel started after the last look (the pool's replacement): none uses Voila's folder
        others = [p for p in psutil.process_iter(["cmdline", "status"]) if p.info["status"] != psutil.STATUS_ZOMBIE
                  and f"{connections}/kernel-" in " ".join(p.info["cmdline"] or [])]
        assert not others, f"kernels left running: {others}"
        assert "stopped the workbench app and its kernels" in log.read_text()
        assert "Traceback" not in log.read_text()
        _assert_port_free(port)
    finally:
        _reap(proc, seen)


def test_app_on_a_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _app(port, tmp_path)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            _reap(proc, {})
    assert proc.returncode == 2, err
    assert err == (f"fsl-xai app: error: port {port} on 127.0.0.1 is already in use (by another server, perhaps an "
                   "earlier `fsl-xai app` still running); stop it, or choose another port with --port\n")
    assert out == ""  # no address printed: nothing is served


@pytest.mark.parametrize("preheat", ["-1", "21"])
def test_app_refuses_a_bad_preheat(tmp_path, preheat):
    proc = _app(_free_port(), tmp_path, "--preheat", preheat)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err == (f"fsl-xai app: error: --preheat must be a whole number from 0 to 20, got {preheat}; e.g. "
                   "--preheat 1 (each kernel holds the app's data and model)\n")
    assert out == ""
