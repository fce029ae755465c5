"""Quality checks of explanations: deletion/insertion, localisation, randomisation and infidelity,
each against hand-computed answers, and their definitions on degenerate maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_xai.errors import DataError, EpisodeError
from fsl_xai.explain import explain
from fsl_xai.explain.quality import (
    deletion_insertion,
    infidelity_sensitivity,
    layer_groups,
    localization,
    random_maps,
    randomization_check,
    randomized_copy,
    spearman_rows,
)
from fsl_xai.intervals import mean_interval, wilson_interval
from fsl_xai.testing import tiny_model

from ._helpers import constant_maps, edge_detector, negative_maps, region_gradient, region_sum, zero_maps

SIZE = 32


# ---------------------------------------------------------------------------------------------- deletion
def test_deletion_insertion_on_a_model_with_a_known_answer():
    model = region_sum()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.5
    region_map = torch.zeros(5, 16, 16)
    region_map[:, 4:8, 4:8] = 1.0
    res = deletion_insertion(model, x, region_map, targets=0, steps=16, baseline="zeros", output="logit")
    # 16 pixels per step: the first step removes the whole region, so the normalised deletion
    # curve is 1, 0, 0, ... (area 1/32) and the insertion curve 0, 1, 1, ... (area 1 - 1/32)
    np.testing.assert_allclose(res.deletion_auc_normalized, 1 / 32, atol=1e-6)
    np.testing.assert_allclose(res.insertion_auc_normalized, 1 - 1 / 32, atol=1e-6)
    s0 = model(x)[:, 0].numpy()
    np.testing.assert_allclose(res.deletion_auc, s0 / 32, rtol=1e-5)      # raw area in logit units
    np.testing.assert_allclose(res.deletion[:, 0], model(x)[:, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.deletion[:, 1:], 0.0, atol=1e-5)
    assert res.deletion.shape == res.insertion.shape == (5, 17)
    assert res.fractions[0] == 0 and res.fractions[-1] == 1

    rnd = deletion_insertion(model, x, random_maps((5, 16, 16), seed=0), targets=0, steps=16, baseline="zeros",
                             output="logit")
    # a random map removes the region's pixels at a uniform rate: area about one half
    assert np.all(rnd.deletion_auc_normalized > 0.3)
    assert np.all(rnd.deletion_auc_normalized > res.deletion_auc_normalized + 0.2)
    assert np.all(rnd.insertion_auc_normalized < res.insertion_auc_normalized - 0.2)
    # in probability units (two classes, logits s and -s) the region map also wins
    p_region = deletion_insertion(model, x, region_map, targets=0, steps=16, baseline="zeros")
    p_random = deletion_insertion(model, x, random_maps((5, 16, 16), seed=0), targets=0, steps=16, baseline="zeros")
    assert np.all(p_region.deletion_auc < p_random.deletion_auc) and np.all(p_region.deletion_auc <= 1)
    # the hand-computed gradient is the region itself: same curves as the region map
    grad = region_gradient(model, x, torch.zeros(5, dtype=torch.long))
    np.testing.assert_allclose(deletion_insertion(model, x, grad, targets=0, steps=16, baseline="zeros",
                                                  output="logit").deletion_auc_normalized, 1 / 32, atol=1e-6)


def _naive_deletion(model, x, maps, targets, steps, baseline):
    """The same computation written plainly: one query and one step at a time."""
    n, c, h, w = x.shape
    out = np.zeros((n, steps + 1))
    for i in range(n):
        order = np.argsort(-maps[i].reshape(-1).numpy(), kind="stable")
        for k in range(steps + 1):
            count = int(round(k / steps * h * w))
            flat_mask = np.zeros(h * w, dtype=bool)
            flat_mask[order[:count]] = True
            m = torch.from_numpy(flat_mask.reshape(1, h, w)).float()
            img = x[i] * (1 - m) + baseline[i] * m
            with torch.no_grad():
                out[i, k] = model(img[None])[0, targets[i]].item()
    return out


def test_batched_curves_equal_a_per_query_loop():
    g = torch.Generator().manual_seed(0)
    support = torch.rand(6, 1, 16, 16, generator=g)
    model = tiny_model(channels=1, size=16, seed=3).fit(support, torch.tensor([0, 0, 1, 1, 2, 2]))
    x = torch.rand(4, 1, 16, 16, generator=g)
    maps = torch.randn(4, 16, 16, generator=g)  # continuous values: no ties, order is unambiguous
    res = deletion_insertion(model, x, maps, targets=[0, 1, 2, 1], steps=8, baseline="mean", batch_size=5,
                             output="logit")
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    expected = _naive_deletion(model, x, maps, [0, 1, 2, 1], 8, base)
    np.testing.assert_allclose(res.deletion, expected, rtol=1e-4, atol=1e-4)
    # insertion's first point is the baseline image, its last the original image
    np.testing.assert_allclose(res.insertion[:, 0], res.deletion[:, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.insertion[:, -1], res.deletion[:, 0], rtol=1e-5, atol=1e-5)
    # batch size does not change anything
    again = deletion_insertion(model, x, maps, targets=[0, 1, 2, 1], steps=8, baseline="mean", batch_size=512,
                               output="logit")
    np.testing.assert_allclose(again.deletion, res.deletion, rtol=1e-5, atol=1e-5)


def test_deletion_blur_baseline_contrast_and_probability():
    g = torch.Generator().manual_seed(2)
    model = tiny_model(channels=1, size=16, seed=1).fit(torch.rand(4, 1, 16, 16, generator=g),
                                                        torch.tensor([0, 1, 2, 2]))
    x = torch.rand(3, 1, 16, 16, generator=g)
    maps = torch.randn(3, 16, 16, generator=g)
    res = deletion_insertion(model, x, maps, targets=[0, 1, 2], contrasts=[1, 2, 0], steps=4, baseline="blur",
                             output="logit")
    with torch.no_grad():
        logits = model(x)
    margins = logits[[0, 1, 2], [0, 1, 2]] - logits[[0, 1, 2], [1, 2, 0]]
    np.testing.assert_allclose(res.deletion[:, 0], margins.numpy(), rtol=1e-4, atol=1e-5)
    assert res.contrasts == (1, 2, 0)
    prob = deletion_insertion(model, x, maps, targets="predicted", steps=4, output="probability")
    assert np.all((prob.deletion >= 0) & (prob.deletion <= 1))
    np.testing.assert_allclose(prob.deletion[:, 0], logits.softmax(1).max(1).values.numpy(), rtol=1e-5)
    frame = res.to_frame()
    assert list(frame.columns[:4]) == ["query", "target", "deletion_auc", "insertion_auc"] and len(frame) == 3


def test_deletion_bad_input_is_a_clear_error():
    model = region_sum()
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(DataError, match="one map per query"):
        deletion_insertion(model, x, torch.rand(3, 16, 16), targets=0)
    with pytest.raises(DataError, match="upsample"):
        deletion_insertion(model, x, torch.rand(2, 8, 8), targets=0)
    with pytest.raises(DataError, match="unknown baseline"):
        deletion_insertion(model, x, torch.rand(2, 16, 16), targets=0, baseline="noise")
    with pytest.raises(EpisodeError, match=r"\[5\] are not in this episode"):
        deletion_insertion(model, x, torch.rand(2, 16, 16), targets=[0, 5])
    with pytest.raises(DataError, match="NaN"):
        deletion_insertion(model, x, torch.full((2, 16, 16), float("nan")), targets=0)


# ---------------------------------------------------------------------------------------------- localisation
def test_localization_against_hand_computed_values():
    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[:, 1:3, 1:3] = True                                   # 4 of 36 pixels
    maps = np.zeros((3, 6, 6), dtype=np.float32)
    maps[0, 1, 1], maps[0, 5, 5] = 3.0, 1.0                     # max inside; 3 of 4 positive inside
    maps[1, 5, 5], maps[1, 2, 2], maps[1, 0, 0] = 2.0, 1.0, -7  # max outside; 1 of 3 positive inside
    maps[2, 3, 3] = 1.0                                         # max one pixel off the mask (diagonal)
    res = localization(maps, masks)
    np.testing.assert_array_equal(res.pointing_hit, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(res.energy_inside, [0.75, 1 / 3, 0.0])
    np.testing.assert_allclose(res.mask_fraction, 4 / 36)
    # a tolerance of 1 px (disk) does not reach the diagonal neighbour, 2 px does
    np.testing.assert_array_equal(localization(maps, masks, tolerance=1).pointing_hit, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(localization(maps, masks, tolerance=2).pointing_hit, [1.0, 0.0, 1.0])
    # (n, C, H, W) attributions are summed over channels; a single (H, W) mask applies to all
    attr = np.stack([maps / 2, maps / 2], 1)
    np.testing.assert_allclose(localization(attr, masks[0]).energy_inside, res.energy_inside)


def test_localization_degenerate_cases_and_errors():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    masks[2, :2, :2] = True
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[1, 0, 0] = 1.0
    maps[2] = -1.0
    res = localization(maps, masks)
    assert np.isnan(res.pointing_hit[0])        # a flat (all-zero) map points nowhere: undefined, not a miss
    assert np.isnan(res.pointing_hit[1])        # empty mask: undefined
    assert np.isnan(res.pointing_hit[2])        # a constant map: undefined
    assert np.isnan(res.energy_inside[0]) and np.isnan(res.energy_inside[2])  # no positive attribution
    np.testing.assert_array_equal(res.flat, [True, False, True])
    with pytest.raises(DataError, match="resize the masks"):
        localization(maps, np.zeros((3, 8, 8), dtype=bool))
    with pytest.raises(DataError, match="n = 3"):
        localization(maps, np.zeros((2, 4, 4), dtype=bool))


def test_gradient_methods_localize_lesions_above_random_maps(trained):
    q, masks, labels = trained["queries"][:32], trained["masks"][:32], trained["labels"][:32]
    rnd = localization(random_maps((len(q), SIZE, SIZE), seed=0), masks)
    rnd_energy = mean_interval(rnd.energy_inside, method="t")

    def hit_interval(hits):
        defined = hits[np.isfinite(hits)]
        return wilson_interval(defined.sum(), len(defined))

    ig = explain(trained["model"], q, "integrated_gradients", target=labels.tolist(), contrast="runner_up", n_steps=16)
    cam = explain(trained["model"], q, "gradcam", target=labels.tolist(), contrast="runner_up", layer="blocks.1")
    for amap in (ig, cam):
        loc = localization(amap, masks)
        energy = mean_interval(loc.energy_inside, method="t")
        # undefined exactly where a map has no positive value (no mask here is empty)
        no_positive = amap.maps.reshape(len(q), -1).max(1) <= 0
        assert energy.n == len(q) - no_positive.sum() and energy.n >= 28
        # clearly above chance: the whole 95% interval above the random maps' interval, and twice the share
        assert energy.low > rnd_energy.high and energy.estimate > 2 * rnd_energy.estimate, (amap.method, energy)
        assert hit_interval(loc.pointing_hit)[0] > hit_interval(rnd.pointing_hit)[1], amap.method


# ---------------------------------------------------------------------------------------------- randomisation
def test_spearman_rows_matches_scipy_and_handles_constant_maps():
    from scipy.stats import spearmanr

    g = np.random.default_rng(0)
    a, b = g.normal(size=(3, 50)), g.normal(size=(3, 50))
    b[1] = a[1] * 3 + 1
    a[2, :25] = 0.0  # ties
    rho = spearman_rows(a, b)
    for i in range(3):
        assert rho[i] == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-12)
    np.testing.assert_allclose(spearman_rows(np.zeros((1, 5)), g.normal(size=(1, 5))), [0.0])
    np.testing.assert_allclose(spearman_rows(np.zeros((1, 5)), np.ones((1, 5))), [1.0])


def test_randomized_copy_recomputes_prototypes_and_leaves_the_model_alone(trained):
    model = trained["model"]
    s_img, s_lab = trained["support"]
    before_fp, before_protos = model.fingerprint(), model.prototypes_.clone()
    groups = layer_groups(model.model)
    assert [name for name, _ in groups] == ["backbone.blocks.3", "backbone.blocks.2", "backbone.blocks.1",
                                            "backbone.blocks.0"]
    rand = randomized_copy(model, s_img, seed=0)
    assert rand.model is not model.model and rand.backbone is not model.backbone
    with torch.no_grad():
        expected = rand.model.compute_prototypes(rand.embed(s_img), s_lab)
    torch.testing.assert_close(rand.prototypes_, expected)
    assert torch.equal(rand.support_labels_, model.support_labels_)
    assert not torch.allclose(rand.prototypes_, before_protos)
    assert model.fingerprint() == before_fp and torch.equal(model.prototypes_, before_protos)
    # seeded: the same seed gives the same randomised weights
    assert randomized_copy(model, s_img, seed=0).fingerprint() == rand.fingerprint()
    assert randomized_copy(model, s_img, seed=1).fingerprint() != rand.fingerprint()
    with pytest.raises(DataError, match="fitted with"):
        randomized_copy(model, s_img[:-1])


def test_randomization_check_separates_model_dependent_maps_from_an_edge_detector(trained):
    model = trained["model"]
    s_img, _ = trained["support"]
    q = trained["queries"][:12]
    fp = model.fingerprint()
    sal = randomization_check(model, q, "saliency", s_img, layers="cascade", seed=0)
    assert sal.spearman_abs.shape == (4, 12) and sal.stages[-1] == "all"
    assert len(sal.randomized[0]) < len(sal.randomized[-1])        # cascading: more layers each stage
    assert sal.passed and sal.status == "passed" and sal.final_spearman.mean() < 0.5
    cam = randomization_check(model, q, "gradcam", s_img, layers="full", seed=0, layer="blocks.1")
    assert cam.passed and cam.spearman_abs.shape == (1, 12)
    edges = randomization_check(model, q, edge_detector, s_img, layers="cascade", seed=0)
    np.testing.assert_allclose(edges.spearman_abs, 1.0)
    assert not edges.passed and edges.status == "failed" and edges.method == "edge_detector"
    frame = sal.to_frame()
    assert list(frame["stage"]) == [0, 1, 2, 3] and (frame["n"] == 12).all() and (frame["n_undefined"] == 0).all()
    assert model.fingerprint() == fp
    again = randomization_check(model, q, "saliency", s_img, layers="cascade", seed=0)
    np.testing.assert_array_equal(again.spearman_abs, sal.spearman_abs)


# ---------------------------------------------------------------------------------------------- infidelity
def test_infidelity_is_zero_for_the_exact_attribution_of_a_linear_model():
    model = region_sum()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    exact = infidelity_sensitivity(model, x, region_gradient, targets=0, seed=0)
    np.testing.assert_allclose(exact.infidelity, 0.0, atol=1e-6)
    np.testing.assert_allclose(exact.sensitivity, 0.0, atol=1e-6)  # the gradient of a linear model is constant

    def noisy(model, images, targets, contrasts=None, seed=0):
        # unrelated to the model, and jumps when a pixel crosses 0.5
        return torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) + torch.sign(images - 0.5)

    bad = infidelity_sensitivity(model, x, noisy, targets=0, seed=0)
    assert np.all(bad.infidelity > 1e-4) and np.all(bad.sensitivity > 0.05)
    again = infidelity_sensitivity(model, x, noisy, targets=0, seed=0)
    np.testing.assert_array_equal(again.infidelity, bad.infidelity)


# ---------------------------------------------------------------------------------------------- degenerate maps
def test_every_metric_is_defined_on_degenerate_maps(trained):
    """Flat maps (all zero, constant) and all-negative maps get a value or an explicit undefined (NaN)
    from every metric, never a number that looks like a result."""
    model, (s_img, _) = trained["model"], trained["support"]
    q, masks = trained["queries"][:4], trained["masks"][:4]
    targets = [0, 1, 2, 0]
    for method, flat in ((zero_maps, True), (constant_maps, True), (negative_maps, False)):
        maps = method(model, q, targets)
        di = deletion_insertion(model, q, maps, targets=targets, steps=4)
        assert np.isfinite(di.deletion).all()  # the curves are drawn either way
        np.testing.assert_array_equal(di.undefined, flat)
        assert np.isnan(di.deletion_auc).all() == flat and np.isfinite(di.insertion_auc).all() != flat
        loc = localization(maps, masks)
        assert np.isnan(loc.pointing_hit).all() == flat and np.isfinite(loc.pointing_hit).all() != flat
        assert np.isnan(loc.energy_inside).all()  # no positive attribution (or flat)
        rc = randomization_check(model, q, method, s_img, layers="full", targets=targets)
        assert np.isnan(rc.final_spearman).all() == flat and rc.status == ("undefined" if flat else "failed")
        assert not rc.passed
        inf = infidelity_sensitivity(model, q, method, targets=targets, n_perturb_samples=2, n_sensitivity_samples=2)
        assert np.isfinite(inf.infidelity).all()  # the optimal rescaling defines it for any map
        assert np.isnan(inf.sensitivity).all() == (method is zero_maps)  # relative to a zero norm: undefined
    # a constant positive map would put the mask's share of energy inside; it is still undefined
    assert np.isnan(localization(np.ones((1, 4, 4)), np.eye(4, dtype=bool)).energy_inside).all()
