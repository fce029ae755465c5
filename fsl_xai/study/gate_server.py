"""The gate's server: the tornado handlers that check and forward every rater request, and the
thread that runs them inside ``fsl-xai study serve`` (what they check, and why a front server:
:mod:`fsl_xai.study.gate`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .gate import (
    BROWSER_COOKIE,
    GATE_SECRET_HEADER,
    KERNEL_ID,
    V1_PROTOCOL,
    WS_CLOSE,
    WS_PING,
    WS_PONG,
    Gate,
    RelayError,
    ServerFrames,
    client_frame,
    cookie_values,
    v1_frame_problem,
)
from .store import AccessDenied, StudyStoreError

try:  # tornado comes with Voila (the ui extra)
    from tornado import httpclient, httpserver, httputil, iostream, netutil, tcpclient, web, websocket
except ImportError as exc:  # pragma: no cover - Voila, checked before, brings tornado
    raise ImportError("the rater gate needs tornado, installed with Voila: pip install 'fsl-xai[ui]'") from exc

#: what a rater page loads besides itself (Voila's scripts, styles, themes, widget extensions)
STATIC_PREFIXES = ("voila/static/", "voila/templates/", "voila/labextensions/", "voila/api/themes/")
MAX_FRAME_BYTES = 4 * 1024 * 1024
RELAY_CHUNK_BYTES = 256 * 1024  # the most read from Voila's socket at once (several frames, usually)
WS_BINARY = 0x2
_KERNEL_IN_PAGE = re.compile(rb'"kernelId":\s*"(' + KERNEL_ID.encode() + rb')"')
_KERNEL_ID_TAIL = 128  # bytes kept from one chunk to the next while looking for the kernel id
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "content-length", "host", "server", "date",
               GATE_SECRET_HEADER.lower(), "authorization"}


def _page(title: str, text: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:40em;margin:3em auto'><h3>{html.escape(title)}</h3>"
            f"<p>{html.escape(text)}</p></body></html>")


class _GateHandler(web.RequestHandler):
    gate: Gate

    def initialize(self, gate: Gate) -> None:
        self.gate = gate

    def refuse(self, status: int, title: str, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(_page(title, text))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(_page(f"Error {status_code}", "The request could not be served."))

    async def forward(self, on_chunk: Callable[[bytes], None] | None = None,
                      on_end: Callable[[], None] | None = None, as_gate: bool = False,
                      uri: str | None = None, on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Send this request to Voila and stream its answer back. ``on_chunk`` sees each piece of
        the body before it is sent on; ``on_end`` runs at the end; ``on_status`` gets Voila's status
        line and headers (``code``, ``reason``, ``headers``) before the body.
        ``as_gate``: the gate vouches for the request (it checked the kernel's secret), so it goes
        without the page's cookies or body and with an XSRF pair of the gate's own.
        ``uri``: what to ask Voila for, when not the request's own URI."""
        request = self.request
        headers = httputil.HTTPHeaders()
        dropped = _HOP_BY_HOP | ({"cookie", "content-type"} if as_gate else set())
        for name, value in request.headers.get_all():
            if name.lower() == "cookie":  # the browser's secret is for the gate alone
                value = "; ".join(c for c in value.split(";") if c.strip().partition("=")[0] != BROWSER_COOKIE)
            if value and name.lower() not in dropped:
                headers.add(name, value)
        headers["Host"] = request.host  # Voila tells the kernel the address the rater used
        headers.update(self.gate.upstream_headers())
        body = request.body if request.method in ("POST", "PUT", "PATCH") else None
        if as_gate:
            xsrf = secrets.token_hex(16)
            headers["Cookie"], headers["X-XSRFToken"] = f"_xsrf={xsrf}", xsrf
            body = b"" if body is not None else None
        status: dict[str, Any] = {"code": 502, "reason": "Bad Gateway", "headers": httputil.HTTPHeaders()}

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                parts = line.split(" ", 2)
                status.update(code=int(parts[1]), reason=parts[2].strip() if len(parts) > 2 else None,
                              headers=httputil.HTTPHeaders())
            elif line.strip():
                status["headers"].parse_line(line)

        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        fetch = self.gate.client().fetch(httpclient.HTTPRequest(
            f"http://{self.gate.upstream}{uri or request.uri}", method=request.method, headers=headers,
            body=body,
            allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
            connect_timeout=20, request_timeout=600, header_callback=on_header,
            streaming_callback=chunks.put_nowait), raise_error=False)
        fetch.add_done_callback(lambda _: chunks.put_nowait(None))
        started = False
        try:
            while (chunk := await chunks.get()) is not None:
                if not started:
                    started = True
                    self._start(status)
                    if on_status is not None:
                        on_status(status)
                if on_chunk is not None:
                    on_chunk(chunk)
                self.write(chunk)
                await self.flush()
            try:
                await fetch
            except (OSError, httpclient.HTTPClientError):
                if not started:
                    self.refuse(502, "The rater app is not available", "Try again in a minute.")
                    return
            if not started:
                self._start(status)
                if on_status is not None:
                    on_status(status)
            self.finish()
        except iostream.StreamClosedError:
            pass  # the rater closed the page
        finally:
            if on_end is not None:
                on_end()

    def _start(self, status: dict[str, Any]) -> None:
        self.set_status(status["code"], status["reason"])
        self.clear_header("Content-Type")
        for name, value in status["headers"].get_all():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "set-cookie":
                self.add_header(name, value)


