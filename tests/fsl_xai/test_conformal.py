"""Split-conformal prediction sets: exact mechanics on hand-made logits, and coverage >= 1 - alpha
over 600 episodes of the real PBC test split, calibrated on episodes of its validation split.

The model is a Conv-4 ProtoNet trained for a few episodes here, so nothing depends on bit-exact
weights: the guarantee holds for any model, and the assertions leave margins (measured: coverage
0.986 at alpha 0.02, 0.974 at 0.05, with intervals about +-0.002).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fsl_xai.checkpoints import load_checkpoint
from fsl_xai.cli import main
from fsl_xai.conformal import (
    add_prediction_sets,
    calibrate,
    class_probabilities,
    conformal_report,
    covered,
    nonconformity_scores,
    set_text,
)
from fsl_xai.data.npz import read_npz
from fsl_xai.errors import DataError
from fsl_xai.evaluation import evaluate

CLASSES = ("a", "b", "c", "d")


def table(logits: list[list[float]], true: list[str], episodes: list[int] | None = None,
          classes: tuple[str, ...] = CLASSES) -> pd.DataFrame:
    """A per-query table as evaluate writes it: dist_<class> = minus the logit, NaN outside the episode."""
    dist = -np.asarray(logits, dtype=np.float64)
    frame = pd.DataFrame({f"dist_{c}": dist[:, i] for i, c in enumerate(classes)})
    frame.insert(0, "true_class", true)
    if episodes is not None:
        frame.insert(0, "episode", episodes)
    return frame


def softmax(row: list[float]) -> np.ndarray:
    x = np.asarray([v for v in row if not math.isnan(v)])
    e = np.exp(x - x.max())
    return e / e.sum()


# ------------------------------------------------------------------------------- mechanics
def test_probabilities_and_scores_are_the_softmax_over_the_episode():
    nan = math.nan
    t = table([[2.0, 1.0, nan, 0.0], [nan, 0.5, 0.5, nan]], ["b", "c"])
    probs, classes = class_probabilities(t)
    assert classes == CLASSES
    np.testing.assert_allclose(probs[0, [0, 1, 3]], softmax([2.0, 1.0, 0.0]))
    assert np.isnan(probs[0, 2]) and np.isnan(probs[1, [0, 3]]).all()
    np.testing.assert_allclose(probs[1, [1, 2]], [0.5, 0.5])
    np.testing.assert_allclose(nonconformity_scores(t), [1 - softmax([2.0, 1.0, 0.0])[1], 0.5])


def test_threshold_is_the_k_th_score_with_whole_episodes_counted():
    # 9 episodes of 2 queries: k = ceil((1 - 0.1) * (9 + 1) * 2) = 18, the largest of the 18 scores
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(18, 2)).tolist()
    true = ["a", "b"] * 9
    t = table(logits, true, episodes=np.repeat(np.arange(9), 2).tolist(), classes=("a", "b"))
    scores = np.sort(nonconformity_scores(t))
    cal = calibrate(t, 0.1, calibration_data="hand-made")
    assert cal.threshold == scores[17]
    assert (cal.n_calibration, cal.n_episodes, cal.queries_per_episode) == (18, 9, 2)
    assert cal.to_dict()["calibration_data"] == "hand-made" and cal.to_dict()["score"] == "lac"
    # alpha 0.3: k = ceil(0.7 * 20) = 14
    assert calibrate(t, 0.3).threshold == scores[13]
    # without an episode column each row is its own episode: k = ceil(0.7 * 19) = 14
    assert calibrate(t.drop(columns="episode"), 0.3).threshold == scores[13]
    assert calibrate(t.drop(columns="episode"), 0.5).threshold == scores[9]  # ceil(0.5 * 19) = 10
    # 8 episodes are too few for alpha 0.1: 0.9 * 9 * 2 = 16.2 > 16 scores
    with pytest.raises(DataError, match="at least 9 are needed"):
        calibrate(t[t.episode < 8], 0.1)


def test_sets_hold_the_classes_above_the_threshold_most_probable_first():
    nan = math.nan
    # probabilities: row 0 ~ (0.665, 0.245, 0.090); row 1 = (0.5, 0.5) over b, c; row 2 uniform over 4
    t = table([[2.0, 1.0, nan, 0.0], [nan, 0.0, 0.0, nan], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, nan]],
              ["b", "c", "d", "a"], episodes=[0, 1, 2, 3])
    cal = calibrate(table([[0.0, 0.0]] * 4, ["a"] * 4, episodes=[0, 1, 2, 3], classes=("a", "b")), 0.5)
    assert cal.threshold == 0.5  # every calibration score is 1 - 0.5
    out = add_prediction_sets(t, cal)
    assert "pred_set" not in t.columns  # the given table is unchanged
    # in the set: probability >= 0.5; the most probable class always
    assert out.pred_set.tolist() == ["a", "b|c", "a", "c"]
    assert out.set_size.tolist() == [1, 2, 1, 1]
    assert covered(out).tolist() == [False, True, False, False]
    wide = add_prediction_sets(t, calibrate(table([[0.0, 5.0]] * 4, ["a"] * 4, episodes=[0, 1, 2, 3],
                                                  classes=("a", "b")), 0.5))
    # a threshold of ~1 takes every class of the episode, never one outside it, most probable first
    assert wide.pred_set.tolist() == ["a|b|d", "b|c", "a|b|c|d", "c|b|a"]
    assert wide.set_size.tolist() == [3, 2, 4, 3] and covered(wide).all()


def test_set_text_reads_as_words():
    assert set_text("lymphocyte|monocyte") == "lymphocyte or monocyte"
    assert set_text("lymphocyte") == "lymphocyte"
    assert set_text(["basophil", "ig", "platelet"]) == "basophil, ig or platelet"


def test_report_resamples_episodes():
    rng = np.random.default_rng(1)
    n_ep, q = 40, 6
    logits = rng.normal(scale=2.0, size=(n_ep * q, 3)).tolist()
    true = rng.choice(["a", "b", "c"], n_ep * q).tolist()
    episodes = np.repeat(np.arange(n_ep), q).tolist()
    cal = calibrate(table(logits[:120], true[:120], episodes[:120], ("a", "b", "c")), 0.2)
    out = add_prediction_sets(table(logits[120:], true[120:], episodes[120:], ("a", "b", "c")), cal)
    report = conformal_report(out, cal)
    assert report.coverage.estimate == pytest.approx(covered(out).mean())
    assert report.mean_set_size.estimate == pytest.approx(out.set_size.mean())
    assert report.coverage.method.startswith("cluster_bootstrap") and report.coverage.n == 120
    assert report.mean_set_size.method.startswith("cluster_bootstrap") and report.mean_set_size.n == 120
    assert report.coverage.low < report.coverage.estimate < report.coverage.high
    d = report.to_dict()
    assert d["alpha"] == 0.2 and d["n_queries"] == 120 and d["n_episodes"] == 20
    assert d["coverage"]["ci95"] == [report.coverage.low, report.coverage.high]
    assert d["calibration"]["threshold"] == cal.threshold


def test_errors_say_what_to_do():
    t = table([[1.0, 0.0]] * 4, ["a"] * 4, episodes=[0, 0, 1, 1], classes=("a", "b"))
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match="0.1 for 90% coverage"):
            calibrate(t, alpha)
    with pytest.raises(DataError, match="one size"):
        calibrate(table([[1.0, 0.0]] * 3, ["a"] * 3, episodes=[0, 0, 1], classes=("a", "b")), 0.5)
    with pytest.raises(DataError, match="dist_<class>"):
        calibrate(t[["episode", "true_class"]], 0.5)
    with pytest.raises(DataError, match="true classes \\['z'\\]"):
        calibrate(t.assign(true_class="z"), 0.5)
    cal = calibrate(table([[1.0, 0.0]] * 20, ["a"] * 20, classes=("a", "b")), 0.5)
    with pytest.raises(DataError, match="rename those classes"):
        add_prediction_sets(table([[1.0, 0.0]], ["a|x"], classes=("a|x", "b")), cal)
    with pytest.raises(DataError, match="add_prediction_sets first"):
        covered(t)


def test_expected_coverage_over_exchangeable_episodes():
    """Correlated queries (a shared per-episode shift of the scores): over many calibrations, the
    mean coverage of a fresh test episode is at least 1 - alpha, as the module docstring proves."""
    rng = np.random.default_rng(3)
    alpha, n_cal, q, trials = 0.2, 12, 5, 800
    per_trial = (n_cal + 1) * q
    shift = np.repeat(rng.normal(size=trials * (n_cal + 1)), q)  # one per episode
    logits = np.stack([shift + rng.normal(size=len(shift)), np.zeros(len(shift))], axis=1)
    big = table(logits.tolist(), ["a"] * len(shift), np.repeat(np.arange(trials * (n_cal + 1)), q).tolist(),
                ("a", "b"))
    probs, _ = class_probabilities(big)
    hits = []
    for start in range(0, len(big), per_trial):
        cal = calibrate(big.iloc[start:start + n_cal * q], alpha)
        hits.append(np.mean(1 - probs[start + n_cal * q:start + per_trial, 0] <= cal.threshold))
    assert np.mean(hits) >= 1 - alpha - 3 * np.std(hits) / math.sqrt(trials)


# ------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def pbc_runs(data_dir, shared_file, tmp_path_factory):
    """600 calibration episodes (val split) and 600 test episodes (test split) of the three novel PBC
    classes, 3-way 5-shot 15 queries, with a barely trained Conv-4 ProtoNet."""
    out = tmp_path_factory.mktemp("conformal-ckpt") / "pbc.pt"
    assert main(["train", "--dataset", "pbc-blood", "--n-way", "3", "--n-shot", "1", "--n-query", "2",
                 "--episodes", "3", "--seed", "0", "--no-val", "--no-progress", "--out", str(out)]) == 0
    model, _ = load_checkpoint(out)
    path = shared_file("pbc_blood/pbc_bloodlike_28.npz")
    novel = ["lymphocyte", "monocyte", "platelet"]
    held_in = evaluate(model, read_npz(path, split="val"), 3, 5, 15, episodes=600, seed=1, classes=novel,
                       progress=False)
    tested = evaluate(model, read_npz(path, split="test"), 3, 5, 15, episodes=600, seed=0, classes=novel,
                      progress=False)
    return held_in, tested


@pytest.mark.parametrize("alpha", [0.02, 0.05])
def test_coverage_on_600_pbc_episodes(pbc_runs, alpha):
    held_in, tested = pbc_runs
    assert tested.accuracy < 1 - alpha  # sets of the predicted class alone would not do: the guarantee binds
    cal = calibrate(held_in.predictions, alpha)
    out = add_prediction_sets(tested.predictions, cal)
    report = conformal_report(out, cal)
    assert report.n_queries == 600 * 45 and report.n_episodes == 600
    assert report.coverage.estimate >= 1 - alpha - 0.01
    assert report.coverage.low >= 1 - alpha - 0.02
    assert report.coverage.method.startswith("cluster_bootstrap")
    assert 1 <= report.mean_set_size.estimate < 3  # informative: fewer classes than the episode has
    assert out.set_size.between(1, 3).all()
    assert (out.pred_set.str.split("|").str.len() == out.set_size).all()
    assert set(out.pred_set.str.split("|").explode()) <= {"lymphocyte", "monocyte", "platelet"}
    # a smaller alpha never gives a smaller set
    looser = add_prediction_sets(tested.predictions, calibrate(held_in.predictions, 2 * alpha))
    assert (looser.set_size <= out.set_size).all()
