"""Pixel attributions of few-shot decisions with Captum.

A prototype model scores a query by its distance to each class prototype (logit = minus the
distance). ``explain`` attributes one scalar per query to the query's pixels: the logit of the
target class, or with a contrast class the difference ``logit[target] - logit[contrast]`` ("why A
rather than B"; the difference of the two distances). Every Captum method sees the same small
wrapper module whose forward returns that (n, 1) quantity, so adding a method is one registry
entry.

The model is run in eval mode (BatchNorm with running statistics, no dropout) and put back in
the mode it was in afterwards.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._deferred import defer_captum_visualization
from ..errors import EpisodeError, ModelError

defer_captum_visualization()  # Captum is imported on first use; keep matplotlib out of that import

# --------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class AttributionMap:
    """Attributions of a batch of queries, with their provenance.

    Attributes:
        attributions: float32 (n, C, H, W), signed, at the input's size. For layer methods
            (Grad-CAM) the upsampled map is spread evenly over the channels so that ``maps`` is
            the map itself.
        maps: float32 (n, H, W), the signed sum over channels.
        normalized: float32 (n, H, W) in [-1, 1]: ``maps`` divided per image by the 99th
            percentile of ``|maps|`` and clipped (for display with a diverging colour scale).
        method: registry name; params: the parameters used (defaults filled in).
        targets: the explained class per query (episode labels).
        contrasts: the contrast class per query, or None when a single logit is explained.
        model_fingerprint: ``model.fingerprint()`` of the explained model.
        episode_id: the episode's id ("" when unknown); query_indices: the queries' positions in
            the episode (or in the batch when no episode was given).
        explained: float32 (n,), the explained quantity at the input (logit or logit difference).
    """

    attributions: np.ndarray
    maps: np.ndarray
    normalized: np.ndarray
    method: str
    params: dict
    targets: tuple[int, ...]
    contrasts: tuple[int, ...] | None
    model_fingerprint: str
    episode_id: str = ""
    query_indices: tuple[int, ...] = ()
    explained: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.maps)

    def to_dict(self) -> dict:
        """The provenance (no arrays), JSON-serialisable."""
        import captum

        return {
            "method": self.method,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "targets": list(self.targets),
            "contrasts": None if self.contrasts is None else list(self.contrasts),
            "model_fingerprint": self.model_fingerprint,
            "episode_id": self.episode_id,
            "query_indices": list(self.query_indices),
            "explained": [float(v) for v in self.explained],
            "shape": list(self.attributions.shape),
            "captum_version": captum.__version__,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"<array {tuple(value.shape)}>"
    return repr(value)


def normalize_maps(maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """(n, H, W) signed maps -> (n, H, W) in [-1, 1], scaled per image by a high percentile of |map|.

    A percentile rather than the maximum keeps one extreme pixel from washing out the display.
    An all-zero map stays zero.
    """
    flat = np.abs(maps.reshape(len(maps), -1))
    scale = np.percentile(flat, percentile, axis=1) if flat.shape[1] else np.zeros(len(maps))
    scale = np.where(scale > 0, scale, flat.max(axis=1, initial=0.0))
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(maps / scale[:, None, None], -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the explained quantity


class ExplainedOutput(nn.Module):
    """Wraps a fitted few-shot model so that forward returns the explained quantity (n, 1).

    ``weights`` (n, n_way) is passed as an additional forward argument, one row per query:
    +1 at the target, -1 at the contrast (if any). Captum repeats additional forward arguments
    together with the inputs (integration steps, noise samples, perturbations), so each expanded
    row keeps its own query's target.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return (logits * weights.to(logits.dtype)).sum(dim=1, keepdim=True)


@contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's informational warnings about hooks it sets and removes itself."""
    with warnings.catch_warnings():
        for text in ("Setting forward, backward hooks", "Input Tensor .* did not already require gradients",
                     "Setting backward hooks on ReLU"):
            warnings.filterwarnings("ignore", message=text, category=UserWarning)
        yield


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for the block (Captum draws noise and baselines from the global
    generators) and restore their previous states afterwards, so callers' random streams are untouched."""
    import random

    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a model in eval mode and restore its train/eval state afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


