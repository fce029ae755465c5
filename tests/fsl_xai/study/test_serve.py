"""`fsl-xai study serve` owns its children: the real command, on 127.0.0.1 and a free port, is
stopped with SIGTERM / SIGINT while a rater kernel runs, and nothing it started survives; a taken
port is a one-line error and nothing is served."""

from __future__ import annotations

import http.client
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel, which ships no stubs
import pytest

ROOT = Path(__file__).resolve().parents[3]
KERNEL_TIMEOUT_S = 240  # a rater kernel imports the widgets; slow on two busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    """Jupyter's folders kept out of the user's home; the checkout importable by the kernel."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", JUPYTER_PLATFORM_DIRS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR"):
        (home / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / name)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _serve(folder: Path, port: int, home: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "fsl_xai.cli", "study", "serve", str(folder),
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=home, env=_env(home),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)


def _lines(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _open_page(url: str) -> None:
    """GET a page in the background; the server may be stopped before it answers."""
    def get() -> None:
        try:
            with urllib.request.urlopen(url, timeout=KERNEL_TIMEOUT_S) as response:
                response.read()
        except (OSError, http.client.HTTPException):
            pass

    threading.Thread(target=get, daemon=True).start()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _is_kernel(p: psutil.Process) -> bool:
    try:
        return any("ipykernel" in part for part in p.cmdline())
    except psutil.Error:
        return False


def _kill_all(processes) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _reap(proc: subprocess.Popen, seen: dict) -> None:
    """Kill by pid every process a server test saw (``seen``) or that the server still has, then the
    server itself, and close its output pipe."""
    _kill_all([*seen.values(), *_descendants(proc.pid)])
    proc.kill()
    proc.wait()
    proc.stdout.close()


def _assert_port_free(port: int) -> None:
    """The port can be listened on again (old connections in TIME_WAIT aside, as Tornado does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("stop, exit_code, stuck", [
    (signal.SIGTERM, 0, False),
    (signal.SIGINT, 130, False),
    # a Voila that cannot stop (the frozen server): killed after the grace period
    (signal.SIGTERM, 0, True),
], ids=["sigterm", "sigint", "sigterm-stuck-voila"])
def test_serve_stops_voila_and_its_kernels(study_folder, tmp_path, stop, exit_code, stuck):
    folder, token = study_folder
    port = _free_port()
    log = tmp_path / "serve.log"
    proc = _serve(folder, port, tmp_path, log)
    seen: dict[int, psutil.Process] = {}
    try:
        lines = _lines(proc.stdout)
        line = lines.get(timeout=KERNEL_TIMEOUT_S)
        assert line == (f"serving the rater app on http://127.0.0.1:{port}/ (each rater needs their ?token=... "
                        "link); stop with Ctrl-C\n"), f"{line!r}; log: {log.read_text()[-3000:]}"
        # a rater opens the page: Voila starts a kernel for it
        _open_page(f"http://127.0.0.1:{port}/?token={token}")
        deadline = time.monotonic() + KERNEL_TIMEOUT_S
        while time.monotonic() < deadline and not any(_is_kernel(p) for p in seen.values()):
            seen.update({p.pid: p for p in _descendants(proc.pid)})
            time.sleep(0.2)
        kernels = [p for p in seen.values() if _is_kernel(p)]
        assert kernels, f"no rater kernel started; log: {log.read_text()[-3000:]}"
        assert all(p.is_running() for p in kernels)
        seen.update({p.pid: p for p in _descendants(proc.pid)})
        if stuck:
            (voila,) = [p for p in psutil.Process(proc.pid).children() if "voila" in " ".join(p.cmdline())]
            voila.suspend()  # SIGSTOP: it handles no signal but SIGKILL
        proc.send_signal(stop)
        assert proc.wait(timeout=90) == exit_code, log.read_text()[-3000:]
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"left running: {alive}"
        assert "stopped the rater app and its kernels" in log.read_text()
        _assert_port_free(port)
    finally:
        _reap(proc, seen)


def test_serve_on_a_taken_port_is_a_clear_error(study_folder, tmp_path):
    folder, _ = study_folder
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "fsl_xai.cli", "study", "serve", str(folder), "--port",
                                 str(port)], cwd=tmp_path, env=_env(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            _reap(proc, {})
    assert proc.returncode == 2
    assert err == (f"fsl-xai study: error: port {port} on 127.0.0.1 is already in use (by another server, perhaps "
                   "an earlier `fsl-xai study serve` still running); stop it, or choose another port with --port\n")
    assert out == ""  # no address printed: nothing is served


def test_the_rater_page_is_served_with_the_offline_template(tmp_path):
    from fsl_xai.study.serve import VOILA_TEMPLATE, ServeError, template_path, voila_command
    from widgets.export import off_machine_addresses

    notebook = ROOT / "notebooks" / "study_rater.ipynb"
    share = template_path(notebook)
    assert f"--template={VOILA_TEMPLATE}" in voila_command(notebook, "127.0.0.1", 8866)
    pages = [f for f in (share / "voila" / "templates" / VOILA_TEMPLATE).iterdir() if f.suffix in (".j2", ".html")]
    assert pages and all(not off_machine_addresses(f.read_text()) for f in pages)
    # a notebook without the template beside it is refused, not served with CDN links
    (tmp_path / "notebooks").mkdir()
    with pytest.raises(ServeError, match="offline Voila template is missing"):
        template_path(tmp_path / "notebooks" / "study_rater.ipynb")
