"""A rater page at the protocol level: the server-visible work of one rater's browser, without a
browser (for bench_rater_app.py's class of raters, whose browsers would otherwise share the
server's cores).

What a rater page asks of the server, in the order the real page does it (recorded from Chromium
on `fsl-xai study serve`, Voila 0.5.13, ipywidgets 8):

1. GET the page (through the gate, with the rater's token); the gate answers with the browser's
   secret cookie. While the page streams, the browser fetches the static files the page needs
   (Voila's scripts, styles and widget extensions, about 100 requests, each forwarded by the gate
   to Voila): the same list is fetched here, six at a time as a browser does per host;
2. GET the kernel's REST URL, then open the kernel websocket with the
   ``v1.kernel.websocket.jupyter.org`` sub-protocol (the gate refuses legacy frames);
3. what the widget manager does on connect: ``kernel_info_request``, then a comm to the target
   ``jupyter.widget.control`` with ``request_states`` (every widget's state in one reply), and
   that comm closed;
4. per answer: each answer widget set as a click does it (``update`` with its new ``index``, then
   the view's ``custom`` click event), then the Submit button's ``custom`` click; the answer is
   confirmed when the kernel's updates show the confirmation ("Answer saved." under a new screen);
5. on leaving, Voila's shutdown request for the kernel (the page's beacon).

Run alone, it answers a served study as a few raters at once, without a browser, and prints what
each one measured as JSON: ``python benchmarks/_ws_rater.py PORT TOKEN [TOKEN ...]`` (``--static
PATH`` for each file a page loads; ``--think LOW HIGH`` seconds before each answer).

The widgets are found by what the rater app is made of (``widgets/rater_app.py``): the VBox with
the CSS class ``fsl-rater-app`` holds the header, the question area (one row per question, its
answer widget classed ``fsl-q-<question id>``), the buttons (Back, Submit, Next) and the status
line. Every frame the kernel sends is applied to a local copy of the widget states (``comm_open``
and ``update``), as the page's widget manager does, without drawing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tornado import httpclient, websocket

from fsl_xai.study.gate import V1_PROTOCOL  # the only kernel websocket protocol the gate lets through

CONTROL_TARGET, CONTROL_VERSION = "jupyter.widget.control", "1.0.0"  # ipywidgets 8's control comm
#: connections a browser opens to one host at once (Chromium's limit for HTTP/1.1)
CONNECTIONS_PER_HOST = 6
#: how long a request may wait (a queued one included: tornado counts the queue against connect_timeout)
WAIT_S = 600.0
_KERNEL_IN_PAGE = re.compile(r'"kernelId":\s*"([0-9a-f-]{36})"')
_REF = "IPY_MODEL_"


class RaterClientError(RuntimeError):
    """The server did not answer as a rater page expects (what was expected, and what came)."""


def encode_frame(channel: str, msg_type: str, content: dict, session: str, metadata: dict | None = None) -> bytes:
    """One client message in the v1 websocket layout: the number of offsets (8 bytes, little
    endian), the offsets (where the channel, header, parent header, metadata and content start,
    and where the frame ends), then those parts."""
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "", "session": session,
              "date": datetime.now(UTC).isoformat(), "version": "5.2"}
    parts = [channel.encode(), json.dumps(header).encode(), b"{}", json.dumps(metadata or {}).encode(),
             json.dumps(content).encode()]
    n = len(parts) + 1
    offsets = [8 * (n + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([n.to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])


def decode_frame(frame: bytes) -> tuple[str, dict, dict]:
    """(channel, header, content) of a v1 frame the server sent (binary buffers are not read)."""
    n = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
    if n < 6 or offsets[-1] != len(frame):
        raise RaterClientError(f"a frame from the server that is not in the v1 layout ({n} offsets)")
    part = [frame[offsets[i]:offsets[i + 1]] for i in range(n - 1)]
    return part[0].decode(), json.loads(part[1]), json.loads(part[4])


def refs(value: Any) -> list[str]:
    """The model ids a widget's ``children`` state names."""
    return [v[len(_REF):] for v in value or [] if isinstance(v, str) and v.startswith(_REF)]


@dataclass
class PageTimes:
    """Seconds from ``start`` until the page's first byte came, the whole page, its static files,
    and until the page was ready (the first screen's widget states in)."""

    first_byte_s: float = float("nan")
    page_s: float = float("nan")
    statics_s: float = float("nan")
    ready_s: float = float("nan")
    static_requests: int = 0


