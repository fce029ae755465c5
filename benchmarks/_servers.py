"""Servers for the browser benchmarks: a free local port, the environment a Voila server needs, the
kernels a server runs, waiting until it is idle, and stopping a server with everything it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium (never `playwright install`)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: a request to anything but this machine (blocked and counted by the benchmarks)
OUTSIDE = re.compile(r"^(https?|wss?)://(?!(127\.\d+\.\d+\.\d+|localhost|\[::1\])[:/])")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(home: Path) -> dict[str, str]:
    """The venv first on PATH, the checkout importable, the fsl-xai template found, and Jupyter's
    folders private to ``home`` (so a benchmark's server reads no one's settings and leaves nothing)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", JUPYTER_PLATFORM_DIRS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
               JUPYTER_PATH=os.pathsep.join(p for p in (str(ROOT / "share" / "jupyter"),
                                                        os.environ.get("JUPYTER_PATH", "")) if p))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        (home / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / name)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the server's process group (it was started with ``start_new_session=True``), then
    SIGKILL it and every descendant still alive, each by its pid."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except psutil.Error:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for p in descendants:
        try:
            p.kill()
        except psutil.Error:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def process_tree(root: int) -> list[psutil.Process]:
    """A process and its descendants alive now (none when it is gone)."""
    try:
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) each process has used so far, by pid."""
    used = {}
    for p in processes:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        used[p.pid] = times.user + times.system
    return used


_KERNEL_ID = re.compile(r"kernel-([0-9a-f-]{36})\.json")


def kernel_ids(root: int) -> set[str]:
    """The ids of the Jupyter kernels running under ``root`` (from their connection files' names)."""
    found = set()
    for p in process_tree(root)[1:]:
        try:
            match = _KERNEL_ID.search(" ".join(p.cmdline()))
        except psutil.Error:
            continue
        if match:
            found.add(match[1])
    return found


def _runnable(p: psutil.Process) -> bool:
    try:
        return bool(p.status() == psutil.STATUS_RUNNING)
    except psutil.Error:
        return False


def wait_until_idle(proc: subprocess.Popen, kernels_at_least: int = 0, timeout: float = 600.0,
                    quiet_cpu_s: float = 0.1) -> float:
    """Wait until the server runs at least ``kernels_at_least`` kernels (a preheat pool is full)
    and its process tree, kernels included, used under ``quiet_cpu_s`` CPU seconds in one second
    with none of its processes waiting for a core (on a crowded machine a busy process may get
    little CPU); returns the seconds waited. RuntimeError when that does not happen within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = cpu_seconds(process_tree(proc.pid))
        time.sleep(1.0)
        tree = process_tree(proc.pid)
        now = cpu_seconds(tree)
        used = sum(t - before.get(pid, 0.0) for pid, t in now.items())  # a new process counts in full
        if (len(kernel_ids(proc.pid)) >= kernels_at_least and used < quiet_cpu_s
                and not any(_runnable(p) for p in tree)):
            return time.monotonic() - start
    raise RuntimeError(f"the server did not settle within {timeout:.0f} s: {len(kernel_ids(proc.pid))} kernels "
                       f"running (waiting for {kernels_at_least}), or still busy")