class PageHandler(_GateHandler):
    """The rater page: token first, then a slot, then Voila (which starts the kernel)."""

    async def get(self) -> None:
        token = self.get_query_argument("token", None)
        try:
            rater = self.gate.rater(token)
        except AccessDenied as exc:
            self.refuse(403, "Access denied", str(exc))
            return
        except StudyStoreError as exc:
            self.refuse(503, "The study is not available", str(exc))
            return
        if not self.gate.kernels.reserve():
            self.refuse(503, "Too many open sessions",
                        f"{self.gate.settings.max_kernels} rater pages are open on this server, the most it "
                        "allows. Close a page you no longer use, or try again in a few minutes.")
            return
        secret, new = self.gate.browser_secret(cookie_values(self.request, BROWSER_COOKIE))
        if new:
            self.add_header("Set-Cookie", f"{BROWSER_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict")
        state: dict[str, Any] = {"bound": False, "tail": b""}

        def look(chunk: bytes) -> None:  # the kernel id, in the page's config (its head)
            if state["bound"]:
                return
            text = state["tail"] + chunk
            found = _KERNEL_IN_PAGE.search(text)
            if found is None:
                state["tail"] = text[-_KERNEL_ID_TAIL:]
                return
            kernel_id = found.group(1).decode()
            self.gate.kernels.bind(kernel_id, rater, secret)
            state["bound"] = True
            if self.gate.handoff is not None and token:
                try:
                    self.gate.hand_over(kernel_id, token)
                except OSError:  # the kernel waits in vain and its page shows the refusal
                    pass

        def end() -> None:
            if not state["bound"]:
                self.gate.kernels.release()

        uri = None
        if self.gate.handoff is not None:  # the token goes to the kernel by hand-off, not through Voila
            rest = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True) if k != "token"]
            uri = self.request.path + (f"?{urlencode(rest)}" if rest else "")
        await self.forward(on_chunk=look, on_end=end, uri=uri)


class StaticCache:
    """Voila's static files as the gate first got them, answered from memory afterwards: a class
    opening its pages at once asks for the same ~100 files per page, and each one through the gate
    and Voila cost both of them CPU the kernels and the clicks need. Only 200 answers to GET requests
    without a Range, whose body has the length Voila announced, are kept, under their URL (with its
    version query) and the request's Accept-Encoding; no file larger than ``max_file_bytes``, nothing
    past ``max_bytes`` in all. Nothing a rater sends reaches these files: they are the same for all."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_file_bytes: int = 16 * 1024 * 1024):
        self.max_bytes, self.max_file_bytes = max_bytes, max_file_bytes
        self.entries: dict[tuple[str, str], tuple[int, str | None, list[tuple[str, str]], bytes]] = {}
        self.size = 0
        self.hits = 0

    def get(self, key: tuple[str, str]) -> tuple[int, str | None, list[tuple[str, str]], bytes] | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.hits += 1
        return entry

    def put(self, key: tuple[str, str], code: int, reason: str | None, headers: list[tuple[str, str]],
            body: bytes) -> None:
        if key in self.entries or len(body) > self.max_file_bytes or self.size + len(body) > self.max_bytes:
            return
        self.entries[key] = (code, reason, headers, body)
        self.size += len(body)


class StaticHandler(_GateHandler):
    """Voila's static files: nothing secret, forwarded as they are, and kept (``StaticCache``)."""

    def initialize(self, gate: Gate, cache: StaticCache | None = None) -> None:
        super().initialize(gate)
        self.cache = cache

    async def get(self, path: str) -> None:
        cache = self.cache
        if cache is None or self.request.headers.get("Range"):
            await self.forward()
            return
        key = (self.request.uri or "", self.request.headers.get("Accept-Encoding", ""))
        if (hit := cache.get(key)) is not None:
            code, reason, headers, body = hit
            self.set_status(code, reason)
            self.clear_header("Content-Type")
            for name, value in headers:
                self.add_header(name, value)
            self.finish(body)
            return
        got: dict[str, Any] = {}
        parts: list[bytes] = []
        await self.forward(on_chunk=parts.append, on_status=got.update)
        headers = [(n, v) for n, v in got["headers"].get_all()
                   if n.lower() not in _HOP_BY_HOP and n.lower() != "set-cookie"] if got else []
        if got.get("code") == 200 and not any(n.lower() == "set-cookie" for n, _ in got["headers"].get_all()):
            body = b"".join(parts)
            if got["headers"].get("Content-Length") == str(len(body)):  # complete, not cut short
                cache.put(key, 200, got.get("reason"), headers, body)


