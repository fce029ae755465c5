"""Serve the rater app with Voila as a child process that this process owns.

``fsl-xai study serve`` must never leave a server running after it is told to stop: raters
would keep answering into a study the organiser believes closed. So:

- the port is checked before Voila starts, and Voila is told not to move to another port
  (``port_retries=0``): a taken port is an error, and the address printed is the one served,
  printed only once Voila accepts connections there;
- Voila runs in its own session (process group), so a Ctrl-C in the terminal reaches this
  process only, which then stops Voila in order;
- every descendant (Voila and the kernels it starts, which jupyter_client puts in sessions of
  their own) is tracked while it lives; on SIGTERM or SIGINT Voila gets SIGTERM (it shuts its
  kernels down), and after a grace period whatever is left of the tracked processes is killed,
  each checked by its start time so that a reused pid is never signalled.

Raters never talk to Voila directly: Voila listens on an internal port of 127.0.0.1 and the gate
(:mod:`fsl_xai.study.gate`, in this process) on the address raters use. The gate checks the
token before any kernel starts, caps the kernels, binds each kernel to the page that started it
and refuses legacy or malformed kernel websockets; Voila's kernel manager culls kernels left idle
without a page. Voila's port, open to every user of the machine, answers only requests carrying a
secret made for this run (``gate.GateIdentityProvider``), handed to Voila in a file only this user
can read, which Voila deletes once read. SIGTERM / SIGINT stop the gate first (no new requests),
then Voila and its kernels.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ..errors import FslXaiError
from .store import ResponseStore

#: the variable that tells a rater kernel where the gate hands it its token (``widgets.rater_app``)
HANDOFF_ENV = "FSL_XAI_STUDY_HANDOFF"
VOILA_STOP_GRACE_S = 10.0  # Voila's own shutdown asks each kernel to stop and waits for it
KERNEL_STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 180.0
POLL_S = 0.2


class ServeError(FslXaiError, RuntimeError):
    """The rater app cannot be served as asked (port taken, Voila missing or failing)."""


# ---------------------------------------------------------------------------------------- ports
def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> None:
    """Raise ServeError when ``host:port`` cannot be listened on (taken, no such address, or not
    allowed); the message says how to fix it."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServeError(f"--port must be a whole number from 1 to 65535, got {port!r}; e.g. --port 8866")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host!r} is not an address of this machine ({exc.strerror}); "
                         "use e.g. --host 127.0.0.1") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # as Tornado does: a port whose old connections linger in TIME_WAIT is free to listen on
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(
                        f"port {port} on {host} is already in use (by another server, perhaps an earlier "
                        f"`fsl-xai study serve` still running); stop it, or choose another port with --port"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise ServeError(f"not allowed to listen on port {port}; choose a port above 1023 with --port"
                                     ) from None
                raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port"
                                 ) from None


