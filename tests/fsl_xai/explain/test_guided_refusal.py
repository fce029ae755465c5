"""Guided Backprop and Guided Grad-CAM only where the guided rule acts (nn.ReLU modules), on the
built-in backbones as on external ones; DeepLIFT wherever Captum has a rule for every nonlinearity.

The first tests run Captum itself, to show what the refusals rest on: on a LeakyReLU network
Guided Backprop *is* the plain gradient, and DeepLIFT's rescale rule does act on nn.LeakyReLU
(but not on a subclass of it)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import DeepLift, GuidedBackprop, Saliency
from torch import nn

from fsl_xai.errors import FslXaiError, ModelError
from fsl_xai.explain import explain, list_methods
from fsl_xai.explain.core import check_method_backbone, method_refusal, quiet_captum, refused_methods
from fsl_xai.models import make_backbone, make_model

from ._helpers import fitted

GUIDED = ("guided_backprop", "guided_gradcam")


class _Leaky(nn.LeakyReLU):
    """A LeakyReLU by subclass, as some model zoos define theirs."""


def _head(backbone: nn.Module) -> nn.Module:
    """(n, C, H, W) -> (n, 4): the backbone's first embedding dimensions, for Captum's target."""
    return nn.Sequential(backbone, nn.Linear(backbone(torch.zeros(1, 1, 16, 16)).shape[1], 4)).eval()


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    options = {"conv4": {"width": 8}, "resnet12": {"widths": (8, 8, 8, 8)}}[name]
    return _head(make_backbone(name, 1, 16, **options))


def _bare(*activations: nn.Module) -> nn.Module:
    """A bare nn.Module backbone (conv, activations, pooling) that states its input."""
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), *activations, nn.Conv2d(4, 6, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.in_channels, net.image_size = 1, (16, 16)
    return net


# ---------------------------------------------------------------------------------------------- what Captum does
def test_guided_backprop_on_leaky_relu_is_the_plain_gradient():
    x = torch.rand(2, 1, 16, 16)
    resnet, conv4 = _net("resnet12"), _net("conv4")

    def maps(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        with quiet_captum():
            guided = GuidedBackprop(net).attribute(x.clone().requires_grad_(), target=1)
        return guided, Saliency(net).attribute(x.clone().requires_grad_(), target=1, abs=False)

    torch.testing.assert_close(*maps(resnet))  # the reason ResNet-12 is refused
    # where the network's activations are nn.ReLU the rule does change the map
    assert not torch.allclose(*maps(conv4))


def test_deeplift_has_a_rule_for_leaky_relu_but_not_for_a_subclass():
    torch.manual_seed(1)
    x, base = torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    deltas = {}
    for kind, act in (("leaky", nn.LeakyReLU(0.1)), ("subclass", _Leaky(0.1))):
        torch.manual_seed(2)
        net = _head(_bare(act))
        with quiet_captum():
            _, delta = DeepLift(net).attribute(x.clone().requires_grad_(), baselines=base, target=0,
                                               return_convergence_delta=True)
        deltas[kind] = delta.abs().max().item()
    # the rescale rule sums to F(x) - F(baseline); a gradient passed through unchanged does not
    assert deltas["leaky"] < 1e-4 < deltas["subclass"], deltas


# ---------------------------------------------------------------------------------------------- the refusals
@pytest.mark.parametrize("method", GUIDED)
def test_guided_methods_are_refused_on_resnet12(method):
    model, queries, _, _ = fitted("resnet12", 1)
    with pytest.raises(ModelError, match="LeakyReLU activations and no nn.ReLU") as caught:
        explain(model, queries[:1], method)
    text = str(caught.value)
    assert isinstance(caught.value, FslXaiError)  # shown inline by the views, one line by the CLI
    assert "only positive gradients back through nn.ReLU modules" in text and "resnet12" in text
    expected = {"guided_backprop": "the plain input gradient (saliency with abs=False), not a guided map; use saliency",
                "guided_gradcam": "Grad-CAM times the plain input gradient, not a guided map; use gradcam"}[method]
    assert expected in text


def test_which_methods_each_built_in_backbone_refuses():
    conv4, _, _, _ = fitted("conv4", 1)
    resnet, queries, _, _ = fitted("resnet12", 1)
    assert refused_methods(conv4, list_methods()) == {}
    assert sorted(refused_methods(resnet, list_methods())) == sorted(GUIDED)
    # DeepLIFT has a rule for LeakyReLU (and for max-pooling): it runs on ResNet-12 and is not the gradient
    assert method_refusal(resnet, "deeplift") is None
    lift = explain(resnet, queries[:1], "deeplift", baselines="zeros")
    ixg = explain(resnet, queries[:1], "input_x_gradient")
    assert not torch.allclose(torch.from_numpy(lift.maps), torch.from_numpy(ixg.maps), atol=1e-6)
    for method in ("saliency", "gradcam", "integrated_gradients", "occlusion"):
        assert method_refusal(resnet, method) is None
        check_method_backbone(resnet, method)  # no error


@pytest.mark.parametrize(("activations", "refused", "says"), [
    ((nn.ReLU(),), False, None),
    ((nn.ReLU(), nn.Sigmoid()), False, None),  # a gate beside the rectifier: still guided at the ReLU
    ((nn.GELU(),), True, "GELU activations and no nn.ReLU"),
    ((nn.ReLU(), nn.SiLU()), True, "SiLU activations beside its ReLUs, whose gradients would pass unguided"),
    ((), True, "no nn.ReLU modules"),
])
def test_guided_refusal_on_external_backbones(activations, refused, says):
    model = make_model("protonet", _bare(*activations)).eval()
    for method in GUIDED:
        reason = method_refusal(model, method)
        assert (reason is not None) == refused, reason
        if says is not None:
            assert reason is not None and says in reason


def test_deeplift_is_refused_where_captum_has_no_rule():
    assert method_refusal(make_model("protonet", _bare(nn.LeakyReLU(), nn.ELU())).eval(), "deeplift") is None
    for act, name in ((_Leaky(), "_Leaky"), (nn.PReLU(), "PReLU"), (nn.SiLU(), "SiLU")):
        reason = method_refusal(make_model("protonet", _bare(act)).eval(), "deeplift")
        assert reason is not None and f"deeplift has no rule for ['{name}']" in reason
        assert "use integrated_gradients or gradient_shap" in reason
