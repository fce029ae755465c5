"""The OR / Hillis MRMC analysis against a published worked example (Van Dyke et al. 1993) and an
independent brute-force recomputation; the readings from a real export; the iMRMC file."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from fsl_xai.study.analysis import AnalysisError
from fsl_xai.study.export import to_imrmc
from fsl_xai.study.mrmc import mrmc_analysis, readings_from_export, signed_scores

# Van Dyke et al. (1993), cine vs spin-echo MRI for aortic dissection: 5 readers, 114 cases (69
# without, 45 with dissection), 5-point ratings; as distributed with RJafroc (dataset02,
# inst/extdata/datasets/VD.lrc). One string per (reader, modality): the rating of cases 0..113,
# cases 69..113 diseased. Rows: reader 0 modality 0, reader 0 modality 1, reader 1 modality 0, ...
VAN_DYKE = [
    "122151111111411111111131311214111113121211233131133111111221111332111555545554555434245555555154454553555115554451",
    "333222223213122222211111421312214323123122233111333113412421241442111535555554555544335555555355355554455535555551",
    "232222222322522232222222422223222222222222222222222222222432232222222535555542555442225555555243354552425225555352",
    "322222223222222122221222322222212212222231223222222222322322222222122535555552555344245455545252355532425525555552",
    "222235112242422232221232411322112224121412112222223211211221151421212545555555555542355555555252255552555225555552",
    "242222322211132222121121411512112122212221132111233113221232341242121525555555555354145555555253355543555534555551",
    "111111311111111111112111211112111111111111111111331111111111111311111555555555555555155555555554544553555125555555",
    "221111312111122111211111321212111122112111112121212211111212111323211545555554555455555555555455445555555535555555",
    "351211112221211122113221111211211231221113332111211111111341231212113525255551545452235555554144322151515115553552",
    "223122221222111222122212322321212222112121132122332122221222231233111525455555455343335555555251332532545533555553",
]


def _van_dyke():
    """The ratings as readings: a rating is read as the confidence that the case is diseased."""
    rows = []
    for (reader, modality), ratings in zip(itertools.product(range(5), range(2)), VAN_DYKE, strict=True):
        for case, rating in enumerate(ratings):
            rows.append({"rater": f"R{reader}", "case_id": f"c{case:03d}", "condition": f"m{modality}",
                         "true_class": "dissection" if case >= 69 else "none", "diagnosis": "dissection",
                         "confidence": int(rating)})
    return pd.DataFrame(rows)


def test_van_dyke_matches_the_published_or_analysis():
    """Published values: MRMCaov's README (summary(mrmc(empirical_auc(truth, rating), treatment,
    reader, case, data = VanDyke))) and RJafroc's UtilORVarComponentsFactorial(dataset02,
    "Wilcoxon", "jackknife"), which agree to every printed digit."""
    res = mrmc_analysis(_van_dyke(), fom="auc", positive="dissection")
    published_foms = [[0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
                      [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]]
    np.testing.assert_allclose(res.reader_foms.T.to_numpy(), published_foms, atol=5e-9)
    comp = res.components
    for name, value in {"var_error": 0.0008022883, "cov1": 0.0003466137, "cov2": 0.0003440748,
                        "cov3": 0.0002390284, "var_reader": 0.0015349993, "var_condition_reader": 0.0002004025,
                        "ms_condition": 0.004796171, "ms_reader": 0.0038362000,
                        "ms_condition_reader": 0.0005510306}.items():
        assert getattr(comp, name) == pytest.approx(value, rel=2e-7, abs=1e-12), name
    assert (res.f_stat, res.df1, res.df2, res.p_value) == pytest.approx((4.456319, 1, 15.25967, 0.05166569),
                                                                        rel=1e-6)
    diff = res.differences.iloc[0]
    assert diff["comparison"] == "m0 - m1"
    assert (diff["estimate"], diff["se"], diff["ci_low"], diff["ci_high"], diff["t"], diff["p_value"]) == \
        pytest.approx((-0.04380032, 0.02074862, -0.0879594986, 0.0003588544, -2.110999, 0.05166569), rel=1e-6)
    per = res.per_condition.set_index("condition")
    published = {"m0": (0.8970370, 0.03317360, 12.74465, 0.8252236, 0.9688505),
                 "m1": (0.9408374, 0.02156637, 12.71019, 0.8941378, 0.9875369)}
    for cond, values in published.items():
        row = per.loc[cond]
        assert (row["fom"], row["se"], row["df"], row["ci_low"], row["ci_high"]) == pytest.approx(values, rel=1e-6)
        assert (row["n_readers"], row["n_cases"]) == (5, 114)
    # with two classes the mean of the one-vs-rest AUCs is the same AUC
    both = mrmc_analysis(_van_dyke(), fom="auc")
    assert both.f_stat == pytest.approx(res.f_stat) and both.positive is None


def _random_study(seed, n_readers=3, n_cases=12, conditions=("no_ai", "prediction", "heatmap"),
                  classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    truth = [classes[k % len(classes)] for k in range(n_cases)]
    rows = []
    for cond, r in itertools.product(conditions, range(n_readers)):
        for k, t in enumerate(truth):
            right = rng.random() < 0.7
            diag = t if right else rng.choice([c for c in classes if c != t])
            rows.append({"rater": f"R{r}", "case_id": f"case{k}", "condition": cond, "true_class": t,
                         "diagnosis": str(diag), "confidence": int(rng.integers(1, 6))})
    return pd.DataFrame(rows)


def _brute_force(readings, fom, positive=None):
    """The OR quantities recomputed the slow way: each FOM refitted on every case set with one case
    left out (sklearn's AUC), jackknife covariances from the formula, pair by pair."""
    conds = sorted(readings["condition"].unique())
    readers = sorted(readings["rater"].unique())
    cases = sorted(readings["case_id"].unique())

    def figure(g):
        if fom == "accuracy":
            return float((g["diagnosis"] == g["true_class"]).mean())
        classes = [positive] if positive else sorted(g["true_class"].unique())
        return float(np.mean([roc_auc_score(g["true_class"] == c, signed_scores(g["diagnosis"], g["confidence"], c))
                              for c in classes]))

    theta = np.array([[figure(readings[(readings.condition == c) & (readings.rater == r)]) for r in readers]
                      for c in conds])
    jack = np.array([[[figure(readings[(readings.condition == c) & (readings.rater == r) & (readings.case_id != k)])
                       for k in cases] for r in readers] for c in conds])
    n = len(cases)
    pairs = {"var": [], "cov1": [], "cov2": [], "cov3": []}
    for (i, j), (i2, j2) in itertools.product(itertools.product(range(len(conds)), range(len(readers))), repeat=2):
        a, b = jack[i, j], jack[i2, j2]
        cov = (n - 1) / n * float(np.sum((a - a.mean()) * (b - b.mean())))
        kind = {(True, True): "var", (False, True): "cov1", (True, False): "cov2", (False, False): "cov3"}
        pairs[kind[(i == i2, j == j2)]].append(cov)
    comps = {k: float(np.mean(v)) for k, v in pairs.items()}
    t, r = theta.shape
    # MS(T:R) from a two-way ANOVA without replication
    ms_tr = sum((theta[i, j] - theta[i].mean() - theta[:, j].mean() + theta.mean()) ** 2
                for i in range(t) for j in range(r)) / ((t - 1) * (r - 1))
    ms_t = r * np.var(theta.mean(axis=1), ddof=1)
    den = ms_tr + r * max(comps["cov2"] - comps["cov3"], 0)
    ddf = den ** 2 * (t - 1) * (r - 1) / ms_tr ** 2
    return theta, comps, ms_t / den, ddf, stats.f.sf(ms_t / den, t - 1, ddf), den


@pytest.mark.parametrize(("fom", "positive"), [("accuracy", None), ("auc", "b"), ("auc", None)])
def test_matches_a_brute_force_recomputation(fom, positive):
    readings = _random_study(3)
    res = mrmc_analysis(readings, fom=fom, positive=positive)
    theta, comps, f_stat, ddf, p, den = _brute_force(readings, fom, positive)
    np.testing.assert_allclose(res.reader_foms.T.to_numpy(), theta, rtol=1e-12)
    c = res.components
    assert (c.var_error, c.cov1, c.cov2, c.cov3) == pytest.approx(
        (comps["var"], comps["cov1"], comps["cov2"], comps["cov3"]), rel=1e-9, abs=1e-15)
    assert (res.f_stat, res.df1, res.df2, res.p_value) == pytest.approx((f_stat, 2, ddf, p), rel=1e-9)
    assert len(res.differences) == 3  # every pair of the three conditions
    diff = res.differences.set_index("comparison").loc["heatmap - no_ai"]
    means = res.reader_foms.mean()
    se = np.sqrt(2 * den / 3)
    half = stats.t.ppf(0.975, ddf) * se
    assert diff["estimate"] == pytest.approx(means["heatmap"] - means["no_ai"])
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((diff["estimate"] - half, diff["estimate"] + half))


def test_hand_computed_accuracy_example():
    """2 readers x 2 conditions x 4 cases, worked by hand. Correct (1) / wrong (0):
    A/R1 = 1100, A/R2 = 1110, B/R1 = 1111, B/R2 = 1101 -> FOMs 0.50, 0.75, 1.00, 0.75.
    Leaving a case out: a correct case gives (s - 1)/3, a wrong one s/3, so the jackknife values
    are A/R1 (1/3, 1/3, 2/3, 2/3), A/R2 (2/3, 2/3, 2/3, 1), B/R1 (1, 1, 1, 1), B/R2 (2/3, 2/3, 1, 2/3).
    Deviations from their means: A/R1 (-1/6, -1/6, 1/6, 1/6), A/R2 (-1/12, -1/12, -1/12, 1/4),
    B/R1 0, B/R2 (-1/12, -1/12, 1/4, -1/12); a covariance is 3/4 times the sum of their products:
    variances 1/12, 1/16, 0, 1/16 -> Var = 5/96; Cov2 (A: R1 with R2) = 3/4 * 1/18 = 1/24, (B) = 0
    -> Cov2 = 1/48; Cov1 (R1: A with B) = 0, (R2) = 3/4 * -1/36 = -1/48 -> Cov1 = -1/96;
    Cov3 (A/R1 with B/R2) = 1/24, (A/R2 with B/R1) = 0 -> Cov3 = 1/48.
    MS(T) = 2 * ((0.625 - 0.75)**2 + (0.875 - 0.75)**2) = 1/16; MS(T:R) = 4 * 0.125**2 = 1/16;
    den = 1/16 + 2 * max(1/48 - 1/48, 0) = 1/16 -> F = 1, ddf = 1; p = 0.5."""
    pattern = {("A", "R1"): "1100", ("A", "R2"): "1110", ("B", "R1"): "1111", ("B", "R2"): "1101"}
    rows = [{"rater": r, "case_id": f"k{k}", "condition": c, "true_class": "x",
             "diagnosis": "x" if bit == "1" else "y", "confidence": 3}
            for (c, r), bits in pattern.items() for k, bit in enumerate(bits)]
    res = mrmc_analysis(pd.DataFrame(rows), fom="accuracy")
    np.testing.assert_allclose(res.reader_foms.to_numpy(), [[0.5, 1.0], [0.75, 0.75]])
    c = res.components
    assert c.var_error == pytest.approx(5 / 96)
    assert (c.cov1, c.cov2, c.cov3) == pytest.approx((-1 / 96, 1 / 48, 1 / 48))
    assert (c.ms_condition, c.ms_condition_reader) == pytest.approx((1 / 16, 1 / 16))
    assert (res.f_stat, res.df2, res.p_value) == pytest.approx((1.0, 1.0, 0.5))


def test_readings_from_a_real_export_and_the_imrmc_file(tmp_path):
    """Answers exported as export_study writes them (values JSON text, latest answer wins)."""
    answers, items, n, latest = [], [], 0, {}
    for label, truth in (("C01", "lym"), ("C02", "mono"), ("C03", "lym"), ("C04", "mono")):
        for cond in ("no_ai", "prediction"):
            items.append({"item_id": f"{label}|{cond}", "case_label": label, "case_id": f"{truth}/{label}.jpg",
                          "condition": cond, "shown_true_class": truth})
            for r, rater in enumerate(("R001", "R002")):
                diag = truth if (r + len(answers)) % 3 else "lym"
                latest[(rater, f"{truth}/{label}.jpg", cond)] = diag
                for q, v in (("diagnosis", "mono"), ("diagnosis", diag), ("confidence", str(2 + r))):
                    n += 1
                    answers.append({"answer_id": n, "rater": rater, "item_id": f"{label}|{cond}",
                                    "case_id": f"{truth}/{label}.jpg", "condition": cond, "question": q,
                                    "value": v, "response_ms": 100})
    readings = readings_from_export(pd.DataFrame(answers), pd.DataFrame(items))
    assert len(readings) == 4 * 2 * 2 and list(readings.columns) == [
        "rater", "case_id", "condition", "true_class", "diagnosis", "confidence"]
    assert (readings["confidence"] == readings["rater"].map({"R001": 2.0, "R002": 3.0})).all()
    # the latest answer wins: the first 'mono' diagnosis was replaced
    assert {(r, k, c): d for r, k, c, d in readings[["rater", "case_id", "condition", "diagnosis"]].itertuples(
        index=False)} == latest and set(latest.values()) == {"lym", "mono"} and "lym" in [
        d for (_, k, _), d in latest.items() if k.startswith("mono")]
    res = mrmc_analysis(readings, fom="accuracy")
    assert res.readers == ("R001", "R002") and res.n_cases == 4 and res.conditions == ("no_ai", "prediction")
    path = to_imrmc(readings, tmp_path / "study.imrmc", positive="mono")
    lines = path.read_text().splitlines()
    begin = lines.index("BEGIN DATA:")
    assert {"N0:2", "N1:2", "NR:2", "NM:2"} <= set(lines[:begin])
    rows = [line.split(",") for line in lines[begin + 1:]]
    assert all(len(row) == 4 for row in rows) and len(rows) == 4 + 16
    truth_rows = {row[1]: row[3] for row in rows if row[0] == "-1"}
    assert truth_rows == {"lym/C01.jpg": "0", "mono/C02.jpg": "1", "lym/C03.jpg": "0", "mono/C04.jpg": "1"}
    for row in rows[4:]:
        got = readings[(readings.rater == row[0]) & (readings.case_id == row[1]) & (readings.condition == row[2])]
        sign = 1 if got["diagnosis"].item() == "mono" else -1
        assert float(row[3]) == sign * got["confidence"].item()
    # the AUC of the iMRMC score is the AUC the analysis reports
    auc = mrmc_analysis(readings, fom="auc", positive="mono")
    score = {(r[0], r[1], r[2]): float(r[3]) for r in rows[4:]}
    r1 = [score[("R001", c, "no_ai")] for c in sorted(truth_rows)]
    assert auc.reader_foms.loc["R001", "no_ai"] == pytest.approx(
        roc_auc_score([truth_rows[c] == "1" for c in sorted(truth_rows)], r1))


def test_a_design_that_is_not_crossed_is_a_clear_error(tmp_path):
    readings = _random_study(0, n_readers=2, n_cases=6, conditions=("no_ai", "prediction"))
    # the Latin-square 'within' design: each reader sees each case in one condition only
    latin = readings[[(int(k[4:]) + int(r[1:])) % 2 == ("no_ai", "prediction").index(c)
                      for k, r, c in zip(readings.case_id, readings.rater, readings.condition, strict=True)]]
    with pytest.raises(AnalysisError, match="every reader to read every case in every condition"):
        mrmc_analysis(latin)
    with pytest.raises(AnalysisError, match="every reader to read every case in every condition"):
        to_imrmc(latin, tmp_path / "x.imrmc", positive="a")
    with pytest.raises(AnalysisError, match="at least 2 readers"):
        mrmc_analysis(readings[readings.rater == "R0"], fom="accuracy")
    with pytest.raises(AnalysisError, match="appear twice"):
        mrmc_analysis(pd.concat([readings, readings.iloc[:1]]))
    with pytest.raises(AnalysisError, match="needs a confidence rating"):
        mrmc_analysis(readings.assign(confidence=np.nan))
    with pytest.raises(AnalysisError, match="fom must be one of"):
        mrmc_analysis(readings, fom="kappa")
    with pytest.raises(AnalysisError, match="not a true class"):
        mrmc_analysis(readings, positive="zebra")
    with pytest.raises(AnalysisError, match="the CI level, between 0 and 1"):
        mrmc_analysis(readings, confidence=95)
    with pytest.raises(AnalysisError, match="name the positive class"):
        to_imrmc(readings, tmp_path / "x.imrmc")
    with pytest.raises(AnalysisError, match="comma or white space"):
        to_imrmc(readings.assign(rater=readings.rater + " x"), tmp_path / "x.imrmc", positive="a")


def test_one_condition_gives_its_ci_and_no_test():
    readings = _random_study(1, conditions=("no_ai",))
    res = mrmc_analysis(readings, fom="accuracy")
    assert res.differences.empty and np.isnan(res.f_stat) and res.df1 == 0
    row = res.per_condition.iloc[0]
    assert row["ci_low"] < row["fom"] < row["ci_high"]


def test_end_to_end_from_the_store_through_export_study(tmp_path):
    """A crossed study in the real store (every rater assigned every case in every condition),
    answered and exported by export_study: the analysis reads the exported CSVs."""
    from fsl_xai.study import ResponseStore
    from fsl_xai.study.export import export_study

    truth = {"C01": "lym", "C02": "mono", "C03": "lym", "C04": "mono", "C05": "lym", "C06": "mono"}
    conditions = ("no_ai", "prediction")
    rng = np.random.default_rng(5)
    expected = []
    with ResponseStore(tmp_path / "study.sqlite") as store:
        store.add_items([{"item_id": f"{label}|{cond}", "case_id": f"{cls}/{label}.jpg", "condition": cond,
                          "shown": {"case_label": label, "classes": ["lym", "mono"], "true_class": cls},
                          "provenance": {"sample_id": f"{cls}/{label}.jpg"}}
                         for label, cls in truth.items() for cond in conditions])
        for _ in range(3):
            _, token = store.add_rater([f"{label}|{cond}" for label in truth for cond in conditions])
            for label, cond in itertools.product(truth, conditions):
                diag = truth[label] if rng.random() < 0.7 else ("mono" if truth[label] == "lym" else "lym")
                conf = int(rng.integers(1, 6))
                store.submit(token, f"{label}|{cond}", {"diagnosis": diag, "confidence": conf},
                             answer_key=f"{label}|{cond}#1")
                expected.append((diag == truth[label], conf))
        written = export_study(store, tmp_path / "export", formats=("csv",))
    readings = readings_from_export(pd.read_csv(written["answers.csv"]), pd.read_csv(written["items.csv"]))
    assert len(readings) == 3 * 6 * 2
    assert sorted(zip(readings["diagnosis"] == readings["true_class"], readings["confidence"], strict=True)) == \
        sorted(expected)
    res = mrmc_analysis(readings, fom="accuracy")
    assert res.per_condition["n_cases"].tolist() == [6, 6] and len(res.readers) == 3
    assert res.reader_foms.to_numpy().mean() == pytest.approx(np.mean([ok for ok, _ in expected]))
    auc = mrmc_analysis(readings, fom="auc", positive="mono")
    assert ((auc.reader_foms >= 0) & (auc.reader_foms <= 1)).all().all()
    text = to_imrmc(readings, tmp_path / "study.imrmc", positive="mono").read_text()
    assert text.count("\n-1,") == 6 and "BEGIN DATA:\n" in text
