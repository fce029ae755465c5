"""Fixtures for the widget tests: the built-in synthetic lesion set (with masks and sites) and a tiny,
seeded model, so every view can be driven without a browser in well under a second."""

from __future__ import annotations

import asyncio

import pytest

from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.testing import tiny_model
from widgets.state import WorkbenchState


@pytest.fixture(scope="session")
def synthetic_images():
    return make_synthetic(n_per_class=24, size=32, n_classes=4, seed=0, split="test")


@pytest.fixture
def state(synthetic_images) -> WorkbenchState:
    s = WorkbenchState(n_way=3, n_shot=3, n_query=3)
    s.load("synthetic", images=synthetic_images, model=tiny_model(channels=1, size=32, width=8))
    assert s.error == ""
    return s


@pytest.fixture(autouse=True)
def no_running_event_loop() -> None:
    """Widget tests run outside any event loop (views do deferred work inline then); a loop that counts
    as running here was left by another test (an open Playwright sync session, say)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    pytest.fail(f"an asyncio loop counts as running in the main thread ({loop!r}): a test before this one left "
                "it (an open Playwright sync session?)", pytrace=False)