#: images per forward/backward pass when internal_batch_size is not given. Queries are explained in
#: chunks so that a pass (queries x integration steps, noise samples or perturbations) stays near
#: this size: on CPU the time per image grows with the batch (the first block's full-resolution
#: activations of 16 images of 64x64 fit the L3 cache, of 64 images they do not; 50-step IG of one
#: 64x64 query takes ~180 ms in passes of 16 against ~250 ms in one pass of 50 on the 2-core test
#: machine), and memory stays bounded.
DEFAULT_INTERNAL_BATCH = 16


def _images_per_query(method: str, params: dict) -> int:
    """How many images one query becomes in one Captum pass (for chunking)."""
    if method == "integrated_gradients":
        return int(params["n_steps"])
    if method == "smoothgrad_ig":
        return int(params["n_steps"]) * int(params.get("nt_samples_batch_size") or params["nt_samples"])
    if method == "smoothgrad":
        return int(params.get("nt_samples_batch_size") or params["nt_samples"])
    if method == "gradient_shap":
        return int(params["n_samples"])
    if method in ("occlusion", "feature_ablation"):
        return int(params["perturbations_per_eval"])
    if method == "deeplift":
        return 2
    return 1

#: explain with a fast copy of the backbone (BatchNorm folded into the convolutions, channels-last
#: memory). Same function up to float rounding; set False to run Captum on the model as it is.
OPTIMIZE = True
_FAST_BACKBONES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()


def _state_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer steps,
    load_state_dict and BatchNorm statistics all bump the tensors' version counters)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def _fold_batchnorm(module: nn.Module) -> None:
    """In place: every Conv2d directly followed by an eval-mode BatchNorm2d in a Sequential becomes
    one Conv2d with a bias; the BatchNorm becomes Identity (module names stay the same)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()


def fast_backbone(backbone: nn.Module) -> nn.Module:
    """An eval-mode copy of the backbone with BatchNorm folded and channels-last weights, cached
    until the backbone's weights change."""
    key = _state_key(backbone)
    cached = _FAST_BACKBONES.get(backbone)
    if cached is not None and cached[0] == key:
        return cached[1]
    fast = copy.deepcopy(backbone).eval()
    with torch.no_grad():
        _fold_batchnorm(fast)
    fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    _FAST_BACKBONES[backbone] = (key, fast)
    return fast


def explanation_model(model: nn.Module) -> nn.Module:
    """The model to hand to Captum: with ``OPTIMIZE``, a shallow copy sharing the support state and
    every submodule except the backbone, which is replaced by ``fast_backbone``."""
    backbone = getattr(model, "backbone", None)
    if not OPTIMIZE or not isinstance(backbone, nn.Module):
        return model
    twin = copy.copy(model)
    twin._modules = dict(model._modules)  # a new dict: the original keeps its own backbone
    twin._modules["backbone"] = fast_backbone(backbone)
    twin.train(False)
    return twin


def _selection_weights(targets: Sequence[int], contrasts: Sequence[int] | None, n_way: int) -> torch.Tensor:
    w = torch.zeros(len(targets), n_way)
    w[torch.arange(len(targets)), torch.as_tensor(list(targets))] = 1.0
    if contrasts is not None:
        w[torch.arange(len(targets)), torch.as_tensor(list(contrasts))] -= 1.0
    return w


