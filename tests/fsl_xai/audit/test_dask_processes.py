"""The audit against a running `dask scheduler` with two `dask worker` processes on 127.0.0.1, and
with one of those workers killed mid-run (its chunks are rerun elsewhere; the results are the same)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask.distributed import Client

from fsl_xai.audit import run_audit

from .common import assert_same_audit, small_spec

DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen) -> None:
    """End one process we started, by its own pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A scheduler and two single-threaded workers (no nanny: each pid is the worker itself)."""
    logs = tmp_path_factory.mktemp("dask-logs")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                            "--dashboard-address", "127.0.0.1:0"])
        workers = [start(f"worker{i}", ["worker", address, "--host", "127.0.0.1", "--no-dashboard", "--nthreads", "1",
                                        "--no-nanny"]) for i in range(2)]
        deadline = time.monotonic() + 120
        with Client(address, timeout="120s") as client:
            client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
        yield {"address": address, "workers": workers}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_audit_on_a_scheduler_address(checkpoint: Path, reference: Path, cluster: dict, tmp_path: Path) -> None:
    result = run_audit(small_spec(checkpoint), tmp_path, scheduler=cluster["address"], progress=False)
    assert (result.computed, result.n_chunks) == (3, 3)
    assert_same_audit(reference, tmp_path)


def test_killed_worker_is_survived(checkpoint: Path, reference: Path, cluster: dict, tmp_path: Path) -> None:
    """One chunk per episode; after the first chunk arrives, one worker is killed (SIGKILL)."""
    victim = cluster["workers"][0]
    killed = []

    def kill_one(done: int, total: int) -> None:
        if done == 1 and not killed:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=20)
            killed.append(done)

    result = run_audit(small_spec(checkpoint, chunk_episodes=1), tmp_path, scheduler=cluster["address"],
                       progress=kill_one)
    assert killed and victim.returncode == -signal.SIGKILL
    assert (result.computed, result.n_chunks) == (6, 6)
    assert_same_audit(reference, tmp_path)  # chunking differs from the reference's; the results do not
