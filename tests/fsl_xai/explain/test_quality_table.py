"""The quality table (n, undefined counts, intervals, status) and the per-map badges."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fsl_xai.errors import DataError, ModelError
from fsl_xai.explain import explain
from fsl_xai.explain.quality import COLUMNS, Badges, badges, deletion_insertion, quality_table
from fsl_xai.intervals import mean_interval

from ._helpers import edge_detector, negative_maps, zero_maps

TABLE_METRICS = {"deletion_auc", "insertion_auc", "pointing_game", "energy_inside_mask", "randomization_spearman",
                 "infidelity", "sensitivity_max", "support_labels_spearman", "support_images_spearman"}


def test_quality_table_columns_n_ci_flags_and_determinism(trained):
    model = trained["model"]
    s_img, _ = trained["support"]
    q, masks = trained["queries"][:8], trained["masks"][:8]
    fingerprint, protos = model.fingerprint(), model.prototypes_.clone()
    kwargs = dict(support_images=s_img, masks=masks, seed=0, method_params={"gradcam": {"layer": "blocks.1"}}, steps=8,
                  infidelity_kwargs={"n_perturb_samples": 4, "n_sensitivity_samples": 2})
    table = quality_table(model, q, ["saliency", "gradcam", edge_detector], **kwargs)
    assert list(table.columns) == COLUMNS == ["method", "metric", "mean", "n", "n_undefined", "ci_low", "ci_high",
                                              "ci_method", "higher_is_better", "reference", "threshold", "status"]
    for method in ("saliency", "gradcam", "edge_detector"):
        assert set(table.loc[table.method == method, "metric"]) == TABLE_METRICS
    assert set(table.loc[table.method == "random", "metric"]) == {"deletion_auc", "insertion_auc", "pointing_game",
                                                                   "energy_inside_mask"}
    # every query is counted: defined (n) or undefined (n_undefined), never silently dropped
    assert (table["n"] + table["n_undefined"] == 8).all()
    # none of these maps is flat, so only the energy share can be undefined, exactly for the maps
    # without positive attribution (which maps those are depends on the CPU's trained weights)
    by = table.set_index(["method", "metric"])
    for method in ("saliency", "gradcam"):
        params = {"layer": "blocks.1"} if method == "gradcam" else {}
        maps = explain(model, q, method, **params).maps.reshape(8, -1)
        assert by.loc[(method, "energy_inside_mask"), "n_undefined"] == int((maps.max(1) <= 0).sum())
    others = table[(table.metric != "energy_inside_mask") & (table.metric != "sensitivity_max")]
    assert (others["n_undefined"] == 0).all()
    rows = table.dropna(subset=["ci_low"])
    assert ((rows["ci_low"] <= rows["mean"] + 1e-12) & (rows["mean"] <= rows["ci_high"] + 1e-12)).all()
    assert set(table.loc[table.metric == "pointing_game", "ci_method"]) == {"wilson"}
    assert set(table.loc[table.metric != "pointing_game", "ci_method"]) == {"t"}
    assert by.loc[("saliency", "randomization_spearman"), "status"] == "passed"
    assert by.loc[("edge_detector", "randomization_spearman"), "status"] == "failed"
    # the support-set check: the model's maps change with the support set, the edge detector's cannot
    for metric in ("support_labels_spearman", "support_images_spearman"):
        assert by.loc[("saliency", metric), "status"] == "passed" and by.loc[("saliency", metric), "mean"] < 0.8
        assert by.loc[("gradcam", metric), "status"] == "passed"
        assert by.loc[("edge_detector", metric), "status"] == "failed"
        assert by.loc[("edge_detector", metric), "mean"] == pytest.approx(1.0)
        assert by.loc[("saliency", metric), "threshold"] == 0.9 and by.loc[("saliency", metric), "n"] == 8
    chance = by.loc[("random", "deletion_auc"), "mean"]
    assert by.loc[("saliency", "deletion_auc"), "reference"] == pytest.approx(chance)
    assert by.loc[("saliency", "deletion_auc"), "status"] is None
    # the interval is fsl_xai.intervals' t interval of the per-query values
    amap = explain(model, q, "saliency")
    di = deletion_insertion(model, q, amap, steps=8, seed=0)
    expected = mean_interval(di.deletion_auc, method="t")
    row = by.loc[("saliency", "deletion_auc")]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((expected.estimate, expected.low,
                                                                            expected.high), rel=1e-9)
    again = quality_table(model, q, ["saliency", "gradcam", edge_detector], **kwargs)
    pd.testing.assert_frame_equal(table, again)
    assert model.fingerprint() == fingerprint and torch.equal(model.prototypes_, protos)


def test_quality_table_counts_undefined_maps(trained):
    """A flat (all-zero) map gets no value for any metric that reads a ranking or a location: the table
    shows n = 0 and counts every query as undefined; the randomisation status is "undefined"."""
    model = trained["model"]
    s_img, _ = trained["support"]
    q, masks = trained["queries"][:5], trained["masks"][:5]
    table = quality_table(model, q, [zero_maps, negative_maps], support_images=s_img, masks=masks, steps=4,
                          include_random=False, infidelity_kwargs={"n_perturb_samples": 2, "n_sensitivity_samples": 2})
    by = table.set_index(["method", "metric"])
    for metric in ("deletion_auc", "insertion_auc", "pointing_game", "energy_inside_mask", "randomization_spearman",
                   "support_labels_spearman", "support_images_spearman", "sensitivity_max"):
        assert (by.loc[("zero_maps", metric), "n"], by.loc[("zero_maps", metric), "n_undefined"]) == (0, 5), metric
        assert np.isnan(by.loc[("zero_maps", metric), "mean"])
    assert by.loc[("zero_maps", "randomization_spearman"), "status"] == "undefined"
    assert by.loc[("zero_maps", "support_labels_spearman"), "status"] == "undefined"
    assert by.loc[("zero_maps", "infidelity"), "n"] == 5
    # all negative: a ranking and a maximum, but no positive attribution
    assert by.loc[("negative_maps", "deletion_auc"), "n"] == by.loc[("negative_maps", "pointing_game"), "n"] == 5
    assert by.loc[("negative_maps", "energy_inside_mask"), "n_undefined"] == 5


def test_quality_table_bootstrap_and_bad_input(trained):
    model = trained["model"]
    q = trained["queries"][:6]
    table = quality_table(model, q, ["saliency"], metrics=("deletion",), ci="bootstrap", steps=4)
    assert set(table["ci_method"]) == {"bootstrap"} and set(table["method"]) == {"saliency", "random"}
    with pytest.raises(DataError, match="support set"):
        quality_table(model, q, ["saliency"], metrics=("randomization",))
    with pytest.raises(DataError, match="unknown metric"):
        quality_table(model, q, ["saliency"], metrics=("accuracy",))
    with pytest.raises(ModelError, match="unknown attribution method"):
        quality_table(model, q, ["no_such_method"], metrics=("deletion",))
    with pytest.raises(ModelError, match=r"model\.fit\("):
        quality_table(model.model, q, ["saliency"], metrics=("deletion",))


def test_badges_for_one_query(trained):
    model = trained["model"]
    s_img, _ = trained["support"]
    q, mask = trained["queries"][0], trained["masks"][0]
    fingerprint = model.fingerprint()
    b = badges(model, q, "saliency", s_img, mask=mask)
    assert isinstance(b, Badges) and dataclasses.is_dataclass(b) and b.method == "saliency" and b.n_queries == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.method = "other"  # type: ignore[misc]
    assert [c.name for c in b.checks] == ["randomization", "deletion", "insertion", "support_labels", "support_images",
                                          "pointing_game", "energy_inside"]
    for check in b.checks:
        assert check.status in ("passed", "failed", "undefined") and check.n + check.n_undefined == 1
        assert check.passed == (check.status == "passed")
    rnd = b["randomization"]
    assert rnd.status == "passed" and rnd.threshold == 0.5 and isinstance(rnd.value, float) and rnd.value < 0.5
    assert not rnd.higher_is_better and b["insertion"].higher_is_better
    # deletion is judged against a random map on the same query
    assert b["deletion"].status == ("passed" if b["deletion"].value < b["deletion"].threshold else "failed")
    assert b["pointing_game"].values[0] in (0.0, 1.0)
    assert b["pointing_game"].threshold == pytest.approx(mask.mean())
    assert "pointing_game" in b and "colour" not in b
    with pytest.raises(KeyError, match="pointing_game"):
        b["colour"]
    json.dumps(b.to_dict())
    # reusing the map the widget already has gives the same badges
    amap = explain(model, q[None], "saliency")
    assert badges(model, q, "saliency", s_img, mask=mask, attribution=amap) == b
    for name in ("support_labels", "support_images"):
        assert b[name].status == "passed" and b[name].threshold == 0.9 and b[name].value < 0.9
        assert not b[name].higher_is_better
    edge = badges(model, q, edge_detector, s_img)
    assert edge["randomization"].status == "failed" and "pointing_game" not in edge
    # a map of the query alone ignores the support set: flagged by both support badges
    assert edge["support_labels"].status == edge["support_images"].status == "failed"
    assert edge["support_labels"].value == pytest.approx(1.0)
    assert "support_labels" not in badges(model, q, "saliency", s_img, support=False)
    assert model.fingerprint() == fingerprint


def test_a_flat_map_never_passes_a_badge(trained):
    model = trained["model"]
    s_img, _ = trained["support"]
    q, masks = trained["queries"][:2], trained["masks"][:2]
    b = badges(model, q, zero_maps, s_img, mask=masks)
    assert b.n_queries == 2
    for check in b.checks:
        assert check.status == "undefined" and not check.passed, check.name
        assert check.value is None and check.n == 0 and check.n_undefined == 2 and check.values == (None, None)
    # an all-negative map has no positive energy: that badge is undefined, the others are judged
    neg = badges(model, q, negative_maps, s_img, mask=masks)
    assert neg["energy_inside"].status == "undefined" and neg["randomization"].status == "failed"
    assert neg["support_labels"].status == "failed"  # computed from the query alone


def test_package_names_are_the_functions_after_the_modules_are_imported():
    import importlib

    import fsl_xai.explain as explain

    importlib.import_module("fsl_xai.explain.quality")
    assert callable(explain.badges) and callable(explain.quality_table)
    assert explain.badges.__module__ == "fsl_xai.explain.badge_checks"
