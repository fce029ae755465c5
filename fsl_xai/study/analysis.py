"""Reliance analysis of trust-study answers, per condition, each number with n and a 95% CI.

Proportions use the Wilson score interval, means a t interval and differences of means Welch's t
interval (all from :mod:`fsl_xai.intervals`). They treat answers as independent; the ``interval``
column says which was used.

Definitions (only on items where the model's advice was shown, i.e. the condition has the
``prediction`` panel):
- agreement: the rater's diagnosis equals the model's prediction;
- appropriate reliance: agreeing with correct advice or overriding wrong advice;
- over-reliance: agreeing with wrong advice, among items where the model was wrong;
- under-reliance: overriding correct advice, among items where the model was right.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FslXaiError
from ..intervals import mean_difference_interval, mean_interval, wilson_interval


class AnalysisError(FslXaiError, ValueError):
    """The answers table lacks what an analysis needs."""


def responses_table(answers: pd.DataFrame, items: pd.DataFrame, diagnosis: str = "diagnosis") -> pd.DataFrame:
    """One row per (rater, item) with the latest answer to each question, joined with the item's
    truth and advice.

    Args:
        answers: long table with rater, item_id, question, value, response_ms (as exported).
        items: one row per item_id with condition, true_class, model_prediction, show_prediction.
    """
    need = {"rater", "item_id", "question", "value"}
    if not need <= set(answers.columns):
        raise AnalysisError(f"answers need columns {sorted(need)}, got {list(answers.columns)}")
    last = answers.sort_values("answer_id" if "answer_id" in answers else "item_id").groupby(
        ["rater", "item_id", "question"], as_index=False).last()
    wide = last.pivot(index=["rater", "item_id"], columns="question", values="value").reset_index()
    if "response_ms" in answers:
        t = last.groupby(["rater", "item_id"], as_index=False)["response_ms"].max()
        wide = wide.merge(t, on=["rater", "item_id"], how="left")
    cols = ["item_id", "condition", "true_class", "model_prediction", "show_prediction"]
    missing = set(cols) - set(items.columns)
    if missing:
        raise AnalysisError(f"items need columns {sorted(missing)}")
    out = wide.merge(items[cols + [c for c in items.columns if c not in cols]], on="item_id", how="left")
    if diagnosis in out:
        out["rater_correct"] = out[diagnosis] == out["true_class"]
        out["agrees_with_model"] = out[diagnosis] == out["model_prediction"]
    out["model_correct"] = out["model_prediction"] == out["true_class"]
    return out


def _prop_row(condition: object, metric: str, mask: pd.Series) -> dict[str, Any]:
    mask = mask.dropna().astype(bool)
    k, n = int(mask.sum()), int(len(mask))
    low, high = wilson_interval(k, n)
    return {"condition": condition, "metric": metric, "value": k / n if n else float("nan"),
            "ci_low": low, "ci_high": high, "n": n, "interval": "wilson"}


def _mean_row(condition: object, metric: str, values: pd.Series) -> dict[str, Any]:
    iv = mean_interval(pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64), method="t")
    return {"condition": condition, "metric": metric, "value": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
            "n": iv.n, "interval": "t"}


def reliance_summary(table: pd.DataFrame, baseline_condition: str = "no_ai") -> pd.DataFrame:
    """Per condition: rater accuracy, agreement, appropriate / over / under reliance, confidence
    (and its change against the baseline condition), time per case, trust when the model was
    right vs wrong. One row per (condition, metric) with value, 95% CI, n and interval."""
    rows = []
    base_conf = None
    if "confidence" in table and baseline_condition in set(table["condition"]):
        base_conf = pd.to_numeric(table.loc[table["condition"] == baseline_condition, "confidence"], errors="coerce")
    for cond, g in table.groupby("condition", sort=True):
        if "rater_correct" in g:
            rows.append(_prop_row(cond, "rater_accuracy", g["rater_correct"]))
        advised = g[g["show_prediction"].astype(bool)]
        if len(advised) and "agrees_with_model" in advised:
            rows.append(_prop_row(cond, "agreement_with_model", advised["agrees_with_model"]))
            appropriate = (advised["agrees_with_model"] == advised["model_correct"])
            rows.append(_prop_row(cond, "appropriate_reliance", appropriate))
            rows.append(_prop_row(cond, "over_reliance", advised.loc[~advised["model_correct"], "agrees_with_model"]))
            rows.append(_prop_row(cond, "under_reliance", ~advised.loc[advised["model_correct"], "agrees_with_model"]))
        if "confidence" in g:
            conf = pd.to_numeric(g["confidence"], errors="coerce")
            rows.append(_mean_row(cond, "confidence", conf))
            if base_conf is not None and cond != baseline_condition:
                a, b = conf.dropna().to_numpy(float), base_conf.dropna().to_numpy(float)
                if len(a) > 1 and len(b) > 1:
                    iv = mean_difference_interval(a, b)
                    rows.append({"condition": cond, "metric": f"confidence_change_vs_{baseline_condition}",
                                 "value": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                                 "n": len(a), "interval": "welch_t"})
        if "response_ms" in g:
            rows.append(_mean_row(cond, "seconds_per_case", pd.to_numeric(g["response_ms"], errors="coerce") / 1000))
        if "trust" in g and len(advised):
            trust = pd.to_numeric(advised["trust"], errors="coerce")
            rows.append(_mean_row(cond, "trust_when_model_right", trust[advised["model_correct"]]))
            rows.append(_mean_row(cond, "trust_when_model_wrong", trust[~advised["model_correct"]]))
    return pd.DataFrame(rows, columns=["condition", "metric", "value", "ci_low", "ci_high", "n", "interval"])


def cohen_kappa(a: Iterable, b: Iterable) -> float:
    """Cohen's kappa of two raters' labels on the same items."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise AnalysisError("Cohen's kappa needs two equally long, non-empty label lists")
    cats = sorted(set(a) | set(b), key=str)
    idx = {c: i for i, c in enumerate(cats)}
    m = np.zeros((len(cats), len(cats)))
    for x, y in zip(a, b, strict=True):
        m[idx[x], idx[y]] += 1
    n = m.sum()
    po = np.trace(m) / n
    pe = (m.sum(0) * m.sum(1)).sum() / n ** 2
    return float("nan") if pe == 1 else float((po - pe) / (1 - pe))


