"""The gate: a small front server that every request of a rater passes before it reaches Voila.

``fsl-xai study serve`` runs Voila on an internal port of 127.0.0.1 and this gate, inside its own
process, on the address raters use. The gate:

- checks the rater's token (``?token=`` of the page) against the study store *before* the page
  request goes to Voila, so a request without a valid token starts no kernel (a 403 page);
- caps the kernels: beyond ``max_kernels`` open rater pages the answer is a "too many open
  sessions" page (503) and no kernel starts; a kernel leaves the count when Voila culls it (Voila's
  kernel manager runs with an idle timeout, see ``serve.voila_command``) or its page shuts it down;
- binds each kernel to the browser whose page load started it: the page request carries (or its
  answer sets) the browser's secret, an HttpOnly, SameSite=Strict cookie that the gate issued and
  signed, and every request naming the kernel (its websocket, its REST URL, Voila's shutdown URL)
  must carry the secret its kernel was bound to. A kernel id seen elsewhere is no credential;
  another rater's browser cannot attach to it. The secret is known before Voila answers, so the
  page streams through the gate from its first byte;
- accepts only the ``v1.kernel.websocket.jupyter.org`` websocket protocol, checks the layout of
  every frame a page sends (the part count and the offsets) and closes a socket on a malformed
  one: Voila 0.5.13 reads a frame's first 8 bytes as the part count and builds a list that long,
  so a legacy-layout frame never reaches it;
- relays what Voila sends as the bytes it came in: whole frames, found by their headers
  (:class:`ServerFrames`), neither decoded nor framed again (most of a click's frames go that way:
  the kernel's status, echoes and widget updates), and answers Voila's pings itself;
- keeps the rater's token away from Voila: the page request goes on without it, and once the page
  names its kernel the gate hands the token to that kernel as a file named after the kernel in a
  folder only this user can read (``FSL_XAI_STUDY_HANDOFF``; ``widgets.rater_app`` reads and
  deletes it). So the token is in no URL that Voila logs or passes on: in particular not to Voila's
  ``/voila/query`` websocket, which a preheated kernel (``--preheat``) would otherwise be told the
  query string through, unauthenticated, by kernel id;
- forwards only what a rater page needs: the page itself, Voila's static files, and the kernel
  URLs above. Everything else is a 404 from the gate;
- is the only client Voila serves: Voila listens on 127.0.0.1, where any user of the machine can
  connect, so it runs with :class:`GateIdentityProvider`, which lets in only requests carrying a
  random secret that ``serve`` made for this run and handed to Voila in a private file (never on a
  command line, which every local user can read). The gate adds the secret to what it forwards;
  a direct request to Voila's port without it gets no page, no kernel and no kernel URL.

Why a front server rather than Voila's prelaunch hook or a Jupyter server extension: the hook
sees only the page request, not the kernel websockets, so it can refuse a token but neither bind
a kernel to its page nor refuse a legacy or malformed websocket; and Voila 0.5 run as its own
application loads no server extensions. A proxy in front sees every request and every frame,
needs nothing from Voila's internals, and keeps working across Voila versions. Its cost, one
more hop per frame inside the same machine, is measured by ``benchmarks/bench_rater_app.py``.

This module holds what the gate decides (tokens, slots, secrets, frames); the tornado handlers
and the thread that serves them are in :mod:`fsl_xai.study.gate_server`.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .session import handoff_wake_path
from .store import ResponseStore

try:  # tornado comes with Voila (the ui extra)
    from tornado import httpclient, httputil
except ImportError as exc:  # pragma: no cover - Voila, checked before, brings tornado
    raise ImportError("the rater gate needs tornado, installed with Voila: pip install 'fsl-xai[ui]'") from exc

try:  # jupyter_server comes with Voila; the identity provider below runs inside Voila's process
    from jupyter_server.auth.identity import IdentityProvider
except ImportError as exc:  # pragma: no cover - Voila, checked before, brings jupyter_server
    raise ImportError("the rater gate needs jupyter_server, installed with Voila: pip install 'fsl-xai[ui]'"
                      ) from exc

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
#: the file (its path in this variable of Voila's environment) that holds the secret the gate adds
#: to every request it forwards; Voila's identity provider reads it once and deletes it
GATE_SECRET_FILE_ENV = "FSL_XAI_GATE_SECRET_FILE"
#: the header that carries the secret from the gate to Voila
GATE_SECRET_HEADER = "X-Fsl-Xai-Gate"
BROWSER_COOKIE = "fsl_browser"
KERNEL_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: frame parts a page may send: channel, header, parent header, metadata, content, buffers; the end offset
MIN_FRAME_OFFSETS, MAX_FRAME_OFFSETS = 6, 64


@dataclass
class GateSettings:
    """What the gate allows.

    Args:
        max_kernels: rater pages (kernels) open at once; a page beyond it gets "too many open sessions".
        poll_s: how often the gate asks Voila which of its kernels still live (culled ones leave the count).
    """

    max_kernels: int = 40
    poll_s: float = 2.0


@dataclass(frozen=True)
class _Binding:
    secret: str
    rater: str  # the pseudonym whose token opened the page


@dataclass
class KernelRegistry:
    """The kernels started through the gate, each bound to the secret of the browser whose page load started it."""

    max_kernels: int
    bindings: dict[str, _Binding] = field(default_factory=dict)
    pending: int = 0  # page loads let through whose kernel id is not known yet

    def __len__(self) -> int:
        return len(self.bindings) + self.pending

    def reserve(self) -> bool:
        """Take a slot for a page load; False when every slot is taken."""
        if len(self) >= self.max_kernels:
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending = max(0, self.pending - 1)

    def bind(self, kernel_id: str, rater: str, secret: str) -> None:
        """Turn a reserved slot into a binding of the kernel to the secret of the browser that started it."""
        self.release()
        self.bindings[kernel_id] = _Binding(secret, rater)

    def allowed(self, kernel_id: str, offered: list[str]) -> bool:
        binding = self.bindings.get(kernel_id)
        return binding is not None and any(hmac.compare_digest(binding.secret, s) for s in offered)

    def forget(self, kernel_id: str) -> None:
        self.bindings.pop(kernel_id, None)


class GateIdentityProvider(IdentityProvider):
    """Voila's identity provider behind the gate: a request is let in only when it carries the
    gate's secret in the ``X-Fsl-Xai-Gate`` header. Jupyter's other ways in are closed: a
    ``?token=`` in the URL (the rater's study token is there, and is no credential for Voila) and
    login cookies (none is set, none is read). Voila is started with
    ``--Voila.identity_provider_class=fsl_xai.study.gate.GateIdentityProvider``.

    The secret comes from the file named by ``FSL_XAI_GATE_SECRET_FILE``, read once and deleted;
    without it Voila refuses to start rather than serve without a check.
    """

    def __init__(self, **kwargs):
        path = os.environ.pop(GATE_SECRET_FILE_ENV, "")
        try:
            with open(path) as f:
                secret = f.read().strip()
            os.unlink(path)
        except OSError as exc:
            raise RuntimeError(f"the gate's secret cannot be read from {GATE_SECRET_FILE_ENV}={path!r} ({exc}); "
                               "Voila is served only behind the gate") from None
        if len(secret) < 32:
            raise RuntimeError("the gate's secret is too short; Voila is served only behind the gate")
        kwargs["token"] = secret
        super().__init__(**kwargs)

    @property
    def auth_enabled(self) -> bool:
        return True

    def get_token(self, handler) -> str | None:
        return handler.request.headers.get(GATE_SECRET_HEADER, "")

    async def get_user_token(self, handler):
        offered = self.get_token(handler) or ""
        if not offered or not hmac.compare_digest(offered.encode(), str(self.token).encode()):
            return None
        return self.generate_anonymous_user(handler)

    def get_user_cookie(self, handler):
        return None

    def set_login_cookie(self, handler, user) -> None:
        return None


def cookie_values(request: httputil.HTTPServerRequest, name: str) -> list[str]:
    """Every value of cookie ``name`` the request carries (two cookies may share a name at two paths)."""
    values = []
    for header in request.headers.get_list("Cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                values.append(value.strip('"'))
    return values


def v1_frame_problem(frame: str | bytes) -> str | None:
    """Why a frame a page sent is not a well-formed v1 kernel message (None when it is)."""
    if not isinstance(frame, bytes):
        return "a text frame (the legacy protocol); only binary v1 frames are accepted"
    if len(frame) < 8:
        return "a frame shorter than its part count"
    n = int.from_bytes(frame[:8], "little")
    if not MIN_FRAME_OFFSETS <= n <= MAX_FRAME_OFFSETS or len(frame) < 8 * (n + 1):
        return f"a frame that declares {n} parts"
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
    if offsets[0] != 8 * (n + 1) or offsets[-1] != len(frame) or offsets != sorted(offsets):
        return "a frame whose part offsets do not fit it"
    return None


#: the largest frame the gate relays from Voila to a page (Voila's messages with images are far smaller)
MAX_RELAYED_FRAME_BYTES = 256 * 1024 * 1024
WS_CLOSE, WS_PING, WS_PONG = 0x8, 0x9, 0xA


class RelayError(ValueError):
    """Voila sent bytes the gate will not relay (a frame that is masked, compressed or too large)."""


class ServerFrames:
    """The whole frames in the byte stream a websocket server (Voila) sends, found by their headers
    alone (RFC 6455: unmasked, no extension negotiated), so that they are relayed to the page as
    they came, without decoding, copying per frame, or re-framing; the bytes of a frame not yet
    whole wait for the rest. Control frames (close, ping, pong) are the gate's to answer, not the
    page's, and are handed back apart.

    Args:
        max_frame: the largest frame accepted (RelayError beyond it).
    """

    def __init__(self, max_frame: int = MAX_RELAYED_FRAME_BYTES):
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int | None, bytes]]:
        """Add ``data``; every complete piece so far, in order: ``(None, bytes)`` for a run of data
        frames to send on as they are, ``(opcode, payload)`` for a control frame."""
        buf = self._buffer
        buf += data
        out: list[tuple[int | None, bytes]] = []
        pos = run = 0
        end_of_data = len(buf)
        while end_of_data - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if second & 0x80 or first & 0x70:
                raise RelayError("Voila sent a masked or compressed frame, which the gate does not relay")
            length, head = second & 0x7F, 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if end_of_data - pos < head:
                break
            if head > 2:
                length = int.from_bytes(buf[pos + 2:pos + head], "big")
            if length > self.max_frame:
                raise RelayError(f"Voila sent a frame of {length} bytes, more than the gate relays")
            end = pos + head + length
            if end > end_of_data:
                break
            opcode = first & 0x0F
            if opcode >= WS_CLOSE:
                if pos > run:
                    out.append((None, bytes(buf[run:pos])))
                out.append((opcode, bytes(buf[pos + head:end])))
                run = end
            pos = end
        if pos > run:
            out.append((None, bytes(buf[run:pos])))
        del buf[:pos]
        return out


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final websocket frame from the gate to Voila (a client's frame: masked, RFC 6455)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = secrets.token_bytes(4)
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Gate:
    """The state of one gate: where Voila is, the study store, the kernels and their secrets.

    Args:
        db: the study store (tokens are checked against it, read-only).
        upstream_port: Voila's port on 127.0.0.1.
        settings: the limits.
    """

    def __init__(self, db: Path, upstream_port: int, settings: GateSettings, upstream_secret: str = "",
                 handoff: Path | None = None):
        self.db, self.upstream = db, f"127.0.0.1:{upstream_port}"
        self.settings = settings
        self.handoff = handoff  # where each kernel finds its rater's token (None: in the URL, as given)
        self.upstream_secret = upstream_secret  # Voila's secret (GateIdentityProvider), added to every request
        self.kernels = KernelRegistry(settings.max_kernels)
        self._key = secrets.token_bytes(32)  # signs the browser secrets this gate issues
        self._store: ResponseStore | None = None
        self._client: httpclient.AsyncHTTPClient | None = None

    # ------------------------------------------------------------------ helpers
    def client(self) -> httpclient.AsyncHTTPClient:
        if self._client is None:  # made inside the gate's event loop
            self._client = httpclient.AsyncHTTPClient(force_instance=True,
                                                      max_clients=2 * self.settings.max_kernels + 32)
        return self._client

    def rater(self, token: str | None) -> str:
        """The pseudonym behind a token; AccessDenied otherwise."""
        if self._store is None:
            self._store = ResponseStore(self.db, read_only=True)
        return self._store.authenticate(token).pseudonym

    def upstream_headers(self) -> dict[str, str]:
        """What the gate adds to a request it sends Voila (the secret Voila checks)."""
        return {GATE_SECRET_HEADER: self.upstream_secret} if self.upstream_secret else {}

    def _signature(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), "sha256").hexdigest()[:32]

    def browser_secret(self, offered: list[str]) -> tuple[str, bool]:
        """The browser's secret: one it offers that this gate issued, else a new one (then True)."""
        for value in offered:
            nonce, _, signature = value.partition(".")
            if nonce and hmac.compare_digest(signature, self._signature(nonce)):
                return value, False
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._signature(nonce)}", True

    def hand_over(self, kernel_id: str, token: str) -> None:
        """Give the kernel its rater's token: a file named after the kernel in the private hand-off
        folder, written whole (a kernel never reads half of it)."""
        if self.handoff is None:
            return
        part = self.handoff / f".{kernel_id}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.replace(part, self.handoff / kernel_id)
        self._wake(kernel_id)

    def _wake(self, kernel_id: str) -> None:
        """Wake the kernel sleeping on its FIFO (``session.handoff_wake_path``) now that its token
        is there; nothing to do when it is not waiting on one (it polls, or has not started to wait
        and will find the file when it does)."""
        assert self.handoff is not None
        try:  # non-blocking: no reader is ENXIO, never a wait inside the gate's event loop
            fd = os.open(handoff_wake_path(self.handoff, kernel_id), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            os.write(fd, b"\n")
        except OSError:  # full (woken already): the kernel reads the file either way
            pass
        finally:
            os.close(fd)

    def forget(self, kernel_id: str) -> None:
        """The kernel is gone: forget its binding and any token it did not pick up."""
        self.kernels.forget(kernel_id)
        if self.handoff is not None:
            (self.handoff / kernel_id).unlink(missing_ok=True)
            handoff_wake_path(self.handoff, kernel_id).unlink(missing_ok=True)

    async def prune(self) -> None:
        """Forget the kernels Voila no longer has (culled when idle, or shut down)."""
        for kernel_id in list(self.kernels.bindings):
            try:
                response = await self.client().fetch(f"http://{self.upstream}/api/kernels/{kernel_id}",
                                                     headers=self.upstream_headers(), raise_error=False,
                                                     request_timeout=10)
            except (OSError, httpclient.HTTPClientError):
                continue  # Voila busy or stopping: ask again later
            if response.code == 404:
                self.forget(kernel_id)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._client is not None:
            self._client.close()
