"""The domain guard and the held-in evaluation after the first paint: in a kernel (an asyncio loop
runs) the first episode is shown before the guard is fitted and the held-in episodes run; until then
every place that shows them says so, and then they update in place. Both are kept in the cache folder,
so a second page load does not recompute them. Also: the no-guard note is one short sentence."""

from __future__ import annotations

import asyncio
import html
import re
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest

from fsl_xai.testing import tiny_model
from widgets import trust, trust_text
from widgets.export import export_state
from widgets.queries import QueryGallery
from widgets.state import WorkbenchState
from widgets.workbench import Workbench


@pytest.fixture
def fresh(monkeypatch, cache_dir):
    """Empty in-memory caches and an empty cache folder: nothing is known yet."""
    monkeypatch.setattr(trust, "GUARDS", OrderedDict())  # the caches Trust reads
    monkeypatch.setattr(trust, "HELD_IN", OrderedDict())
    monkeypatch.setattr(trust, "DEFER_START_S", 0.0)
    return cache_dir


def _model():
    # its own weights: the shared embedding table of the other widget tests' model stays as they expect
    return tiny_model(channels=1, size=32, width=8, seed=7)


def _load(images, model, **kw) -> WorkbenchState:
    s = WorkbenchState(n_way=3, n_shot=3, n_query=3)
    s.load("synthetic", images=images, model=model, **kw)
    assert s.error == ""
    return s


