"""Background maps (``Explanations.prefetch``): after a query's maps are drawn, the maps of the episode's
other queries are computed one (query, method) at a time while the kernel is idle, in gallery order
starting next to the selected query; a plan made stale by a change of what is shown is dropped, and a
click on a prefetched query computes nothing."""

from __future__ import annotations

import asyncio
import time

import fsl_xai.explain as xai
from widgets.heatmap import HeatmapViewer


def _count_explains(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = xai.explain

    def counting(*args, **kwargs):
        calls.append(kwargs["query_indices"][0])
        return real(*args, **kwargs)

    monkeypatch.setattr(xai, "explain", counting)
    return calls


def test_the_plan_follows_the_gallery_from_the_selected_query_and_fills_the_cache(state, monkeypatch):
    state.methods = ["saliency", "gradcam"]
    viewer = HeatmapViewer(state, badges=False)
    state.query_index = 3
    pre = state.explanations.prefetch
    n = len(state.episode.query_ids)
    assert [q for q, _ in pre.todo[::2]] == [(3 + k) % n for k in range(1, n)]
    assert {m for _, m in pre.todo} == {"saliency", "gradcam"}
    calls = _count_explains(monkeypatch)
    while pre.step():
        pass
    # every query but the selected one and query 0 (drawn when the viewer opened: cached)
    assert sorted(set(calls)) == [q for q in range(1, n) if q != 3]
    assert all(state.explanations.is_cached(m, q) for q in range(n) for m in ("saliency", "gradcam"))
    calls.clear()
    state.query_index = 4  # prefetched: the click only reads the cache
    assert calls == [] and set(viewer.last_maps) == {"saliency", "gradcam"}


def test_a_plan_made_stale_computes_nothing(state, monkeypatch):
    state.methods = ["saliency"]
    HeatmapViewer(state, badges=False)
    state.query_index = 1
    pre = state.explanations.prefetch
    assert pre.todo and not pre.stale()
    stale_plan = list(pre.todo)
    state.params = {**state.params, "saliency": {"abs": False}}  # another setting: the plan is stale
    pre.todo = stale_plan
    calls = _count_explains(monkeypatch)
    assert pre.stale() and pre.step() is False and calls == [] and pre.todo == []
    state.explanations.prefetch.start(1)
    state.resample(state.seed + 1)  # another episode (the viewer plans again for it)
    assert not pre.stale() and all(q != state.query_index for q, _ in pre.todo)
    pre.cancel()
    assert pre.todo == [] and pre.stale()


def test_a_failing_map_is_noted_and_not_retried(state, monkeypatch):
    state.methods = ["saliency"]
    HeatmapViewer(state, badges=False)
    state.query_index = 1
    pre = state.explanations.prefetch

    def broken(*args, **kwargs):
        raise RuntimeError("no map today")

    monkeypatch.setattr(xai, "explain", broken)
    q, m = pre.todo[0]
    pre.step()
    assert "no map today" in pre.failed[(q, m)] and (q, m) not in pre.todo


def test_in_a_running_loop_slices_wait_for_idle_time_and_yield_between_maps(state, monkeypatch):
    state.methods = ["saliency"]
    viewer = HeatmapViewer(state, badges=False)  # draws query 0: its map is cached
    pre = state.explanations.prefetch
    monkeypatch.setattr(pre, "idle_s", 0.05)
    monkeypatch.setattr(pre, "gap_s", 0.0)
    n = len(state.episode.query_ids)
    events: list[str] = []  # "m": a map computed, "t": another task of the loop ran
    real = xai.explain
    monkeypatch.setattr(xai, "explain", lambda *a, **k: events.append("m") or real(*a, **k))

    async def main():
        state.query_index = 1  # the click: its map at once, the rest planned
        assert events == ["m"] and len(pre.todo) == n - 1 and pre.done == 0
        await asyncio.sleep(0.02)
        assert pre.done == 0  # not idle long enough yet
        deadline = time.monotonic() + 30
        while pre.todo and time.monotonic() < deadline:
            events.append("t")
            await asyncio.sleep(0)

    asyncio.run(main())
    assert pre.todo == [] and pre.done == n - 2  # all but the two drawn
    assert "mm" not in "".join(events[1:])  # one map per slice: the loop ran other work between them
    assert all(state.explanations.is_cached("saliency", q) for q in range(n))
    assert viewer.last_maps
