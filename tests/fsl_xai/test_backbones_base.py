"""Backbones and the few-shot base class, with Prototypical Networks checked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsl_xai import ModelError, PrototypicalNetwork, list_backbones, make_backbone, make_model
from fsl_xai.testing import make_episode, tiny_model


# ------------------------------------------------------------------ backbones
@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64])
def test_backbone_shapes(name: str, channels: int, size: int) -> None:
    kwargs = {"width": 8} if name == "conv4" else {"widths": (8, 8, 8, 16)}
    net = make_backbone(name, in_channels=channels, image_size=size, **kwargs).eval()
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        out = net(x)
        fmap = net.feature_map(x)
    assert out.shape == (3, net.out_dim)
    assert torch.isfinite(out).all()
    assert fmap.shape[:2] == (3, 8 if name == "conv4" else 16)
    assert fmap.shape[2:] == (size // 16, size // 16)
    assert torch.equal(net.pool(fmap), out)
    if name == "conv4":  # flattened last map: 28 px -> 1x1, 64 px -> 4x4
        assert net.out_dim == 8 * (size // 16) ** 2
    else:  # global average pooling: independent of the size
        assert net.out_dim == 16
    assert net.in_channels == channels and net.image_size == (size, size) and net.backbone_name == name
    assert net.default_cam_layer == "blocks.3"
    assert dict(net.named_modules())[net.default_cam_layer] is net.blocks[3]


def test_default_conv4_sizes() -> None:
    assert make_backbone("conv4", in_channels=3, image_size=28).out_dim == 64
    assert make_backbone("conv4", in_channels=1, image_size=64).out_dim == 1024
    assert list_backbones() == sorted(list_backbones()) and {"conv4", "resnet12"} <= set(list_backbones())


def test_unknown_backbone() -> None:
    with pytest.raises(ModelError, match=r"unknown backbone 'vgg'; choose one of \[.*'conv4'.*'resnet12'"):
        make_backbone("vgg")


@pytest.mark.parametrize("size", [8, (28, 12)])
def test_image_too_small(size: int | tuple[int, int]) -> None:
    with pytest.raises(ModelError, match=r"needs images of at least 16x16 pixels"):
        make_backbone("conv4", image_size=size)


def test_unknown_model_and_distance() -> None:
    net = make_backbone("conv4", in_channels=1, width=4)
    with pytest.raises(ModelError, match=r"unknown model 'nope'; choose one of \[.*'protonet'"):
        make_model("nope", net)
    with pytest.raises(ModelError, match="unknown distance 'manhattan'"):
        make_model("protonet", net, distance="manhattan")


def test_tiny_model_is_deterministic() -> None:
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != tiny_model(seed=4).fingerprint()
    state = torch.random.get_rng_state()
    tiny_model(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global random state untouched
    assert not a.training


# ------------------------------------------------------------------ prototypes and logits
@pytest.fixture
def episode():
    images, ep = make_episode(n_way=3, n_shot=3, n_query=2, channels=1, size=28, seed=0)
    return ep.tensors(images)


def test_prototypes_are_class_means(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model()
    before = model.fingerprint()
    fitted = model.fit(s, sl)
    with torch.no_grad():
        emb = model.embed(s)
    expected = torch.stack([emb[sl == k].mean(0) for k in range(3)])
    torch.testing.assert_close(fitted.prototypes_, expected)
    torch.testing.assert_close(fitted.support_embeddings_, emb)
    assert fitted.support_labels_.tolist() == sl.tolist()
    assert fitted.class_counts_.tolist() == [3, 3, 3]
    assert fitted.n_way == 3 and fitted.model is model and fitted.backbone is model.backbone
    # fitting returns a value: the model keeps no support state and its weights are untouched
    assert not any(k.endswith("_") for k in vars(model) if not k.startswith("_"))
    assert model.fingerprint() == before == fitted.fingerprint()


def test_logits_are_minus_squared_distance(episode) -> None:
    s, sl, q, ql = episode
    model = tiny_model().fit(s, sl)
    with torch.no_grad():
        logits = model(q)
        qe = model.embed(q)
    # by hand, one query and one class at a time
    for i in range(len(q)):
        for k in range(3):
            diff = qe[i] - model.prototypes_[k]
            assert logits[i, k].item() == pytest.approx(-float((diff * diff).sum()), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(model.distances(q), -logits)
    # the generated classes are separable, so even an untrained tiny model gets them right
    assert (logits.argmax(1) == ql).float().mean() >= 0.8


def test_logits_on_hand_made_embeddings() -> None:
    model = tiny_model()
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    fitted = model.fit_embeddings(support, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(fitted.prototypes_, torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    logits = fitted.logits_from_embeddings(torch.tensor([[1.0, 1.0], [3.0, 4.0]]))
    # (1,1): to (1,0) 1, to (0,4) 1+9=10; (3,4): to (1,0) 4+16=20, to (0,4) 9
    torch.testing.assert_close(logits, torch.tensor([[-1.0, -10.0], [-20.0, -9.0]]))


def test_cosine_option(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model(distance="cosine", cosine_scale=5.0).fit(s, sl)
    with torch.no_grad():
        logits = model(q)
        qe = model.embed(q)
    expected = 5.0 * F.cosine_similarity(qe[:, None, :], model.prototypes_[None, :, :], dim=-1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert logits.abs().max() <= 5.0 + 1e-5
    assert model.model.config() == {"model": "protonet", "distance": "cosine", "cosine_scale": 5.0}
    hand = tiny_model(distance="cosine", cosine_scale=1.0)
    hand_fit = hand.fit_embeddings(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(hand_fit.logits_from_embeddings(torch.tensor([[2.0, 2.0]])),
                               torch.tensor([[2 ** -0.5, 2 ** -0.5]]))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_add_to_class_equals_refit(episode, distance: str) -> None:
    s, sl, q, _ = episode
    extra, extra_label = q[1:2], 0
    original = tiny_model(distance=distance).fit(s, sl)
    kept = original.prototypes_.clone()
    with torch.no_grad():
        incremental = original.add_to_class(original.embed(extra)[0], extra_label)
    # a new fitted episode; the original keeps its own support set
    assert incremental is not original and torch.equal(original.prototypes_, kept)
    assert original.class_counts_.tolist() == [3, 3, 3]
    refit = tiny_model(distance=distance).fit(torch.cat([s, extra]), torch.cat([sl, torch.tensor([extra_label])]))
    torch.testing.assert_close(incremental.prototypes_, refit.prototypes_)
    assert incremental.class_counts_.tolist() == [4, 3, 3]
    assert incremental.support_labels_.tolist() == refit.support_labels_.tolist()
    torch.testing.assert_close(incremental.support_embeddings_, refit.support_embeddings_)
    with torch.no_grad():
        torch.testing.assert_close(incremental(q), refit(q))
    with pytest.raises(ModelError, match=r"label 3 is not a class of this episode \(0..2\)"):
        incremental.add_to_class(incremental.prototypes_[0], 3)


def test_unfitted_model(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model()
    with pytest.raises(ModelError, match=r"no support set; call fitted = model.fit\(support_images"):
        model(q)
    assert not hasattr(model, "add_to_class") and not hasattr(model, "fit_support")


def test_wrong_channel_count(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model(channels=1)
    with pytest.raises(ModelError, match=r"support_images have 3 channel\(s\) but the backbone expects 1"):
        model.fit(s.repeat(1, 3, 1, 1), sl)
    model = model.fit(s, sl)
    with pytest.raises(ModelError, match=r"query_images have 3 channel\(s\).*convert"):
        model(q.repeat(1, 3, 1, 1))
    with pytest.raises(ModelError, match=r"must be a tensor \(N, C, H, W\), got \(1, 28, 28\)"):
        model(q[0])


def test_bad_support_labels(episode) -> None:
    s, sl, _, _ = episode
    model = tiny_model()
    with pytest.raises(ModelError, match="9 support images but 8 support labels"):
        model.fit(s, sl[:-1])
    with pytest.raises(ModelError, match=r"classes \[1\] have no image"):
        model.fit(s, torch.where(sl == 1, 2, sl))
    with pytest.raises(ModelError, match="support set is empty"):
        model.fit_embeddings(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ModelError, match="must be episode labels"):
        model.fit(s, sl - 1)


def test_episode_logits_equal_fit_then_forward(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model()
    joint = model.episode_logits(s, sl, q)
    assert joint.requires_grad  # differentiable: used for meta-training and support attribution
    with torch.no_grad():
        separate = model.fit(s, sl)(q)
    torch.testing.assert_close(joint.detach(), separate, rtol=1e-4, atol=1e-4)
    joint.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.backbone.parameters())


def test_forward_is_differentiable_wrt_pixels(episode) -> None:
    s, sl, q, _ = episode
    model = tiny_model().fit(s, sl)
    x = q[:2].clone().requires_grad_(True)
    model(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_protonet_is_registered() -> None:
    model = make_model("protonet", make_backbone("conv4", in_channels=1, width=4))
    assert isinstance(model, PrototypicalNetwork) and model.name == "protonet"
    assert model.config() == {"model": "protonet", "distance": "euclidean", "cosine_scale": 10.0}
    assert len(model.fingerprint()) == 16