class KernelHandler(_GateHandler):
    """A kernel's REST URL and Voila's shutdown URL: only with the secret its kernel is bound to."""

    def prepare(self) -> None:
        kernel_id = self.path_kwargs.get("kernel_id") or (self.path_args[0] if self.path_args else "")
        if not self.gate.kernels.allowed(kernel_id, cookie_values(self.request, BROWSER_COOKIE)):
            self.refuse(403, "Access denied", "this kernel belongs to another page")

    async def _forward_and_forget(self, kernel_id: str) -> None:
        # Voila's page sends its shutdown as a beacon whose XSRF value it cannot read: the kernel's
        # secret, checked above, is the credential here
        await self.forward(as_gate=True)
        if self.get_status() in (200, 204):
            self.gate.forget(kernel_id)

    async def get(self, kernel_id: str) -> None:
        await self.forward()

    async def delete(self, kernel_id: str) -> None:
        await self._forward_and_forget(kernel_id)

    async def post(self, kernel_id: str) -> None:
        await self._forward_and_forget(kernel_id)


class UpstreamRefused(OSError):
    """Voila did not accept the kernel websocket as asked (no 101, or not the v1 protocol)."""


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


async def connect_upstream(gate: Gate, uri: str, timeout: float = 20.0) -> iostream.IOStream:
    """Open the kernel websocket ``uri`` on Voila for the gate: the opening handshake over a plain
    TCP stream (v1 protocol, no compression, the gate's secret), then the stream itself, whose
    frames the gate relays to the page as they come (:class:`fsl_xai.study.gate.ServerFrames`)."""
    host, _, port = gate.upstream.rpartition(":")
    stream = await tcpclient.TCPClient().connect(host, int(port), timeout=timeout)
    try:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        lines = [f"GET {uri} HTTP/1.1", f"Host: {gate.upstream}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Protocol: {V1_PROTOCOL}",
                 *(f"{name}: {value}" for name, value in gate.upstream_headers().items())]
        await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n", max_bytes=64 * 1024), timeout)
        status, _, rest = head.decode("latin-1").partition("\r\n")
        headers = httputil.HTTPHeaders.parse(rest)
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if (status.split(" ")[1:2] != ["101"] or headers.get("Sec-WebSocket-Accept") != accept
                or headers.get("Sec-WebSocket-Protocol") != V1_PROTOCOL or headers.get("Sec-WebSocket-Extensions")):
            raise UpstreamRefused(f"Voila refused the kernel websocket: {status}")
    except BaseException:
        stream.close()
        raise
    return stream


