"""fsl_xai/voila_process.py: ChildTracker (the descendants of a server, found by walking its own process
tree, stay tracked after their parent is gone and are stopped by pid; a reused pid is never signalled)
and OutputRelay (what a server prints reaches stderr until it is muted for a stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import fsl_xai.voila_process as vp

# a parent in its own session with a child in a session of its own (as jupyter_client starts kernels)
_TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def _wait(done, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return done()


def test_the_tree_is_walked_tracked_and_stopped():
    parent = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        tracker = vp.ChildTracker(parent.pid)
        assert set(tracker.alive()) == {parent.pid, child}
        full = vp._process_table()  # the tree walk agrees with the table of every process
        assert full[child][0] == parent.pid and tracker.known[child] == full[child][1]
        parent.kill()
        parent.wait()
        assert tracker.alive() == [child]  # the orphan is still tracked
        tracker.signal_alive(signal.SIGTERM)
        assert _wait(lambda: not tracker.alive())
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_a_pid_with_another_start_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tracker = vp.ChildTracker(proc.pid)
        tracker.known[proc.pid] = "not its start"  # as if the pid had been reused by another process
        assert tracker.alive() == []
    finally:
        proc.kill()
        proc.wait()


def test_the_relay_shows_output_until_muted(capfd):
    read, write = os.pipe()
    relay = vp.OutputRelay(os.fdopen(read, "rb"))
    with os.fdopen(write, "wb", buffering=0) as out:
        out.write(b"serving\n")
        assert _wait(lambda: "serving" in capfd.readouterr().err)
        relay.mute()
        out.write(b"Traceback (most recent call last):\n")
    relay.join(timeout=5)  # the pipe closed: the relay drained it and ended
    assert "Traceback" not in capfd.readouterr().err


def test_the_pool_offers_kernels_that_launch_or_started_not_those_that_wait(monkeypatch, tmp_path):
    """Voila's own preheat subclass built on StartedPoolKernelManager (as `fsl-xai app` configures it):
    a pooled kernel counts once its fill delay is over and its start began, and is handed out after
    the started ones; one still waiting out its delay does not count."""
    import asyncio

    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from traitlets.config import Configurable
    from voila.voila_kernel_manager import voila_kernel_manager_factory

    class VoilaApp(Configurable):  # what the manager reads of its Voila: a folder without notebooks
        root_dir = str(tmp_path)
        notebook_path = None

    release = None

    async def launch(self, *args, **kwargs):  # Jupyter's start, stood in for: it waits until released
        await release.wait()
        return "kernel-id"

    monkeypatch.setattr(AsyncMappingKernelManager, "start_kernel", launch)
    manager = voila_kernel_manager_factory(vp.StartedPoolKernelManager, True, 1)(parent=VoilaApp())

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        started = asyncio.get_running_loop().create_future()
        started.set_result({"kernel_id": "started"})
        waiting = asyncio.create_task(asyncio.sleep(60))  # a replacement waiting out its fill delay
        launching = asyncio.create_task(manager.start_kernel())
        manager._pools["app.ipynb"] = [waiting, launching, started]
        await asyncio.sleep(0)  # the launching task enters the start
        assert manager.get_pool_size("app.ipynb") == 2
        assert manager._pools["app.ipynb"] == [started, launching, waiting]  # Voila hands out pool[0]
        release.set()
        assert await launching == "kernel-id"
        waiting.cancel()

    asyncio.run(scenario())
