"""The contract every registered few-shot model keeps, for each backbone and grey or RGB input."""

from __future__ import annotations

import pytest
import torch

from fsl_xai.errors import ModelError
from fsl_xai.models import MODELS, make_backbone, make_model

N_WAY, N_SHOT, N_QUERY = 3, 2, 4
SIZE = 16  # the smallest input every backbone takes: keeps 200 tests quick
# narrow backbones keep the 40 combinations fast; the architecture is the registered one
BACKBONE_OPTIONS = {"conv4": {"width": 8}, "resnet12": {"widths": (8, 8, 16, 16)}}
# few steps keep the fine-tuning head quick; every other model uses its defaults
MODEL_OPTIONS = {"finetune": {"steps": 20}}


def build(model_name: str, backbone_name: str, channels: int, seed: int = 0):
    torch.manual_seed(seed)
    backbone = make_backbone(backbone_name, in_channels=channels, image_size=SIZE, **BACKBONE_OPTIONS[backbone_name])
    model = make_model(model_name, backbone, **MODEL_OPTIONS.get(model_name, {})).eval()
    if model_name == "simpleshot":
        gen = torch.Generator().manual_seed(99)
        with torch.no_grad():
            model.fit_base(model.embed(torch.rand(12, channels, SIZE, SIZE, generator=gen)))
    return model


