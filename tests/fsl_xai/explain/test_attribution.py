"""The attribution registry and ``explain``: contract for every method, exactness checks of Integrated
Gradients, targets, episodes and clear errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fsl_xai.errors import DataError, EpisodeError, ModelError
from fsl_xai.explain import (
    INTEGRATION_RULES,
    METHODS,
    AttributionMap,
    ExplainedOutput,
    conv_layers,
    explain,
    explain_episode,
    list_methods,
    make_baseline,
    method_spec,
    superpixel_mask,
)
from fsl_xai.models import PrototypicalNetwork, make_backbone

from ._helpers import fitted, make_model

# cheap settings so that every (method x backbone x channels) case stays fast; methods not listed
# run with their registry defaults
FAST = {
    "integrated_gradients": {"n_steps": 8},
    "gradient_shap": {"n_samples": 4},
    "smoothgrad": {"nt_samples": 3},
    "smoothgrad_ig": {"nt_samples": 2, "n_steps": 4},
    "occlusion": {"window": 8, "stride": 8},
    "feature_ablation": {"patch": 8},
    # an untrained distance model can have an all-negative CAM, which the classic ReLU zeroes
    "guided_gradcam": {"relu_attributions": False},
}
CONFIGS = [("conv4", 1), ("conv4", 3), ("resnet12", 1), ("resnet12", 3)]
_CACHE: dict = {}


def setup(backbone: str, channels: int):
    key = (backbone, channels)
    if key not in _CACHE:
        _CACHE[key] = fitted(backbone, channels)
    return _CACHE[key]


def test_registry_lists_the_required_methods():
    required = {"saliency", "input_x_gradient", "integrated_gradients", "gradient_shap", "deeplift",
                "guided_backprop", "occlusion", "feature_ablation", "gradcam", "guided_gradcam", "smoothgrad",
                "smoothgrad_ig"}
    assert required <= set(list_methods())
    assert list_methods() == sorted(METHODS)


@pytest.mark.parametrize("method", list_methods())
def test_registry_entry_says_everything_about_its_method(method):
    spec = method_spec(method)
    assert spec is METHODS[method] and spec.name == method
    assert spec.label and spec.description
    assert spec.images_per_query() >= 1
    if spec.main_param is not None:
        main = spec.main_param
        assert main.name in spec.defaults and main.default == spec.defaults[main.name]
        assert main.low <= main.default <= main.high and main.label
    with pytest.raises(TypeError):
        spec.defaults["new"] = 1  # read-only: a caller cannot change the registry through an entry
    with pytest.raises(ModelError, match="no parameter"):
        spec.images_per_query({"no_such_parameter": 1})


def test_images_per_query_follows_the_parameters():
    assert method_spec("integrated_gradients").images_per_query() == 50
    assert method_spec("integrated_gradients").images_per_query({"n_steps": 8}) == 8
    assert method_spec("smoothgrad_ig").images_per_query({"n_steps": 4, "nt_samples": 3}) == 12
    assert method_spec("smoothgrad").images_per_query({"nt_samples": 16, "nt_samples_batch_size": 4}) == 4
    assert method_spec("gradient_shap").images_per_query() == 20
    assert method_spec("occlusion").images_per_query({"perturbations_per_eval": 7}) == 7
    assert method_spec("deeplift").images_per_query() == 2
    assert method_spec("saliency").images_per_query() == 1
    assert not method_spec("occlusion").needs_gradients and method_spec("gradcam").layer_method
    with pytest.raises(ModelError, match=r"unknown attribution method 'lime'.*saliency"):
        method_spec("lime")


def test_integration_rule_is_a_registry_parameter():
    """IG's integration rule is ``rule`` (Captum's ``method``), so it does not collide with explain's own
    ``method`` argument."""
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:2]
    assert set(INTEGRATION_RULES) >= {"gausslegendre", "riemann_trapezoid"}
    gauss = explain(model, x, "integrated_gradients", n_steps=16)
    trapezoid = explain(model, x, "integrated_gradients", n_steps=16, rule="riemann_trapezoid")
    assert gauss.params["rule"] == "gausslegendre" and trapezoid.params["rule"] == "riemann_trapezoid"
    assert not np.allclose(gauss.attributions, trapezoid.attributions)
    # both approximate the same path integral: with many steps they agree
    fine_g = explain(model, x, "integrated_gradients", n_steps=128, internal_batch_size=256)
    fine_t = explain(model, x, "integrated_gradients", n_steps=128, internal_batch_size=256, rule="riemann_trapezoid")
    scale = np.abs(fine_g.attributions).max()
    np.testing.assert_allclose(fine_t.attributions, fine_g.attributions, atol=0.05 * scale)
    sg = explain(model, x, "smoothgrad_ig", nt_samples=2, n_steps=4, rule="riemann_middle")
    assert sg.params["rule"] == "riemann_middle"
    with pytest.raises(ModelError, match=r"unknown integration rule 'simpson'.*gausslegendre"):
        explain(model, x, "integrated_gradients", rule="simpson")


@pytest.mark.parametrize("backbone,channels", CONFIGS)
@pytest.mark.parametrize("method", list_methods())
def test_contract(method, backbone, channels):
    model, queries, _, _ = setup(backbone, channels)
    x = queries[:2]
    if backbone == "resnet12" and method.startswith("guided"):
        # LeakyReLU: the guided rule would change nothing (tests/fsl_xai/explain/test_guided_refusal.py)
        with pytest.raises(ModelError, match="LeakyReLU activations and no nn.ReLU"):
            explain(model, x, method, **FAST.get(method, {}))
        return
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    protos = model.prototypes_.clone()
    model.train()  # explain must run in eval mode and give the mode back
    first = explain(model, x, method, **FAST.get(method, {}))
    second = explain(model, x, method, **FAST.get(method, {}))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    # nothing it was given changed: weights, BatchNorm statistics, prototypes
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model.prototypes_, protos)

    n, c, h, w = x.shape
    assert isinstance(first, AttributionMap)
    assert first.attributions.shape == (n, c, h, w) and first.attributions.dtype == np.float32
    assert first.maps.shape == (n, h, w) and first.normalized.shape == (n, h, w)
    assert np.isfinite(first.attributions).all()
    assert np.abs(first.maps).max() > 0, "an all-zero map explains nothing"
    assert first.normalized.min() >= -1 and first.normalized.max() <= 1
    np.testing.assert_allclose(first.maps, first.attributions.sum(1), rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(first.attributions, second.attributions)  # deterministic by seed
    with torch.no_grad():
        logits = model(x)
    assert first.targets == tuple(logits.argmax(1).tolist())
    assert first.contrasts is None
    np.testing.assert_allclose(first.explained, logits.max(1).values.numpy(), rtol=1e-4)
    assert first.method == method and first.model_fingerprint == model.fingerprint()
    assert first.query_indices == (0, 1)
    json.dumps(first.to_dict())


def test_normalized_scales_by_a_high_percentile():
    model, queries, _, _ = setup("conv4", 1)
    amap = explain(model, queries[:2], "saliency")
    for m, nm in zip(amap.maps, amap.normalized, strict=True):
        scale = np.percentile(np.abs(m), 99)
        np.testing.assert_allclose(nm, np.clip(m / scale, -1, 1), rtol=1e-5, atol=1e-7)
        assert (np.abs(nm) == 1).mean() <= 0.02 + 1e-9  # only the top 1% saturate


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
@pytest.mark.parametrize("baseline", [None, "zeros"])
def test_integrated_gradients_completeness(backbone, baseline):
    """Attributions sum to F(input) - F(baseline) for the explained quantity, from the default
    baseline (the blurred query) and from black."""
    model, queries, _, _ = setup(backbone, 3)
    x = queries[:2]
    params = {} if baseline is None else {"baselines": baseline}
    reference = make_baseline(x, baseline or METHODS["integrated_gradients"].defaults["baselines"])
    for contrast in (None, "runner_up"):
        amap = explain(model, x, "integrated_gradients", contrast=contrast, n_steps=128, internal_batch_size=256,
                       **params)
        w = torch.zeros(len(x), model.n_way)
        w[torch.arange(len(x)), torch.tensor(amap.targets)] = 1
        if contrast:
            w[torch.arange(len(x)), torch.tensor(amap.contrasts)] -= 1
        with torch.no_grad():
            f = ExplainedOutput(model)
            delta = (f(x, w) - f(reference, w))[:, 0].numpy()
        sums = amap.attributions.reshape(len(x), -1).sum(1)
        np.testing.assert_allclose(sums, delta, rtol=0.02, atol=1e-3 * np.abs(delta).max())
        np.testing.assert_allclose(amap.explained, f(x, w)[:, 0].detach().numpy(), rtol=1e-4)


def test_contrastive_target_is_the_difference_of_two_maps():
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:2]
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    both = explain(model, x, "integrated_gradients", contrast="runner_up", n_steps=16)
    assert both.targets == tuple(top2[:, 0].tolist()) and both.contrasts == tuple(top2[:, 1].tolist())
    a = explain(model, x, "integrated_gradients", target=top2[:, 0].tolist(), n_steps=16)
    b = explain(model, x, "integrated_gradients", target=top2[:, 1].tolist(), n_steps=16)
    np.testing.assert_allclose(both.attributions, a.attributions - b.attributions, rtol=1e-4,
                               atol=1e-5 * np.abs(both.attributions).max())
    assert (both.explained >= 0).all()  # predicted minus runner-up is the margin


def test_targets_and_contrasts_given_explicitly():
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:3]
    amap = explain(model, x, "saliency", target=2, contrast=[0, 1, 0])
    assert amap.targets == (2, 2, 2) and amap.contrasts == (0, 1, 0)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(amap.explained, (logits[:, 2] - logits[[0, 1, 2], [0, 1, 0]]).numpy(), rtol=1e-4)
    # runner-up relative to an explicit target is the best other class
    amap = explain(model, x, "saliency", target=1, contrast="runner_up")
    masked = logits.clone()
    masked[:, 1] = -float("inf")
    assert amap.contrasts == tuple(masked.argmax(1).tolist())


def test_noise_methods_follow_the_seed_and_leave_global_rng_alone():
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:2]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    for method in ("smoothgrad", "gradient_shap"):
        a = explain(model, x, method, seed=0, **FAST[method])
        b = explain(model, x, method, seed=1, **FAST[method])
        assert not np.allclose(a.attributions, b.attributions)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected


def test_batched_explanation_equals_one_query_at_a_time():
    model, queries, _, _ = setup("conv4", 3)
    x = queries[:3]
    for method, params in (("integrated_gradients", {"n_steps": 8, "internal_batch_size": 5}),
                           ("occlusion", {"window": 8, "stride": 4, "perturbations_per_eval": 7})):
        batch = explain(model, x, method, **params)
        for i in range(len(x)):
            single = explain(model, x[i:i + 1], method, **params)
            np.testing.assert_allclose(batch.attributions[i], single.attributions[0], rtol=1e-4,
                                       atol=1e-6 * np.abs(batch.attributions).max())


def test_gradcam_layers():
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:2]
    deep = explain(model, x, "gradcam")
    assert deep.params["layer"] == "blocks.3"
    shallow = explain(model, x, "gradcam", layer="backbone.blocks.1")
    assert shallow.params["layer"] == "backbone.blocks.1"
    assert shallow.maps.shape == deep.maps.shape == (2, 32, 32)
    # blocks.1 has an 8x8 map: upsampled, it varies far more across the image than the 2x2 map
    assert not np.allclose(shallow.maps, deep.maps)
    assert "blocks.1" in conv_layers(model) and "blocks.0.0" in conv_layers(model)
    with pytest.raises(ModelError, match=r"unknown layer 'blocks\.9'.*blocks\.3"):
        explain(model, x, "gradcam", layer="blocks.9")
    with pytest.raises(ModelError, match="unknown layer"):
        explain(model, x, "saliency", layer="nope")


def test_feature_ablation_on_superpixels():
    model, queries, _, images = setup("conv4", 3)
    x = queries[:2]
    mask = superpixel_mask(x, n_segments=16)
    assert mask.shape == (2, 1, 32, 32)
    for m in mask:
        ids = torch.unique(m)
        assert torch.equal(ids, torch.arange(len(ids))) and 4 <= len(ids) <= 16
    amap = explain(model, x, "feature_ablation", mask="superpixels", n_segments=16)
    # one value per superpixel: the map is constant inside each segment
    for i in range(2):
        for seg in torch.unique(mask[i]):
            vals = amap.maps[i][mask[i, 0].numpy() == int(seg)]
            assert np.allclose(vals, vals[0])


def test_occlusion_finds_the_object_of_a_prototype_model():
    """Blanking the object (not the background) must cost the explained logit most: the occlusion map
    of the predicted class peaks on the object for correctly classified queries."""
    model, queries, episode, images = setup("conv4", 1)
    q_idx = images.indices_of(episode.query_ids)
    masks = images.masks[q_idx]
    with torch.no_grad():
        correct = (model(queries).argmax(1) == torch.tensor(episode.query_labels)).numpy()
    assert correct.sum() >= 3
    amap = explain(model, queries[correct], "occlusion", window=6, stride=2)
    hits = [masks[correct][i].reshape(-1)[amap.maps[i].argmax()] for i in range(int(correct.sum()))]
    # a random peak would land on the object with the object's share of the image (< 12% here)
    assert masks.mean() < 0.12
    assert np.mean(hits) >= 0.5


def test_explain_episode():
    model, _, episode, images = setup("conv4", 1)
    fresh = make_model("conv4", 1, 32, seed=0)
    fingerprint = fresh.fingerprint()
    fresh.train()
    amap = explain_episode(fresh, images, episode, [1, 3], method="saliency")
    assert fresh.training and fresh.fingerprint() == fingerprint  # the model is left as it was
    fresh.eval()
    assert amap.episode_id == episode.episode_id and amap.query_indices == (1, 3)
    _, _, q, ql = episode.tensors(images)
    direct = explain(model, q[[1, 3]], "saliency")
    np.testing.assert_allclose(amap.attributions, direct.attributions, rtol=1e-5)
    true = explain_episode(fresh, images, episode, 2, method="saliency", target="true")
    assert true.targets == (int(ql[2]),)
    with pytest.raises(EpisodeError, match=r"query index \[6\] out of range.*0\.\.5"):
        explain_episode(fresh, images, episode, [0, 6], method="saliency")


def test_bad_inputs_give_clear_errors():
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:2]
    with pytest.raises(ModelError, match=r"unknown attribution method 'lime'.*integrated_gradients"):
        explain(model, x, "lime")
    with pytest.raises(EpisodeError, match=r"target class\(es\) \[3\] are not in this episode.*0\.\.2"):
        explain(model, x, "saliency", target=3)
    with pytest.raises(EpisodeError, match="contrast"):
        explain(model, x, "saliency", contrast=[0, 7])
    with pytest.raises(ModelError, match="one label per query"):
        explain(model, x, "saliency", target=[0, 1, 2])
    with pytest.raises(ModelError, match="contrast class equals the target"):
        explain(model, x, "saliency", target=1, contrast=1)
    with pytest.raises(ModelError, match=r"no parameter\(s\) \['steps'\].*n_steps"):
        explain(model, x, "integrated_gradients", steps=3)
    with pytest.raises(ModelError, match="channel"):
        explain(model, torch.rand(2, 3, 32, 32), "saliency")
    with pytest.raises(DataError, match="NaN"):
        explain(model, torch.full((1, 1, 32, 32), float("nan")), "saliency")
    with pytest.raises(DataError, match=r"\(n, C, H, W\)"):
        explain(model, torch.rand(32, 32), "saliency")
    with pytest.raises(ModelError, match=r"fitted episode.*model\.fit\("):
        explain(make_model("conv4", 1, 32), x, "saliency")
    _, _, episode, images = setup("conv4", 1)
    with pytest.raises(ModelError, match="needs the model"):
        explain_episode(model, images, episode, method="saliency")


class NoGradients(PrototypicalNetwork):
    """A model whose logits are declared not differentiable with respect to the query pixels."""

    def is_differentiable(self) -> bool:
        return False


def test_model_without_gradients_refuses_gradient_methods_only():
    _, queries, episode, images = fitted("conv4", 1)
    torch.manual_seed(0)
    s, sl, _, _ = episode.tensors(images)
    model = NoGradients(make_backbone("conv4", 1, 32, width=8)).eval().fit(s, sl)
    with pytest.raises(ModelError, match=r"'integrated_gradients' needs gradients.*occlusion"):
        explain(model, queries[:1], "integrated_gradients")
    with pytest.raises(ModelError, match="needs gradients"):
        explain(model, queries[:1], "gradcam")
    amap = explain(model, queries[:1], "occlusion", window=8, stride=8)
    assert np.abs(amap.maps).max() > 0


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
def test_fast_path_matches_the_model_and_follows_weight_changes(backbone, monkeypatch):
    """explain runs Captum on a cached copy with BatchNorm folded and channels-last memory: same maps
    as the model itself, and a fresh copy as soon as the weights change."""
    from fsl_xai.explain import fast as fast_module

    model, queries, _, _ = fitted(backbone, 3)
    x = queries[:2]
    for method in ("saliency", "gradcam", "occlusion"):
        params = FAST.get(method, {})
        fast = explain(model, x, method, **params)
        monkeypatch.setattr(fast_module, "OPTIMIZE", False)
        plain = explain(model, x, method, **params)
        monkeypatch.setattr(fast_module, "OPTIMIZE", True)
        np.testing.assert_allclose(fast.attributions, plain.attributions, rtol=1e-3,
                                   atol=1e-4 * np.abs(plain.attributions).max())
    before = explain(model, x, "saliency")
    with torch.no_grad():
        bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.mul_(4.0)  # an in-place change, as training would do
    after = explain(model, x, "saliency")
    monkeypatch.setattr(fast_module, "OPTIMIZE", False)
    plain = explain(model, x, "saliency")
    assert not np.allclose(before.attributions, after.attributions)
    np.testing.assert_allclose(after.attributions, plain.attributions, rtol=1e-3,
                               atol=1e-4 * np.abs(plain.attributions).max())


def test_chunked_passes_give_the_same_maps():
    """Queries are explained in chunks of about internal_batch_size images per pass; deterministic
    methods give the same maps for any chunking (and a per-query feature mask follows its query)."""
    model, queries, _, _ = setup("conv4", 1)
    x = queries[:5]
    for method, params in (("integrated_gradients", {"n_steps": 8}), ("saliency", {}),
                           ("occlusion", {"window": 8, "stride": 8, "perturbations_per_eval": 4})):
        whole = explain(model, x, method, internal_batch_size=10_000, **params)
        pieces = explain(model, x, method, internal_batch_size=8, **params)
        np.testing.assert_allclose(pieces.attributions, whole.attributions, rtol=1e-4,
                                   atol=1e-6 * np.abs(whole.attributions).max())
    masks = np.stack([np.arange(32 * 32).reshape(32, 32) // (32 * 8) + 4 * (i % 2) for i in range(5)])
    whole = explain(model, x, "feature_ablation", mask=masks, internal_batch_size=10_000, perturbations_per_eval=2)
    pieces = explain(model, x, "feature_ablation", mask=masks, internal_batch_size=2, perturbations_per_eval=1)
    np.testing.assert_allclose(pieces.attributions, whole.attributions, rtol=1e-4,
                               atol=1e-6 * np.abs(whole.attributions).max())


def test_a_transductive_episode_is_explained_with_its_refinement_frozen():
    """A model that refines its prototypes with the query batch must be frozen with its episode's queries
    first (Captum's perturbed copies must not take part); explain_episode does that itself."""
    _, queries, episode, images = fitted("conv4", 1)
    model = make_model("conv4", 1, 32, model="transductive", iterations=2)
    s, sl, q, _ = episode.tensors(images)
    loose = model.fit(s, sl)
    with pytest.raises(ModelError, match=r"with_queries"):
        explain(loose, q[:2], "saliency")
    frozen = loose.with_queries(q)
    direct = explain(frozen, q[[0, 2]], "saliency")
    via_episode = explain_episode(model, images, episode, [0, 2], method="saliency")
    np.testing.assert_allclose(via_episode.attributions, direct.attributions, rtol=1e-5)
    with torch.no_grad():
        assert direct.targets == tuple(frozen(q[[0, 2]]).argmax(1).tolist())
