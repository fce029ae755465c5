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
- forwards only what a rater page needs: the page itself, Voila's static files, and the kernel
  URLs above. Everything else is a 404 from the gate.

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
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .store import ResponseStore

try:  # tornado comes with Voila (the ui extra)
    from tornado import httpclient, httputil
except ImportError as exc:  # pragma: no cover - Voila, checked before, brings tornado
    raise ImportError("the rater gate needs tornado, installed with Voila: pip install 'fsl-xai[ui]'") from exc

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
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


class Gate:
    """The state of one gate: where Voila is, the study store, the kernels and their secrets.

    Args:
        db: the study store (tokens are checked against it, read-only).
        upstream_port: Voila's port on 127.0.0.1.
        settings: the limits.
    """

    def __init__(self, db: Path, upstream_port: int, settings: GateSettings):
        self.db, self.upstream = db, f"127.0.0.1:{upstream_port}"
        self.settings = settings
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

    async def prune(self) -> None:
        """Forget the kernels Voila no longer has (culled when idle, or shut down)."""
        for kernel_id in list(self.kernels.bindings):
            try:
                response = await self.client().fetch(f"http://{self.upstream}/api/kernels/{kernel_id}",
                                                     raise_error=False, request_timeout=10)
            except (OSError, httpclient.HTTPClientError):
                continue  # Voila busy or stopping: ask again later
            if response.code == 404:
                self.kernels.forget(kernel_id)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._client is not None:
            self._client.close()