def episode(channels: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    # class-dependent brightness so that support and queries have some structure
    levels = torch.linspace(0.2, 0.8, N_WAY)
    support_labels = torch.arange(N_WAY).repeat_interleave(N_SHOT)
    query_labels = torch.arange(N_WAY).repeat_interleave(N_QUERY)
    def noisy(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(len(labels), channels, SIZE, SIZE, generator=gen)
        return (levels[labels][:, None, None, None] + 0.2 * noise).clamp(0, 1)

    support = noisy(support_labels)
    query = noisy(query_labels)
    return support, support_labels, query


COMBOS = [(m, b, c) for m in sorted(MODELS) for b in ("conv4", "resnet12") for c in (1, 3)]
IDS = [f"{m}-{b}-{'rgb' if c == 3 else 'grey'}" for m, b, c in COMBOS]


@pytest.fixture(params=COMBOS, ids=IDS)
def case(request):
    model_name, backbone_name, channels = request.param
    return model_name, build(model_name, backbone_name, channels), episode(channels)


def test_forward_shape_finite_and_prototypes(case):
    name, model, (support, labels, query) = case
    before = model.fingerprint()
    fitted = model.fit(support, labels)
    logits = fitted(query)
    assert logits.shape == (len(query), N_WAY)
    assert torch.isfinite(logits).all()
    assert fitted.prototypes_.shape == (N_WAY, model.backbone.out_dim)
    assert torch.equal(fitted.support_labels_, labels)
    assert fitted.support_embeddings_.shape == (len(support), model.backbone.out_dim)
    torch.testing.assert_close(fitted.distances(query), -logits)
    # fitting left the model as it was: same weights, no support state of its own
    assert model.fingerprint() == before
    assert not [k for k in vars(model) if k.endswith("_") and not k.startswith("_")]
    # the logits separate the queries at least somewhat: not all identical
    assert logits.std() > 0


def test_deterministic_rebuild(case):
    name, model, (support, labels, query) = case
    channels = support.shape[1]
    other = build(name, model.backbone.backbone_name, channels)
    assert model.fingerprint() == other.fingerprint()
    a = model.fit(support, labels)(query)
    b = other.fit(support, labels)(query)
    assert torch.equal(a, b)


def test_forward_matches_episode_logits(case):
    name, model, (support, labels, query) = case
    with torch.no_grad():
        fitted = model.fit(support, labels)(query)
        joint = model.episode_logits(support, labels, query)
    torch.testing.assert_close(joint, fitted, atol=1e-4, rtol=1e-4)


def test_forward_differentiable_wrt_query_pixels(case):
    name, model, (support, labels, query) = case
    assert model.is_differentiable(), f"{name} should be differentiable with respect to query pixels"
    fitted = model.fit(support, labels)
    pixels = query.clone().requires_grad_(True)
    fitted(pixels)[:, 0].sum().backward()
    assert pixels.grad is not None
    assert torch.isfinite(pixels.grad).all()
    assert pixels.grad.abs().sum() > 0


def test_episode_logits_differentiable_wrt_backbone(case):
    name, model, (support, labels, query) = case
    out = model.episode_logits(support, labels, query)
    loss = torch.nn.functional.cross_entropy(out, torch.arange(N_WAY).repeat_interleave(N_QUERY))
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_config_round_trip(case):
    name, model, _ = case
    config = model.config()
    assert config["model"] == name
    rebuilt = make_model(config["model"], model.backbone, **{k: v for k, v in config.items() if k != "model"})
    assert type(rebuilt) is type(model)
    assert rebuilt.config() == config


def test_state_dict_round_trip(case):
    name, model, (support, labels, query) = case
    fresh = build(name, model.backbone.backbone_name, support.shape[1], seed=5)
    if name == "simpleshot":
        fresh.base_mean_ = torch.zeros(0)  # a model that never saw fit_base loads one that did
    fresh.load_state_dict(model.state_dict())
    assert fresh.fingerprint() == model.fingerprint()
    torch.testing.assert_close(fresh.fit(support, labels)(query), model.fit(support, labels)(query))


def test_add_to_class_matches_refit(case):
    """The incremental update gives the same predictions as fitting the enlarged support set."""
    name, model, (support, labels, query) = case
    extra = query[:1]
    fitted = model.fit(support, labels)
    with torch.no_grad():
        before = fitted(query)
        grown = fitted.add_to_class(model.embed(extra)[0], 2)
        updated = grown(query)
        # the original fitted episode is unchanged
        torch.testing.assert_close(fitted(query), before, atol=0, rtol=0)
    assert fitted.class_counts_.tolist() == [N_SHOT] * N_WAY
    assert grown.class_counts_.tolist() == [N_SHOT, N_SHOT, N_SHOT + 1]
    refit = build(name, model.backbone.backbone_name, support.shape[1]).fit(
        torch.cat([support, extra]), torch.cat([labels, torch.tensor([2])]))
    with torch.no_grad():
        torch.testing.assert_close(updated, refit(query), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grown.prototypes_, refit.prototypes_, atol=1e-5, rtol=1e-5)


def test_add_to_class_rejects_unknown_label(case):
    name, model, (support, labels, query) = case
    fitted = model.fit(support, labels)
    with torch.no_grad():
        e = model.embed(query[:1])[0]
    with pytest.raises(ModelError, match="not a class"):
        fitted.add_to_class(e, N_WAY)


def test_unfitted_and_wrong_channels_are_clear_errors(case):
    name, model, (support, labels, query) = case
    with pytest.raises(ModelError, match=r"model\.fit\("):
        model(query)
    wrong = torch.rand(len(support), 4 - support.shape[1] if support.shape[1] == 1 else 1, SIZE, SIZE)
    with pytest.raises(ModelError, match="channel"):
        model.fit(wrong, labels)
    with pytest.raises(ModelError, match="no image|without gaps"):
        model.fit(support, labels * 2)


def test_unknown_model_and_bad_option():
    backbone = make_backbone("conv4", 1, SIZE, width=8)
    with pytest.raises(ModelError, match="unknown model"):
        make_model("nope", backbone)
    with pytest.raises(ModelError, match="bad options"):
        make_model("matching", backbone, not_an_option=1)
    with pytest.raises(ModelError, match="temperature"):
        make_model("matching", backbone, temperature=0)
    with pytest.raises(ModelError, match="head"):
        make_model("finetune", backbone, head="mlp")
    with pytest.raises(ModelError, match="iterations"):
        make_model("transductive", backbone, iterations=-1)
