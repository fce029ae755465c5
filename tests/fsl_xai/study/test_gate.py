"""The gate in front of the rater kernels, against the real `fsl-xai study serve` on 127.0.0.1 with
raw HTTP and websocket clients (as an outside tester would):

- requests without a valid token, and requests for Jupyter's APIs or kernels they did not start,
  start no kernel (kernel processes are counted);
- kernels are capped ("too many open sessions") and culled when idle;
- a kernel answers only the page load that started it: another rater's cookie, or none, is
  refused for its websocket, its REST URL and Voila's shutdown URL;
- a websocket without the v1 sub-protocol is refused, a legacy-layout frame closes the socket,
  and the server stays responsive with Voila's memory flat.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with ipykernel, which ships no stubs
import pytest
import websocket  # websocket-client, installed with jupyter_server

from fsl_xai.study.gate import BROWSER_COOKIE, V1_PROTOCOL, v1_frame_problem

from .conftest import frozen_study
from .test_serve import _descendants, _env, _free_port, _is_kernel, _lines, _reap

KERNEL_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def two_raters(tmp_path_factory):
    return frozen_study(tmp_path_factory, "gate", 2)


@contextmanager
def served(folder: Path, home: Path, *options: str):
    """`fsl-xai study serve` on a free port; yields (process, port); everything it started is
    killed by pid afterwards."""
    port = _free_port()
    log = home / f"serve-{port}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fsl_xai.cli", "study", "serve", str(folder), "--host",
                                 "127.0.0.1", "--port", str(port), *options], cwd=home, env=_env(home),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    seen: dict[int, psutil.Process] = {}
    try:
        line = _lines(proc.stdout).get(timeout=KERNEL_TIMEOUT_S)
        assert line and line.startswith("serving the rater app"), f"{line!r}; log: {log.read_text()[-3000:]}"
        yield proc, port
    finally:
        seen.update({p.pid: p for p in _descendants(proc.pid)})
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        _reap(proc, seen)


def kernels_of(proc: subprocess.Popen) -> set[int]:
    return {p.pid for p in _descendants(proc.pid) if _is_kernel(p)}


def get(url: str, method: str = "GET", cookie: str | None = None, timeout: float = KERNEL_TIMEOUT_S):
    """(status, headers, body) of one request; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read().decode()


def open_page(port: int, token: str, cookie: str | None = None) -> tuple[str, str]:
    """Load a rater page as a new browser would (or one holding ``cookie``); returns (kernel id,
    the browser's cookie)."""
    status, headers, body = get(f"http://127.0.0.1:{port}/?token={token}", cookie=cookie)
    assert status == 200, body[-2000:]
    kernel_id = re.search(r'"kernelId": "([0-9a-f-]{36})"', body).group(1)
    set_cookies = headers.get_all("Set-Cookie") or []
    if cookie is not None:  # a secret the gate issued is kept
        assert not set_cookies
        return kernel_id, cookie
    (set_cookie,) = set_cookies
    assert re.fullmatch(rf"{BROWSER_COOKIE}=[\w.-]+; Path=/; HttpOnly; SameSite=Strict", set_cookie), set_cookie
    return kernel_id, set_cookie.split(";")[0]


def v1_frame(channel: str, msg_type: str, content: dict) -> bytes:
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "", "session": uuid.uuid4().hex,
              "date": "2026-01-01T00:00:00Z", "version": "5.3"}
    parts = [channel.encode(), *(json.dumps(x).encode() for x in (header, {}, {}, content))]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([(len(offsets)).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])


def msg_type_of(frame: bytes) -> str:
    n = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
    return json.loads(frame[offsets[1]:offsets[2]])["msg_type"]


def connect(port: int, kernel_id: str, cookie: str | None, protocols=(V1_PROTOCOL,)) -> websocket.WebSocket:
    return websocket.create_connection(
        f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
        subprotocols=list(protocols) or None, cookie=cookie, timeout=30)


def refused_status(port: int, kernel_id: str, cookie: str | None, protocols=(V1_PROTOCOL,)) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(port, kernel_id, cookie, protocols).close()
    return refused.value.status_code


def kernel_info_round_trip(port: int, kernel_id: str, cookie: str) -> float:
    """Seconds from a kernel_info_request to its reply over the kernel's websocket."""
    ws = connect(port, kernel_id, cookie)
    try:
        start = time.monotonic()
        ws.send_binary(v1_frame("shell", "kernel_info_request", {}))
        while time.monotonic() - start < 30:
            frame = ws.recv()
            if isinstance(frame, bytes) and msg_type_of(frame) == "kernel_info_reply":
                return time.monotonic() - start
        raise AssertionError("no kernel_info_reply within 30 s")
    finally:
        ws.close()


