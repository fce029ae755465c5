"""Voila's internal port answers only the gate. It listens on 127.0.0.1, where every user of the
machine can connect; a request straight to it, without the secret the gate adds, gets no page, starts
no kernel, and cannot reach, shut down or attach to a rater's kernel. The secret is on no command line
and its file is gone once Voila has read it; Voila without it does not start."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel, which ships no stubs
import pytest
import websocket  # websocket-client, installed with jupyter_server

from fsl_xai.study.gate import GATE_SECRET_FILE_ENV, GATE_SECRET_HEADER, V1_PROTOCOL
from fsl_xai.study.serve import voila_command

from .test_gate import KERNEL_TIMEOUT_S, get, kernel_info_round_trip, kernels_of, open_page, served
from .test_serve import _env, _free_port

ROOT = Path(__file__).resolve().parents[3]


def _voila(proc: subprocess.Popen) -> psutil.Process:
    (voila,) = [p for p in psutil.Process(proc.pid).children() if "voila" in " ".join(p.cmdline())]
    return voila


def _internal_port(voila: psutil.Process) -> int:
    return int(next(a for a in voila.cmdline() if a.startswith("--port=")).split("=")[1])


def _direct_socket_status(port: int, kernel_id: str, header: dict[str, str]) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id=direct",
                                    subprotocols=[V1_PROTOCOL], header=[f"{k}: {v}" for k, v in header.items()],
                                    timeout=30).close()
    return refused.value.status_code


def test_voila_answers_only_the_gate(study_folder, tmp_path):
    folder, token = study_folder
    with served(folder, tmp_path, "--max-kernels", "4") as (proc, port):
        voila = _voila(proc)
        internal = _internal_port(voila)
        # the secret is on no command line, and its file is gone once Voila read it
        secret_file = voila.environ().get(GATE_SECRET_FILE_ENV)
        assert secret_file and not Path(secret_file).exists()
        assert not any("token" in a.lower() or "secret" in a.lower() for a in voila.cmdline()), voila.cmdline()

        direct = f"http://127.0.0.1:{internal}"
        wrong = {GATE_SECRET_HEADER: "x" * 43}
        # a valid rater token straight to Voila, without or with a wrong secret: no page, no kernel
        for header in ({}, wrong, {"Authorization": f"token {token}"}):
            status, _, body = _get(f"{direct}/?token={token}", header)
            assert status in (302, 403), (status, body[-500:])
            assert '"kernelId"' not in body
        for path in ("/api/kernels", "/api/sessions", "/api/kernelspecs"):
            assert _get(f"{direct}{path}", {})[0] in (302, 403, 404), path
        time.sleep(2)
        assert not kernels_of(proc), "a request straight to Voila started a kernel"

        # a rater's kernel, started through the gate, cannot be reached around it
        kernel_id, cookie = open_page(port, token)
        assert _get(f"{direct}/api/kernels/{kernel_id}", {})[0] == 403
        assert _get(f"{direct}/api/kernels/{kernel_id}", wrong)[0] == 403
        assert _get(f"{direct}/voila/api/shutdown/{kernel_id}", {}, method="POST")[0] == 403
        assert _get(f"{direct}/api/kernels/{kernel_id}", {}, method="DELETE")[0] == 403
        assert _direct_socket_status(internal, kernel_id, {}) == 403
        assert _direct_socket_status(internal, kernel_id, wrong) == 403
        # through the gate it still works (the gate adds the secret), and it is still running
        assert len(kernels_of(proc)) == 1
        assert kernel_info_round_trip(port, kernel_id, cookie) < 30
        status, _, body = get(f"http://127.0.0.1:{port}/api/kernels/{kernel_id}", cookie=cookie)
        assert status == 200 and json.loads(body)["id"] == kernel_id


def _get(url: str, header: dict[str, str], method: str = "GET"):
    """(status, headers, body) without following redirects (Voila sends a stranger to its login page)."""
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, method=method, data=b"" if method in ("POST",) else None, headers=header)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=KERNEL_TIMEOUT_S) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode(errors="replace")


def test_voila_without_the_gate_secret_does_not_start(tmp_path):
    notebook = ROOT / "notebooks" / "study_rater.ipynb"
    env = _env(tmp_path) | {"JUPYTER_PATH": str(ROOT / "share" / "jupyter")}
    env.pop(GATE_SECRET_FILE_ENV, None)
    proc = subprocess.Popen(voila_command(notebook, "127.0.0.1", _free_port()), env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("Voila started without the gate's secret") from None
    assert proc.returncode != 0
    assert "served only behind the gate" in err, err[-2000:]