def fleiss_kappa(ratings: pd.DataFrame) -> float:
    """Fleiss' kappa from a (items x raters) table of labels (NaN where a rater did not rate);
    items rated by fewer than two raters are ignored."""
    counts = []
    cats = sorted({v for v in ratings.to_numpy().ravel() if pd.notna(v)}, key=str)
    for _, row in ratings.iterrows():
        vals = [v for v in row if pd.notna(v)]
        if len(vals) >= 2:
            counts.append([vals.count(c) for c in cats])
    if not counts:
        raise AnalysisError("Fleiss' kappa needs items rated by at least two raters")
    c = np.asarray(counts, float)
    n_i = c.sum(1)
    p_i = ((c * (c - 1)).sum(1)) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = c.sum(0) / c.sum()
    pe = (p_j ** 2).sum()
    return float("nan") if pe == 1 else float((p_bar - pe) / (1 - pe))


def agreement_by_condition(table: pd.DataFrame, question: str = "diagnosis") -> pd.DataFrame:
    """Inter-rater agreement per condition: Fleiss' kappa (Cohen's when exactly two raters)."""
    rows = []
    for cond, g in table.groupby("condition", sort=True):
        wide = g.pivot_table(index="case_id" if "case_id" in g else "item_id", columns="rater",
                             values=question, aggfunc="last")
        n_items = int((wide.notna().sum(axis=1) >= 2).sum())
        if n_items == 0:
            rows.append({"condition": cond, "kappa": float("nan"), "statistic": "none", "n_items": 0,
                         "n_raters": int(wide.shape[1])})
            continue
        if wide.shape[1] == 2:
            both = wide.dropna()
            kappa, name = cohen_kappa(both.iloc[:, 0], both.iloc[:, 1]), "cohen"
        else:
            kappa, name = fleiss_kappa(wide), "fleiss"
        rows.append({"condition": cond, "kappa": kappa, "statistic": name, "n_items": n_items,
                     "n_raters": int(wide.shape[1])})
    return pd.DataFrame(rows)
