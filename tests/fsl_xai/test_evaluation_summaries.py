"""Margins, the episode-level accuracy interval, the confusion matrix with intervals, and the
progress callback of evaluate()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.evaluation import accuracy_interval, confusion_matrix, evaluate, margins, true_margins
from fsl_xai.intervals import cluster_bootstrap_proportion, proportion_interval, wilson_interval
from fsl_xai.testing import tiny_model


def test_margins_by_hand():
    logits = np.array([[3.0, 1.0, 2.5], [0.0, 0.0, -1.0], [-2.0, 4.0, 1.0]])
    np.testing.assert_allclose(margins(logits), [0.5, 0.0, 3.0])
    np.testing.assert_allclose(true_margins(logits, np.array([0, 2, 2])), [0.5, -1.0, -3.0])
    # any leading shape (episodes, queries, classes), and a single class has no runner-up
    assert margins(np.stack([logits, logits])).shape == (2, 3)
    np.testing.assert_array_equal(margins(np.ones((4, 1))), np.zeros(4))


def _table(correct_per_episode: list[list[bool]]) -> pd.DataFrame:
    rows = [(e, c) for e, cs in enumerate(correct_per_episode) for c in cs]
    return pd.DataFrame(rows, columns=["episode", "correct"])


def test_accuracy_interval_resamples_episodes_not_queries():
    rng = np.random.default_rng(0)
    # whole episodes right or wrong together: 40 episodes of 15 queries
    table = _table([[bool(rng.random() < 0.7)] * 15 for _ in range(40)])
    iv = accuracy_interval(table)
    per_episode = table.groupby("episode")["correct"].agg(["sum", "count"])
    assert iv == proportion_interval(per_episode["sum"].to_numpy(float), per_episode["count"].to_numpy(float))
    assert iv.method.startswith("cluster_bootstrap")
    # far wider than the interval that treats the 600 queries as independent
    lo, hi = wilson_interval(int(table.correct.sum()), len(table))
    assert (iv.high - iv.low) > 2.5 * (hi - lo)
    # one episode's queries (no episode column) are independent given the support set: Wilson
    single = accuracy_interval(table.drop(columns="episode").head(15))
    assert single.method == "wilson"
    assert single.as_tuple() == pytest.approx(wilson_interval(int(table.correct[:15].sum()), 15))


def test_confusion_matrix_counts_rates_and_intervals():
    rng = np.random.default_rng(1)
    rows = []
    for e in range(30):
        for t in ("a", "b", "c"):
            for _ in range(5):
                p = t if rng.random() < 0.8 else ("a" if t != "a" else "b")  # never predicts "c" wrongly
                rows.append((e, t, p))
    table = pd.DataFrame(rows, columns=["episode", "true_class", "pred_class"])
    cm = confusion_matrix(table)
    assert cm.classes == ("a", "b", "c")
    expected = pd.crosstab(table.true_class, table.pred_class).reindex(index=cm.classes, columns=cm.classes,
                                                                       fill_value=0).to_numpy()
    np.testing.assert_array_equal(cm.counts, expected)
    np.testing.assert_allclose(cm.rates.sum(1), 1.0)
    assert np.all(cm.low <= cm.rates + 1e-12) and np.all(cm.rates <= cm.high + 1e-12)
    # a cell that never happens has no spread across episodes: Wilson's interval on the pooled counts
    assert cm.counts[0, 2] == 0
    assert (cm.low[0, 2], cm.high[0, 2]) == pytest.approx(wilson_interval(0, int(cm.counts[0].sum())))
    # a cell that varies across episodes: the episode bootstrap of that cell's per-episode counts
    per_episode = table[table.true_class == "a"].groupby("episode")["pred_class"]
    events = per_episode.apply(lambda s: (s == "a").sum()).to_numpy(float)
    totals = per_episode.size().to_numpy(float)
    iv = cluster_bootstrap_proportion(events, totals, fallback="none")
    assert (cm.low[0, 0], cm.high[0, 0]) == pytest.approx((iv.low, iv.high), abs=1e-12)
    # without an episode column every cell gets Wilson's interval
    flat = confusion_matrix(table.drop(columns="episode"))
    k, n = int(flat.counts[1, 1]), int(flat.counts[1].sum())
    assert flat.method == "wilson" and (flat.low[1, 1], flat.high[1, 1]) == pytest.approx(wilson_interval(k, n))


def test_evaluate_calls_a_progress_callback_per_episode():
    images = make_synthetic(n_per_class=10, size=28, n_classes=3, seed=0, split="test")
    calls = []
    result = evaluate(tiny_model(channels=1, size=28), images, 3, 2, 2, episodes=5, seed=0,
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(6)]
    assert result.episodes == 5