async def _until_ready(state: WorkbenchState, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while state.trust.pending:
        assert loop.time() < end, "the deferred guard and held-in work did not finish"
        await asyncio.sleep(0.01)


def _plain(value: str) -> str:
    return html.unescape(re.sub("<[^>]+>", "", value))


def test_in_a_kernel_the_first_episode_shows_first_and_says_the_guard_is_checking(fresh, synthetic_images):
    model = _model()
    reference = _load(synthetic_images, model)  # no loop: computed before the episode, as scripts do
    assert not reference.trust.pending and reference.trust.guard is not None
    trust.GUARDS.clear()
    trust.HELD_IN.clear()
    for path in (fresh / "workbench-trust").glob("*"):
        path.unlink()

    async def run() -> None:
        state = _load(synthetic_images, model)
        t = state.trust
        # shown at once, without the guard and the sets, and every view says why
        assert t.guard_pending and t.validation_pending and state.result is not None
        assert state.result.guard is None and state.result.pred_sets is None and t.guard is None
        bench = Workbench(state, episodes=5, badges=False, dicom=False)
        gallery = bench.queries
        assert "domain guard: checking" in _plain(gallery.summary.value)
        assert "prediction sets: calibrating" in _plain(gallery.summary.value)
        assert "domain guard: checking" in _plain(bench.trust_status.value)
        assert "validation score: computing" in _plain(bench.trust_status.value)
        lines = [_plain(line) for line in trust_text.header_lines(state)]
        assert any("validation score: computing" in line for line in lines)
        assert any("domain guard: checking" in line for line in lines)
        assert any("flags not checked yet" in line for line in lines)
        assert "domain guard: checking" in _plain(bench.picker.info.value)
        first = state.result
        await _until_ready(state)
        # then in place: the same episode, now with the guard's flags and the prediction sets
        r = state.result
        assert r is not first and r.episode_id == first.episode_id and r.guard is not None
        assert r.pred_sets is not None and t.validation is not None and t.guard is not None
        np.testing.assert_array_equal(r.ood_flag, r.guard.scores > t.guard.threshold)
        # the same guard and score as computed before the episode
        assert t.guard.threshold == pytest.approx(reference.trust.guard.threshold)
        assert t.validation.n_correct == reference.trust.validation.n_correct
        np.testing.assert_allclose(r.guard.scores, reference.result.guard.scores, rtol=1e-5)
        assert "checking" not in _plain(gallery.summary.value) and "calibrating" not in _plain(gallery.summary.value)
        assert "domain guard ready" in _plain(bench.trust_status.value)
        assert "validation accuracy" in _plain(bench.trust_status.value)
        lines = [_plain(line) for line in trust_text.header_lines(state)]
        assert not any("checking" in line or "computing" in line for line in lines)
        bench.close()

    asyncio.run(run())


def test_a_second_page_load_reads_the_guard_and_the_held_in_episodes_from_the_cache_folder(fresh, synthetic_images):
    model = _model()
    first = _load(synthetic_images, model)
    stored = sorted(p.name for p in (fresh / "workbench-trust").iterdir())
    assert any(n.startswith("guard-") and n.endswith(".json") for n in stored)
    assert any(n.startswith("guard-") and n.endswith(".npz") for n in stored)
    assert any(n.startswith("held-in-") for n in stored)
    trust.GUARDS.clear()
    trust.HELD_IN.clear()

    async def run() -> WorkbenchState:
        state = _load(synthetic_images, model)  # a new kernel: nothing in memory, all on disk
        r = state.result
        assert not state.trust.pending and r is not None and r.guard is not None and r.pred_sets is not None
        return state

    again = asyncio.run(run())
    assert again.trust.guard is not first.trust.guard  # read back, not the object in memory
    assert again.trust.guard.threshold == first.trust.guard.threshold
    assert again.trust.guard_text == first.trust.guard_text
    assert again.trust.validation == first.trust.validation
    pd.testing.assert_frame_equal(again.trust._held_in.reset_index(drop=True),
                                  first.trust._held_in.reset_index(drop=True), check_dtype=False)
    assert again.result.pred_sets == first.result.pred_sets


def test_an_unreadable_cache_file_is_recomputed(fresh, synthetic_images):
    model = _model()
    first = _load(synthetic_images, model)
    for path in (fresh / "workbench-trust").iterdir():
        path.write_bytes(b"not what was written")
    trust.GUARDS.clear()
    trust.HELD_IN.clear()
    again = _load(synthetic_images, model)
    assert again.trust.guard is not None and again.trust.guard.threshold == first.trust.guard.threshold
    assert again.trust.validation == first.trust.validation


def test_an_export_made_before_the_guard_is_ready_waits_for_it(fresh, synthetic_images, tmp_path):
    async def run() -> None:
        state = _load(synthetic_images, _model())
        assert state.trust.pending
        export_state(state, tmp_path, png=False)  # right after the page opened
        assert not state.trust.pending and state.result.guard is not None
        table = pd.read_csv(tmp_path / "queries.csv")
        assert {"ood_flag", "pred_set"} <= set(table.columns)
        readme = (tmp_path / "README.txt").read_text()
        assert "checking" not in readme and "computing" not in readme and "domain guard (k=" in readme
        await asyncio.sleep(0.05)  # the steps that were scheduled find nothing left to do
        assert not state.trust.pending

    asyncio.run(run())


def test_the_failure_explorer_waits_for_the_guard(fresh, synthetic_images):
    async def run() -> None:
        state = _load(synthetic_images, _model())
        assert state.trust.pending
        table = state.evaluate_many(episodes=3)
        assert "ood_flag" in table.columns and not state.trust.pending

    asyncio.run(run())


def test_a_new_protocol_while_the_work_runs_ends_with_the_new_protocols_results(fresh, synthetic_images):
    async def run() -> None:
        state = _load(synthetic_images, _model())
        assert state.trust.pending
        state.n_way = 2
        state.resample(3)
        assert state.error == ""
        await _until_ready(state)
        t = state.trust
        assert t.validation is not None and t.validation.shape[0] == 2
        r = state.result
        assert r is not None and r.guard is not None and len(r.classes) == 2 and r.pred_sets is not None

    asyncio.run(run())


def test_a_failing_step_is_shown_instead_of_checking_forever(fresh, synthetic_images, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trust.held_in, "guard_data", broken)

    async def run() -> None:
        state = _load(synthetic_images, _model())
        assert state.trust.guard_pending
        await _until_ready(state)
        assert state.trust.guard is None and "fitting it failed" in state.trust.guard_note
        assert "disk on fire" in state.trust.guard_note
        assert "fitting it failed" in _plain(QueryGallery(state).summary.value)

    asyncio.run(run())


def test_the_no_guard_note_of_own_data_without_a_train_split_is_one_short_sentence(synthetic_images, tmp_path):
    from fsl_xai.data import list_datasets

    state = WorkbenchState(n_way=3, n_shot=3, n_query=3)
    own = str(tmp_path / "my_lesions.npz")  # the user's own file: no train split beside it
    state.load(own, images=synthetic_images, model=_model())
    assert state.error == "" and state.trust.guard is None
    note = state.trust.guard_note
    assert note.startswith("no domain guard for this model") and "my_lesions.npz has no train split here" in note
    assert "open a data set with a train split" in note
    others = [i.name for i in list_datasets() if i.name != "synthetic"]
    assert not any(name in note for name in others), note  # not the registry's list of data sets
    assert len(note) < 250 and note.count(". ") == 0
    lines = [_plain(line) for line in trust_text.header_lines(state)]
    assert any(line == note for line in lines)
