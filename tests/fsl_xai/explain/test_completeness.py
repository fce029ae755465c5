"""Integrated Gradients carries its own error: the completeness gap of every map, relative to the
query's decision margin, and the completeness badge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsl_xai.evaluation import margins
from fsl_xai.explain import METHODS, ExplainedOutput, explain, make_baseline
from fsl_xai.explain.quality import badges


def hand_gap(model, x, amap, baseline):
    """sum of attributions - (F(x) - F(baseline)), computed here from the model itself."""
    w = torch.zeros(len(x), model.n_way)
    w[torch.arange(len(x)), torch.tensor(amap.targets)] = 1
    if amap.contrasts is not None:
        w[torch.arange(len(x)), torch.tensor(amap.contrasts)] -= 1
    with torch.no_grad():
        f = ExplainedOutput(model)
        fx, fb = f(x, w)[:, 0].double().numpy(), f(make_baseline(x, baseline), w)[:, 0].double().numpy()
    return amap.attributions.reshape(len(x), -1).astype(np.float64).sum(1) - (fx - fb), fb


def test_registry_says_which_methods_are_complete():
    assert METHODS["integrated_gradients"].completeness
    assert not any(spec.completeness for name, spec in METHODS.items() if name != "integrated_gradients")


@pytest.mark.parametrize("baseline", ["zeros", "blur", "mean"])
def test_every_ig_map_records_its_gap_and_margin(trained, baseline):
    model = trained["model"]
    x = trained["queries"][:6]
    amap = explain(model, x, "integrated_gradients", n_steps=8, baselines=baseline, contrast="runner_up")
    gap, fb = hand_gap(model, x, amap, baseline)
    scale = np.abs(amap.explained).max() + np.abs(fb).max()
    # the fast explanation copy equals the model up to float rounding
    np.testing.assert_allclose(amap.completeness_gap, gap, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(amap.baseline_output, fb, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected_margins = margins(model(x).numpy())
    np.testing.assert_allclose(amap.margins, expected_margins, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(amap.relative_gap, np.abs(amap.completeness_gap) / amap.margins, rtol=1e-6)
    record = amap.to_dict()
    json.dumps(record)
    assert len(record["completeness_gap"]) == len(record["relative_gap"]) == 6


def test_the_gap_shrinks_with_steps_and_other_maps_have_none(trained):
    model = trained["model"]
    x = trained["queries"][:6]
    coarse = explain(model, x, "integrated_gradients", n_steps=2, rule="riemann_left")
    fine = explain(model, x, "integrated_gradients", n_steps=64)
    assert np.median(np.abs(fine.completeness_gap)) < 0.2 * np.median(np.abs(coarse.completeness_gap))
    sal = explain(model, x, "saliency")
    assert sal.completeness_gap is None and sal.baseline_output is None and sal.relative_gap is None
    assert sal.margins is not None and (sal.margins >= 0).all()
    json.dumps(sal.to_dict())


def test_completeness_badge(trained):
    model = trained["model"]
    s_img, _ = trained["support"]
    x = trained["queries"][:3]
    fp = model.fingerprint()
    coarse = explain(model, x, "integrated_gradients", n_steps=2, rule="riemann_left")
    b = badges(model, x, "integrated_gradients", s_img, attribution=coarse, support=False, n_steps=2,
               rule="riemann_left")
    check = b["completeness"]
    assert check.value == pytest.approx(float(np.nanmean(coarse.relative_gap)), rel=1e-6)
    assert check.threshold == 0.1 and not check.higher_is_better
    assert check.status == ("passed" if check.value < 0.1 else "failed")
    # the same maps given as an array: the gap is computed from them (same value up to rounding)
    again = badges(model, x, "integrated_gradients", s_img, attribution=coarse.maps, support=False, n_steps=2,
                   rule="riemann_left")
    assert again["completeness"].value == pytest.approx(check.value, rel=1e-3, abs=1e-6)
    # a generous threshold passes, a strict one fails the same maps
    assert badges(model, x, "integrated_gradients", s_img, attribution=coarse, support=False,
                  completeness_threshold=1e9)["completeness"].status == "passed"
    assert badges(model, x, "integrated_gradients", s_img, attribution=coarse, support=False,
                  completeness_threshold=0.0)["completeness"].status == "failed"
    assert "completeness" not in badges(model, x, "saliency", s_img, support=False)
    assert model.fingerprint() == fp