@dataclass
class WidgetPage:
    """One page's connection: its HTTP requests, its kernel websocket and the widget states.

    Args:
        port: the server's port on 127.0.0.1 (the gate, or plain Voila for the peer).
        path: the page's path and query (``/?token=...``).
        static_paths: what the page loads besides itself (paths with their query), as recorded
            from a real page of the same server; fetched while the page streams.
    """

    port: int
    path: str
    static_paths: list[str] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)  # model id -> {"name": ..., "state": {...}}
    times: PageTimes = field(default_factory=PageTimes)
    kernel_id: str = ""
    cookie: str = ""
    session: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self._http = httpclient.AsyncHTTPClient(force_instance=True, max_clients=CONNECTIONS_PER_HOST)
        self._ws: websocket.WebSocketClientConnection | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task | None = None
        self._closed_because = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ HTTP
    async def _get(self, path: str) -> None:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        response = await self._http.fetch(f"{self.base}{path}", headers=headers, raise_error=False,
                                          connect_timeout=WAIT_S, request_timeout=WAIT_S, decompress_response=True)
        if response.code != 200:
            raise RaterClientError(f"GET {path.split('?')[0]} answered {response.code}, not 200")

    async def open(self, ready: Callable[[WidgetPage], bool], start: float) -> PageTimes:
        """Load the page and its static files, connect to its kernel, fetch every widget's state,
        and wait until ``ready(self)``; times are seconds since ``start`` (time.perf_counter)."""
        chunks: list[bytes] = []
        statics: list[asyncio.Task] = []
        cookies: list[str] = []

        def header(line: str) -> None:
            if line.lower().startswith("set-cookie:"):
                cookies.append(line.split(":", 1)[1].strip().split(";")[0])

        def chunk(data: bytes) -> None:
            if not chunks:  # the head is here: the browser starts on the files it names
                self.times.first_byte_s = time.perf_counter() - start
                statics.extend(asyncio.ensure_future(self._get(p)) for p in self.static_paths)
            chunks.append(data)

        response = await self._http.fetch(f"{self.base}{self.path}", raise_error=False, connect_timeout=WAIT_S,
                                          request_timeout=WAIT_S,
                                          header_callback=header, streaming_callback=chunk)
        self.times.page_s = time.perf_counter() - start
        page = b"".join(chunks).decode(errors="replace")
        if response.code != 200:
            text = re.sub(r"<[^>]+>", " ", page)
            raise RaterClientError(f"the page answered {response.code}: {' '.join(text.split())[:200]}")
        found = _KERNEL_IN_PAGE.search(page)
        if found is None:
            raise RaterClientError("the page names no kernel (no \"kernelId\" in its config)")
        self.kernel_id, self.cookie = found.group(1), "; ".join(cookies)
        await asyncio.gather(*statics)
        self.times.statics_s, self.times.static_requests = time.perf_counter() - start, len(statics)
        await self._get(f"/api/kernels/{self.kernel_id}?{int(time.time() * 1000)}")
        self._ws = await websocket.websocket_connect(
            httpclient.HTTPRequest(f"ws://127.0.0.1:{self.port}/api/kernels/{self.kernel_id}/channels"
                                   f"?session_id={self.session}", headers={"Cookie": self.cookie} if self.cookie
                                   else {}, connect_timeout=WAIT_S, request_timeout=WAIT_S),
            subprotocols=[V1_PROTOCOL], max_message_size=256 * 1024 * 1024)
        if self._ws.selected_subprotocol != V1_PROTOCOL:
            raise RaterClientError(f"the kernel websocket chose {self._ws.selected_subprotocol!r}, not {V1_PROTOCOL}")
        self._reader = asyncio.ensure_future(self._read(self._ws))
        await self.send("kernel_info_request", {})
        control = uuid.uuid4().hex
        await self.send("comm_open", {"comm_id": control, "target_name": CONTROL_TARGET, "data": {}},
                        {"version": CONTROL_VERSION})
        await self.send("comm_msg", {"comm_id": control, "data": {"method": "request_states"}})
        await self.send("comm_close", {"comm_id": control, "data": {}})
        await self.wait(ready, "the page's first screen")
        self.times.ready_s = time.perf_counter() - start
        return self.times

    # ------------------------------------------------------------------ websocket
    async def send(self, msg_type: str, content: dict, metadata: dict | None = None) -> None:
        if self._ws is None:
            raise RaterClientError("the kernel websocket is not open")
        await self._ws.write_message(encode_frame("shell", msg_type, content, self.session, metadata), binary=True)

    async def _read(self, ws: websocket.WebSocketClientConnection) -> None:
        while (frame := await ws.read_message()) is not None:
            if not isinstance(frame, bytes):
                self._closed_because = "the server sent a text frame (the legacy protocol)"
                break
            channel, head, content = decode_frame(frame)
            if channel == "iopub":
                self._apply(head["msg_type"], content)
                async with self._changed:
                    self._changed.notify_all()
        why = ws.close_reason or ws.close_code
        self._closed_because = self._closed_because or f"the kernel websocket closed ({why})"
        async with self._changed:
            self._changed.notify_all()

    def _apply(self, msg_type: str, content: dict) -> None:
        data = content.get("data") or {}
        if msg_type == "comm_open":
            state = data.get("state", {})
            self.models[content["comm_id"]] = {"name": state.get("_model_name", ""), "state": dict(state)}
        elif msg_type == "comm_msg" and data.get("method") == "update_states":
            for model_id, model in data.get("states", {}).items():
                self.models[model_id] = {"name": model.get("model_name", ""), "state": dict(model.get("state", {}))}
        elif msg_type == "comm_msg" and data.get("method") in ("update", "echo_update"):
            self.models.setdefault(content["comm_id"], {"name": "", "state": {}})["state"].update(data.get("state", {}))

    async def wait(self, condition: Callable[[WidgetPage], bool], what: str, timeout: float = 120.0) -> None:
        """Wait until ``condition(self)`` holds after the frames received so far."""
        async def check() -> None:
            async with self._changed:
                while not condition(self):
                    if self._closed_because:
                        raise RaterClientError(f"{self._closed_because} while waiting for {what}")
                    await self._changed.wait()
        try:
            await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            raise RaterClientError(f"no {what} within {timeout:.0f} s") from None

    async def click(self, model_id: str) -> None:
        """What a button's view sends when clicked."""
        await self.send("comm_msg", {"comm_id": model_id, "data": {"method": "custom", "content": {"event": "click"}}})

    async def choose(self, model_id: str, index: int) -> None:
        """Pick option ``index`` of a ToggleButtons widget as a click does, and wait until the kernel
        has taken it (its echo of the new index)."""
        self.models[model_id]["state"].pop("index", None)  # the echo puts it back
        await self.send("comm_msg", {"comm_id": model_id, "data": {"method": "update", "state": {"index": index},
                                                                  "buffer_paths": []}})
        await self.click(model_id)
        await self.wait(lambda p: p.state(model_id).get("index") == index, "the kernel's echo of an answer")

    def state(self, model_id: str) -> dict:
        return self.models.get(model_id, {}).get("state", {})

    def find(self, name: str, test: Callable[[dict], bool] = lambda s: True) -> str | None:
        """The first model named ``name`` whose state passes ``test``."""
        return next((i for i, m in self.models.items() if m["name"] == name and test(m["state"])), None)

    async def close(self, shutdown: bool = True) -> None:
        """Leave the page: Voila's shutdown request for its kernel (as the page's beacon), then the socket."""
        try:
            if shutdown and self.kernel_id:
                await self._http.fetch(f"{self.base}/voila/api/shutdown/{self.kernel_id}", method="POST", body=b"",
                                       headers={"Cookie": self.cookie} if self.cookie else {}, raise_error=False,
                                       request_timeout=60)
        finally:
            if self._ws is not None:
                self._ws.close()
            if self._reader is not None:
                await asyncio.wait([self._reader], timeout=10)
            self._http.close()


