"""Multi-reader multi-case (MRMC) analysis of a trust study: the Obuchowski–Rockette (OR) method
with Hillis' degrees of freedom, readers and cases both random.

Each reader's figure of merit (FOM) in each condition, accuracy or the empirical AUC (Mann–Whitney)
of the confidence ratings, is computed on all cases and once more with each case left out. The
jackknife covariances of these FOMs over cases give the OR error variance and the covariances
Cov1 (same reader, other condition), Cov2 (other reader, same condition) and Cov3 (other reader,
other condition). The test of equal conditions is

    F = MS(T) / (MS(T:R) + r * max(Cov2 - Cov3, 0))

on t - 1 and Hillis' denominator degrees of freedom

    ddf = (MS(T:R) + r * max(Cov2 - Cov3, 0))**2 / (MS(T:R)**2 / ((t - 1) * (r - 1)))

(Hillis 2007, Stat Med 26:596; Hillis et al. 2008, Acad Radiol 15:647), with t conditions and r
readers. Each condition's own CI uses the same method on that condition alone (MS(R) and its Cov2).
The results match the published Van Dyke et al. (1993) analysis (see the tests).

The method needs the fully crossed design: every reader reads every case in every condition (for
example sequential reading, unaided then aided). A design where a reader sees each case in only one
condition is refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import AnalysisError, responses_table

FOMS = ("auc", "accuracy")
# the long table mrmc_analysis reads: one row per (reader, case, condition)
READING_COLUMNS = ("rater", "case_id", "condition", "true_class", "diagnosis", "confidence")


@dataclass(frozen=True)
class ORComponents:
    """Obuchowski–Rockette variance components, covariances and mean squares of the FOMs."""

    var_error: float
    cov1: float
    cov2: float
    cov3: float
    var_reader: float
    var_condition_reader: float
    ms_condition: float
    ms_reader: float
    ms_condition_reader: float

    def to_dict(self) -> dict[str, float]:
        """The components as a plain dict (for JSON or a table)."""
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class MRMCResult:
    """An OR analysis with Hillis' degrees of freedom (random readers, random cases).

    Attributes:
        fom: "auc" or "accuracy".
        conditions: the conditions, in the order of the tables.
        readers: the readers (rater pseudonyms).
        n_cases: cases read by every reader in every condition.
        reader_foms: one row per reader, one column per condition: each reader's FOM.
        per_condition: one row per condition: fom (mean over readers), se, df, ci_low, ci_high,
            n_readers, n_cases.
        differences: one row per pair of conditions (first minus second): estimate, se, df,
            ci_low, ci_high, t, p_value.
        f_stat, df1, df2, p_value: the test that all conditions have the same mean FOM (NaN with
            one condition).
        components: the OR variance components.
        confidence: the level of the CIs.
        positive: for AUC, the class scored as positive (None: the mean of one-vs-rest AUCs).
    """

    fom: str
    conditions: tuple[str, ...]
    readers: tuple[str, ...]
    n_cases: int
    reader_foms: pd.DataFrame = field(repr=False)
    per_condition: pd.DataFrame = field(repr=False)
    differences: pd.DataFrame = field(repr=False)
    f_stat: float
    df1: int
    df2: float
    p_value: float
    components: ORComponents
    confidence: float = 0.95
    positive: str | None = None


def signed_scores(diagnosis: Any, confidence: Any, positive: Any) -> np.ndarray:
    """Confidence ratings as scores for ``positive``: +confidence where the diagnosis is
    ``positive``, -confidence otherwise, so that a confident "yes" ranks above an unsure "yes",
    which ranks above an unsure "no" (a 2 x scale-point ordinal rating)."""
    diag = np.asarray(diagnosis, dtype=object)
    conf = np.asarray(confidence, dtype=np.float64)
    return np.where(diag == positive, conf, -conf)


def numeric_ratings(values: Any) -> np.ndarray:
    """An object array of ratings (numbers or numeric text) as floats of the same shape; NaN
    where a rating is missing or not a number."""
    arr = np.asarray(values, dtype=object)
    flat = pd.to_numeric(pd.Series(arr.ravel()), errors="coerce").to_numpy(dtype=np.float64)
    return flat.reshape(arr.shape)


def _auc_jackknife(scores: np.ndarray, is_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical AUC of every (condition, reader) and its leave-one-case-out values.

    Args:
        scores: (n_conditions, n_readers, n_cases) ratings.
        is_pos: (n_cases,) bool truth.

    Returns:
        (n_conditions, n_readers) AUCs and (n_conditions, n_readers, n_cases) jackknife AUCs.
    """
    pos, neg = scores[..., is_pos], scores[..., ~is_pos]
    n1, n0 = pos.shape[-1], neg.shape[-1]
    # Mann–Whitney kernel: 1 if the positive case scores higher, 1/2 on ties
    psi = (pos[..., :, None] > neg[..., None, :]) + 0.5 * (pos[..., :, None] == neg[..., None, :])
    total = psi.sum(axis=(-2, -1))
    jack = np.empty(scores.shape)
    # leaving a case out removes its row (positive) or column (negative) of the kernel
    jack[..., is_pos] = (total[..., None] - psi.sum(axis=-1)) / ((n1 - 1) * n0)
    jack[..., ~is_pos] = (total[..., None] - psi.sum(axis=-2)) / (n1 * (n0 - 1))
    return total / (n1 * n0), jack