def _resolve_classes(spec: Any, logits: torch.Tensor, what: str, exclude: Sequence[int] | None = None) -> list[int]:
    """Turn a target/contrast spec into one episode label per query."""
    n, n_way = logits.shape
    if isinstance(spec, str):
        if spec == "predicted":
            return logits.argmax(dim=1).tolist()
        if spec == "runner_up":
            masked = logits.clone()
            if exclude is not None:
                masked[torch.arange(n), torch.as_tensor(list(exclude))] = -math.inf
                return masked.argmax(dim=1).tolist()
            return masked.topk(2, dim=1).indices[:, 1].tolist()
        raise ModelError(f"{what}={spec!r} is not understood; give 'predicted', 'runner_up', an episode "
                         f"label 0..{n_way - 1} or one label per query")
    if isinstance(spec, (int, np.integer)):
        labels = [int(spec)] * n
    else:
        labels = [int(v) for v in np.asarray(spec).reshape(-1)]
        if len(labels) != n:
            raise ModelError(f"{what} has {len(labels)} labels for {n} queries; give one label per query "
                             "or a single label for all")
    bad = sorted({y for y in labels if not 0 <= y < n_way})
    if bad:
        raise EpisodeError(f"{what} class(es) {bad} are not in this episode; valid episode labels are "
                           f"0..{n_way - 1}")
    return labels


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: registry name.
        run: ``run(ctx, **params) -> (n, C, H, W) tensor``; ``ctx`` is an ``_Context``.
        defaults: default parameters (a user's ``**params`` override them).
        needs_gradients: False for perturbation methods (occlusion, feature ablation).
        layer_method: True when the method uses a backbone layer (``layer=`` applies).
        description: one line for menus.
    """

    name: str
    run: Callable[..., torch.Tensor]
    defaults: dict
    needs_gradients: bool = True
    layer_method: bool = False
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register(name: str, defaults: dict | None = None, needs_gradients: bool = True,
             layer_method: bool = False, description: str = "") -> Callable:
    """Decorator adding ``run(ctx, **params)`` to the registry under ``name``."""

    def deco(fn: Callable) -> Callable:
        METHODS[name] = MethodSpec(name, fn, dict(defaults or {}), needs_gradients, layer_method, description)
        return fn

    return deco


def list_methods() -> list[str]:
    """Names of the registered attribution methods."""
    return sorted(METHODS)


@dataclass
class _Context:
    """What a registry entry needs: the wrapped forward, inputs, the per-query weights, the layer."""

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
        return make_baseline(self.inputs, spec)


def make_baseline(inputs: torch.Tensor, spec: Any) -> torch.Tensor | float:
    """A reference image per query: "zeros" (black), "mean" (each image's mean intensity per channel),
    "blur" (a strong Gaussian blur of each image), a number, or a tensor broadcastable to the inputs."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    if isinstance(spec, torch.Tensor):
        return spec.to(inputs.dtype)
    if isinstance(spec, np.ndarray):
        return torch.from_numpy(spec).to(inputs.dtype)
    if spec == "zeros":
        return torch.zeros_like(inputs)
    if spec == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    if spec == "blur":
        return _gaussian_blur(inputs, sigma=max(inputs.shape[-1], inputs.shape[-2]) / 8)
    raise ModelError(f"unknown baseline {spec!r}; use 'zeros', 'mean', 'blur', a number or a tensor")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    y = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    y = F.conv2d(y, k[radius - pad_w: radius + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, pad_h, pad_h), mode="reflect")
    return F.conv2d(y, k[radius - pad_h: radius + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _spread_layer_map(cam: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(n, 1, h, w) layer map -> (n, C, H, W): upsampled bilinearly, shared evenly by the channels."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode="bilinear")
    return (up / inputs.shape[1]).expand(-1, inputs.shape[1], -1, -1)


def grid_mask(height: int, width: int, patch: int) -> torch.Tensor:
    """(1, 1, H, W) int64 feature mask of square patches (the last row/column may be smaller)."""
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    n_cols = (width + patch - 1) // patch
    return (rows[:, None] * n_cols + cols[None, :])[None, None]


def superpixel_mask(images: torch.Tensor, n_segments: int = 64, compactness: float = 10.0,
                    iterations: int = 5) -> torch.Tensor:
    """(n, 1, H, W) int64 superpixels: a small SLIC-style clustering on (intensity, position).

    Cluster centres start on a regular grid; each pixel joins the nearest centre in a combined
    distance ``d_colour^2 + (compactness * d_space / step)^2`` (colour in 0..1 scaled by 10),
    restricted to centres within two grid steps; centres move to their members' means. Empty
    clusters are dropped and labels renumbered 0..k-1 per image.
    """
    n, c, h, w = images.shape
    side = max(1, int(round(math.sqrt(n_segments))))
    step = max(h, w) / side
    ys = (torch.arange(side, dtype=torch.float32) + 0.5) * h / side
    xs = (torch.arange(side, dtype=torch.float32) + 0.5) * w / side
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)  # (P, 2)
    out = torch.empty(n, 1, h, w, dtype=torch.long)
    for i in range(n):
        col = images[i].reshape(c, -1).T * 10.0  # (P, C)
        centres_pos = torch.stack([cy.reshape(-1), cx.reshape(-1)], 1)  # (K, 2)
        idx = (centres_pos[:, 0].long().clamp(0, h - 1) * w + centres_pos[:, 1].long().clamp(0, w - 1))
        centres_col = col[idx]
        for _ in range(iterations):
            d_space = torch.cdist(pos, centres_pos) / step
            d = torch.cdist(col, centres_col) ** 2 + (compactness / 10.0 * d_space) ** 2
            d = d.masked_fill(d_space > 2.0, math.inf)
            lab = d.argmin(1)
            onehot = F.one_hot(lab, len(centres_pos)).float()
            counts = onehot.sum(0)
            keep = counts > 0
            centres_pos = torch.where(keep[:, None], onehot.T @ pos / counts.clamp(min=1)[:, None], centres_pos)
            centres_col = torch.where(keep[:, None], onehot.T @ col / counts.clamp(min=1)[:, None], centres_col)
        _, lab = torch.unique(lab, return_inverse=True)
        out[i, 0] = lab.reshape(h, w)
    return out


# ----------------------------------------------------------------------------- gradient methods


@register("saliency", {"abs": False}, description="plain gradient of the explained logit (signed unless abs=True)")
def _saliency(ctx: _Context, abs: bool) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(ctx.forward).attribute(ctx.inputs, target=0, abs=abs, additional_forward_args=ctx.args)


@register("input_x_gradient", {}, description="input times gradient")
def _input_x_gradient(ctx: _Context) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)


@register("integrated_gradients", {"n_steps": 50, "method": "gausslegendre", "baselines": "zeros"},
          description="Integrated Gradients from a baseline image (black by default)")
def _integrated_gradients(ctx: _Context, n_steps: int, method: str, baselines: Any) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(ctx.forward).attribute(
        ctx.inputs, baselines=ctx.baseline(baselines), target=0, additional_forward_args=ctx.args,
        n_steps=n_steps, method=method, internal_batch_size=ctx.pass_size)


@register("gradient_shap", {"n_samples": 20, "stdevs": 0.1, "baseline_levels": (0.0, 0.25, 0.5, 0.75, 1.0)},
          description="GradientSHAP: expected gradients over noisy inputs and uniform-intensity baselines")
def _gradient_shap(ctx: _Context, n_samples: int, stdevs: float, baseline_levels: Sequence[float]) -> torch.Tensor:
    from captum.attr import GradientShap

    shape = ctx.inputs.shape[1:]
    baselines = torch.stack([torch.full(shape, float(v)) for v in baseline_levels])
    # GradientShap draws noise and path points from the torch and numpy global generators (seeded by explain)
    return GradientShap(ctx.forward).attribute(ctx.inputs, baselines=baselines, target=0, n_samples=n_samples,
                                               stdevs=stdevs, additional_forward_args=ctx.args)


@register("deeplift", {"baselines": "zeros"}, description="DeepLIFT (rescale rule) from a baseline image")
def _deeplift(ctx: _Context, baselines: Any) -> torch.Tensor:
    from captum.attr import DeepLift

    return DeepLift(ctx.forward).attribute(ctx.inputs, baselines=ctx.baseline(baselines), target=0,
                                           additional_forward_args=ctx.args)


@register("guided_backprop", {}, description="Guided Backpropagation (ReLU units pass positive gradients only)")
def _guided_backprop(ctx: _Context) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)


@register("gradcam", {"relu_attributions": False}, layer_method=True,
          description="Grad-CAM on a backbone layer, upsampled to the input size (signed; "
                      "relu_attributions=True for the classic positive-only map)")
def _gradcam(ctx: _Context, relu_attributions: bool) -> torch.Tensor:
    from captum.attr import LayerGradCam

    cam = LayerGradCam(ctx.forward, ctx.layer).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args,
                                                         relu_attributions=relu_attributions)
    return _spread_layer_map(cam, ctx.inputs)


@register("guided_gradcam", {"relu_attributions": True}, layer_method=True,
          description="Guided Grad-CAM: Guided Backprop times the upsampled Grad-CAM map")
def _guided_gradcam(ctx: _Context, relu_attributions: bool) -> torch.Tensor:
    from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam

    # Captum's GuidedGradCam always keeps only the positive part of the CAM; with distance logits
    # the whole CAM can be negative, so the choice is left to the user (default: the classic map)
    cam = LayerGradCam(ctx.forward, ctx.layer).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args,
                                                         relu_attributions=relu_attributions)
    guided = GuidedBackprop(ctx.forward).attribute(ctx.inputs, target=0, additional_forward_args=ctx.args)
    return guided * LayerAttribution.interpolate(cam, tuple(ctx.inputs.shape[2:]), interpolate_mode="bilinear")


