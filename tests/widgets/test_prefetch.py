"""Background maps (``Explanations.prefetch``): after a query's maps are drawn, the maps of the episode's
other queries are computed one (query, method) at a time while the kernel is idle, in gallery order
starting next to the selected query; a plan made stale by a change of what is shown is dropped, and a
click on a prefetched query computes nothing."""

from __future__ import annotations

import asyncio
import time

import numpy as np

import fsl_xai.explain as xai
from widgets.heatmap import HeatmapViewer
from widgets.support_set import SupportSetView


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


def test_a_prepared_support_edit_has_its_maps_computed_before_the_click(state, monkeypatch):
    state.methods = ["saliency", "gradcam"]
    viewer = HeatmapViewer(state, badges=False)
    support = SupportSetView(state)
    pre = state.explanations.prefetch
    state.query_index = 2
    ep = state.episode
    support.pool_list.value = None
    support.select(1)  # a support image chosen, no pool image: removing it is the edit a click would make
    assert pre.expected is not None and "saliency" in pre.expected_todo
    assert list(pre.expected.episode.support_ids) == [s for i, s in enumerate(ep.support_ids) if i != 1]
    same_class = state.pool(ep.classes[ep.support_labels[1]])["sample_id"]
    support.pool_list.options = list(same_class)
    support.pool_list.value = same_class.iloc[0]  # and a pool image picked: a swap is prepared
    edit = pre.expected
    assert edit is not None and same_class.iloc[0] in edit.episode.support_ids
    calls = _count_explains(monkeypatch)
    assert pre.step() is True  # the prepared edit's maps come before the queries' plan
    pre.step()
    assert sorted(calls) == [2, 2] and pre.expected_todo == []
    assert all(state.explanations.is_cached(m, 2, edit) for m in ("saliency", "gradcam"))
    assert state.episode is ep and edit.episode.episode_id != ep.episode_id  # nothing shown has changed yet
    calls.clear()
    support.swap()  # the edit: its heatmaps come from the cache
    assert state.episode.episode_id == edit.episode.episode_id and state.error == ""
    assert calls == [] and set(viewer.last_maps) == {"saliency", "gradcam"}
    direct = state.explanations.attribution("saliency")
    fresh = xai.explain(state.explanations.fitted(), state.explanations.query_tensor(), "saliency",
                        query_indices=[2], seed=state.seed)
    np.testing.assert_allclose(direct.maps, fresh.maps, rtol=1e-5, atol=1e-6)  # the same map as computed afresh


def test_a_prepared_edit_is_dropped_once_another_episode_is_shown(state, monkeypatch):
    state.methods = ["saliency"]
    HeatmapViewer(state, badges=False)
    support = SupportSetView(state)
    pre = state.explanations.prefetch
    support.select(0)
    old = pre.expected
    assert old is not None and old.shown is state.result
    state.resample(state.seed + 1)  # the selection stays: the edit it prepares is of the new episode
    assert pre.expected is not None and pre.expected.shown is state.result
    pre.expected, pre.expected_todo = old, ["saliency"]  # the old episode's edit, still planned
    calls = _count_explains(monkeypatch)
    pre.step()
    assert pre.expected is None and not any(state.explanations.is_cached("saliency", q, old) for q in range(3))
    assert all(q != state.query_index for q in calls)  # what ran was the queries' plan, not the stale edit
    support.select(None)
    assert pre.expected is None and pre.expected_todo == []
