"""Voila as a child process that this process owns: ``fsl-xai app`` and ``fsl-xai study serve``.

A server that a user is told to stop must leave nothing running. So:

- the port is checked before Voila starts, and Voila is told not to move to another port
  (``port_retries=0``): a taken port is an error, and the address printed is the one served,
  printed only once Voila accepts connections there;
- Voila runs in its own session (process group), so a Ctrl-C in the terminal reaches this
  process only, which then stops Voila in order;
- every descendant (Voila and the kernels it starts, which jupyter_client puts in sessions of
  their own) is tracked while it lives; on SIGTERM or SIGINT Voila gets SIGTERM (it shuts its
  kernels down), and after a grace period whatever is left of the tracked processes is killed,
  each checked by its start time so that a reused pid is never signalled.

Pages are served with the project's offline ``fsl-xai`` template (``template_path``): Voila's lab
template without its links to CDNs, so a page makes no request off the machine.

``StartedPoolKernelManager`` (for ``--VoilaConfiguration.multi_kernel_manager_class``) changes one
thing in Voila's preheat pool: a page takes a pooled kernel only once that kernel is launching or
has started. Voila counts a replacement still waiting out its fill delay as ready, so a page opened
then waited for the rest of the delay and a whole kernel start (the workbench reloaded 2 s after a
load: 41 s with a 30 s delay, on a busy machine where its first load took 7 s); with this class such
a page starts a kernel of its own at once, as without a pool, and a page opened while a pooled kernel
launches waits for that one instead of starting another.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import FslXaiError

VOILA_STOP_GRACE_S = 10.0  # Voila's own shutdown asks each kernel to stop and waits for it
KERNEL_STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 180.0
POLL_S = 0.2
#: nbclient waits this long for a kernel's output: two busy cores must not make Voila render a page
#: without its app (nbclient's default is 4 s)
IOPUB_TIMEOUT_S = 60
KERNEL_START_S = 180


class ServeError(FslXaiError, RuntimeError):
    """An app cannot be served as asked (port taken, Voila missing or failing)."""


# ---------------------------------------------------------------------------------------- ports
def url_host(host: str) -> str:
    """``host`` as it is written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int, command: str | None = None) -> None:
    """Raise ServeError when ``host:port`` cannot be listened on (taken, no such address, or not
    allowed); the message says how to fix it.

    Args:
        command: the command whose earlier run may still hold the port, named in the message.
    """
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
                    earlier = f", perhaps an earlier `{command}` still running" if command else ""
                    raise ServeError(f"port {port} on {host} is already in use (by another server{earlier}); "
                                     "stop it, or choose another port with --port") from None
                if exc.errno == errno.EACCES:
                    raise ServeError(f"not allowed to listen on port {port}; choose a port above 1023 with --port"
                                     ) from None
                raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port"
                                 ) from None


def accepts(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (a wildcard host is probed on loopback)."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, start token, state) of one process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:  # gone (or gone meanwhile)
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19], fields[0]


def _children(pid: int) -> list[int]:
    """The direct children of a process, from /proc/PID/task/TID/children (none when it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


#: Linux lists each process's children in /proc: the tracker then walks the server's own tree instead
#: of reading every process on the machine every second
_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start token, state) of every process; the start token tells a reused
    pid apart (Linux: start time from /proc; elsewhere from ``ps``)."""
    table: dict[int, tuple[int, str, str]] = {}
    if Path("/proc/self/stat").exists():
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
                table[int(entry.name)] = stat
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
        if _PROC_CHILDREN:
            todo = [self.root_pid]
            while todo:
                pid = todo.pop()
                stat = _stat(pid)
                if stat is None:
                    continue
                self.known.setdefault(pid, stat[1])
                todo.extend(_children(pid))
            return
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
        if _PROC_CHILDREN:
            stats = {pid: _stat(pid) for pid in self.known}
        else:
            table = _process_table()
            stats = {pid: table.get(pid) for pid in self.known}
        return [pid for pid, start in self.known.items()
                if (st := stats[pid]) is not None and st[1] == start and st[2] not in ("Z", "X")]

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