def _noise_tunnel(ctx: _Context, base: Any, nt_type: str, nt_samples: int, stdevs: float,
                  nt_samples_batch_size: int | None, **kwargs) -> torch.Tensor:
    from captum.attr import NoiseTunnel

    # noise comes from the global generators, seeded by explain() and restored afterwards
    return NoiseTunnel(base).attribute(ctx.inputs, nt_type=nt_type, nt_samples=nt_samples, stdevs=stdevs,
                                       nt_samples_batch_size=nt_samples_batch_size, target=0,
                                       additional_forward_args=ctx.args, **kwargs)


@register("smoothgrad", {"nt_type": "smoothgrad", "nt_samples": 16, "stdevs": 0.15, "nt_samples_batch_size": None},
          description="SmoothGrad: gradients averaged over noisy copies (NoiseTunnel over Saliency)")
def _smoothgrad(ctx: _Context, nt_type: str, nt_samples: int, stdevs: float,
                nt_samples_batch_size: int | None) -> torch.Tensor:
    from captum.attr import Saliency

    return _noise_tunnel(ctx, Saliency(ctx.forward), nt_type, nt_samples, stdevs, nt_samples_batch_size, abs=False)


@register("smoothgrad_ig", {"nt_type": "smoothgrad", "nt_samples": 8, "stdevs": 0.15, "nt_samples_batch_size": None,
                            "n_steps": 16, "baselines": "zeros"},
          description="NoiseTunnel over Integrated Gradients")
