"""Revisions after the AI's output, on a hand-built answers table with hand-computed counts."""

import math

import numpy as np
import pandas as pd
import pytest

from fsl_xai.intervals import cluster_bootstrap_proportion
from fsl_xai.study.analysis import AnalysisError
from fsl_xai.study.revisions import revision_summary, revisions_from_export

# The AI is right on k1 and k2 (it says the true class) and wrong on k3 (it says "x", truth "t").
ITEMS = pd.DataFrame({
    "item_id": ["k1|ai", "k2|ai", "k3|ai", "k1|no_ai"], "case_id": ["k1", "k2", "k3", "k1"],
    "condition": ["ai", "ai", "ai", "no_ai"], "true_class": ["t", "t", "t", "t"],
    "model_prediction": ["t", "t", "x", "t"], "ai_shown": [True, True, True, False],
})
# (rater, item, phase, diagnosis), in submission order
ANSWERS = [
    ("R1", "k1|ai", "first", "x"), ("R1", "k1|ai", "revised", "t"),  # right AI, disagreed, switched: beneficial
    ("R1", "k2|ai", "first", "t"), ("R1", "k2|ai", "revised", "t"),  # agreed with the AI from the start
    ("R1", "k3|ai", "first", "t"), ("R1", "k3|ai", "revised", "x"),  # wrong AI, disagreed, switched: harmful
    ("R2", "k1|ai", "first", "x"), ("R2", "k1|ai", "revised", "x"),  # right AI, disagreed, kept own
    ("R2", "k2|ai", "first", "y"), ("R2", "k2|ai", "revised", "t"),  # right AI, disagreed, switched: beneficial
    ("R2", "k3|ai", "first", "t"), ("R2", "k3|ai", "revised", "x"),  # later replaced (allow_back) ...
    ("R2", "k3|ai", "revised", "t"),                                 # ... by keeping the own answer
    ("R1", "k1|no_ai", "first", "t"), ("R2", "k1|no_ai", "first", "y"),
]