class OutputRelay:
    """Copies what Voila and its kernels print (one pipe they share) to this process's stderr, line by
    line, until ``mute()``. A server is muted once a stop was asked: a kernel stopped in the middle of a
    cell (a pool's replacement still running the app) prints a traceback of its own, which tells the
    user who asked for the stop nothing; the server prints its own line when everything has stopped.

    Args:
        stream: the child's output (binary), read until it closes (every process writing it is gone).
    """

    def __init__(self, stream: Any):
        self._muted = threading.Event()
        self._out = getattr(sys.stderr, "buffer", None)
        self._thread = threading.Thread(target=self._relay, args=(stream,), name="voila-output", daemon=True)
        self._thread.start()

    def _relay(self, stream: Any) -> None:
        with stream:
            for line in iter(stream.readline, b""):
                if self._muted.is_set():
                    continue
                try:
                    if self._out is not None:
                        self._out.write(line)
                        self._out.flush()
                    else:
                        print(line.decode(errors="replace"), end="", file=sys.stderr, flush=True)
                except (OSError, ValueError):  # our stderr is closed: keep draining the pipe
                    continue

    def mute(self) -> None:
        """Drop what follows."""
        self._muted.set()

    def join(self, timeout: float) -> None:
        """Wait until the pipe closed (everything that wrote to it is gone), at most ``timeout`` s."""
        self._thread.join(timeout)


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


