"""The incremental forward of the perturbation methods computes the same function as a full pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fsl_xai
from fsl_xai.explain import explain, explanation_model
from fsl_xai.explain import fast as fast_module
from fsl_xai.explain.incremental import IncrementalForward, supports


def _model(channels: int, size: int, backbone: str = "conv4"):
    """A seeded Conv-4 (or ResNet-12) ProtoNet's fitted episode of 3 x 2 random support images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = fsl_xai.make_model("protonet", fsl_xai.make_backbone(backbone, channels, size)).eval()
    g = torch.Generator().manual_seed(1)
    return model.fit(torch.rand(6, channels, size, size, generator=g), torch.arange(3).repeat_interleave(2))


def _perturbed(refs: torch.Tensor, n: int, max_side: int, seed: int = 2) -> torch.Tensor:
    """n copies of the references (row j of reference j % len(refs)), each with one random window
    replaced by noise or zeros, windows anywhere (edges and corners included)."""
    g = torch.Generator().manual_seed(seed)
    _, c, size, _ = refs.shape
    out = []
    for i in range(n):
        r = refs[i % len(refs)].clone()
        h, w = (int(v) for v in torch.randint(1, max_side + 1, (2,), generator=g))
        y = int(torch.randint(0, size - h + 1, (1,), generator=g))
        x = int(torch.randint(0, size - w + 1, (1,), generator=g))
        r[:, y:y + h, x:x + w] = torch.rand(c, h, w, generator=g) if i % 3 else 0.0
        out.append(r)
    return torch.stack(out)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 40), (3, 64)])
def test_embeddings_equal_a_full_forward(channels, size):
    fast = explanation_model(_model(channels, size))
    assert supports(fast)
    refs = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(3))
    images = _perturbed(refs, 120, size // 2)
    inc = IncrementalForward(fast, refs)
    with torch.no_grad():
        full = fast.backbone(images)
        base = fast.backbone(refs[torch.arange(120) % 2])
        got = inc._embed(images)
    assert inc.full_rows == 0  # every window was small enough for the incremental path
    assert (full - base).abs().amax(1).min() > 0  # each perturbation changes the embedding
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)


def test_large_or_foreign_changes_fall_back_to_a_full_forward():
    fast = explanation_model(_model(1, 28))
    refs = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    inc = IncrementalForward(fast, refs)
    big = refs.clone()
    big[:, :, :20, :20] = 0.0  # half the image
    other = torch.rand(1, 1, 28, 28)  # not a perturbation of the reference at all
    with torch.no_grad():
        got = inc._embed(torch.cat([big, other]))
        full = fast.backbone(torch.cat([big, other]))
    assert inc.full_rows == 2
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # unchanged rows are the references' own embeddings
        torch.testing.assert_close(inc._embed(refs.clone()), fast.backbone(refs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,params", [
    ("occlusion", {}),
    ("occlusion", {"window": 7, "stride": 3, "baselines": "blur"}),
    ("feature_ablation", {"patch": 8}),
    ("feature_ablation", {"mask": "superpixels", "n_segments": 16}),
])
def test_perturbation_maps_match_the_plain_model(method, params, monkeypatch):
    model = _model(3, 32)
    queries = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    fast = explain(model, queries, method, **params)
    monkeypatch.setattr(fast_module, "OPTIMIZE", False)
    plain = explain(model, queries, method, **params)
    scale = np.abs(plain.attributions).max()
    assert scale > 0
    np.testing.assert_allclose(fast.attributions, plain.attributions, rtol=1e-3, atol=1e-4 * scale)


def test_only_plain_conv4_stacks_are_supported():
    assert supports(explanation_model(_model(1, 28)))
    assert supports(_model(1, 28))  # eval-mode BatchNorm is affine: fine
    train_mode = _model(1, 28)
    train_mode.train()
    assert not supports(train_mode)  # batch statistics would couple the images of a batch
    assert not supports(_model(1, 28, backbone="resnet12"))
    assert not supports(_model(1, 28).model)  # a model alone has no support set to score against
