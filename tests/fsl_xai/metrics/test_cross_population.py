"""The cross-population protocol and subgroup audits on the synthetic set and the real HAM10000 subset."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsl_xai.data import read_npz
from fsl_xai.errors import EpisodeError
from fsl_xai.metrics import cross_population, disparity, subgroup_report, subgroup_table
from fsl_xai.testing import make_imageset, tiny_model

CONTRACT = ["episode", "episode_id", "query_index", "sample_id", "true_label", "pred_label", "true_class",
            "pred_class", "correct", "margin", "true_margin"]


def _shifted_toy(noise: float = 0.35):
    """Toy set whose site B images carry heavy noise (an acquisition shift)."""
    ims = make_imageset(n_classes=4, n_per_class=40, channels=1, size=28, seed=0)
    b = ims.metadata["site"].to_numpy() == "B"
    rng = np.random.default_rng(0)
    ims.images[b] = np.clip(ims.images[b] + rng.normal(0, noise, ims.images[b].shape), 0, 1).astype(np.float32)
    return ims


def test_cross_population_on_an_injected_shift():
    ims = _shifted_toy()
    model = tiny_model(channels=1, size=28)
    r = cross_population(model, ims, {"site": "A"}, {"site": "B"}, n_way=3, n_shot=3, n_query=4, episodes=60,
                         seed=0, n_boot=800)
    assert r.n_in == r.n_cross == 60 * 3 * 4
    assert r.in_population.estimate > 0.9 and r.cross_population.estimate < r.in_population.estimate
    assert r.flagged and r.gap.low > 0
    assert r.gap.estimate == pytest.approx(r.in_population.estimate - r.cross_population.estimate)
    p = r.predictions
    assert list(p.columns[:len(CONTRACT)]) == CONTRACT
    assert {"dist_c0", "dist_c1", "dist_c2", "dist_c3", "site", "age", "population"} <= set(p.columns)
    assert (p.loc[p.population == "in", "site"] == "A").all() and (p.loc[p.population == "cross", "site"] == "B").all()
    assert (p.dist_c0.isna() | p.dist_c1.isna() | p.dist_c2.isna() | p.dist_c3.isna()).all()  # 3 of 4 classes
    assert (p.margin >= 0).all() and ((p.true_margin < 0) == ~p.correct).all()
    # queries never repeat their episode's support images, in and cross sets are disjoint per episode
    first = p[p.episode == 0]
    assert not set(first[first.population == "in"].sample_id) & set(first[first.population == "cross"].sample_id)
    # the per-query table feeds the subgroup table, which sees the same gap
    d = disparity(p, by="population", n_boot=500)
    assert d["flagged"] and d["worst_group"] == "population=cross"
    # deterministic
    again = cross_population(model, ims, {"site": "A"}, {"site": "B"}, n_way=3, n_shot=3, n_query=4, episodes=60,
                             seed=0, n_boot=800)
    pd.testing.assert_frame_equal(p, again.predictions)
    assert again.gap == r.gap
    s = r.summary()
    assert list(s["quantity"]) == ["in-population", "cross-population", "gap (in - cross)"]


def test_no_shift_no_flag_and_clear_errors():
    ims = make_imageset(n_classes=3, n_per_class=30, channels=1, size=28, seed=1)
    model = tiny_model(channels=1, size=28)
    r = cross_population(model, ims, {"site": "A"}, {"site": "B"}, n_way=2, n_shot=2, n_query=3, episodes=40,
                         n_boot=500)
    assert r.gap.low <= 0 <= r.gap.high and not r.flagged
    with pytest.raises(EpisodeError, match="n_way"):
        cross_population(model, ims, {"site": "A"}, {"site": "B"}, n_way=4, n_shot=2, n_query=3, episodes=5)
    with pytest.raises(EpisodeError, match="no metadata column"):
        cross_population(model, ims, {"scanner": "X"}, {"site": "B"}, episodes=5)
    with pytest.raises(EpisodeError, match="has 0 images"):
        cross_population(model, ims, {"site": "C"}, {"site": "B"}, episodes=5)


def test_synthetic_site_shift_shows_as_flagged_disparity():
    from fsl_xai.data.synthetic import make_synthetic
    from fsl_xai.evaluation import evaluate
    from fsl_xai.training import train_episodic

    # the synthetic set's own injected shift: site B is noisier and has lower contrast. An untrained
    # backbone is at chance on these lesions, so meta-train a narrow Conv-4 briefly (about 1 s of CPU)
    train = make_synthetic(n_per_class=30, size=32, seed=0, sites=("A", "B"))
    test = make_synthetic(n_per_class=40, size=32, seed=0, sites=("A", "B"), split="test")
    model = tiny_model(channels=1, size=32, width=8)
    train_episodic(model, train, n_way=3, n_shot=5, n_query=5, episodes=100, seed=0, progress=False)
    model.eval()
    ev = evaluate(model, test, 3, 5, 5, episodes=150, seed=0, progress=False)
    assert ev.accuracy > 0.45  # well above chance (1/3), so errors mean something
    report = subgroup_report(ev.predictions, by="site", n_boot=800)
    d = disparity(report)
    assert d["flagged"] and d["worst_group"] == "site=B" and d["gap_ci_low"] > 0.03, d
    rows = report.table.set_index("group")
    assert rows.loc["site=B", "error_rate"] > rows.loc["site=A", "error_rate"]
    # and the cross-population protocol: support from site A, queries from site B
    r = cross_population(model, test, {"site": "A"}, {"site": "B"}, n_way=3, n_shot=5, n_query=5, episodes=80,
                         n_boot=800)
    assert r.flagged and r.gap.low > 0.03


@pytest.fixture(scope="module")
def ham_path(request) -> Path:
    data_dir = request.getfixturevalue("data_dir")
    path = data_dir / "ham10000_subset" / "ham_subset_28.npz"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the shared data folder")
    return path


def test_ham10000_subgroup_audit(ham_path):
    from fsl_xai.evaluation import evaluate

    ham = read_npz(ham_path, split="test")
    model = tiny_model(channels=3, size=28, width=8)
    ev = evaluate(model, ham, n_way=3, n_shot=5, n_query=5, episodes=100, seed=0, progress=False)
    p = ev.predictions
    for col in ("sex", "age", "localization", "site"):
        assert col in p.columns
        tab = subgroup_table(p, by=col, n_boot=500, per_class=(col == "sex"))
        body = tab[tab.group != "all"]
        assert body["n"].sum() == len(p)
        assert (body["error_ci_low"] <= body["error_rate"] + 1e-12).all()
        assert (body["error_rate"] <= body["error_ci_high"] + 1e-12).all()
        assert body["ci_method"].str.startswith(("cluster_bootstrap", "wilson")).all()
        assert (body["too_small"] == (body["n"] < 30)).all()
    age = subgroup_table(p, by="age", n_boot=300, per_class=False)
    assert set(age["age"]) <= {"all", "<30", "30-44", "45-59", "60-74", "75+", "missing"}
    loc = subgroup_table(p, by="localization", n_boot=300, per_class=False)
    assert loc["too_small"].any()  # rare body sites are shown and flagged, not hidden
    sex = subgroup_table(p, by="sex", n_boot=300).set_index("group")
    assert {"sex=female", "sex=male"} <= set(sex.index)
    assert "sensitivity_nv" in sex.columns and "specificity_mel" in sex.columns
    both = subgroup_table(p, by=["sex", "age"], n_boot=300, per_class=False)
    assert both.loc[both.group != "all", "n"].sum() == len(p)
    d = disparity(p, by="site", n_boot=500)
    assert d["n_groups_compared"] >= 2 and np.isfinite(d["gap_ci_low"])


def test_ham10000_cross_site(ham_path):
    ham = read_npz(ham_path, split="train")
    model = tiny_model(channels=3, size=28, width=8)
    r = cross_population(model, ham, {"site": "vidir_molemax"}, {"site": "rosendahl"}, n_way=3, n_shot=5,
                         n_query=5, episodes=60, n_boot=500)
    assert set(r.classes) == {"bkl", "df", "mel", "nv"}  # the classes both sites have enough of
    assert r.n_in == r.n_cross == 60 * 15
    assert r.gap.low <= r.gap.estimate <= r.gap.high
    p = r.predictions
    assert (p.loc[p.population == "cross", "site"] == "rosendahl").all()