def _smoothgrad_ig(ctx: _Context, nt_type: str, nt_samples: int, stdevs: float, nt_samples_batch_size: int | None,
                   n_steps: int, baselines: Any) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    base = ctx.baseline(baselines)
    if isinstance(base, torch.Tensor) and base.shape[0] == ctx.inputs.shape[0] and base.shape[0] > 1:
        # NoiseTunnel repeats the inputs but not the baselines: use one reference for all queries
        if not torch.equal(base, base[:1].expand_as(base)):
            raise ModelError("smoothgrad_ig needs a baseline shared by all queries ('zeros' or a number)")
        base = base[:1]
    return _noise_tunnel(ctx, IntegratedGradients(ctx.forward), nt_type, nt_samples, stdevs, nt_samples_batch_size,
                         baselines=base, n_steps=n_steps,
                         internal_batch_size=ctx.pass_size)


# ------------------------------------------------------------------------- perturbation methods


def _perturbation_forward(ctx: _Context) -> nn.Module:
    """The forward for perturbation methods: with ``OPTIMIZE`` and a Conv-4, one that recomputes
    only the part of each activation a local perturbation can change (same values; see
    ``fsl_xai.explain.incremental``)."""
    from . import incremental

    if OPTIMIZE and incremental.supports(ctx.forward.model):
        return incremental.IncrementalForward(ctx.forward.model, ctx.inputs.detach())
    return ctx.forward


