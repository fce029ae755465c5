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
