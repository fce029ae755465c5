"""Servers for the browser benchmarks: a free local port, the environment a Voila server needs, and
stopping a server with everything it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
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
