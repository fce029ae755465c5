"""Fixtures for the real-browser suite: JupyterLab and Voila servers plus headless Chromium.

Every test in tests/ui is marked ``ui`` (deselect with ``-m "not ui"``). Fixtures:

- ``servers``: starts servers for one test and kills them (by pid, with their process group and
  every child left) when the test ends::

      lab = servers.lab(root_dir=tmp_path)            # Server(url, token, port, pid, log_path)
      app = servers.voila(tmp_path / "app.ipynb")     # Voila on one notebook
      page.goto(lab.url_for("lab"))                   # token added for JupyterLab

- ``session_servers``: the same for the whole session (for a server shared by several tests).
- ``jupyter_lab``: one JupyterLab for the session, rooted at the project's ``notebooks/`` (or the
  project root while that folder does not exist).
- ``browser``: Debian's Chromium at /usr/bin/chromium driven by Playwright (never
  ``playwright install``), one per session.
- ``page``: a fresh page per test (1280x900), with ``page_errors`` collecting console errors
  and uncaught page errors; requests to hosts other than this machine are answered empty and
  listed in ``page_errors.external``; a screenshot of the page is saved to
  ``artifacts/screenshots/<test>.png`` after every test.
- ``page_errors``: ``page_errors.assert_none(ignore=[regex, ...])`` fails listing every error and
  every request off the machine.

No page may ask anything of another machine (the workbench shows patient images): a test whose page
did fails, in ``assert_none`` or, if the test never called it, when the test ends. Voila serves its
pages with the project's ``fsl-xai`` template (share/jupyter/voila/templates/fsl-xai), which drops
the lab template's Font Awesome links to a CDN (Voila's own bundle serves the icons).

Server output goes to a log file; when a server does not come up, the error shows its log.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
START_TIMEOUT_S = 120.0  # generous: the team's 2 cores may be busy
STOP_TIMEOUT_S = 15.0
UI_DIR = Path(__file__).resolve().parent
#: the project's Jupyter data folder: its Voila template serves pages with nothing from another machine
SHARE = ROOT / "share" / "jupyter"
VOILA_TEMPLATE = "fsl-xai"
OUTSIDE = re.compile(r"^(https?|wss?)://(?!(127\.\d+\.\d+\.\d+|localhost|\[::1\])[:/])")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # this hook sees every collected item of the session: mark only those under tests/ui
    for item in items:
        if UI_DIR in item.path.parents:
            item.add_marker(pytest.mark.ui)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Server:
    """A server process started by a test (in its own process group)."""

    kind: str
    process: subprocess.Popen
    port: int
    log_path: Path
    token: str = ""
    base_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """The start page (JupyterLab: /lab with the token; Voila: the notebook)."""
        return self.url_for("lab" if self.kind == "lab" else "")

    def url_for(self, path: str) -> str:
        url = f"{self.base_url}/{path.lstrip('/')}"
        if self.token:
            url += ("&" if "?" in url else "?") + f"token={self.token}"
        return url

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no log)"

    def wait_ready(self, probe: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with code {self.process.returncode} before "
                                   f"answering; its log:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url_for(probe), timeout=10) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the open response
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"{self.kind} server on port {self.port} did not answer within {timeout:.0f} s "
                           f"({last}); its log:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM the process group (the server shuts its kernels down), then SIGKILL whatever
        is left: the group, and every child by pid (kernels run in process groups of their own)."""
        pid = self.pid
        descendants = _children(pid)
        if self.process.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=STOP_TIMEOUT_S)
        for child in descendants:
            if _alive(child):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _server_env(home: Path) -> dict[str, str]:
    """Environment for a server: the venv first on PATH (kernels are started as `python`), and
    Jupyter's config, data and runtime folders kept out of the user's home."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                      ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    # user settings: no "get notified about Jupyter news?" prompt over the page
    settings = home / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # the project's Voila template (Voila looks for templates in the Jupyter data folders)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(SHARE), env.get("JUPYTER_PATH", "")) if p)
    env.setdefault("PYTHONPATH", "")
    # notebooks import fsl_xai and widgets from the checkout even without an editable install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env["PYTHONPATH"]) if p)
    return env


class Servers:
    """Starts JupyterLab / Voila servers and stops every one of them in ``stop_all``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[Server] = []

    def _start(self, kind: str, argv: list[str], port: int, cwd: Path, token: str = "") -> Server:
        n = len(self.started)
        log_path = self.workdir / f"{kind}-{n}-{port}.log"
        log = open(log_path, "wb")
        try:
            process = subprocess.Popen(argv, cwd=cwd, env=_server_env(self.workdir / f"home-{n}"),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            log.close()
        server = Server(kind, process, port, log_path, token, f"http://127.0.0.1:{port}")
        self.started.append(server)
        return server

    def lab(self, root_dir: Path | str | None = None, timeout: float = START_TIMEOUT_S) -> Server:
        """JupyterLab serving ``root_dir`` (default: the project's notebooks/ or root)."""
        root = Path(root_dir) if root_dir is not None else _default_lab_root()
        port, token = free_port(), secrets.token_hex(16)
        argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                f"--ServerApp.token={token}", "--ServerApp.ip=127.0.0.1", "--allow-root",
                f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
                # no calls to the internet from the page or the server
                "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        server = self._start("lab", argv, port, root, token)
        server.wait_ready("api/status", timeout)
        return server

    def voila(self, notebook: Path | str, timeout: float = START_TIMEOUT_S, extra_args: tuple[str, ...] = ()) -> Server:
        """Voila on one notebook, with the project's template; its page is ``server.url``."""
        nb = Path(notebook).resolve()
        if not nb.is_file():
            raise FileNotFoundError(f"no notebook {nb} to serve with Voila")
        if not (SHARE / "voila" / "templates" / VOILA_TEMPLATE / "index.html.j2").is_file():
            raise FileNotFoundError(f"the Voila template {VOILA_TEMPLATE} is missing from {SHARE}")
        port = free_port()
        argv = [sys.executable, "-m", "voila", str(nb), "--no-browser", f"--port={port}",
                "--Voila.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--template={VOILA_TEMPLATE}", *extra_args]
        server = self._start("voila", argv, port, nb.parent)
        # a static file answers as soon as Voila listens; probing "/" would start a kernel
        server.wait_ready("voila/static/voila.js", timeout)
        return server

    def stop_all(self) -> None:
        errors = []
        while self.started:
            server = self.started.pop()
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{server.kind} pid {server.pid}: {exc}")
        if errors:
            raise RuntimeError("could not stop every server: " + "; ".join(errors))


def _default_lab_root() -> Path:
    notebooks = ROOT / "notebooks"
    return notebooks if notebooks.is_dir() else ROOT


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Servers for one test; all stopped when the test ends, whatever happened."""
    factory = Servers(tmp_path_factory.mktemp("servers"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def session_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Servers shared by the session; all stopped when the session ends."""
    factory = Servers(tmp_path_factory.mktemp("session-servers"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def jupyter_lab(session_servers: Servers) -> Server:
    """One JupyterLab for the session, rooted at notebooks/ (or the project root)."""
    return session_servers.lab()


# ---------------------------------------------------------------------------- browser
@dataclass
class PageErrors:
    """Console errors and uncaught exceptions seen by one page."""

    console: list[str] = field(default_factory=list)
    page: list[str] = field(default_factory=list)
    #: URLs outside this machine that the page asked for (answered empty, never fetched)
    external: list[str] = field(default_factory=list)

    def all(self, ignore: list[str] | tuple[str, ...] = ()) -> list[str]:
        errors = [f"console: {m}" for m in self.console] + [f"page error: {m}" for m in self.page]
        return [e for e in errors if not any(re.search(p, e) for p in ignore)]

    def assert_none(self, ignore: list[str] | tuple[str, ...] = ()) -> None:
        """Fail listing every error not matched by one of the ``ignore`` regexes, and every request
        off the machine (``ignore`` never excuses those)."""
        self.assert_local()
        errors = self.all(ignore)
        assert not errors, "the page reported errors:\n" + "\n".join(errors)

    def assert_local(self) -> None:
        """Fail listing every address off this machine that the page asked for."""
        assert not self.external, ("the page asked another machine for (answered empty here; nothing may leave "
                                   "the machine):\n" + "\n".join(dict.fromkeys(self.external)))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (one per test module).

    Not one per session: while Playwright's sync API is open, its event loop counts as the main
    thread's running loop (``asyncio.get_running_loop()`` returns it), so widget code tested after
    it would take the path it takes inside a kernel (work deferred to a loop that never runs)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium chromium-driver), "
                    "or deselect the browser tests with -m 'not ui'", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser, page_errors: PageErrors, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page (own context) that records console errors and page errors; a screenshot is
    saved to artifacts/screenshots/ after the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    # Nothing leaves the machine: an outside request gets an empty answer instead of a DNS failure
    # (so the page does not hang on it) and is listed; the test fails on it.
    def _outside(route, request) -> None:
        page_errors.external.append(request.url)
        content_type = "text/css" if request.resource_type == "stylesheet" else "text/plain"
        route.fulfill(status=200, body="", content_type=content_type)

    context.route(OUTSIDE, _outside)
    new_page = context.new_page()
    new_page.on("console", lambda msg: page_errors.console.append(f"{msg.text} ({msg.location.get('url', '')})")
                if msg.type == "error" else None)
    new_page.on("pageerror", lambda exc: page_errors.page.append(str(exc)))
    # WebSockets do not pass through context.route: list the outside ones too
    new_page.on("websocket", lambda ws: page_errors.external.append(ws.url) if OUTSIDE.match(ws.url) else None)
    try:
        yield new_page
        # a test that passed without calling assert_none still fails on a request off the machine
        if getattr(request.node, "report_call", None) is not None and request.node.report_call.passed:
            page_errors.assert_local()
    finally:
        try:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])[:120]
            new_page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        except Exception:  # a screenshot is a courtesy; never hide the test's own result
            pass
        context.close()
