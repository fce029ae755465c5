"""Serve the rater app with Voila as a child process that this process owns.

``fsl-xai study serve`` must never leave a server running after it is told to stop: raters
would keep answering into a study the organiser believes closed. How Voila and its kernels are
owned (the port checked first, no moving to another port, Voila in its own session, every
descendant tracked and stopped) is :mod:`fsl_xai.voila_process`, shared with ``fsl-xai app``.

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

import importlib.util
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ..voila_process import (
    IOPUB_TIMEOUT_S,
    KERNEL_START_S,
    VOILA_TEMPLATE,
    ChildTracker,
    OutputRelay,
    ServeError,
    StopSignals,
    check_port_free,
    run_until_stopped,
    stop_children,
    template_path,
    url_host,
    voila_argv,
    voila_environment,
)
from .store import ResponseStore

#: the variable that tells a rater kernel where the gate hands it its token (``widgets.rater_app``)
HANDOFF_ENV = "FSL_XAI_STUDY_HANDOFF"
#: the command named when the port is taken
COMMAND = "fsl-xai study serve"


# ---------------------------------------------------------------------------------------- serving
#: kernels a page left behind (closed without shutting its kernel down) are culled after this long idle
CULL_IDLE_S = 900.0
MAX_KERNELS = 40
PREHEAT_REFILL_S = 30.0


def voila_command(notebook: Path, host: str, port: int, cull_idle_s: float = CULL_IDLE_S,
                  preheat: int = 0) -> list[str]:
    """The Voila command line for the rater notebook (``voila_process.voila_argv``: the offline
    template, no moving to another port, no sources; kernels without a connected page culled after
    ``cull_idle_s`` idle; with ``preheat``, that many kernels started and run up to the rater's
    token ahead of any page; only the gate gets in)."""
    # its own address is internal: raters get the gate's, printed by serve_rater_app.
    # A used kernel is replaced PREHEAT_REFILL_S later, not at once: a class opening its pages
    # together does not have the replacements start while its own pages still load
    return [*voila_argv(notebook, host, port, preheat, PREHEAT_REFILL_S, cull_idle_s),
            # only the gate gets in: its secret (in the file named by FSL_XAI_GATE_SECRET_FILE) on every request
            "--Voila.identity_provider_class=fsl_xai.study.gate.GateIdentityProvider"]


def _internal_port() -> int:
    """A free port on 127.0.0.1 for Voila (only the gate talks to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen(host: str, port: int) -> list[socket.socket]:
    """The gate's listening sockets on host:port; ServeError (the same messages as
    check_port_free) when that address cannot be listened on."""
    from .gate_server import bind_sockets

    check_port_free(host, port, COMMAND)
    try:
        return bind_sockets(host, port)
    except OSError:  # taken between the check and now
        check_port_free(host, port, COMMAND)
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
    env = voila_environment(share, FSL_XAI_STUDY_DB=str(db.resolve()), FSL_XAI_STUDY_FILE=str(study_file.resolve()),
                            **{GATE_SECRET_FILE_ENV: str(secret_file), HANDOFF_ENV: str(handoff)})

    def announce() -> None:
        print(f"serving the rater app on http://{url_host(host)}:{port}/ (each rater needs their ?token=... "
              "link); stop with Ctrl-C", flush=True)

    with StopSignals() as stops:
        gate = GateThread(sockets, Gate(db, internal, GateSettings(max_kernels=max_kernels,
                                                                   poll_s=min(30.0, max(0.5, cull_idle_s / 4))),
                                        upstream_secret=upstream_secret, handoff=handoff))
        try:
            process = subprocess.Popen(voila_command(notebook, "127.0.0.1", internal, cull_idle_s, preheat), env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        relay = OutputRelay(process.stdout)
        tracker = ChildTracker(process.pid)
        try:
            gate.start()
            run_until_stopped(process, tracker, stops, ("127.0.0.1", internal), f"{host}:{port}", announce)
        finally:
            gate.stop()  # no new requests while Voila and its kernels stop
            for s in sockets:
                s.close()
            if stops.received:
                relay.mute()
            stop_children(process, tracker, hurry=stops.hurry)
            relay.join(timeout=5)
            shutil.rmtree(private, ignore_errors=True)  # the secret, if Voila never read it
    if stops.received:
        print("stopped the rater app and its kernels", file=sys.stderr, flush=True)
        return stops.exit_code
    return process.returncode


__all__ = ["CULL_IDLE_S", "HANDOFF_ENV", "IOPUB_TIMEOUT_S", "KERNEL_START_S", "MAX_KERNELS", "PREHEAT_REFILL_S",
           "VOILA_TEMPLATE", "ChildTracker", "ServeError", "check_port_free", "serve_rater_app", "stop_children",
           "template_path", "voila_command"]