@pytest.fixture(scope="module")
def server(two_raters, tmp_path_factory):
    folder, tokens = two_raters
    with served(folder, tmp_path_factory.mktemp("gate-home"), "--max-kernels", "6") as (proc, port):
        yield proc, port, tokens


def test_frames_are_checked_before_voila_reads_them():
    good = v1_frame("shell", "comm_msg", {"comm_id": "x", "data": {"method": "request_state"}})
    assert v1_frame_problem(good) is None
    legacy_json = json.dumps({"channel": "shell", "header": {"msg_type": "comm_msg"}, "content": {}})
    assert "legacy" in v1_frame_problem(legacy_json)
    # the legacy binary layout: a big-endian uint32 count and offsets, read as v1 a count of billions
    legacy_binary = (2).to_bytes(4, "big") + (12).to_bytes(4, "big") + (20).to_bytes(4, "big") + b"{}" * 8
    assert "declares" in v1_frame_problem(legacy_binary)
    assert "offsets" in v1_frame_problem(good[:-1])
    assert v1_frame_problem(b"\x01") is not None


def _server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def test_voilas_frames_are_relayed_whole_and_as_they_came():
    """What Voila sends reaches the page as the same bytes, cut only between frames however the
    socket delivers them; control frames (ping, pong, close) come apart, for the gate to answer;
    a masked, compressed or oversized frame is refused. The gate's own frames to Voila unmask to
    what the page sent."""
    import random

    from fsl_xai.study.gate import RelayError, ServerFrames, client_frame

    rng = random.Random(0)
    sent = [(rng.choice([2, 2, 2, 1, 0x9, 0xA, 0x8]), rng.randbytes(rng.choice([0, 5, 125, 126, 300, 65535, 65536,
                                                                               200_000])))
            for _ in range(120)]
    stream = b"".join(_server_frame(op, payload) for op, payload in sent)
    frames, got, at = ServerFrames(), [], 0
    while at < len(stream):
        step = rng.randint(1, 70_000)
        got += frames.feed(stream[at:at + step])
        at += step
    assert b"".join(data for op, data in got if op is None) == b"".join(
        _server_frame(op, payload) for op, payload in sent if op < 0x8)
    assert [(op, data) for op, data in got if op is not None] == [(op, p) for op, p in sent if op >= 0x8]
    for bad in (bytes((0x82, 0x85)) + b"mask" + b"12345", bytes((0xC2, 1)) + b"x"):  # masked; compressed (RSV1)
        with pytest.raises(RelayError):
            ServerFrames().feed(bad)
    with pytest.raises(RelayError, match="more than"):
        ServerFrames(max_frame=100).feed(bytes((0x82, 126)) + (101).to_bytes(2, "big"))
    for n in (0, 1, 5, 125, 126, 65535, 65536, 70_001):
        payload = rng.randbytes(n)
        frame = client_frame(0x2, payload)
        length, head = frame[1] & 0x7F, 2
        if length >= 126:
            head = 4 if length == 126 else 10
            length = int.from_bytes(frame[2:head], "big")
        mask, body = frame[head:head + 4], frame[head + 4:]
        assert frame[0] == 0x82 and frame[1] & 0x80 and length == n == len(body)
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


def test_bad_requests_start_no_kernel(server):
    proc, port, tokens = server
    before = kernels_of(proc)
    fake = str(uuid.uuid4())
    bad = [f"/?token={secrets.token_urlsafe(24)}" for _ in range(20)] + [
        "/", "/?token=", f"/?token={tokens[0][:-1]}", "/voila/render/study_rater.ipynb", "/tree", "/lab",
        "/api/kernels", "/api/sessions", "/api/contents", f"/api/kernels/{fake}", "/login", "/voila/files/study.json",
        "/voila/static/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/voila/api/shutdown/x"]
    statuses = [get(f"http://127.0.0.1:{port}{path}", timeout=30)[0] for path in bad]
    statuses.append(get(f"http://127.0.0.1:{port}/voila/api/shutdown/{fake}", method="POST")[0])
    statuses.append(refused_status(port, fake, None))
    assert set(statuses) <= {403, 404, 405}, dict(zip(bad, statuses, strict=False))
    assert get(f"http://127.0.0.1:{port}/?token=nope")[2].count("Access denied") == 2  # title and heading
    time.sleep(2)
    assert kernels_of(proc) == before, "a request without a valid token started a kernel"
    # a valid token does start one: the count above can tell
    open_page(port, tokens[0])
    assert len(kernels_of(proc) - before) == 1


