"""The registry of attribution methods: one entry per Captum method, each saying everything about it.

An entry (:class:`MethodSpec`) holds the function that runs the method on a chunk of queries, its
parameters and defaults, a human label, its main parameter (what a view offers as a slider), how
many images one query becomes in one pass (``images_per_query``, for chunking and cost), whether it
needs gradients and whether it works on a backbone layer. Views, benchmarks and the quality checks
read these entries instead of restating them: ``METHODS[name]`` or ``method_spec(name)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from . import fast
from .core import DEFAULT_INTERNAL_BATCH, ExplainedOutput, make_baseline
from .masks import grid_mask, superpixel_mask

#: integration rules of Integrated Gradients (Captum's ``method`` argument, here called ``rule``)
INTEGRATION_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


@dataclass(frozen=True)
class MainParam:
    """The parameter a view offers for a method (as a slider): its name, label, range and default."""

    name: str
    label: str
    low: int
    high: int
    default: Any


def _one(params: Mapping[str, Any]) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: registry name.
        run: ``run(ctx, **params) -> (n, C, H, W) tensor``; ``ctx`` is a :class:`MethodContext`.
        defaults: default parameters (read-only; a user's ``**params`` override them).
        label: a human name for menus ("Integrated Gradients").
        description: one line on what it computes.
        needs_gradients: False for perturbation methods (occlusion, feature ablation).
        layer_method: True when the method uses a backbone layer (``layer=`` applies).
        main_param: the parameter a view offers, or None.
        cost: ``cost(params) -> int``, images per query in one pass for the given (complete)
            parameters; use :meth:`images_per_query`.
        completeness: True when the attributions sum to F(input) - F(baseline) for the
            ``baselines`` parameter (Integrated Gradients); ``explain`` then records each map's
            completeness gap (``AttributionMap.completeness_gap``).
    """

    name: str
    run: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any]
    label: str
    description: str = ""
    needs_gradients: bool = True
    layer_method: bool = False
    main_param: MainParam | None = None
    cost: Callable[[Mapping[str, Any]], int] = _one
    completeness: bool = False

    def parameters(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults overridden by ``params``; ModelError for a parameter the method does not have."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise ModelError(f"method {self.name!r} has no parameter(s) {unknown}; its parameters are "
                             f"{sorted(self.defaults)}")
        return {**self.defaults, **params}

    def images_per_query(self, params: Mapping[str, Any] | None = None) -> int:
        """How many images one query becomes in one pass through the network (integration steps,
        noise samples, perturbations per evaluation), with these parameters over the defaults."""
        return max(1, int(self.cost(self.parameters(params))))


METHODS: dict[str, MethodSpec] = {}


def register(name: str, defaults: dict | None = None, *, label: str, description: str = "",
             needs_gradients: bool = True, layer_method: bool = False, main: tuple | None = None,
             cost: Callable[[Mapping[str, Any]], int] = _one, completeness: bool = False) -> Callable:
    """Decorator adding ``run(ctx, **params)`` to the registry under ``name``.

    ``main`` is (parameter name, label, low, high); its default is taken from ``defaults``.
    """
    defaults = dict(defaults or {})
    main_param = None if main is None else MainParam(main[0], main[1], main[2], main[3], defaults[main[0]])

    def deco(fn: Callable) -> Callable:
        METHODS[name] = MethodSpec(name, fn, MappingProxyType(defaults), label, description, needs_gradients,
                                   layer_method, main_param, cost, completeness)
        return fn

    return deco