# ---------------------------------------------------------------------- the rater app
def app_parts(page: WidgetPage) -> dict[str, str] | None:
    """The rater app's header, question area, Submit button and status line (model ids), or None
    before the app's state is in."""
    app = page.find("VBoxModel", lambda s: "fsl-rater-app" in s.get("_dom_classes", []))
    if app is None:
        return None
    children = refs(page.state(app).get("children"))
    if len(children) < 7:  # an access refusal shows one HTML widget instead
        return None
    header, _, _, _, questions, buttons, status = children[:7]
    row = refs(page.state(buttons).get("children"))
    return {"header": header, "questions": questions, "submit": row[1] if len(row) > 1 else "", "status": status}


def screen_text(page: WidgetPage) -> str:
    """The header's text: which case of how many (or the thank-you screen)."""
    parts = app_parts(page)
    return re.sub(r"<[^>]+>", " ", str(page.state(parts["header"]).get("value", ""))) if parts else ""


def answer_widgets(page: WidgetPage, parts: dict[str, str]) -> list[str]:
    """The answer widgets on the screen now, in question order (ToggleButtons only: the rater
    answers every choice and scale; an optional comment is left empty)."""
    out = []
    for row in refs(page.state(parts["questions"]).get("children")):
        for child in refs(page.state(row).get("children")):
            model = page.models.get(child, {})
            if model.get("name") == "ToggleButtonsModel" and any(c.startswith("fsl-q-") for c in
                                                                 model["state"].get("_dom_classes", [])):
                out.append(child)
    return out


