"""Subgroup tables and disparity on small hand-made per-query tables."""

import numpy as np
import pandas as pd
import pytest

from fsl_xai.errors import DataError
from fsl_xai.metrics import (
    SubgroupReport,
    bin_column,
    class_probabilities,
    class_table,
    disparity,
    subgroup_report,
    subgroup_table,
    wilson_interval,
)

NAN = np.nan


def _hand_table() -> pd.DataFrame:
    """3 episodes; episode 2 has classes a and c, the others a and b (dist_ NaN for absent classes)."""
    rows = [
        # episode, true, pred, sex, age
        (0, "a", "a", "F", 25.0), (0, "a", "b", "F", 31.0), (0, "b", "b", "M", 50.0), (0, "b", "b", "M", 61.0),
        (1, "a", "a", "F", 44.0), (1, "b", "a", "M", 80.0), (1, "b", "b", "M", NAN), (1, "a", "a", "F", 29.0),
        (2, "c", "c", "F", 75.0), (2, "c", "a", "F", 46.0), (2, "a", "a", None, 33.0),
    ]
    t = pd.DataFrame(rows, columns=["episode", "true_class", "pred_class", "sex", "age"])
    t["correct"] = t.true_class == t.pred_class
    for c in "abc":
        # the predicted class is nearest; 1.0 vs 2.0 otherwise
        t[f"dist_{c}"] = np.where(t.pred_class == c, 1.0, 2.0)
    t.loc[t.episode < 2, "dist_c"] = NAN
    t.loc[t.episode == 2, "dist_b"] = NAN
    t["episode_id"] = "e" + t.episode.astype(str)
    t["query_index"] = t.groupby("episode").cumcount()
    return t


def test_counts_error_rates_and_wilson_by_hand():
    t = _hand_table()
    tab = subgroup_table(t, by="sex", ci="wilson", n_boot=200, min_n=1).set_index("group")
    # F: 6 queries, 2 wrong (episode 0 and episode 2); M: 4 queries, 1 wrong; missing: 1, 0 wrong
    assert tab.loc["all", "n"] == 11 and tab.loc["all", "n_errors"] == 3
    assert tab.loc["sex=F", "n"] == 6 and tab.loc["sex=F", "error_rate"] == pytest.approx(2 / 6)
    assert tab.loc["sex=M", "n"] == 4 and tab.loc["sex=M", "error_rate"] == pytest.approx(1 / 4)
    assert tab.loc["sex=missing", "n"] == 1 and tab.loc["sex=missing", "error_rate"] == 0
    lo, hi = wilson_interval(2, 6)
    assert tab.loc["sex=F", "error_ci_low"] == pytest.approx(lo)
    assert tab.loc["sex=F", "error_ci_high"] == pytest.approx(hi)
    assert tab.loc["sex=F", "accuracy_ci_low"] == pytest.approx(1 - hi)
    assert (tab["ci_method"] == "wilson").all()
    assert tab.loc["sex=F", "n_episodes"] == 3 and tab.loc["sex=M", "n_episodes"] == 2
    assert list(tab.index) == ["all", "sex=F", "sex=M", "sex=missing"]


def test_sensitivity_specificity_by_hand_respects_episode_classes():
    long = class_table(_hand_table(), by="sex", ci="wilson").query("group == 'all'")
    v = long.set_index(["class", "metric"])
    # sensitivity a: 4 of 5 true-a queries predicted a
    assert v.loc[("a", "sensitivity"), "value"] == pytest.approx(4 / 5)
    assert v.loc[("a", "sensitivity"), "n"] == 5
    # specificity a: 6 non-a queries in episodes with a, 2 of them called a
    assert v.loc[("a", "specificity"), "value"] == pytest.approx(4 / 6)
    # specificity b: only episodes 0 and 1 contain b: 4 true-a queries there, 1 called b
    assert v.loc[("b", "specificity"), "value"] == pytest.approx(3 / 4)
    assert v.loc[("b", "specificity"), "n"] == 4
    assert v.loc[("c", "sensitivity"), "value"] == pytest.approx(1 / 2)
    assert v.loc[("c", "specificity"), "value"] == 1.0 and v.loc[("c", "specificity"), "n"] == 1
    wide = subgroup_table(_hand_table(), by="sex", ci="wilson", min_n=1).set_index("group")
    assert wide.loc["all", "sensitivity_a"] == pytest.approx(4 / 5)
    assert wide.loc["all", "specificity_b_n"] == 4
    lo, hi = wilson_interval(3, 4)
    assert wide.loc["all", "specificity_b_ci_low"] == pytest.approx(lo)