class KernelSocket(websocket.WebSocketHandler):
    """A kernel's websocket, relayed to Voila after the checks above: every frame the page sends is
    checked, then sent on as one masked frame; what Voila sends goes to the page as the bytes it
    came in (whole frames only, found by their headers), not decoded and framed again."""

    gate: Gate
    upstream: iostream.IOStream | None

    def initialize(self, gate: Gate) -> None:
        self.gate, self.upstream, self.kernel_id = gate, None, ""

    async def get(self, kernel_id: str) -> None:
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if not self.gate.kernels.allowed(kernel_id, cookie_values(self.request, BROWSER_COOKIE)):
            self.set_status(403)
            self.finish(_page("Access denied", "this kernel belongs to another page"))
            return
        if V1_PROTOCOL not in offered:
            self.set_status(400)
            self.finish(_page("Protocol not supported", f"kernel websockets must use {V1_PROTOCOL}"))
            return
        self.kernel_id = kernel_id
        await super().get(kernel_id)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return V1_PROTOCOL if V1_PROTOCOL in subprotocols else None

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # the page gets Voila's frames as they are: neither side compresses

    async def open(self, *args: str, **kwargs: str) -> None:
        try:
            self.upstream = await connect_upstream(self.gate, self.request.uri or "")
        except OSError:  # refused, timed out (TimeoutError), or closed (StreamClosedError)
            self.close(1011, "the kernel is not available")
            return
        asyncio.ensure_future(self._relay(self.upstream))

    async def _relay(self, upstream: iostream.IOStream) -> None:
        frames = ServerFrames()
        page = self.ws_connection.stream if self.ws_connection is not None else None
        code: int | None = None
        try:
            while page is not None:
                chunk = await upstream.read_bytes(RELAY_CHUNK_BYTES, partial=True)
                sent = None
                for opcode, data in frames.feed(chunk):
                    if opcode is None:
                        sent = page.write(data)
                    elif opcode == WS_PING:  # answered here, as a client library would
                        upstream.write(client_frame(WS_PONG, data))
                    elif opcode == WS_CLOSE:
                        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                        raise iostream.StreamClosedError()
                if sent is not None:
                    await sent  # a page that reads slowly slows the reading from Voila
        except (iostream.StreamClosedError, RelayError):
            pass
        upstream.close()
        if self.upstream is upstream:
            self.upstream = None
        self.close(code if code is not None and 1000 <= code < 5000 and code not in (1005, 1006, 1015) else None)

    def on_message(self, message: str | bytes) -> None:
        problem = v1_frame_problem(message)
        if problem is not None:
            self.close(1003, problem[:120])
            return
        if self.upstream is not None and isinstance(message, bytes):
            try:
                self.upstream.write(client_frame(WS_BINARY, message))
            except iostream.StreamClosedError:
                self.close()

    def on_close(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not upstream.closed():
            try:  # a close frame, then the connection
                upstream.write(client_frame(WS_CLOSE, (1000).to_bytes(2, "big"))).add_done_callback(
                    lambda _: upstream.close())
            except iostream.StreamClosedError:
                upstream.close()


class NotFound(_GateHandler):
    def prepare(self) -> None:
        self.refuse(404, "Not found", "There is nothing here; open the link you were given.")


def make_app(gate: Gate) -> web.Application:
    """The gate's routes (anything else is a 404 of the gate's own)."""
    static = "|".join(re.escape(p) for p in STATIC_PREFIXES)
    kw = {"gate": gate}
    return web.Application([
        (r"/", PageHandler, kw),
        (rf"/((?:{static}).*)", StaticHandler, {**kw, "cache": StaticCache()}),
        (rf"/api/kernels/(?P<kernel_id>{KERNEL_ID})/channels", KernelSocket, kw),
        (rf"/api/kernels/(?P<kernel_id>{KERNEL_ID})", KernelHandler, kw),
        (rf"/voila/api/shutdown/(?P<kernel_id>{KERNEL_ID})", KernelHandler, kw),
        (r"/.*", NotFound, kw),
    ], websocket_max_message_size=MAX_FRAME_BYTES, xsrf_cookies=False)


def bind_sockets(host: str, port: int) -> list:
    """Listening sockets on host:port for the gate (every address of host; "" for all)."""
    return netutil.bind_sockets(port, address=host or None)


class GateThread:
    """Runs a gate on already-bound listening sockets in a thread of its own event loop.

    Args:
        sockets: the listening sockets (from ``tornado.netutil.bind_sockets``).
        gate: the gate.
    """

    def __init__(self, sockets: list, gate: Gate):
        self.sockets, self.gate = sockets, gate
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsl-xai-gate", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = httpserver.HTTPServer(make_app(self.gate), xheaders=False)
        server.add_sockets(self.sockets)
        self._ready.set()

        async def poll() -> None:
            while True:
                await asyncio.sleep(self.gate.settings.poll_s)
                await self.gate.prune()

        poller = asyncio.ensure_future(poll())
        try:
            await self._stop.wait()
        finally:
            poller.cancel()
            server.stop()
            self.gate.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and end the thread (connections still open are dropped)."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
