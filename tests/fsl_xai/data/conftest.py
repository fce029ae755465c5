"""Fixtures for the data-layer tests: a real local HTTP server and small generated npz files."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest


def make_npz_bytes(n: int = 6, size: int = 8, channels: int = 0, n_classes: int = 2, seed: int = 0,
                   class_names: tuple[str, ...] | None = None) -> bytes:
    """A small MedMNIST-format npz (train/val/test), as bytes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        shape = (n, size, size) + ((channels,) if channels else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).astype(np.uint8)[:, None]
    if class_names is not None:
        arrays["class_names"] = np.array(class_names)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class LocalServer:
    """Routes: path -> (body, mode); mode "ok" serves the body, "truncate" announces the full
    length but closes the connection halfway. Unknown paths get 404."""

    base_url: str
    routes: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def serve(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.routes["/" + path.lstrip("/")] = (body, mode)
        return self.url(path)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 in a background thread (stopped and closed afterwards)."""
    state = LocalServer(base_url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            state.requests.append(self.path)
            route = state.routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404, "Not Found")
                return
            body, mode = route
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # handler threads are joined by server_close(), so no request socket outlives the test
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused), like an offline machine."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.npz"


def no_leftovers(folder: Path) -> list[str]:
    """Names of temporary download files left in a folder."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")] if folder.exists() else []


@pytest.fixture
def make_npz():
    """The function make_npz_bytes(n, size, channels, n_classes, seed, class_names) -> npz bytes."""
    return make_npz_bytes


@pytest.fixture
def leftovers():
    """The function no_leftovers(folder) -> names of temporary download files left there."""
    return no_leftovers