def test_softmax_probabilities_and_ece_by_hand():
    # 2-way rows: confidence 0.75 (logit gap ln 3) half right; confidence 0.9 (gap ln 9) all right
    n = 40
    gap = np.r_[np.full(n, np.log(3)), np.full(n, np.log(9))]
    correct = np.r_[np.arange(n) % 2 == 0, np.ones(n, bool)]
    t = pd.DataFrame({"episode": np.arange(2 * n) // 4, "correct": correct,
                      "true_class": np.where(correct, "x", "y"), "pred_class": "x",
                      "dist_x": 0.0, "dist_y": gap, "dist_z": NAN, "site": "A"})
    probs, names = class_probabilities(t)
    assert names == ["x", "y", "z"]
    np.testing.assert_allclose(probs[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(probs[-1], [0.9, 0.1, 0.0])
    tab = subgroup_table(t, by="site", n_boot=300, per_class=False).set_index("group")
    assert tab.loc["all", "ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.1)
    assert tab.loc["all", "ece_ci_low"] <= tab.loc["all", "ece"] <= tab.loc["all", "ece_ci_high"]


def test_binning_and_missing_group():
    ages = pd.Series([25, 30, 44.9, 45, 60, 74, 75, 90, NAN], name="age")
    out = bin_column(ages)
    assert out.tolist() == ["<30", "30-44", "30-44", "45-59", "60-74", "60-74", "75+", "75+", "missing"]
    assert list(out.cat.categories) == ["<30", "30-44", "45-59", "60-74", "75+", "missing"]
    assert bin_column(ages, [50]).tolist()[:5] == ["<50", "<50", "<50", "<50", "50+"]
    q = bin_column(pd.Series(np.arange(100.0), name="score"), 4)
    assert q.value_counts().tolist() == [25, 25, 25, 25]
    assert bin_column(pd.Series(["b", None, "a", ""], name="site")).tolist() == ["b", "missing", "a", "missing"]
    with pytest.raises(DataError, match="not numeric"):
        bin_column(pd.Series(["a", "b"], name="site"), [1])


def test_intersection_custom_bins_and_small_group_flag():
    t = _hand_table()
    tab = subgroup_table(t, by=["sex", "age"], bins={"age": [40]}, min_n=3, n_boot=200, ci="wilson")
    body = tab[tab.group != "all"].set_index("group")
    assert body["n"].sum() == len(t)
    assert body.loc["sex=F, age=<40", "n"] == 3 and not body.loc["sex=F, age=<40", "too_small"]
    assert body.loc["sex=M, age=missing", "n"] == 1
    small = body[body["n"] < 3]
    assert len(small) > 0 and small["too_small"].all()
    assert small["note"].str.contains("too small").all()
    with pytest.raises(DataError, match="no column"):
        subgroup_table(t, by="scanner")


def _clustered_predictions(seed, gap, episodes=150, per_episode=12, concentration=12.0):
    """Per-query table with episode-level difficulty; site B's error rate is raised by ``gap``."""
    rng = np.random.default_rng(seed)
    # mean 0.25, varying between support sets (intra-episode correlation 1 / (concentration + 1))
    base = rng.beta(0.25 * concentration, 0.75 * concentration, size=episodes)
    ep = np.repeat(np.arange(episodes), per_episode)
    site = np.tile(np.array(["A", "B"]), episodes * per_episode // 2)
    p = base[ep] + np.where(site == "B", gap, 0.0)
    wrong = rng.random(len(ep)) < p
    return pd.DataFrame({"episode": ep, "correct": ~wrong, "site": site,
                         "sex": rng.choice(["female", "male"], len(ep))})


def test_disparity_flags_a_real_gap_and_not_a_null_one():
    gapped = disparity(_clustered_predictions(1, 0.12), by="site", n_boot=1000)
    assert gapped["flagged"] and gapped["worst_group"] == "site=B" and gapped["best_group"] == "site=A"
    assert gapped["gap_ci_low"] > 0 and gapped["gap_ci_low"] < 0.12 < gapped["gap_ci_high"]
    assert gapped["ratio"] > 1 and gapped["ratio_ci_low"] > 1
    assert gapped["ci_method"] == "cluster_bootstrap_bca"
    for seed in (2, 3, 4):
        null = disparity(_clustered_predictions(seed, 0.0), by="site", n_boot=1000)
        assert not null["flagged"] and null["gap_ci_low"] <= 0 <= null["gap_ci_high"]


def test_disparity_from_report_and_small_groups_reported():
    t = _clustered_predictions(1, 0.12)
    t.loc[:9, "site"] = "C"  # a tiny third site
    report = subgroup_report(t, by="site", n_boot=500, seed=5)
    tab = report.table
    d_report = disparity(report)
    d_direct = disparity(t, by="site", n_boot=500, seed=5)
    assert d_report == d_direct
    assert d_report["too_small_groups"] == [("site=C", 10)]
    assert tab.set_index("group").loc["site=C", "too_small"]
    # the table is a plain frame: nothing travels hidden in attrs, and disparity says what to pass
    assert tab.attrs == {}
    with pytest.raises(DataError, match="SubgroupReport"):
        disparity(tab)
    with pytest.raises(DataError, match="grouping from the report"):
        disparity(report, by="sex")
    # only one eligible group -> no disparity, with a note rather than an error
    one = disparity(t[t.site != "B"], by="site", n_boot=200)
    assert one["gap"] != one["gap"] and "fewer than two groups" in one["note"]


def test_report_keeps_settings_rows_and_reports_progress():
    t = _hand_table()
    calls = []
    report = subgroup_report(t, by=["sex", "age"], bins={"age": [40]}, min_n=2, n_boot=300, seed=4, ci="wilson",
                             progress=lambda done, total: calls.append((done, total)))
    assert isinstance(report, SubgroupReport)
    s = report.settings
    assert (s.by, s.bins, s.min_n, s.n_boot, s.seed, s.ci, s.ci_used, s.confidence) == \
        (("sex", "age"), {"age": (40.0,)}, 2, 300, 4, "wilson", "wilson", 0.95)
    assert report.by == ["sex", "age"] and report.predictions is t
    pd.testing.assert_frame_equal(report.table, subgroup_table(t, by=["sex", "age"], bins={"age": [40]}, min_n=2,
                                                               n_boot=300, seed=4, ci="wilson"))
    # progress: after each group's row and each group's per-class rows
    n_groups = len(report.table)
    assert calls == [(i, 2 * n_groups) for i in range(1, 2 * n_groups + 1)]
    # the rows behind each group, with the report's own bins
    for label, n in zip(report.table["group"], report.table["n"], strict=True):
        assert report.rows(label).sum() == n
    young_women = report.rows("sex=F, age=<40")
    assert t.loc[young_women, "age"].max() < 40 and (t.loc[young_women, "sex"] == "F").all()
    assert [g.label for g in report.groups()] == list(report.table["group"][1:])
    with pytest.raises(DataError, match="no group"):
        report.rows("sex=X")
    # without an episode column the report says that Wilson was used
    assert subgroup_report(t.drop(columns="episode"), by="sex", n_boot=100).settings.ci_used == "wilson"


def test_cluster_interval_wider_than_wilson_and_deterministic():
    t = _clustered_predictions(1, 0.12, concentration=4.0)
    a = subgroup_table(t, by="site", n_boot=800, seed=0, per_class=False)
    b = subgroup_table(t, by="site", n_boot=800, seed=0, per_class=False)
    pd.testing.assert_frame_equal(a, b)
    c = subgroup_table(t, by="site", n_boot=800, seed=1, per_class=False)
    assert not np.allclose(a["error_ci_low"], c["error_ci_low"])
    w = subgroup_table(t, by="site", ci="wilson", per_class=False)
    width_cluster = (a["error_ci_high"] - a["error_ci_low"]).to_numpy()
    width_wilson = (w["error_ci_high"] - w["error_ci_low"]).to_numpy()
    assert (width_cluster > width_wilson).all()
    assert set(a["ci_method"]) == {"cluster_bootstrap_bca"} and set(w["ci_method"]) == {"wilson"}


def test_no_episode_column_uses_wilson():
    t = _clustered_predictions(1, 0.0).drop(columns="episode")
    tab = subgroup_table(t, by="sex", ci="cluster_bootstrap", per_class=False)
    assert set(tab["ci_method"]) == {"wilson"} and tab["note"].str.contains("independent").all()


def test_point_estimates_agree_with_fairlearn_metricframe():
    from fairlearn.metrics import MetricFrame

    t = _hand_table()
    ours = subgroup_table(t, by="sex", ci="wilson", min_n=1).set_index("group")
    mf = MetricFrame(metrics={"error": lambda yt, yp: float(np.mean(np.asarray(yt) != np.asarray(yp)))},
                     y_true=t.true_class.to_numpy(), y_pred=t.pred_class.to_numpy(),
                     sensitive_features=bin_column(t["sex"]).astype(str).to_numpy())
    for g, v in mf.by_group["error"].items():
        assert ours.loc[f"sex={g}", "error_rate"] == pytest.approx(v)
    assert ours.loc["all", "error_rate"] == pytest.approx(mf.overall["error"])


def test_bad_input_errors():
    with pytest.raises(DataError, match="'correct'"):
        subgroup_table(pd.DataFrame({"episode": [0]}), by="episode")
    with pytest.raises(DataError, match="empty"):
        subgroup_table(pd.DataFrame({"correct": []}), by="x")
    with pytest.raises(DataError, match="unknown interval"):
        subgroup_table(_hand_table(), by="sex", ci="normal")