def test_a_kernel_answers_only_the_page_that_started_it(server):
    proc, port, (token_a, token_b) = server
    kernel_a, cookie_a = open_page(port, token_a)
    kernel_b, cookie_b = open_page(port, token_b)
    nonce, signature = cookie_b.split("=", 1)[1].split(".")
    # rater A's browser secret, none, or one the gate did not issue: refused before Voila
    assert refused_status(port, kernel_b, cookie_a) == 403
    assert refused_status(port, kernel_b, None) == 403
    assert refused_status(port, kernel_b, f"{BROWSER_COOKIE}={nonce}.{signature[::-1]}; other=1") == 403
    assert refused_status(port, kernel_b, f"other={nonce}.{signature}") == 403
    assert get(f"http://127.0.0.1:{port}/api/kernels/{kernel_b}", cookie=cookie_a)[0] == 403
    assert get(f"http://127.0.0.1:{port}/voila/api/shutdown/{kernel_b}", "POST", cookie=cookie_a)[0] == 403
    assert get(f"http://127.0.0.1:{port}/voila/api/shutdown/{kernel_b}", "POST")[0] == 403
    # B's own page still reaches its kernel, which is still running
    assert kernel_info_round_trip(port, kernel_b, cookie_b) < 30
    status, _, body = get(f"http://127.0.0.1:{port}/api/kernels/{kernel_b}", cookie=cookie_b)
    assert status == 200 and json.loads(body)["id"] == kernel_b
    # and A's page can shut its own kernel down (as Voila's page does when it is closed)
    before = kernels_of(proc)
    assert get(f"http://127.0.0.1:{port}/voila/api/shutdown/{kernel_a}", "POST", cookie=cookie_a)[0] == 204
    deadline = time.monotonic() + 30
    while len(kernels_of(proc)) >= len(before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(kernels_of(proc)) == len(before) - 1
    assert refused_status(port, kernel_a, cookie_a) == 403  # gone: its secret opens nothing now
    # the same browser keeps its secret for its next page, and that page's kernel is its own
    kernel_a2, _ = open_page(port, token_a, cookie=cookie_a)
    assert kernel_info_round_trip(port, kernel_a2, cookie_a) < 30
    assert refused_status(port, kernel_a2, cookie_b) == 403


def _voila(proc: subprocess.Popen) -> psutil.Process:
    (voila,) = [p for p in psutil.Process(proc.pid).children() if "voila" in " ".join(p.cmdline())]
    return voila


def test_legacy_websockets_are_refused_and_the_server_stays_responsive(server):
    proc, port, (token_a, _) = server
    kernel, cookie = open_page(port, token_a)
    voila = _voila(proc)
    rss_before = voila.memory_info().rss
    # no sub-protocol (the legacy protocol): refused at the handshake
    assert refused_status(port, kernel, cookie, protocols=()) == 400
    assert refused_status(port, kernel, cookie, protocols=("v0.kernel.websocket.jupyter.org",)) == 400
    request_state = {"header": {"msg_id": uuid.uuid4().hex, "msg_type": "comm_msg", "session": "s",
                                "username": "", "version": "5.3", "date": "2026-01-01T00:00:00Z"},
                     "parent_header": {}, "metadata": {}, "channel": "shell",
                     "content": {"comm_id": str(uuid.uuid4()), "data": {"method": "request_state"}}}
    body = json.dumps(request_state).encode()
    legacy_binary = (1).to_bytes(4, "big") + (8).to_bytes(4, "big") + body
    for frame in (json.dumps(request_state), legacy_binary, legacy_binary * 50):
        ws = connect(port, kernel, cookie)
        if isinstance(frame, str):
            ws.send(frame)
        else:
            ws.send_binary(frame)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            for _ in range(200):  # the kernel's own messages may come first; then the gate closes
                ws.recv()
        ws.close()
    # responsive: the same kernel answers a well-formed request, a new page loads, Voila's memory is flat
    assert kernel_info_round_trip(port, kernel, cookie) < 10
    open_page(port, token_a)
    grown = voila.memory_info().rss - rss_before
    assert grown < 64 * 2**20, f"Voila grew by {grown / 2**20:.0f} MiB"


def test_kernels_are_capped_and_culled_when_idle(two_raters, tmp_path):
    folder, (token, _) = two_raters
    with served(folder, tmp_path, "--max-kernels", "1", "--cull-idle-s", "2") as (proc, port):
        first = threading.Thread(target=open_page, args=(port, token), daemon=True)
        first.start()  # its kernel holds the only slot from the moment its page is let through
        deadline = time.monotonic() + KERNEL_TIMEOUT_S
        while not kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        status, _, body = get(f"http://127.0.0.1:{port}/?token={token}")
        assert status == 503 and "Too many open sessions" in body
        assert len(kernels_of(proc)) == 1
        first.join(KERNEL_TIMEOUT_S)
        # the page never connected: Voila culls its kernel once idle, and the gate frees the slot
        deadline = time.monotonic() + 60
        while kernels_of(proc) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not kernels_of(proc), "the idle kernel was not culled"
        deadline = time.monotonic() + 20
        while (status := get(f"http://127.0.0.1:{port}/?token={token}")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200


@pytest.mark.parametrize("option, value, message", [
    ("--max-kernels", "0", "--max-kernels must be a whole number of 1 or more, got 0; e.g. --max-kernels 40"),
    ("--cull-idle-s", "0.5", "--cull-idle-s must be a number of seconds from 1 to 604800, got 0.5; "
                             "e.g. --cull-idle-s 900"),
    ("--cull-idle-s", "nan", "--cull-idle-s must be a number of seconds from 1 to 604800, got nan; "
                             "e.g. --cull-idle-s 900"),
])
def test_bad_limits_are_one_line_errors(two_raters, tmp_path, option, value, message):
    folder, _ = two_raters
    out = subprocess.run([sys.executable, "-m", "fsl_xai.cli", "study", "serve", str(folder), "--port",
                          str(_free_port()), option, value], cwd=tmp_path, env=_env(tmp_path),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", f"fsl-xai study: error: {message}\n")


def test_static_files_are_kept_after_the_first_answer(two_raters):
    """A stand-in for Voila counts what reaches it: the same static file asked for five times
    reaches it once (the gate answers the rest from memory, the same bytes and headers); another
    encoding or a Range request is its own, an error is never kept."""
    import asyncio

    from tornado import web as tweb

    from fsl_xai.study.gate import Gate, GateSettings
    from fsl_xai.study.gate_server import GateThread, bind_sockets

    folder, _ = two_raters
    hits: list[str] = []
    body = secrets.token_bytes(300_000)

    class Upstream(tweb.RequestHandler):
        def get(self, name: str) -> None:
            hits.append(self.request.uri or "")
            if name == "missing.js":
                raise tweb.HTTPError(404)
            self.set_header("Content-Type", "application/javascript")
            self.set_header("Cache-Control", "max-age=0")
            self.finish(body)

    upstream_port = _free_port()
    ready = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def upstream_main() -> None:
        server = tweb.Application([(r"/voila/static/(.*)", Upstream)]).listen(upstream_port, "127.0.0.1")
        stop = asyncio.Event()
        running.append((asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        server.stop()
        await server.close_all_connections()

    upstream = threading.Thread(target=asyncio.run, args=(upstream_main(),), daemon=True)
    upstream.start()
    assert ready.wait(10)
    port = _free_port()
    gate = GateThread(bind_sockets("127.0.0.1", port), Gate(folder / "study.sqlite", upstream_port,
                                                            GateSettings(max_kernels=2)))
    gate.start()
    try:
        url = f"http://127.0.0.1:{port}/voila/static/app.js?v=1"
        answers = []
        for _ in range(5):
            with urllib.request.urlopen(url, timeout=30) as r:
                answers.append((r.status, r.headers.get("Content-Type"), r.headers.get("Cache-Control"), r.read()))
        assert hits == ["/voila/static/app.js?v=1"]
        assert all(a == (200, "application/javascript", "max-age=0", body) for a in answers)
        for headers in ({"Accept-Encoding": "gzip"}, {"Range": "bytes=0-9"}):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
                r.read()
        assert len(hits) == 3
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/missing.js", timeout=30)
            assert err.value.code == 404
            err.value.close()
        assert hits.count("/voila/static/missing.js") == 2
    finally:
        gate.stop()
        loop, stop = running[0]
        loop.call_soon_threadsafe(stop.set)
        upstream.join(10)