def _default_patch(inputs: torch.Tensor) -> int:
    return max(2, min(inputs.shape[2:]) // 8)


@register("occlusion", {"window": None, "stride": None, "baselines": 0.0, "perturbations_per_eval": 64},
          needs_gradients=False,
          description="Occlusion: the drop of the explained logit when a sliding square is blanked")
def _occlusion(ctx: _Context, window: int | None, stride: int | None, baselines: Any,
               perturbations_per_eval: int) -> torch.Tensor:
    from captum.attr import Occlusion

    window = window or _default_patch(ctx.inputs)
    stride = stride or max(1, window // 2)
    c = ctx.inputs.shape[1]
    base = ctx.baseline(baselines)
    return Occlusion(_perturbation_forward(ctx)).attribute(ctx.inputs, sliding_window_shapes=(c, window, window),
                                            strides=(c, stride, stride), baselines=base, target=0,
                                            additional_forward_args=ctx.args,
                                            perturbations_per_eval=perturbations_per_eval)


@register("feature_ablation", {"mask": "grid", "patch": None, "n_segments": 64, "baselines": 0.0,
                               "perturbations_per_eval": 64},
          needs_gradients=False,
          description="Feature Ablation over a grid of patches or over superpixels (mask='superpixels')")
def _feature_ablation(ctx: _Context, mask: Any, patch: int | None, n_segments: int, baselines: Any,
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
    return FeatureAblation(_perturbation_forward(ctx)).attribute(ctx.inputs, baselines=ctx.baseline(baselines), target=0,
                                                  additional_forward_args=ctx.args, feature_mask=fmask,
                                                  perturbations_per_eval=perturbations_per_eval)


# --------------------------------------------------------------------------------------------
# entry points


def conv_layers(model: nn.Module) -> list[str]:
    """Names (relative to ``model.backbone``) of layers whose output is a spatial map: the backbone's
    blocks and every Conv2d."""
    backbone = model.backbone
    names = []
    for name, module in backbone.named_modules():
        if not name:
            continue
        if isinstance(module, nn.Conv2d) or (name.count(".") == 1 and name.startswith("blocks.")):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """A backbone layer by name ("blocks.3", "backbone.blocks.3") or module; default the backbone's
    ``default_cam_layer``."""
    if isinstance(layer, nn.Module):
        return layer
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ModelError(f"{type(model).__name__} has no backbone; layer methods need model.backbone")
    name = layer if layer is not None else getattr(backbone, "default_cam_layer", None)
    if name is None:
        raise ModelError(f"the backbone has no default_cam_layer; pass layer= one of {conv_layers(model)}")
    name = name[len("backbone."):] if name.startswith("backbone.") else name
    modules = dict(backbone.named_modules())
    if name not in modules or not name:
        raise ModelError(f"unknown layer {layer!r}; the backbone's convolutional layers are {conv_layers(model)}")
    return modules[name]


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.backbone.named_modules():
        if module is layer:
            return name
    raise ModelError("the given layer module is not part of model.backbone; pass a layer name such as 'blocks.3'")


def _as_images(query_images: Any) -> torch.Tensor:
    if isinstance(query_images, np.ndarray):
        query_images = torch.from_numpy(query_images)
    if not isinstance(query_images, torch.Tensor):
        raise ModelError(f"query_images must be a tensor or array (n, C, H, W), got {type(query_images).__name__}")
    if query_images.ndim == 3:
        query_images = query_images[None]
    if query_images.ndim != 4 or query_images.shape[0] == 0:
        raise ModelError(f"query_images must have shape (n, C, H, W) with n >= 1, got {tuple(query_images.shape)}")
    x = query_images.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise ModelError("query_images contain NaN or infinite pixels; repair or drop those images")
    return x


def explain(model: nn.Module, query_images: torch.Tensor | np.ndarray, method: str = "integrated_gradients",
            target: Any = "predicted", contrast: Any = None, seed: int = 0, episode_id: str = "",
            layer: str | nn.Module | None = None, internal_batch_size: int | None = None,
            query_indices: Sequence[int] | None = None, **params) -> AttributionMap:
    """Attribute the decision of a fitted few-shot model for a batch of queries to their pixels.

    Args:
        model: a few-shot model already fit on the support set (``prototypes_`` set).
        query_images: (n, C, H, W) (or one image (C, H, W)), values as the model expects.
        method: a name from ``list_methods()``.
        target: "predicted" (the top class of each query), an episode label, or one label per query.
        contrast: None (explain ``logit[target]``), "runner_up" (the best class other than the
            target), an episode label or one per query: explain ``logit[target] - logit[contrast]``.
        seed: seeds every random draw (noise tunnels, GradientSHAP); same seed -> same maps.
        episode_id: recorded in the result.
        layer: backbone layer for Grad-CAM methods (name like "blocks.2"; default the backbone's
            ``default_cam_layer``).
        internal_batch_size: about how many images go through the network in one pass (queries x
            steps / samples / perturbations); queries are explained in chunks of that size
            (default ``DEFAULT_INTERNAL_BATCH``). Results do not depend on it, except for the random
            draws of noise methods.
        query_indices: the queries' positions in their episode (recorded; default 0..n-1).
        **params: method parameters overriding the registry defaults (see ``METHODS[name].defaults``).

    Returns:
        An ``AttributionMap`` with maps at the input's size.

    Raises:
        ModelError: unknown method, layer or parameter; unfitted model; gradient method on a model
            without gradients; bad images.
        EpisodeError: a target or contrast class outside the episode.
    """
    if method not in METHODS:
        raise ModelError(f"unknown attribution method {method!r}; choose one of {list_methods()}")
    spec = METHODS[method]
    if getattr(model, "prototypes_", None) is None:
        raise ModelError(f"{type(model).__name__} has no support set yet; call model.fit_support(images, labels) "
                         "(or use explain_episode) before explaining")
    if spec.needs_gradients and not getattr(model, "differentiable", True):
        perturb = [n for n, s in METHODS.items() if not s.needs_gradients]
        raise ModelError(f"method {method!r} needs gradients but {type(model).__name__} is not differentiable "
                         f"with respect to the query pixels; use a perturbation method: {sorted(perturb)}")
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise ModelError(f"method {method!r} has no parameter(s) {unknown}; its parameters are "
                         f"{sorted(spec.defaults)}")
    if getattr(model, "refined_prototypes_", "absent") is None and getattr(model, "iterations", 0):
        # a transductive model refines its prototypes with whatever batch it is given; Captum's
        # interpolated and perturbed copies would take part in that refinement
        raise ModelError(f"{type(model).__name__} refines its prototypes with the query batch; call "
                         "model.fit_queries(episode_query_images) first to freeze them (explain_episode does this)")
    inputs = _as_images(query_images)
    n = len(inputs)
    if query_indices is None:
        query_indices = tuple(range(n))
    else:
        query_indices = tuple(int(i) for i in query_indices)
        if len(query_indices) != n:
            raise ModelError(f"{len(query_indices)} query indices for {n} query images")
    # a layer given to a pixel method is checked but unused, so one call can loop over all methods
    layer_module = resolve_layer(model, layer) if spec.layer_method or layer is not None else None
    if not spec.layer_method:
        layer_module = None
    if spec.needs_gradients:
        inputs.requires_grad_(True)
    run_params = {**spec.defaults, **params}

    with eval_mode(model), seeded(seed), quiet_captum():
        runner = explanation_model(model)
        if runner is not model:
            inputs_run = inputs.detach().contiguous(memory_format=torch.channels_last)
            inputs_run.requires_grad_(spec.needs_gradients)
            if layer_module is not None:
                layer_module = resolve_layer(runner, _layer_name(model, layer_module))
        else:
            inputs_run = inputs
        with torch.no_grad():
            logits = runner(inputs_run)
            if runner is not model and logits.shape[1] > 1:
                # the fast copy agrees with the model to float rounding; near-ties are settled by the
                # model itself so that "predicted" is always the model's own prediction
                top = logits.topk(2, dim=1).values
                if ((top[:, 0] - top[:, 1]) <= 1e-4 * (top[:, 0].abs() + 1)).any():
                    logits = model(inputs)
        targets = _resolve_classes(target, logits, "target")
        contrasts = None if contrast is None else _resolve_classes(contrast, logits, "contrast", exclude=targets)
        if contrasts is not None and any(t == c for t, c in zip(targets, contrasts)):
            raise ModelError("the contrast class equals the target class for some queries; a contrast must be "
                             "another class (or use contrast='runner_up')")
        weights = _selection_weights(targets, contrasts, logits.shape[1])
        explained = (logits * weights).sum(1)
        budget = internal_batch_size or DEFAULT_INTERNAL_BATCH
        chunk = max(1, budget // _images_per_query(method, run_params))
        forward = ExplainedOutput(runner)
        parts = []
        for start in range(0, n, chunk):
            part = inputs_run[start:start + chunk]
            if spec.needs_gradients:
                part = part.detach().requires_grad_(True)
            ctx = _Context(forward, part, weights[start:start + chunk], layer_module, internal_batch_size, seed,
                           slice(start, start + chunk))
            parts.append(spec.run(ctx, **run_params).detach())
        attr = torch.cat(parts)

    inputs = inputs.detach()
    attr = attr.detach().to(torch.float32)
    if attr.shape != inputs.shape:
        raise ModelError(f"method {method!r} returned shape {tuple(attr.shape)} for inputs {tuple(inputs.shape)}")
    attributions = np.ascontiguousarray(attr.numpy())
    maps = attributions.sum(axis=1)
    recorded = dict(run_params)
    if spec.layer_method:
        if layer is None:
            recorded["layer"] = getattr(model.backbone, "default_cam_layer", None)
        else:
            recorded["layer"] = layer if isinstance(layer, str) else type(layer).__name__
    if internal_batch_size is not None:
        recorded["internal_batch_size"] = internal_batch_size
    recorded["seed"] = seed
    recorded["target_spec"] = target if isinstance(target, (str, int)) else "per-query"
    recorded["contrast_spec"] = contrast if contrast is None or isinstance(contrast, (str, int)) else "per-query"
    return AttributionMap(
        attributions=attributions, maps=maps, normalized=normalize_maps(maps), method=method, params=recorded,
        targets=tuple(targets), contrasts=None if contrasts is None else tuple(contrasts),
        model_fingerprint=model.fingerprint(), episode_id=episode_id, query_indices=query_indices,
        explained=explained.numpy().astype(np.float32),
    )


def explain_episode(model: nn.Module, images, episode, query_indices: int | Sequence[int] | None = None,
                    method: str = "integrated_gradients", target: Any = "predicted", contrast: Any = None,
                    seed: int = 0, layer: str | nn.Module | None = None, internal_batch_size: int | None = None,
                    **params) -> AttributionMap:
    """Fit the model on an episode's support set and explain some of its queries.

    Args:
        model: a few-shot model (its support state is replaced by the episode's).
        images: the ``ImageSet`` the episode was drawn from.
        episode: an ``Episode``.
        query_indices: positions in ``episode.query_ids`` (an int, a list, or None for all).
        target: as in ``explain``, plus "true" for each query's own label.
        Other arguments as in ``explain``.

    Raises:
        EpisodeError: a query index out of range, an unknown true label, a class outside the episode.
    """
    episode.check_dataset(images)
    if query_indices is None:
        qidx = list(range(episode.n_query))
    elif isinstance(query_indices, (int, np.integer)):
        qidx = [int(query_indices)]
    else:
        qidx = [int(i) for i in query_indices]
    if not qidx:
        raise EpisodeError("no query chosen; give at least one query index")
    bad = [i for i in qidx if not 0 <= i < episode.n_query]
    if bad:
        raise EpisodeError(f"query index {bad} out of range; this episode has {episode.n_query} queries "
                           f"(indices 0..{episode.n_query - 1})")
    support, support_labels, queries, query_labels = episode.tensors(images)
    if isinstance(target, str) and target == "true":
        labels = query_labels[qidx]
        if (labels < 0).any():
            raise EpisodeError("target='true' needs known query labels, but some chosen queries have label -1")
        target = labels.tolist()
    with eval_mode(model):
        model.fit_support(support, support_labels)
        if hasattr(model, "fit_queries") and getattr(model, "iterations", 0):
            model.fit_queries(queries)
    return explain(model, queries[qidx], method=method, target=target, contrast=contrast, seed=seed,
                   episode_id=episode.episode_id, layer=layer, internal_batch_size=internal_batch_size,
                   query_indices=qidx, **params)