def _accepts(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (a wildcard host is probed on loopback)."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------- processes
def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start token, state) of every process; the start token tells a reused
    pid apart (Linux: start time from /proc; elsewhere from ``ps``)."""
    table: dict[int, tuple[int, str, str]] = {}
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        for entry in os.scandir(proc):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:  # gone meanwhile
                continue
            # the command name may hold spaces and parentheses: the fields start after the last ')'
            fields = stat.rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,lstart=,state="], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), " ".join(parts[2:-1]), parts[-1][:1])
    return table


class ChildTracker:
    """Remembers every descendant of one process seen while it was alive, with its start token.

    Args:
        root_pid: the process whose descendants are tracked (itself included).
    """

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.known: dict[int, str] = {}
        self.refresh()

    def refresh(self) -> None:
        """Add the descendants alive now."""
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root_pid]
        while todo:
            pid = todo.pop()
            if pid in table and pid not in self.known:
                self.known[pid] = table[pid][1]
            todo.extend(children.get(pid, []))

    def alive(self) -> list[int]:
        """Tracked processes still running (the same process, not a reused pid; zombies are dead)."""
        table = _process_table()
        return [pid for pid, start in self.known.items()
                if pid in table and table[pid][1] == start and table[pid][2] not in ("Z", "X")]

    def signal_alive(self, sig: int) -> None:
        """Send ``sig`` to each live tracked process, and to its process group when it leads one
        (a kernel's subprocesses share its group)."""
        for pid in self.alive():
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue


def _wait_until(done: Callable[[], bool], timeout: float, interrupted: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        if interrupted():
            return False
        time.sleep(POLL_S / 2)
    return done()


def stop_children(process: subprocess.Popen, tracker: ChildTracker, hurry: Callable[[], bool] = lambda: False) -> None:
    """Stop a server and everything it started: SIGTERM to its group, SIGKILL after
    VOILA_STOP_GRACE_S; then SIGTERM / SIGKILL to every tracked process still alive.

    Args:
        process: the server (started in its own session).
        tracker: its tracked descendants.
        hurry: returns True to skip the grace periods (a second Ctrl-C).
    """
    tracker.refresh()
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

        def gone() -> bool:
            tracker.refresh()
            return process.poll() is not None

        if not _wait_until(gone, VOILA_STOP_GRACE_S, hurry):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    if tracker.alive():
        tracker.signal_alive(signal.SIGTERM)
        if not _wait_until(lambda: not tracker.alive(), KERNEL_STOP_GRACE_S, hurry):
            tracker.signal_alive(signal.SIGKILL)
            _wait_until(lambda: not tracker.alive(), KERNEL_STOP_GRACE_S)


# ---------------------------------------------------------------------------------------- serving
#: the Voila template of the source tree (share/jupyter/voila/templates/fsl-xai): Voila's lab
#: template without its links to CDNs, so a rater's page makes no request off the machine
VOILA_TEMPLATE = "fsl-xai"


def template_path(notebook: Path) -> Path:
    """The ``share/jupyter`` folder beside the notebooks that holds the offline Voila template."""
    share = notebook.resolve().parent.parent / "share" / "jupyter"
    if not (share / "voila" / "templates" / VOILA_TEMPLATE / "conf.json").is_file():
        raise ServeError(f"the offline Voila template is missing under {share}; without it the rater page would "
                         "load icons from the internet; run fsl-xai from its source folder (a git clone)")
    return share


#: kernels a page left behind (closed without shutting its kernel down) are culled after this long idle
CULL_IDLE_S = 900.0
MAX_KERNELS = 40
IOPUB_TIMEOUT_S = 60
KERNEL_START_S = 180
PREHEAT_REFILL_S = 30.0


def voila_command(notebook: Path, host: str, port: int, cull_idle_s: float = CULL_IDLE_S,
                  preheat: int = 0) -> list[str]:
    """The Voila command line for the rater notebook (the offline template, no moving to another
    port, no sources; kernels without a connected page culled after ``cull_idle_s`` idle; with
    ``preheat``, that many kernels started and run up to the rater's token ahead of any page)."""
    interval = max(1, min(60, int(cull_idle_s // 2)))
    # a used kernel is replaced PREHEAT_REFILL_S later, not at once: a class opening its pages
    # together does not have the replacements start while its own pages still load
    pool = (["--preheat_kernel=True", f"--pool_size={preheat}", f"--VoilaKernelManager.fill_delay={PREHEAT_REFILL_S}"]
            if preheat else [])
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", f"--Voila.ip={host}",
            "--Voila.port_retries=0", "--strip_sources=True", f"--template={VOILA_TEMPLATE}",
            # its own address is internal: raters get the gate's, printed by serve_rater_app
            "--Voila.log_level=WARN",
            # a class opening its pages at once keeps two cores busy: wait for a kernel's output (the
            # app) instead of rendering a page without it after nbclient's default 4 s
            f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT_S}", f"--VoilaExecutor.startup_timeout={KERNEL_START_S}",
            f"--MappingKernelManager.cull_idle_timeout={max(1, int(cull_idle_s))}",
            f"--MappingKernelManager.cull_interval={interval}", "--MappingKernelManager.cull_connected=False",
            # only the gate gets in: its secret (in the file named by FSL_XAI_GATE_SECRET_FILE) on every request
            "--Voila.identity_provider_class=fsl_xai.study.gate.GateIdentityProvider",
            # kernels talk to Voila over Unix sockets in Voila's private folder, not TCP ports of
            # 127.0.0.1: no port another process can take between choosing and binding it (a class
            # starting 20 kernels at once lost one that way) and none that another user can reach
            "--KernelManager.transport=ipc", *pool]


def _internal_port() -> int:
    """A free port on 127.0.0.1 for Voila (only the gate talks to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen(host: str, port: int) -> list[socket.socket]:
    """The gate's listening sockets on host:port; ServeError (the same messages as
    check_port_free) when that address cannot be listened on."""
    from .gate_server import bind_sockets

    check_port_free(host, port)
    try:
        return bind_sockets(host, port)
    except OSError:  # taken between the check and now
        check_port_free(host, port)
        raise


def serve_rater_app(db: Path, study_file: Path, notebook: Path, host: str = "127.0.0.1", port: int = 8866,
                    max_kernels: int = MAX_KERNELS, cull_idle_s: float = CULL_IDLE_S, preheat: int = 0) -> int:
    """Serve the rater notebook behind the gate until Voila exits or SIGTERM / SIGINT arrives;
    then stop the gate, Voila and every kernel it started. Returns the exit code (0 after
    SIGTERM, 130 after SIGINT, Voila's own code if it stopped by itself).

    Args:
        max_kernels: rater pages open at once; beyond it a page says "too many open sessions".
        cull_idle_s: a kernel without a connected page is shut down after this many idle seconds.
        preheat: kernels Voila keeps started ahead (its preheat pool), each with the rater notebook
            run up to the point where it waits for its rater's token, so a page opened takes one
            from the pool instead of starting a kernel; used ones are replaced. They belong to no
            rater until the gate hands one a token, are not culled while waiting, and come on top
            of ``max_kernels`` (a server holds up to max_kernels + preheat kernels, each ~66 MiB).

    Raises:
        ServeError: Voila is not installed, the port is taken or cannot be used, a limit is not
            a positive number, or Voila did not start serving.
        StudyStoreError: the store cannot be opened for writing (read-only, damaged).
    """
    if importlib.util.find_spec("voila") is None:
        raise ServeError("Voila is not installed; install the user-interface extra: pip install 'fsl-xai[ui]'")
    if not notebook.is_file():
        raise ServeError(f"the rater notebook {notebook} is missing; reinstall fsl-xai from its source folder")
    if isinstance(max_kernels, bool) or not isinstance(max_kernels, int) or max_kernels < 1:
        raise ServeError(f"--max-kernels must be a whole number of 1 or more, got {max_kernels!r}; "
                         "e.g. --max-kernels 40")
    if isinstance(preheat, bool) or not isinstance(preheat, int) or not 0 <= preheat <= 1000:
        raise ServeError(f"--preheat must be a whole number from 0 to 1000, got {preheat!r}; e.g. --preheat 20")
    if not isinstance(cull_idle_s, (int, float)) or not 1 <= cull_idle_s <= 7 * 24 * 3600:
        raise ServeError(f"--cull-idle-s must be a number of seconds from 1 to 604800, got {cull_idle_s!r}; "
                         "e.g. --cull-idle-s 900")
    from .gate import GATE_SECRET_FILE_ENV, Gate, GateSettings
    from .gate_server import GateThread

    with ResponseStore(db):  # raters' answers must be writable before anyone gets a page
        pass
    share = template_path(notebook)
    sockets = _listen(host, port)
    internal = _internal_port()
    upstream_secret = secrets.token_urlsafe(32)
    private = Path(tempfile.mkdtemp(prefix="fsl-xai-gate-"))  # 0700: this user only
    secret_file = private / "secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(upstream_secret)
    handoff = private / "handoff"  # the gate hands each kernel its rater's token here
    handoff.mkdir(mode=0o700)
    env = os.environ | {"FSL_XAI_STUDY_DB": str(db.resolve()), "FSL_XAI_STUDY_FILE": str(study_file.resolve()),
                        "JUPYTER_PATH": os.pathsep.join(p for p in (str(share), os.environ.get("JUPYTER_PATH")) if p),
                        GATE_SECRET_FILE_ENV: str(secret_file), HANDOFF_ENV: str(handoff)}

    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous: dict[signal.Signals, Any] = {}
    try:
        for stop in (signal.SIGTERM, signal.SIGINT):
            previous[stop] = signal.signal(stop, on_signal)
    except ValueError:  # not the main thread: the caller stops us by other means
        pass
    gate = GateThread(sockets, Gate(db, internal, GateSettings(max_kernels=max_kernels,
                                                               poll_s=min(30.0, max(0.5, cull_idle_s / 4))),
                                    upstream_secret=upstream_secret, handoff=handoff))
    try:
        process = subprocess.Popen(voila_command(notebook, "127.0.0.1", internal, cull_idle_s, preheat), env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    tracker = ChildTracker(process.pid)
    try:
        gate.start()
        ready, deadline, next_refresh = False, time.monotonic() + READY_TIMEOUT_S, 0.0
        while not received and process.poll() is None:
            if not ready and _accepts("127.0.0.1", internal):
                ready = True
                print(f"serving the rater app on http://{_url_host(host)}:{port}/ (each rater needs their "
                      "?token=... link); stop with Ctrl-C", flush=True)
            elif not ready and time.monotonic() > deadline:
                raise ServeError(f"Voila did not start listening on 127.0.0.1:{internal} within "
                                 f"{READY_TIMEOUT_S:.0f} s; see its messages above")
            if time.monotonic() >= next_refresh:  # kernels come and go: track them while Voila lives
                tracker.refresh()
                next_refresh = time.monotonic() + 1.0
            time.sleep(POLL_S)
        if not received and not ready:
            raise ServeError(f"Voila exited with code {process.returncode} before serving on {host}:{port}; see its "
                             "messages above")
    finally:
        gate.stop()  # no new requests while Voila and its kernels stop
        for s in sockets:
            s.close()
        stop_children(process, tracker, hurry=lambda: len(received) > 1)
        shutil.rmtree(private, ignore_errors=True)  # the secret, if Voila never read it
        for stop, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(stop, handler)
    if received:
        print("stopped the rater app and its kernels", file=sys.stderr, flush=True)
        return 130 if received[0] == signal.SIGINT else 0
    return process.returncode