class StopSignals:
    """Inside ``with StopSignals() as stops:``, SIGTERM and SIGINT are recorded in ``stops.received``
    instead of ending the process; the previous handlers are put back on leaving. Outside the main
    thread nothing is installed (the caller stops the server by other means)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[signal.Signals, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def __enter__(self) -> StopSignals:
        try:
            for stop in (signal.SIGTERM, signal.SIGINT):
                self._previous[stop] = signal.signal(stop, self._record)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for stop, handler in self._previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(stop, handler)

    def hurry(self) -> bool:
        """True after a second signal: stop without the grace periods."""
        return len(self.received) > 1

    @property
    def exit_code(self) -> int:
        """0 after SIGTERM, 130 (as a shell reports Ctrl-C) after SIGINT."""
        return 130 if self.received and self.received[0] == signal.SIGINT else 0


def run_until_stopped(process: subprocess.Popen, tracker: ChildTracker, stops: StopSignals, internal: tuple[str, int],
                      served: str, on_ready: Callable[[], None]) -> None:
    """Track ``process``'s descendants until it exits or a stop signal arrives; call ``on_ready``
    once, as soon as it accepts connections on ``internal`` (host, port).

    Args:
        served: the address users are given ("host:port"), for the messages.

    Raises:
        ServeError: it did not accept connections within READY_TIMEOUT_S, or exited before it did.
    """
    ready, deadline, next_refresh = False, time.monotonic() + READY_TIMEOUT_S, 0.0
    while not stops.received and process.poll() is None:
        if not ready and accepts(*internal):
            ready = True
            on_ready()
        elif not ready and time.monotonic() > deadline:
            raise ServeError(f"Voila did not start listening on {internal[0]}:{internal[1]} within "
                             f"{READY_TIMEOUT_S:.0f} s; see its messages above")
        if time.monotonic() >= next_refresh:  # kernels come and go: track them while Voila lives
            tracker.refresh()
            next_refresh = time.monotonic() + 1.0
        time.sleep(POLL_S)
    if not stops.received and not ready:
        raise ServeError(f"Voila exited with code {process.returncode} before serving on {served}; see its "
                         "messages above")


# ---------------------------------------------------------------------------------------- Voila
#: the Voila template of the source tree (share/jupyter/voila/templates/fsl-xai)
VOILA_TEMPLATE = "fsl-xai"


def template_path(notebook: Path) -> Path:
    """The ``share/jupyter`` folder beside the notebooks that holds the offline Voila template."""
    share = notebook.resolve().parent.parent / "share" / "jupyter"
    if not (share / "voila" / "templates" / VOILA_TEMPLATE / "conf.json").is_file():
        raise ServeError(f"the offline Voila template is missing under {share}; without it the page would "
                         "load icons from the internet; run fsl-xai from its source folder (a git clone)")
    return share


def voila_environment(share: Path, **extra: str) -> dict[str, str]:
    """This process's environment with ``share`` first on JUPYTER_PATH (where Voila finds the
    template) and ``extra`` added."""
    jupyter_path = os.pathsep.join(p for p in (str(share), os.environ.get("JUPYTER_PATH")) if p)
    return os.environ | {"JUPYTER_PATH": jupyter_path, **extra}


def voila_argv(notebook: Path, host: str, port: int, preheat: int = 0, fill_delay_s: float = 1.0,
               cull_idle_s: float | None = None) -> list[str]:
    """Voila on one notebook as both servers run it: on ``host:port`` and no other port, without
    the sources, with the offline template, patient with kernels on busy cores, kernels reached
    over Unix sockets. With ``preheat``, Voila's pool of that many kernels that ran the notebook
    ahead of any page, a used one replaced ``fill_delay_s`` later; with ``cull_idle_s``, a kernel
    without a connected page is shut down after that many idle seconds (pooled ones are kept)."""
    pool = (["--preheat_kernel=True", f"--pool_size={preheat}", f"--VoilaKernelManager.fill_delay={fill_delay_s}"]
            if preheat else [])
    cull = ([f"--MappingKernelManager.cull_idle_timeout={max(1, int(cull_idle_s))}",
             f"--MappingKernelManager.cull_interval={max(1, min(60, int(cull_idle_s // 2)))}",
             "--MappingKernelManager.cull_connected=False"] if cull_idle_s else [])
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", f"--Voila.ip={host}",
            "--Voila.port_retries=0", "--strip_sources=True", f"--template={VOILA_TEMPLATE}", "--Voila.log_level=WARN",
            f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT_S}", f"--VoilaExecutor.startup_timeout={KERNEL_START_S}",
            # kernels talk to Voila over Unix sockets in Voila's private folder, not TCP ports of
            # 127.0.0.1: no port another process can take between choosing and binding it (a class
            # starting 20 kernels at once lost one that way) and none that another user can reach
            "--KernelManager.transport=ipc", *cull, *pool]


def _started_pool_kernel_manager() -> type:
    import asyncio
    import weakref

    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

    class StartedPoolKernelManager(AsyncMappingKernelManager):
        """Jupyter's kernel manager, with Voila's preheat pool (which Voila builds on it) counting
        only kernels that are starting or have started: a replacement still waiting out its fill
        delay is not ready, and a page opened meanwhile starts a kernel of its own instead of waiting
        for it; a page opened while a pooled kernel is launching waits for that one (it is further
        along than a new kernel would be)."""

        _pools: dict[str, list[Any]]  # Voila's pools (asyncio tasks that start a kernel), by notebook

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._launching: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()  # tasks past their fill delay
            if callable(getattr(self, "get_rendered_notebook", None)):  # Voila's preheat subclass
                self.get_pool_size = self._started_pool_size  # the instance's own: Voila's is a subclass method

        async def start_kernel(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]  # async here
            task = asyncio.current_task()
            if task is not None:  # a pool's task (its delay is over) or a page's own start
                self._launching.add(task)
            return await super().start_kernel(*args, **kwargs)

        def _started_pool_size(self, notebook_name: str) -> int:
            pool = self._pools.get(notebook_name, [])
            # Voila hands out pool[0]: started kernels first, then those launching
            pool.sort(key=lambda task: 0 if task.done() else 1 if task in self._launching else 2)
            return sum(1 for task in pool if task.done() or task in self._launching)

    StartedPoolKernelManager.__module__ = __name__
    StartedPoolKernelManager.__qualname__ = "StartedPoolKernelManager"
    return StartedPoolKernelManager


def __getattr__(name: str) -> Any:
    # defined on first use: it needs jupyter_server, which only the Voila process imports
    if name == "StartedPoolKernelManager":
        cls = _started_pool_kernel_manager()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