def fom_jackknife(truth: Sequence[Any], diagnosis: np.ndarray, confidence: np.ndarray | None, fom: str = "auc",
                  positive: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Each reader's FOM in each condition, and its values with each case left out.

    Args:
        truth: (n_cases,) true class of each case.
        diagnosis: (n_conditions, n_readers, n_cases) the readers' diagnoses (class names).
        confidence: (n_conditions, n_readers, n_cases) confidence ratings (needed for "auc").
        fom: "auc" (empirical AUC of the signed confidence, see :func:`signed_scores`) or
            "accuracy" (share of correct diagnoses).
        positive: for "auc", the positive class; None averages the one-vs-rest AUCs of all
            classes in ``truth`` (for two classes both are the same AUC).

    Returns:
        (n_conditions, n_readers) FOMs and (n_conditions, n_readers, n_cases) jackknife FOMs.
    """
    truth_arr = np.asarray(truth, dtype=object)
    diag = np.asarray(diagnosis, dtype=object)
    n_cases = truth_arr.shape[0]
    if n_cases < 2:
        raise AnalysisError(f"an MRMC analysis needs at least 2 cases, got {n_cases}")
    if fom == "accuracy":
        correct = (diag == truth_arr).astype(np.float64)
        total = correct.sum(axis=-1)
        return total / n_cases, (total[..., None] - correct) / (n_cases - 1)
    if fom != "auc":
        raise AnalysisError(f"fom must be one of {FOMS}, got {fom!r}")
    if confidence is None or np.isnan(np.asarray(confidence, dtype=np.float64)).any():
        raise AnalysisError("the AUC needs a confidence rating for every reading; ask a confidence question "
                            "(type likert) in the study, or use fom='accuracy'")
    classes = sorted(set(truth_arr.tolist()), key=str) if positive is None else [positive]
    if positive is None and len(classes) < 2:
        raise AnalysisError(f"the AUC needs cases of at least two true classes, got only {classes}")
    foms, jacks = [], []
    for cls in classes:
        is_pos = truth_arr == cls
        n1 = int(is_pos.sum())
        if n1 < 2 or n_cases - n1 < 2:
            raise AnalysisError(f"the AUC for class {cls!r} needs at least 2 cases of it and 2 of other classes "
                                f"(has {n1} and {n_cases - n1}); add cases or use fom='accuracy'")
        f, j = _auc_jackknife(signed_scores(diag, confidence, cls), is_pos)
        foms.append(f)
        jacks.append(j)
    return np.mean(foms, axis=0), np.mean(jacks, axis=0)


def _t_interval(estimate: float, se: float, df: float, confidence: float) -> tuple[float, float]:
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se if np.isfinite(se) else float("nan")
    return estimate - half, estimate + half


def or_analysis(foms: np.ndarray, jackknife: np.ndarray, conditions: Sequence[str], readers: Sequence[str],
                fom: str = "auc", confidence: float = 0.95, positive: str | None = None) -> MRMCResult:
    """The OR analysis with Hillis' degrees of freedom from FOMs and their jackknife values.

    Args:
        foms: (n_conditions, n_readers) each reader's FOM in each condition.
        jackknife: (n_conditions, n_readers, n_cases) the FOMs with each case left out.
        conditions, readers: names for the rows and columns of ``foms``.
        fom, positive: recorded in the result.
        confidence: level of the CIs.
    """
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence is the CI level, between 0 and 1 (e.g. 0.95), got {confidence}")
    theta = np.asarray(foms, dtype=np.float64)
    jk = np.asarray(jackknife, dtype=np.float64)
    t, r = theta.shape
    c = jk.shape[2]
    if r < 2:
        raise AnalysisError(f"the OR analysis treats readers as random and needs at least 2 readers, got {r}")
    if jk.shape[:2] != (t, r) or len(conditions) != t or len(readers) != r:
        raise AnalysisError(f"shapes disagree: foms {theta.shape}, jackknife {jk.shape}, "
                            f"{len(conditions)} conditions, {len(readers)} readers")
    dev = (jk - jk.mean(axis=2, keepdims=True)).reshape(t * r, c)
    # jackknife covariance: (c - 1) / c times the sum of cross-products over cases
    cov = (dev @ dev.T * (c - 1) / c).reshape(t, r, t, r)
    same_t = np.eye(t, dtype=bool)[:, None, :, None]
    same_r = np.eye(r, dtype=bool)[None, :, None, :]

    def mean_where(mask: np.ndarray) -> float:
        mask = np.broadcast_to(mask, cov.shape)
        return float(cov[mask].mean()) if mask.any() else float("nan")

    var = mean_where(same_t & same_r)
    cov1, cov2, cov3 = mean_where(~same_t & same_r), mean_where(same_t & ~same_r), mean_where(~same_t & ~same_r)
    grand = theta.mean()
    cond_means, reader_means = theta.mean(axis=1), theta.mean(axis=0)
    ms_r = float(t * ((reader_means - grand) ** 2).sum() / (r - 1))
    rows = []
    for i, name in enumerate(conditions):
        ms_r_i = float(theta[i].var(ddof=1))
        cov2_i = float(cov[i, :, i, :][~np.eye(r, dtype=bool)].mean())
        den_i = ms_r_i + r * max(cov2_i, 0.0)
        se_i = float(np.sqrt(den_i / r))
        df_i = den_i ** 2 / (ms_r_i ** 2 / (r - 1)) if ms_r_i > 0 else float("inf")
        low, high = _t_interval(float(cond_means[i]), se_i, df_i, confidence)
        rows.append({"condition": name, "fom": float(cond_means[i]), "se": se_i, "df": df_i, "ci_low": low,
                     "ci_high": high, "n_readers": r, "n_cases": c})
    per_condition = pd.DataFrame(rows)
    diffs: list[dict[str, Any]] = []
    if t > 1:
        ms_t = float(r * ((cond_means - grand) ** 2).sum() / (t - 1))
        resid = theta - cond_means[:, None] - reader_means[None, :] + grand
        ms_tr = float((resid ** 2).sum() / ((t - 1) * (r - 1)))
        den = ms_tr + r * max(cov2 - cov3, 0.0)
        f_stat = ms_t / den if den > 0 else float("nan")
        ddf = den ** 2 / (ms_tr ** 2 / ((t - 1) * (r - 1))) if ms_tr > 0 else float("inf")
        p_value = float(stats.f.sf(f_stat, t - 1, ddf)) if np.isfinite(f_stat) else float("nan")
        se = float(np.sqrt(2 * den / r))
        for a in range(t):
            for b in range(a + 1, t):
                est = float(cond_means[a] - cond_means[b])
                low, high = _t_interval(est, se, ddf, confidence)
                t_stat = est / se if se > 0 else float("nan")
                diffs.append({"comparison": f"{conditions[a]} - {conditions[b]}", "estimate": est, "se": se,
                              "df": ddf, "ci_low": low, "ci_high": high, "t": t_stat,
                              "p_value": float(2 * stats.t.sf(abs(t_stat), ddf)) if se > 0 else float("nan")})
        var_tr = ms_tr - var + cov1 + cov2 - cov3
        var_r = (ms_r - var_tr - var - (t - 1) * cov1 + cov2 + (t - 1) * cov3) / t
    else:
        ms_t = ms_tr = f_stat = ddf = p_value = var_tr = float("nan")
        var_r = ms_r - var + cov2
    components = ORComponents(var_error=var, cov1=cov1, cov2=cov2, cov3=cov3, var_reader=float(var_r),
                              var_condition_reader=float(var_tr), ms_condition=ms_t, ms_reader=ms_r,
                              ms_condition_reader=ms_tr)
    differences = pd.DataFrame(diffs, columns=["comparison", "estimate", "se", "df", "ci_low", "ci_high", "t",
                                               "p_value"])
    reader_foms = pd.DataFrame(theta.T, index=pd.Index(list(readers), name="reader"),
                               columns=pd.Index(list(conditions), name="condition"))
    return MRMCResult(fom=fom, conditions=tuple(conditions), readers=tuple(readers), n_cases=c,
                      reader_foms=reader_foms, per_condition=per_condition, differences=differences,
                      f_stat=float(f_stat), df1=t - 1, df2=float(ddf), p_value=p_value, components=components,
                      confidence=confidence, positive=positive)


def crossed_arrays(readings: pd.DataFrame, conditions: Sequence[str] | None = None,
                   value_columns: Sequence[str] = ("diagnosis", "confidence")
                   ) -> tuple[list[str], list[str], list[str], list[Any], dict[str, np.ndarray]]:
    """The readings of a fully crossed study as (condition, reader, case) arrays.

    Args:
        readings: one row per (rater, case_id, condition) with true_class and ``value_columns``.
        conditions: the conditions to use, in this order (default: all, sorted).

    Returns:
        conditions, readers, cases, the true class of each case, and for each value column an
        (n_conditions, n_readers, n_cases) object array.

    Raises:
        AnalysisError: a column is missing, a reading is duplicated, a case has two truths, or a
            reader did not read every case in every condition.
    """
    need = {"rater", "case_id", "condition", "true_class", *value_columns}
    missing = need - set(readings.columns)
    if missing:
        raise AnalysisError(f"MRMC readings need columns {sorted(need)}; missing {sorted(missing)}")
    table = readings if conditions is None else readings[readings["condition"].isin(list(conditions))]
    conds = sorted(map(str, table["condition"].unique())) if conditions is None else [str(c) for c in conditions]
    absent = set(conds) - set(map(str, table["condition"]))
    if absent or not conds:
        raise AnalysisError(f"no readings in condition(s) {sorted(absent) or conds}")
    key = ["rater", "case_id", "condition"]
    dup = table.duplicated(key)
    if dup.any():
        first = table.loc[dup, key].iloc[0].tolist()
        raise AnalysisError(f"{int(dup.sum())} readings appear twice, e.g. {first}; keep one answer per reader, "
                            "case and condition (responses_table keeps the latest)")
    if table["true_class"].isna().any():
        raise AnalysisError(f"{int(table['true_class'].isna().sum())} readings have no true class; every case "
                            "needs its truth (items' shown_true_class in an export)")
    truths = table.groupby("case_id")["true_class"].nunique()
    if (truths > 1).any():
        raise AnalysisError(f"cases with more than one true class: {sorted(truths[truths > 1].index)[:5]}")
    readers = sorted(map(str, table["rater"].unique()))
    cases = sorted(table["case_id"].unique(), key=str)
    index = pd.MultiIndex.from_product([conds, readers, cases], names=["condition", "rater", "case_id"])
    frame = table.assign(condition=table["condition"].astype(str), rater=table["rater"].astype(str))
    frame = frame.set_index(["condition", "rater", "case_id"]).reindex(index)
    gaps = frame["true_class"].isna()
    if gaps.any():
        per = gaps.groupby(level=["condition", "rater"]).sum()
        worst = per[per > 0].sort_values(ascending=False).head(3)
        listed = ", ".join(f"{rd} in {cd}: {int(n)} of {len(cases)} cases" for cd, rd, n in zip(
            worst.index.get_level_values("condition"), worst.index.get_level_values("rater"), worst.to_numpy(),
            strict=True))
        raise AnalysisError(
            f"the OR analysis needs every reader to read every case in every condition (a fully crossed "
            f"design, e.g. sequential reading); {int(gaps.sum())} readings are missing ({listed} missing). "
            "Analyse each condition with reliance_summary instead, or run a crossed study")
    shape = (len(conds), len(readers), len(cases))
    values = {col: frame[col].to_numpy(dtype=object).reshape(shape) for col in value_columns}
    truth_of = table.drop_duplicates("case_id").set_index("case_id")["true_class"]
    return conds, readers, [str(c) for c in cases], [truth_of[c] for c in cases], values


def mrmc_analysis(readings: pd.DataFrame, fom: str = "auc", positive: str | None = None,
                  conditions: Sequence[str] | None = None, confidence: float = 0.95) -> MRMCResult:
    """OR analysis (Hillis df) of reader accuracy or AUC per condition from a study's readings.

    Args:
        readings: one row per (rater, case_id, condition) with true_class, diagnosis and (for
            "auc") confidence, as :func:`readings_from_export` or ``responses_table`` give.
        fom: "auc" (empirical AUC of the confidence-signed diagnosis) or "accuracy".
        positive: for "auc", the class scored as positive; None averages one-vs-rest AUCs over
            the true classes.
        conditions: the conditions to compare, in this order (default: all, sorted).
        confidence: level of the CIs.
    """
    if fom not in FOMS:
        raise AnalysisError(f"fom must be one of {FOMS}, got {fom!r}")
    cols = ("diagnosis", "confidence") if fom == "auc" else ("diagnosis",)
    conds, readers, _, truth, values = crossed_arrays(readings, conditions, cols)
    if positive is not None and positive not in set(truth):
        raise AnalysisError(f"positive class {positive!r} is not a true class of any case; "
                            f"choose one of {sorted(set(map(str, truth)))}")
    conf = None
    if fom == "auc":
        conf = numeric_ratings(values["confidence"])
    theta, jack = fom_jackknife(truth, values["diagnosis"], conf, fom=fom, positive=positive)
    return or_analysis(theta, jack, conds, readers, fom=fom, confidence=confidence, positive=positive)


def readings_from_export(answers: pd.DataFrame, items: pd.DataFrame, diagnosis: str = "diagnosis",
                         confidence: str = "confidence") -> pd.DataFrame:
    """The readings table (columns READING_COLUMNS) from a study export's answers and items.

    Args:
        answers: answers.{csv,parquet} as :func:`fsl_xai.study.export.export_study` writes it.
        items: items.{csv,parquet} from the same export (its ``shown_true_class`` is the truth).
        diagnosis, confidence: the question ids of the diagnosis and the confidence rating.
    """
    if "true_class" not in items and "shown_true_class" not in items:
        raise AnalysisError("items need a true_class or shown_true_class column (as export_study writes)")
    items = items.assign(true_class=items["true_class"] if "true_class" in items else items["shown_true_class"])
    # responses_table also joins the model's advice; the MRMC analysis does not use it
    for col, fill in (("model_prediction", None), ("show_prediction", False)):
        if col not in items:
            items = items.assign(**{col: fill})
    table = responses_table(answers.drop(columns=["case_id", "condition"], errors="ignore"), items,
                            diagnosis=diagnosis)
    if diagnosis not in table:
        raise AnalysisError(f"no answers to the question {diagnosis!r}; name the diagnosis question")
    out = table.rename(columns={diagnosis: "diagnosis"})
    if confidence in table:
        out = out.rename(columns={confidence: "confidence"})
        out["confidence"] = pd.to_numeric(out["confidence"], errors="coerce")
    else:
        out["confidence"] = np.nan
    return out[list(READING_COLUMNS)].reset_index(drop=True)
