"""Backbones and the few-shot base class, with Prototypical Networks checked by hand."""

from __future__ import annotations

import sys

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


# ------------------------------------------------------------------ external backbones: input and torch versions
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_LIKE = '''
import torch
from torch import nn


class GreyNet(nn.Module):
    """What timm builds with in_chans=1: a first layer for one channel, while its pretrained_cfg
    still states the ImageNet input (3 channels, 224 px, one mean and std per RGB channel)."""

    pretrained_cfg = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def grey_net():
    return GreyNet()
'''


def test_per_channel_normalisation_of_the_model_averages_for_other_channels() -> None:
    from fsl_xai.models.transforms import resolve_transform

    class Stated:
        pretrained_cfg = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    same = resolve_transform(Stated())
    assert (same.channels, same.mean, same.std) == (3, IMAGENET_MEAN, IMAGENET_STD)
    assert same.sources["normalisation"] == "model"
    grey = resolve_transform(Stated(), channels=1, image_size=32)
    assert grey.channels == 1 and grey.image_size == (32, 32)
    assert grey.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and grey.std == pytest.approx((sum(IMAGENET_STD) / 3,))
    assert grey.sources["normalisation"] == "model, averaged over its channels for 1-channel input"
    assert "averaged over its channels" in grey.describe()
    # the user's own --normalise is taken as given: three values for one channel stay an error
    with pytest.raises(ModelError, match="normalisation mean has 3 values for 1-channel images"):
        resolve_transform(Stated(), channels=1, normalise=(IMAGENET_MEAN, IMAGENET_STD))


def test_a_grey_network_stating_rgb_normalisation_loads_and_normalises(tmp_path, monkeypatch) -> None:
    (tmp_path / "timm_like_nets.py").write_text(TIMM_LIKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    bb = make_backbone("py:timm_like_nets:grey_net", input_channels=1, input_size=16).eval()
    assert (bb.in_channels, bb.image_size) == (1, (16, 16))
    x = torch.rand(2, 1, 16, 16)
    expected = bb.net((x - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3))
    assert torch.allclose(bb(x), expected, atol=1e-6)


def test_torchscript_backbone_loads_when_torch_warns_with_a_future_warning(tmp_path, monkeypatch) -> None:
    """torch 2.14 says torch.jit.load is deprecated with a FutureWarning (2.13: a DeprecationWarning);
    loading a TorchScript backbone is what the user asked for, so neither may reach them (here every
    warning is an error)."""
    import warnings

    from fsl_xai.models.external import load_external

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())),
                       str(tmp_path / "net.pt"))
    original = torch.jit.load

    def load_as_torch_2_14(*args, **kwargs):
        warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", FutureWarning, stacklevel=2)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", load_as_torch_2_14)
    bb = load_external(f"torchscript:{tmp_path / 'net.pt'}", input_channels=1, input_size=12)
    assert bb.returns_map and bb.default_cam_layer == "output_map" and bb.out_dim == 4


TIMM_STYLE_VIT = '''
import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, 4, stride=4)  # its (N, dim, 4, 4) output is an image map

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """As timm's: queries and keys (N, heads, T, head_dim) pass through modules (q_norm, k_norm)."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                                                 nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTimmViT(nn.Module):
    """16x16 grey images, 4x4 patches, a class token, two blocks; embeds by the class token."""

    input_size = (1, 16, 16)

    def __init__(self, dim=8):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def tiny_timm_vit():
    torch.manual_seed(0)
    return TinyTimmViT()
'''


def test_attention_internals_of_a_timm_style_vit_are_not_maps(tmp_path, monkeypatch) -> None:
    """timm's ViT passes queries and keys (N, heads, T, d) through modules: 4-D outputs that are not
    image maps. Its default layer is the token map of the last block whose patch tokens reach the
    class token (the first block here), and Grad-CAM and similarity maps work on it."""
    from fsl_xai.explain import explain, similarity_map

    (tmp_path / "timm_style_vit.py").write_text(TIMM_STYLE_VIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    bb = make_backbone("py:timm_style_vit:tiny_timm_vit").eval()
    assert not [name for name in bb.spatial_layers if "attn" in name], bb.spatial_layers
    assert bb.spatial_layers == ["net.patch_embed.proj", "token_map"] and bb.default_cam_layer == "token_map"
    assert bb.feature_map(torch.rand(2, 1, 16, 16)).shape == (2, 8, 4, 4)
    torch.manual_seed(1)
    fitted = make_model("protonet", bb).eval().fit(torch.rand(4, 1, 16, 16), torch.tensor([0, 0, 1, 1]))
    query = torch.rand(1, 1, 16, 16)
    cam = explain(fitted, query, method="gradcam")
    assert cam.params["layer"] == "token_map" and cam.maps.shape == (1, 16, 16) and abs(cam.maps).max() > 1e-6
    assert similarity_map(fitted, query[0]) is not None


def _fake_timm(tmp_path, monkeypatch) -> list[dict]:
    """A stand-in for the timm package (timm does not import beside this torch): ``create_model``
    records its arguments; ``vit`` takes ``img_size`` as timm's ViTs do, ``cnn`` does not."""
    import types

    (tmp_path / "timm_style_vit.py").write_text(TIMM_STYLE_VIT)
    monkeypatch.syspath_prepend(str(tmp_path))
    import timm_style_vit  # type: ignore[import-not-found]

    calls: list[dict] = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append({"name": name, "in_chans": in_chans, **kwargs})
        if name == "cnn":
            if kwargs:
                raise TypeError(f"__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")
            return torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3), torch.nn.ReLU())
        size = kwargs.get("img_size", (16, 16))
        net = timm_style_vit.TinyTimmViT()
        if tuple(size) != (16, 16):  # as timm: the position embeddings are made for the grid asked for
            net.pos_embed = torch.nn.Parameter(torch.zeros(1, 1 + (size[0] // 4) * (size[1] // 4), 8))
        return net

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


def test_timm_gets_the_input_size_when_its_model_takes_one(tmp_path, monkeypatch) -> None:
    from fsl_xai.models.external import load_external

    calls = _fake_timm(tmp_path, monkeypatch)
    vit = load_external("timm:vit", input_channels=1, input_size=32)
    assert calls[-1] == {"name": "vit", "in_chans": 1, "img_size": (32, 32)}
    assert vit.image_size == (32, 32) and vit.default_cam_layer == "token_map"
    assert vit.feature_map(torch.rand(1, 1, 32, 32)).shape == (1, 8, 8, 8)
    # rebuilt from a checkpoint's stored transform: the same size again, so that the weights fit
    again = load_external("timm:vit", transform=vit.transform.to_dict())
    assert calls[-1]["img_size"] == (32, 32)
    again.load_state_dict(vit.state_dict())
    # a model without img_size (a CNN) is built without it; no size given: no img_size either
    cnn = load_external("timm:cnn", input_channels=1, input_size=20)
    assert [c.get("img_size") for c in calls[-2:]] == [(20, 20), None] and cnn.image_size == (20, 20)
    load_external("timm:vit", input_channels=1)
    assert "img_size" not in calls[-1]
