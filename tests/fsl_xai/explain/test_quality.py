"""Quality checks of explanations: deletion/insertion, localisation, randomisation, infidelity,
the quality table and the per-query badges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fsl_xai.data.synthetic import make_synthetic
from fsl_xai.errors import DataError, ModelError
from fsl_xai.explain import explain
from fsl_xai.explain.quality import (badges, confidence_interval, deletion_insertion, infidelity_sensitivity,
                                     layer_groups, localization, quality_table, random_maps, randomization_check,
                                     randomized_copy, spearman_rows)
from fsl_xai.models import make_backbone, make_model
from fsl_xai.testing import tiny_model
from fsl_xai.training import pretrain

SIZE = 32


# ---------------------------------------------------------------------------------------------- models
class RegionSum(nn.Module):
    """A hand-made two-class model: logit 0 is the sum of the pixels inside a square region, logit 1
    its negative. Its exact attribution is the region itself."""

    def __init__(self, size: int = 16, region: tuple[slice, slice] = (slice(4, 8), slice(4, 8))):
        super().__init__()
        self.region = region
        self.prototypes_ = torch.zeros(2, 1)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, self.region[0], self.region[1]].sum((1, 2, 3))
        return torch.stack([s, -s], 1)


def region_gradient(model, images, targets, contrasts=None, seed=0):
    """Saliency (signed gradient) of the explained logit, computed by hand (needs no registry)."""
    x = images.clone().requires_grad_(True)
    logits = model(x)
    value = logits[torch.arange(len(x)), targets]
    if contrasts is not None:
        value = value - logits[torch.arange(len(x)), contrasts]
    (grad,) = torch.autograd.grad(value.sum(), x)
    return grad


def edge_detector(model, images, targets, contrasts=None, seed=0):
    """A 'method' that ignores the model: the gradient magnitude of the input image."""
    x = images.sum(1)
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[:, 1:-1] = x[:, 2:] - x[:, :-2]
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    return torch.sqrt(gx * gx + gy * gy)


@pytest.fixture(scope="module")
def trained():
    """A Conv-4 ProtoNet pre-trained for a few seconds on the synthetic lesion set, fit on its
    training images; the test split gives queries with lesion masks."""
    torch.manual_seed(0)
    data = make_synthetic(n_per_class=40, size=SIZE, n_classes=3, seed=0, split="all")
    split = data.metadata["split"].to_numpy()
    train, test = data.subset(np.flatnonzero(split == "train")), data.subset(np.flatnonzero(split == "test"))
    backbone = make_backbone("conv4", in_channels=1, image_size=SIZE, width=16)
    pretrain(backbone, train, epochs=8, batch_size=16, lr=3e-3, seed=0, progress=False)
    model = make_model("protonet", backbone).eval()
    s_img, s_lab = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model.fit_support(s_img, s_lab)
    q_img = torch.from_numpy(test.images)
    accuracy = float((model(q_img).argmax(1).numpy() == test.labels).mean())
    assert accuracy > 0.6, f"the fixture model did not learn the synthetic task (accuracy {accuracy:.2f})"
    return {"model": model, "support": (s_img, s_lab), "queries": q_img, "labels": test.labels,
            "masks": test.masks}


# ---------------------------------------------------------------------------------------------- deletion
def test_deletion_insertion_on_a_model_with_a_known_answer():
    model = RegionSum()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.5
    region_map = torch.zeros(5, 16, 16)
    region_map[:, 4:8, 4:8] = 1.0
    res = deletion_insertion(model, x, region_map, targets=0, steps=16, baseline="zero", output="logit")
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

    rnd = deletion_insertion(model, x, random_maps((5, 16, 16), seed=0), targets=0, steps=16, baseline="zero",
                             output="logit")
    # a random map removes the region's pixels at a uniform rate: area about one half
    assert np.all(rnd.deletion_auc_normalized > 0.3)
    assert np.all(rnd.deletion_auc_normalized > res.deletion_auc_normalized + 0.2)
    assert np.all(rnd.insertion_auc_normalized < res.insertion_auc_normalized - 0.2)
    # in probability units (two classes, logits s and -s) the region map also wins
    p_region = deletion_insertion(model, x, region_map, targets=0, steps=16, baseline="zero")
    p_random = deletion_insertion(model, x, random_maps((5, 16, 16), seed=0), targets=0, steps=16, baseline="zero")
    assert np.all(p_region.deletion_auc < p_random.deletion_auc) and np.all(p_region.deletion_auc <= 1)
    # the hand-computed gradient is the region itself: same curves as the region map
    grad = region_gradient(model, x, torch.zeros(5, dtype=torch.long))
    np.testing.assert_allclose(deletion_insertion(model, x, grad, targets=0, steps=16, baseline="zero",
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
    model = tiny_model(channels=1, size=16, seed=3)
    g = torch.Generator().manual_seed(0)
    support = torch.rand(6, 1, 16, 16, generator=g)
    model.fit_support(support, torch.tensor([0, 0, 1, 1, 2, 2]))
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
    model = tiny_model(channels=1, size=16, seed=1)
    g = torch.Generator().manual_seed(2)
    model.fit_support(torch.rand(4, 1, 16, 16, generator=g), torch.tensor([0, 1, 2, 2]))
    x = torch.rand(3, 1, 16, 16, generator=g)
    maps = torch.randn(3, 16, 16, generator=g)
    res = deletion_insertion(model, x, maps, targets=[0, 1, 2], contrasts=[1, 2, 0], steps=4, baseline="blur",
                             output="logit")
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(res.deletion[:, 0], (logits[[0, 1, 2], [0, 1, 2]] - logits[[0, 1, 2], [1, 2, 0]]).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert res.contrasts == (1, 2, 0)
    prob = deletion_insertion(model, x, maps, targets="predicted", steps=4, output="probability")
    assert np.all((prob.deletion >= 0) & (prob.deletion <= 1))
    np.testing.assert_allclose(prob.deletion[:, 0], logits.softmax(1).max(1).values.numpy(), rtol=1e-5)
    frame = res.to_frame()
    assert list(frame.columns[:4]) == ["query", "target", "deletion_auc", "insertion_auc"] and len(frame) == 3


def test_deletion_bad_input_is_a_clear_error():
    model = RegionSum()
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(DataError, match="one map per query"):
        deletion_insertion(model, x, torch.rand(3, 16, 16), targets=0)
    with pytest.raises(DataError, match="upsample"):
        deletion_insertion(model, x, torch.rand(2, 8, 8), targets=0)
    with pytest.raises(DataError, match="unknown baseline"):
        deletion_insertion(model, x, torch.rand(2, 16, 16), targets=0, baseline="noise")
    with pytest.raises(ModelError, match="not all in this episode"):
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
    assert res.pointing_hit[0] == 0.0           # a constant map points nowhere
    assert np.isnan(res.pointing_hit[1])        # empty mask: undefined
    assert np.isnan(res.energy_inside[0]) and np.isnan(res.energy_inside[2])  # no positive attribution
    with pytest.raises(DataError, match="resize the masks"):
        localization(maps, np.zeros((3, 8, 8), dtype=bool))
    with pytest.raises(DataError, match="n = 3"):
        localization(maps, np.zeros((2, 4, 4), dtype=bool))


def test_gradient_methods_localize_lesions_above_random_maps(trained):
    q, masks, labels = trained["queries"][:32], trained["masks"][:32], trained["labels"][:32]
    rnd = localization(random_maps((len(q), SIZE, SIZE), seed=0), masks)
    rnd_energy = confidence_interval(rnd.energy_inside)
    rnd_hit = confidence_interval(rnd.pointing_hit, "wilson")
    ig = explain(trained["model"], q, "integrated_gradients", target=labels.tolist(), contrast="runner_up", n_steps=16)
    cam = explain(trained["model"], q, "gradcam", target=labels.tolist(), contrast="runner_up", layer="blocks.1")
    for amap in (ig, cam):
        loc = localization(amap, masks)
        mean, low, _, n = confidence_interval(loc.energy_inside)
        assert n >= 28
        # clearly above chance: the whole 95% interval above the random maps' interval, and twice the share
        assert low > rnd_energy[2] and mean > 2 * rnd_energy[0], (amap.method, mean, rnd_energy)
        assert confidence_interval(loc.pointing_hit, "wilson")[1] > rnd_hit[2], amap.method


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
    groups = layer_groups(model)
    assert [name for name, _ in groups] == ["backbone.blocks.3", "backbone.blocks.2", "backbone.blocks.1",
                                            "backbone.blocks.0"]
    rand = randomized_copy(model, s_img, s_lab, seed=0)
    with torch.no_grad():
        expected = rand.compute_prototypes(rand.embed(s_img), s_lab)
    torch.testing.assert_close(rand.prototypes_, expected)
    assert not torch.allclose(rand.prototypes_, before_protos)
    assert model.fingerprint() == before_fp and torch.equal(model.prototypes_, before_protos)
    # seeded: the same seed gives the same randomised weights
    assert randomized_copy(model, s_img, s_lab, seed=0).fingerprint() == rand.fingerprint()
    assert randomized_copy(model, s_img, s_lab, seed=1).fingerprint() != rand.fingerprint()


def test_randomization_check_separates_model_dependent_maps_from_an_edge_detector(trained):
    model = trained["model"]
    s_img, s_lab = trained["support"]
    q = trained["queries"][:12]
    fp = model.fingerprint()
    sal = randomization_check(model, q, "saliency", s_img, s_lab, layers="cascade", seed=0)
    assert sal.spearman_abs.shape == (4, 12) and sal.stages[-1] == "all"
    assert len(sal.randomized[0]) < len(sal.randomized[-1])        # cascading: more layers each stage
    assert sal.passed and sal.final_spearman.mean() < 0.5
    cam = randomization_check(model, q, "gradcam", s_img, s_lab, layers="full", seed=0, layer="blocks.1")
    assert cam.passed and cam.spearman_abs.shape == (1, 12)
    edges = randomization_check(model, q, edge_detector, s_img, s_lab, layers="cascade", seed=0)
    np.testing.assert_allclose(edges.spearman_abs, 1.0)
    assert not edges.passed and edges.method == "edge_detector"
    frame = sal.to_frame()
    assert list(frame["stage"]) == [0, 1, 2, 3] and (frame["n"] == 12).all()
    assert model.fingerprint() == fp
    again = randomization_check(model, q, "saliency", s_img, s_lab, layers="cascade", seed=0)
    np.testing.assert_array_equal(again.spearman_abs, sal.spearman_abs)


# ---------------------------------------------------------------------------------------------- infidelity
def test_infidelity_is_zero_for_the_exact_attribution_of_a_linear_model():
    model = RegionSum()
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


# ---------------------------------------------------------------------------------------------- table, badges
def test_quality_table_columns_n_ci_flags_and_determinism(trained):
    model = trained["model"]
    s_img, s_lab = trained["support"]
    q, masks = trained["queries"][:8], trained["masks"][:8]
    kwargs = dict(support_images=s_img, support_labels=s_lab, masks=masks, seed=0,
                  method_params={"gradcam": {"layer": "blocks.1"}}, steps=8,
                  infidelity_kwargs={"n_perturb_samples": 4, "n_sensitivity_samples": 2})
    table = quality_table(model, q, ["saliency", "gradcam", edge_detector], **kwargs)
    assert list(table.columns) == ["method", "metric", "mean", "n", "ci_low", "ci_high", "ci_method",
                                   "higher_is_better", "reference", "threshold", "passed"]
    metrics = {"deletion_auc", "insertion_auc", "pointing_game", "energy_inside_mask", "randomization_spearman",
               "infidelity", "sensitivity_max"}
    for method in ("saliency", "gradcam", "edge_detector"):
        assert set(table.loc[table.method == method, "metric"]) == metrics
    assert set(table.loc[table.method == "random", "metric"]) == {"deletion_auc", "insertion_auc", "pointing_game",
                                                                   "energy_inside_mask"}
    rows = table[table.metric != "pointing_game"].dropna(subset=["ci_low"])
    assert (rows["n"] == 8).all()
    assert ((rows["ci_low"] <= rows["mean"] + 1e-12) & (rows["mean"] <= rows["ci_high"] + 1e-12)).all()
    assert set(table.loc[table.metric == "pointing_game", "ci_method"]) == {"wilson"}
    assert set(table.loc[table.metric != "pointing_game", "ci_method"]) == {"t"}
    rnd = table.set_index(["method", "metric"])
    assert rnd.loc[("saliency", "randomization_spearman"), "passed"] is True
    assert rnd.loc[("edge_detector", "randomization_spearman"), "passed"] is False
    assert rnd.loc[("saliency", "deletion_auc"), "reference"] == pytest.approx(rnd.loc[("random", "deletion_auc"), "mean"])
    assert pd.isna(rnd.loc[("saliency", "deletion_auc"), "passed"])
    # the t interval is the textbook one
    mean, low, high, n = confidence_interval([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4) and low == pytest.approx(2.5 - 3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)
    again = quality_table(model, q, ["saliency", "gradcam", edge_detector], **kwargs)
    pd.testing.assert_frame_equal(table, again)


def test_quality_table_bootstrap_and_bad_input(trained):
    model = trained["model"]
    s_img, s_lab = trained["support"]
    q = trained["queries"][:6]
    table = quality_table(model, q, ["saliency"], metrics=("deletion",), ci="bootstrap", steps=4)
    assert set(table["ci_method"]) == {"bootstrap"} and set(table["method"]) == {"saliency", "random"}
    with pytest.raises(DataError, match="support set"):
        quality_table(model, q, ["saliency"], metrics=("randomization",))
    with pytest.raises(DataError, match="unknown metric"):
        quality_table(model, q, ["saliency"], metrics=("accuracy",))
    with pytest.raises(ModelError, match="unknown attribution method"):
        quality_table(model, q, ["no_such_method"], metrics=("deletion",))


def test_badges_for_one_query(trained):
    model = trained["model"]
    s_img, s_lab = trained["support"]
    q, mask = trained["queries"][0], trained["masks"][0]
    b = badges(model, q, "saliency", s_img, s_lab, mask=mask)
    assert set(b) == {"method", "randomization", "deletion_auc", "insertion_auc", "random_deletion_auc",
                      "pointing_hit", "energy_inside", "mask_fraction"}
    assert b["randomization"]["passed"] is True and isinstance(b["randomization"]["spearman"], float)
    assert isinstance(b["deletion_auc"], float) and isinstance(b["pointing_hit"], bool)
    # reusing the map the widget already has gives the same badges
    amap = explain(model, q[None], "saliency")
    assert badges(model, q, "saliency", s_img, s_lab, mask=mask, attribution=amap) == b
    edge = badges(model, q, edge_detector, s_img, s_lab)
    assert edge["randomization"]["passed"] is False and edge["pointing_hit"] is None
