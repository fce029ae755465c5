import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fsl_xai.intervals import mean_interval, wilson_interval
from fsl_xai.study.analysis import (
    AnalysisError,
    agreement_by_condition,
    cohen_kappa,
    fleiss_kappa,
    reliance_summary,
    responses_table,
)


def _answers(rows):
    out = []
    for rater, item, diag, conf, trust, ms in rows:
        for q, v in (("diagnosis", diag), ("confidence", conf), ("trust", trust)):
            out.append({"answer_id": len(out), "rater": rater, "item_id": item, "question": q, "value": v,
                        "response_ms": ms})
    return pd.DataFrame(out)


ITEMS = pd.DataFrame([
    # item, condition, case, truth, model prediction, advice shown
    ("c1|ai", "prediction", "c1", "a", "a", True),
    ("c2|ai", "prediction", "c2", "b", "a", True),   # model wrong
    ("c3|ai", "prediction", "c3", "b", "b", True),
    ("c4|ai", "prediction", "c4", "a", "b", True),   # model wrong
    ("c1|no", "no_ai", "c1", "a", "a", False),
    ("c2|no", "no_ai", "c2", "b", "a", False),
], columns=["item_id", "condition", "case_id", "true_class", "model_prediction", "show_prediction"])


def test_reliance_metrics_match_hand_counts():
    answers = _answers([
        ("R1", "c1|ai", "a", 5, 5, 1000),  # agrees, model right  -> appropriate
        ("R1", "c2|ai", "a", 4, 4, 3000),  # agrees, model wrong  -> over-reliance
        ("R1", "c3|ai", "a", 3, 2, 2000),  # overrides right advice -> under-reliance
        ("R1", "c4|ai", "a", 2, 1, 2000),  # overrides wrong advice -> appropriate
        ("R2", "c1|no", "a", 2, 3, 4000),
        ("R2", "c2|no", "b", 3, 3, 6000),
    ])
    table = responses_table(answers, ITEMS)
    s = reliance_summary(table).set_index(["condition", "metric"])

    def ai(metric):
        return s.loc[("prediction", metric)]

    assert ai("rater_accuracy")["value"] == pytest.approx(2 / 4)  # c1 right, c4 right
    assert ai("agreement_with_model")["value"] == pytest.approx(2 / 4)
    assert ai("appropriate_reliance")["value"] == pytest.approx(2 / 4)
    assert ai("over_reliance")["value"] == pytest.approx(1 / 2) and ai("over_reliance")["n"] == 2
    assert ai("under_reliance")["value"] == pytest.approx(1 / 2) and ai("under_reliance")["n"] == 2
    assert ai("confidence")["value"] == pytest.approx(3.5)
    assert ai("seconds_per_case")["value"] == pytest.approx(2.0)
    assert ai("trust_when_model_right")["value"] == pytest.approx(3.5)
    assert ai("trust_when_model_wrong")["value"] == pytest.approx(2.5)
    change = s.loc[("prediction", "confidence_change_vs_no_ai")]
    assert change["value"] == pytest.approx(3.5 - 2.5)
    assert s.loc[("no_ai", "rater_accuracy")]["value"] == 1.0
    assert ("no_ai", "agreement_with_model") not in s.index  # no advice shown there
    assert set(s["interval"]) <= {"wilson", "t", "welch_t"}
    assert (s["ci_low"].dropna() <= s["value"][s["ci_low"].notna()]).all()
    # the intervals are the shared ones: Wilson, t and Welch's t (checked against scipy)
    lo, hi = wilson_interval(2, 4)
    assert (ai("rater_accuracy")["ci_low"], ai("rater_accuracy")["ci_high"]) == pytest.approx((lo, hi))
    t_ref = stats.t.interval(0.95, 3, loc=3.5, scale=stats.sem([5, 4, 3, 2]))
    assert (ai("confidence")["ci_low"], ai("confidence")["ci_high"]) == pytest.approx(t_ref)
    welch = stats.ttest_ind([5, 4, 3, 2], [2, 3], equal_var=False).confidence_interval(0.95)
    assert (change["ci_low"], change["ci_high"]) == pytest.approx((welch.low, welch.high))
    assert change["interval"] == "welch_t" and change["n"] == 4


def test_latest_answer_wins():
    answers = _answers([("R1", "c1|ai", "b", 1, 1, 10), ("R1", "c1|ai", "a", 5, 5, 20)])
    table = responses_table(answers, ITEMS)
    assert table.loc[0, "diagnosis"] == "a" and table.loc[0, "rater_correct"]


def test_wilson_and_t_against_known_values():
    low, high = wilson_interval(8, 10)
    # Wilson 95% for 8/10: 0.4902, 0.9433 (standard tables)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    iv = mean_interval([1, 2, 3, 4, 5], method="t")
    m, lo, hi, n = iv.estimate, iv.low, iv.high, iv.n
    # mean 3, sd 1.5811, t(0.975, 4) = 2.7764 -> half width 1.9632
    assert (m, n) == (3.0, 5)
    assert lo == pytest.approx(3 - 1.9632, abs=1e-3) and hi == pytest.approx(3 + 1.9632, abs=1e-3)


def test_kappas_against_hand_computation():
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa(list("aabb"), list("aabb")) == pytest.approx(1.0)
    # Fleiss: 3 raters, 4 items; hand computed P_bar = (1 + 1/3 + 1/3 + 1)/4 = 2/3,
    # p_a = 6/12, p_b = 6/12, Pe = 0.5 -> kappa = (2/3 - 1/2) / (1/2) = 1/3
    ratings = pd.DataFrame([list("aaa"), list("aab"), list("abb"), list("bbb")])
    assert fleiss_kappa(ratings) == pytest.approx(1 / 3)
    with pytest.raises(AnalysisError):
        fleiss_kappa(pd.DataFrame([["a", np.nan]]))


def test_agreement_by_condition_uses_cohen_for_two_raters():
    answers = _answers([("R1", "c1|ai", "a", 1, 1, 1), ("R2", "c1|ai", "a", 1, 1, 1),
                        ("R1", "c2|ai", "b", 1, 1, 1), ("R2", "c2|ai", "a", 1, 1, 1),
                        ("R1", "c3|ai", "b", 1, 1, 1), ("R2", "c3|ai", "b", 1, 1, 1)])
    out = agreement_by_condition(responses_table(answers, ITEMS)).set_index("condition")
    assert out.loc["prediction", "statistic"] == "cohen" and out.loc["prediction", "n_items"] == 3
    assert out.loc["prediction", "kappa"] == pytest.approx(cohen_kappa("abb", "aab"))


def test_missing_columns_are_clear_errors():
    with pytest.raises(AnalysisError, match="answers need columns"):
        responses_table(pd.DataFrame({"rater": []}), ITEMS)