def list_methods() -> list[str]:
    """Names of the registered attribution methods."""
    return sorted(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The registry entry of a method; ModelError naming the choices when it is unknown."""
    if name not in METHODS:
        raise ModelError(f"unknown attribution method {name!r}; choose one of {list_methods()}")
    return METHODS[name]


@dataclass
class MethodContext:
    """What a registry entry needs: the wrapped forward, a chunk of inputs, the per-query weights,
    the layer (for layer methods)."""

    forward: ExplainedOutput
    inputs: torch.Tensor
    weights: torch.Tensor
    layer: nn.Module | None
    internal_batch_size: int | None
    seed: int
    rows: slice = field(default_factory=lambda: slice(None))  # which of the queries this chunk holds

    @property
    def pass_size(self) -> int:
        """Captum's internal_batch_size: the budget, but never below the chunk's query count."""
        return max(len(self.inputs), self.internal_batch_size or DEFAULT_INTERNAL_BATCH)

    @property
    def args(self) -> tuple:
        return (self.weights,)

    def baseline(self, spec: Any) -> torch.Tensor | float:
        """The reference images of this chunk; a number stays a number (Captum broadcasts it)."""
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return float(spec)
        return make_baseline(self.inputs.detach(), spec)


def _spread_layer_map(cam: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(n, 1, h, w) layer map -> (n, C, H, W): upsampled bilinearly, shared evenly by the channels."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode="bilinear")
    return (up / inputs.shape[1]).expand(-1, inputs.shape[1], -1, -1)


def _check_rule(rule: str) -> str:
    if rule not in INTEGRATION_RULES:
        raise ModelError(f"unknown integration rule {rule!r}; choose one of {list(INTEGRATION_RULES)}")
    return rule


def _noise_samples(p: Mapping[str, Any]) -> int:
    return int(p["nt_samples_batch_size"] or p["nt_samples"])


# ----------------------------------------------------------------------------- gradient methods


@register("saliency", {"abs": False}, label="Saliency",
          description="plain gradient of the explained logit (signed unless abs=True)")
def _saliency(ctx: MethodContext, abs: bool) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(ctx.forward).attribute(ctx.inputs, target=0, abs=abs, additional_forward_args=ctx.args)


@register("input_x_gradient", {}, label="Input x Gradient", description="input times gradient")
def _input_x_gradient(ctx: MethodContext) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)


# The default baseline and rule were chosen on their completeness gap (benchmarks/ig_completeness.py,
# default PBC 64 px model, 30 queries): from black, F(0) is about -540 while F(x) is about -7, and at
# 50 steps the gap is a median 9% of the decision margin (up to 1.6 logits; 43% of the queries fail
# the completeness badge); from the blurred query it is 0.3% (none fail; at 16 steps 1.4%), the
# smallest of black, blurred, per-image mean and dataset mean; Gauss-Legendre beats the trapezoid
# rule at every baseline and step count.
@register("integrated_gradients", {"n_steps": 50, "rule": "gausslegendre", "baselines": "blur"},
          label="Integrated Gradients", main=("n_steps", "IG steps", 4, 200),
          cost=lambda p: int(p["n_steps"]), completeness=True,
          description="Integrated Gradients from a baseline image (a strong blur of the query by default: "
                      "what the fine structure adds; 'zeros' for black); rule: the integration rule "
                      "(Captum's method)")
def _integrated_gradients(ctx: MethodContext, n_steps: int, rule: str, baselines: Any) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(ctx.forward).attribute(
        ctx.inputs, baselines=ctx.baseline(baselines), target=0, additional_forward_args=ctx.args,
        n_steps=n_steps, method=_check_rule(rule), internal_batch_size=ctx.pass_size)


@register("gradient_shap", {"n_samples": 20, "stdevs": 0.1, "baseline_levels": (0.0, 0.25, 0.5, 0.75, 1.0)},
          label="GradientSHAP", main=("n_samples", "samples", 2, 100), cost=lambda p: int(p["n_samples"]),
          description="GradientSHAP: expected gradients over noisy inputs and uniform-intensity baselines")
def _gradient_shap(ctx: MethodContext, n_samples: int, stdevs: float,
                   baseline_levels: Sequence[float]) -> torch.Tensor:
    from captum.attr import GradientShap

    shape = ctx.inputs.shape[1:]
    baselines = torch.stack([torch.full(shape, float(v)) for v in baseline_levels])
    # GradientShap draws noise and path points from the torch and numpy global generators (seeded by explain)
    return GradientShap(ctx.forward).attribute(ctx.inputs, baselines=baselines, target=0, n_samples=n_samples,
                                               stdevs=stdevs, additional_forward_args=ctx.args)


@register("deeplift", {"baselines": "zeros"}, label="DeepLIFT", cost=lambda p: 2,
          description="DeepLIFT (rescale rule) from a baseline image")
def _deeplift(ctx: MethodContext, baselines: Any) -> torch.Tensor:
    from captum.attr import DeepLift

    return DeepLift(ctx.forward).attribute(ctx.inputs, baselines=ctx.baseline(baselines), target=0,
                                           additional_forward_args=ctx.args)


@register("guided_backprop", {}, label="Guided Backprop",
          description="Guided Backpropagation (ReLU units pass positive gradients only)")
def _guided_backprop(ctx: MethodContext) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)


@register("gradcam", {"relu_attributions": False}, label="Grad-CAM", layer_method=True,
          description="Grad-CAM on a backbone layer, upsampled to the input size (signed; "
                      "relu_attributions=True for the classic positive-only map)")
def _gradcam(ctx: MethodContext, relu_attributions: bool) -> torch.Tensor:
    from captum.attr import LayerGradCam

    cam = LayerGradCam(ctx.forward, ctx.layer).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args,
                                                         relu_attributions=relu_attributions)
    return _spread_layer_map(cam, ctx.inputs)


@register("guided_gradcam", {"relu_attributions": True}, label="Guided Grad-CAM", layer_method=True,
          description="Guided Grad-CAM: Guided Backprop times the upsampled Grad-CAM map")
def _guided_gradcam(ctx: MethodContext, relu_attributions: bool) -> torch.Tensor:
    from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam

    # Captum's GuidedGradCam always keeps only the positive part of the CAM; with distance logits
    # the whole CAM can be negative, so the choice is left to the user (default: the classic map)
    cam = LayerGradCam(ctx.forward, ctx.layer).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args,
                                                         relu_attributions=relu_attributions)
    guided = GuidedBackprop(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)
    return guided * LayerAttribution.interpolate(cam, tuple(ctx.inputs.shape[2:]), interpolate_mode="bilinear")


def _noise_tunnel(ctx: MethodContext, base: Any, nt_type: str, nt_samples: int, stdevs: float,
                  nt_samples_batch_size: int | None, **kwargs) -> torch.Tensor:
    from captum.attr import NoiseTunnel

    # noise comes from the global generators, seeded by explain() and restored afterwards
    return NoiseTunnel(base).attribute(ctx.inputs, nt_type=nt_type, nt_samples=nt_samples, stdevs=stdevs,
                                       nt_samples_batch_size=nt_samples_batch_size, target=0,
                                       additional_forward_args=ctx.args, **kwargs)


@register("smoothgrad", {"nt_type": "smoothgrad", "nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": None},
          label="SmoothGrad", main=("nt_samples", "noise samples", 2, 100), cost=_noise_samples,
          description="SmoothGrad: gradients averaged over noisy copies (NoiseTunnel over Saliency)")
def _smoothgrad(ctx: MethodContext, nt_type: str, nt_samples: int, stdevs: float,
                nt_samples_batch_size: int | None) -> torch.Tensor:
    from captum.attr import Saliency

    return _noise_tunnel(ctx, Saliency(ctx.forward), nt_type, nt_samples, stdevs, nt_samples_batch_size, abs=False)


@register("smoothgrad_ig", {"nt_type": "smoothgrad", "nt_samples": 8, "stdevs": 0.15, "nt_samples_batch_size": None,
                            "n_steps": 16, "rule": "gausslegendre", "baselines": "zeros"},
          label="SmoothGrad over IG", main=("nt_samples", "noise samples", 2, 100),
          cost=lambda p: int(p["n_steps"]) * _noise_samples(p),
          description="NoiseTunnel over Integrated Gradients")
def _smoothgrad_ig(ctx: MethodContext, nt_type: str, nt_samples: int, stdevs: float,
                   nt_samples_batch_size: int | None, n_steps: int, rule: str, baselines: Any) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    base = ctx.baseline(baselines)
    if isinstance(base, torch.Tensor) and base.shape[0] == ctx.inputs.shape[0] and base.shape[0] > 1:
        # NoiseTunnel repeats the inputs but not the baselines: use one reference for all queries
        if not torch.equal(base, base[:1].expand_as(base)):
            raise ModelError("smoothgrad_ig needs a baseline shared by all queries ('zeros' or a number)")
        base = base[:1]
    return _noise_tunnel(ctx, IntegratedGradients(ctx.forward), nt_type, nt_samples, stdevs, nt_samples_batch_size,
                         baselines=base, n_steps=n_steps, method=_check_rule(rule),
                         internal_batch_size=ctx.pass_size)


# ------------------------------------------------------------------------- perturbation methods


def _perturbation_forward(ctx: MethodContext) -> nn.Module:
    """The forward for perturbation methods: with ``fast.OPTIMIZE`` and a Conv-4, one that recomputes
    only the part of each activation a local perturbation can change (same values; see
    ``fsl_xai.explain.incremental``)."""
    from . import incremental

    if fast.OPTIMIZE and incremental.supports(ctx.forward.fitted):
        return incremental.IncrementalForward(ctx.forward.fitted, ctx.inputs.detach())
    return ctx.forward


def _default_patch(inputs: torch.Tensor) -> int:
    return max(2, min(inputs.shape[2:]) // 8)


@register("occlusion", {"window": None, "stride": None, "baselines": 0.0, "perturbations_per_eval": 64},
          label="Occlusion", needs_gradients=False, cost=lambda p: int(p["perturbations_per_eval"]),
          description="Occlusion: the drop of the explained logit when a sliding square is blanked")
def _occlusion(ctx: MethodContext, window: int | None, stride: int | None, baselines: Any,
               perturbations_per_eval: int) -> torch.Tensor:
    from captum.attr import Occlusion

    window = window or _default_patch(ctx.inputs)
    stride = stride or max(1, window // 2)
    c = ctx.inputs.shape[1]
    return Occlusion(_perturbation_forward(ctx)).attribute(
        ctx.inputs, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
        baselines=ctx.baseline(baselines), target=0, additional_forward_args=ctx.args,
        perturbations_per_eval=perturbations_per_eval)


@register("feature_ablation", {"mask": "grid", "patch": None, "n_segments": 64, "baselines": 0.0,
                               "perturbations_per_eval": 64},
          label="Feature Ablation", needs_gradients=False, main=("n_segments", "segments", 4, 256),
          cost=lambda p: int(p["perturbations_per_eval"]),
          description="Feature Ablation over a grid of patches or over superpixels (mask='superpixels')")
def _feature_ablation(ctx: MethodContext, mask: Any, patch: int | None, n_segments: int, baselines: Any,
                      perturbations_per_eval: int) -> torch.Tensor:
    from captum.attr import FeatureAblation

    n, c, h, w = ctx.inputs.shape
    if isinstance(mask, str) and mask == "grid":
        fmask = grid_mask(h, w, patch or _default_patch(ctx.inputs))
    elif isinstance(mask, str) and mask == "superpixels":
        fmask = superpixel_mask(ctx.inputs, n_segments=n_segments)
    elif isinstance(mask, (torch.Tensor, np.ndarray)):
        fmask = torch.as_tensor(mask, dtype=torch.long)
        fmask = fmask.reshape(-1, 1, h, w) if fmask.ndim in (2, 3) else fmask
        if len(fmask) > 1:  # one mask per query: this chunk's rows
            fmask = fmask[ctx.rows]
    else:
        raise ModelError(f"feature_ablation mask={mask!r} is not understood; use 'grid', 'superpixels' or an "
                         f"int array (H, W) / (n, H, W) of feature ids")
    return FeatureAblation(_perturbation_forward(ctx)).attribute(
        ctx.inputs, baselines=ctx.baseline(baselines), target=0, additional_forward_args=ctx.args,
        feature_mask=fmask, perturbations_per_eval=perturbations_per_eval)