def _answers() -> pd.DataFrame:
    rows = [{"answer_id": i, "rater": r, "item_id": item, "question": "diagnosis", "value": v, "phase": p}
            for i, (r, item, p, v) in enumerate(ANSWERS)]
    # a confidence row per answer: other questions are ignored
    rows += [{"answer_id": 100 + i, "rater": r, "item_id": item, "question": "confidence", "value": "3", "phase": p}
             for i, (r, item, p, _) in enumerate(ANSWERS)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def summary():
    readings = revisions_from_export(_answers(), ITEMS)
    return readings, revision_summary(readings, n_boot=500, seed=0)


def _get(table: pd.DataFrame, condition: str, metric: str) -> pd.Series:
    row = table[(table["condition"] == condition) & (table["metric"] == metric)]
    assert len(row) == 1, (condition, metric)
    return row.iloc[0]


def test_readings_have_the_first_and_the_latest_revised_answer(summary):
    readings, _ = summary
    assert len(readings) == 8
    r2k3 = readings[(readings["rater"] == "R2") & (readings["item_id"] == "k3|ai")].iloc[0]
    assert (r2k3["first"], r2k3["revised"], r2k3["final"]) == ("t", "t", "t")
    unaided = readings[readings["condition"] == "no_ai"]
    assert unaided["revised"].isna().all() and (unaided["final"] == unaided["first"]).all()


@pytest.mark.parametrize(("metric", "k", "n"), [
    ("accuracy_first", 3, 6),      # R1k2, R1k3, R2k3
    ("accuracy_final", 4, 6),      # R1k1, R1k2, R2k2, R2k3
    ("changed", 3, 6),             # R1k1, R1k3, R2k2
    ("beneficial_switch", 2, 3),   # of R1k1, R2k1, R2k2 (AI right, first disagreed): R1k1, R2k2
    ("harmful_switch", 1, 2),      # of R1k3, R2k3 (AI wrong, first disagreed): R1k3
])
def test_hand_computed_counts_and_rates(summary, metric, k, n):
    _, table = summary
    row = _get(table, "ai", metric)
    assert (row["k"], row["n"]) == (k, n)
    assert row["value"] == pytest.approx(k / n)
    assert 0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1
    assert row["interval"].startswith("pigeonhole bootstrap")


def test_counts_change_and_the_unaided_condition(summary):
    _, table = summary
    assert _get(table, "ai", "first_answers")["value"] == 6
    assert _get(table, "ai", "revised_answers")["value"] == 6
    change = _get(table, "ai", "accuracy_change")
    assert change["value"] == pytest.approx(1 / 6) and change["n"] == 6
    assert -1 <= change["ci_low"] <= change["value"] <= change["ci_high"] <= 1
    assert _get(table, "ai", "beneficial_switch")[["n_readers", "n_cases"]].tolist() == [2, 2]
    assert _get(table, "ai", "harmful_switch")[["n_readers", "n_cases"]].tolist() == [2, 1]
    # the unaided condition has first answers only: its accuracy, and no switch rates
    assert _get(table, "no_ai", "accuracy_first")["value"] == pytest.approx(0.5)
    assert _get(table, "no_ai", "revised_answers")["value"] == 0
    assert set(table.loc[table["condition"] == "no_ai", "metric"]) == {
        "first_answers", "revised_answers", "accuracy_first", "accuracy_final", "accuracy_change"}


def test_the_interval_is_no_narrower_than_either_one_way_cluster_interval():
    """Many readers and cases with a reader effect: the two-way interval covers the one-way ones."""
    rng = np.random.default_rng(0)
    rows, items = [], []
    for c in range(30):
        truth, ai = "t", ("t" if c % 4 else "x")
        items.append({"item_id": f"k{c}|ai", "case_id": f"k{c}", "condition": "ai", "true_class": truth,
                      "model_prediction": ai, "ai_shown": True})
    for r in range(8):
        skill = 0.4 + 0.07 * r
        for c in range(30):
            first = "t" if rng.random() < skill else "y"
            revised = items[c]["model_prediction"] if rng.random() < 0.5 else first
            rows += [{"rater": f"R{r}", "item_id": f"k{c}|ai", "question": "diagnosis", "value": first,
                      "phase": "first"},
                     {"rater": f"R{r}", "item_id": f"k{c}|ai", "question": "diagnosis", "value": revised,
                      "phase": "revised"}]
    readings = revisions_from_export(pd.DataFrame(rows), pd.DataFrame(items))
    table = revision_summary(readings, n_boot=500, seed=1)
    row = _get(table, "ai", "accuracy_first")
    correct = (readings["first"] == readings["true_class"]).astype(float)
    for keys in (readings["rater"], readings["case_id"]):
        per = correct.groupby(keys.to_numpy()).agg(["sum", "size"])
        one_way = cluster_bootstrap_proportion(per["sum"].to_numpy(), per["size"].to_numpy(), n_boot=500, seed=1)
        assert row["ci_low"] <= one_way.low + 1e-12 and row["ci_high"] >= one_way.high - 1e-12
    assert row["ci_high"] - row["ci_low"] > 0
    again = revision_summary(readings, n_boot=500, seed=1)
    pd.testing.assert_frame_equal(table, again)  # deterministic with a seed


def test_a_study_without_sequential_answers_is_refused():
    single = _answers().assign(phase="single")
    with pytest.raises(AnalysisError, match="not read sequentially"):
        revisions_from_export(single, ITEMS)
    with pytest.raises(AnalysisError, match="phase"):
        revisions_from_export(single.drop(columns="phase"), ITEMS)


def test_an_empty_denominator_gives_no_rate():
    answers = pd.DataFrame([{"rater": "R1", "item_id": "k2|ai", "question": "diagnosis", "value": "t",
                             "phase": p} for p in ("first", "revised")])
    table = revision_summary(revisions_from_export(answers, ITEMS), n_boot=200)
    harmful = _get(table, "ai", "harmful_switch")
    assert harmful["n"] == 0 and math.isnan(harmful["value"]) and math.isnan(harmful["ci_low"])


def test_the_study_export_holds_the_revisions(tmp_path):
    """Answers given through rater sessions of a sequential store come out of export_study as a
    revisions table with the same numbers as the analysis of its answers and items tables."""
    from fsl_xai.study import ResponseStore, parse_design
    from fsl_xai.study.export import export_study
    from fsl_xai.study.session import RaterSession

    from .conftest import DESIGN

    design = parse_design(DESIGN | {"reading": "sequential"})
    with ResponseStore(tmp_path / "s.db") as store:
        store.set_reading(design.reading, design.aided_conditions)
        store.add_items([{"item_id": f"{c}|{k}", "case_id": c, "condition": k,
                          "shown": {"case_label": c, "true_class": "a", "classes": ["a", "b"]},
                          "provenance": {"model_prediction": "a" if c in ("c1", "c2") else "b",
                                         "shown_panels": [] if k == "no_ai" else ["prediction"]}}
                         for c in design.cases for k in design.condition_names])
        for r in range(2):
            _, token = store.add_rater([f"{c}|{k}" for c, k in design.assign(list(design.cases), r)])
            session = RaterSession(store, token, design)
            while not session.done:
                item = session.current()
                # first answers: always "b"; revised: the AI's advice
                value = "b" if item["step"] == "first" else item["shown"].get("prediction", {}).get("class", "a")
                session.submit({"diagnosis": value, "confidence": 3})
        written = export_study(store, tmp_path / "export", formats=("csv",))
        plain = export_study(store, tmp_path / "plain", formats=("csv",), revisions=False)
        other = export_study(store, tmp_path / "other", formats=("csv",), diagnosis="confidence")
    assert "revisions.csv" not in plain and "revisions.csv" in other
    revisions = pd.read_csv(written["revisions.csv"])
    answers, items = pd.read_csv(written["answers.csv"]), pd.read_csv(written["items.csv"])
    assert set(answers["phase"]) == {"first", "revised"}
    expected = revision_summary(revisions_from_export(answers, items))
    assert revisions[["condition", "metric", "k", "n"]].fillna(-1).equals(
        expected[["condition", "metric", "k", "n"]].fillna(-1).astype(revisions[["k", "n"]].dtypes.to_dict()))
    # items hold no prediction here, so every revised answer is "a": right where the AI said "a"
    row = revisions[(revisions["condition"] == "prediction") & (revisions["metric"] == "accuracy_final")].iloc[0]
    assert row["n"] == 4 and row["value"] == 1.0
    row = revisions[(revisions["condition"] == "prediction") & (revisions["metric"] == "accuracy_first")].iloc[0]
    assert row["value"] == 0.0


def test_sequential_readings_feed_the_mrmc_analysis_as_unaided_and_aided():
    """Three readers read four cases unaided, then with the AI: the MRMC accuracy of each reading
    equals the hand-counted mean reader accuracy."""
    from fsl_xai.study.mrmc import mrmc_analysis
    from fsl_xai.study.revisions import sequential_readings

    items = pd.DataFrame({"item_id": [f"k{c}|ai" for c in range(4)], "case_id": [f"k{c}" for c in range(4)],
                          "condition": "ai", "true_class": ["p", "p", "n", "n"],
                          "model_prediction": ["p", "p", "n", "p"], "ai_shown": True})
    # per reader: first diagnoses of k0..k3, then revised ones
    given = {"R1": ("pnnn", "ppnn"), "R2": ("ppnp", "ppnp"), "R3": ("nnnn", "ppnp")}
    rows = []
    for rater, (first, revised) in given.items():
        for c in range(4):
            for phase, value in (("first", first[c]), ("revised", revised[c])):
                rows += [{"rater": rater, "item_id": f"k{c}|ai", "question": "diagnosis", "value": value,
                          "phase": phase},
                         {"rater": rater, "item_id": f"k{c}|ai", "question": "confidence", "value": str(3 + c % 2),
                          "phase": phase}]
    readings = sequential_readings(pd.DataFrame(rows), items)
    assert len(readings) == 24 and set(readings["condition"]) == {"unaided", "aided"}
    result = mrmc_analysis(readings, fom="accuracy", conditions=["unaided", "aided"])
    per = result.per_condition.set_index("condition")["fom"]
    # unaided correct: R1 3/4, R2 3/4, R3 2/4; aided: R1 4/4, R2 3/4, R3 3/4
    assert per["unaided"] == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    assert per["aided"] == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert readings["confidence"].notna().all()