def rater_ready(n_cases: int | None = None) -> Callable[[WidgetPage], bool]:
    """The first screen is in: "Case 1 of n_cases" (any screen of the app when n_cases is None:
    a rater who comes back resumes at the first unanswered case)."""
    if n_cases is None:
        return lambda page: bool(screen_text(page).strip())
    return lambda page: f"Case 1 of {n_cases}" in screen_text(page)


async def answer_screens(page: WidgetPage, seed: int, think: tuple[float, float] = (0.3, 1.2)) -> list[float]:
    """Answer every screen as a rater does: look at the case (a think time), pick an option of each
    answer widget, click Submit; milliseconds from the Submit click to the confirmation (the status
    says "saved" and the screen moved on: the next case, the same case's revised step, or the end)."""
    rng = random.Random(seed)
    times = []
    while "cases are answered" not in screen_text(page):
        parts = app_parts(page)
        if parts is None:
            raise RaterClientError("the rater app's widgets are not in the page's state")
        await asyncio.sleep(rng.uniform(*think))  # looking at the case
        for widget in answer_widgets(page, parts):
            await page.choose(widget, rng.randrange(len(page.state(widget).get("_options_labels", [])) or 1))
        before = (screen_text(page), page.state(parts["submit"]).get("description"))

        def confirmed(p: WidgetPage, before=before, parts=parts) -> bool:
            moved = (screen_text(p), p.state(parts["submit"]).get("description")) != before
            return moved and "fsl-saved" in str(p.state(parts["status"]).get("value", ""))

        start = time.perf_counter()
        await page.click(parts["submit"])
        await page.wait(confirmed, "the confirmation of an answer")
        times.append((time.perf_counter() - start) * 1000)
    return times


# ---------------------------------------------------------------------- the bare peer page
def bare_ready(page: WidgetPage) -> bool:
    return page.find("ButtonModel", lambda s: s.get("description") == "Click") is not None


async def click_counter(page: WidgetPage, n_clicks: int, seed: int, think: tuple[float, float] = (0.3, 1.2)
                        ) -> list[float]:
    """The peer's user: click the button, wait until its label counts one up; milliseconds each."""
    rng = random.Random(seed)
    button = page.find("ButtonModel", lambda s: s.get("description") == "Click")
    label = page.find("LabelModel")
    if button is None or label is None:
        raise RaterClientError("the bare page has no Click button and label in its state")
    times = []
    for _ in range(n_clicks):
        await asyncio.sleep(rng.uniform(*think))
        want = str(int(page.state(label)["value"]) + 1)
        start = time.perf_counter()
        await page.click(button)

        def counted(p: WidgetPage, want: str = want, label: str = label) -> bool:
            return p.state(label).get("value") == want

        await page.wait(counted, "the label's new count")
        times.append((time.perf_counter() - start) * 1000)
    return times


# ---------------------------------------------------------------------- run alone
async def _answer_all(port: int, tokens: list[str], statics: list[str], think: tuple[float, float]) -> list[dict]:
    pages = [WidgetPage(port, f"/?token={token}", statics) for token in tokens]
    try:
        start = time.perf_counter()
        opened = await asyncio.gather(*(page.open(rater_ready(), start) for page in pages))
        clicks = await asyncio.gather(*(answer_screens(page, i, think) for i, page in enumerate(pages)))
    finally:
        for page in pages:
            await page.close()
    return [{"kernel_id": page.kernel_id, **dataclasses.asdict(times), "clicks_ms": ms}
            for page, times, ms in zip(pages, opened, clicks, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer every case of a served study as protocol-level raters "
                                                 "(no browser); prints JSON, one entry per token.")
    parser.add_argument("port", type=int, help="the port of `fsl-xai study serve` on 127.0.0.1")
    parser.add_argument("tokens", nargs="+", help="rater tokens (from `fsl-xai study add-raters`)")
    parser.add_argument("--static", action="append", default=[], metavar="PATH",
                        help="a file the page loads (path and query), fetched with the page; repeatable")
    parser.add_argument("--think", nargs=2, type=float, default=(0.3, 1.2), metavar=("LOW", "HIGH"),
                        help="seconds a rater looks at a case before answering (uniform; default 0.3 1.2)")
    args = parser.parse_args(argv)
    try:
        raters = asyncio.run(_answer_all(args.port, args.tokens, args.static, tuple(args.think)))
    except (RaterClientError, OSError, httpclient.HTTPClientError, websocket.WebSocketError) as exc:
        print(f"a rater could not answer the study on port {args.port}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"raters": raters}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
