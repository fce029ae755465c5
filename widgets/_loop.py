"""The kernel's event loop, where there is one: deferred work (after a paint, between slices, a
confirmation timeout) is scheduled on it in Jupyter and Voila, and done at once or not at all in
scripts and unit tests, where no loop runs."""

from __future__ import annotations

import asyncio


def kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread (a Jupyter/Voila kernel's), None in scripts and tests."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
