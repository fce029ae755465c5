"""The helpers every explanation module shares: one version of each.

- a fitted episode check (``require_fitted``), the eval-mode and seeding context managers;
- the input check for images (``as_images``);
- the baseline vocabulary (``BASELINES``, ``make_baseline``) used by Integrated Gradients, DeepLIFT,
  occlusion, support attribution and deletion/insertion alike;
- the explained quantity: which classes (``resolve_classes``, ``fitted_classes``), their
  +1/-1 weights (``selection_weights``), and the one wrapper module Captum and the quality metrics
  call (``ExplainedOutput``);
- backbone layers by name (``conv_layers``, ``default_layer``, ``resolve_layer``: the one place a
  default layer is chosen) and which methods a backbone supports (``check_method_backbone``,
  ``method_refusal``, ``refused_methods``).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deferred import defer_captum_visualization
from ..errors import DataError, EpisodeError, ModelError
from ..models import FewShotClassifier, FittedEpisode

defer_captum_visualization()  # Captum is imported on first use; keep matplotlib out of that import

#: images per forward/backward pass when internal_batch_size is not given. Queries are explained in
#: chunks so that a pass (queries x integration steps, noise samples or perturbations) stays near
#: this size: on CPU the time per image grows with the batch (the first block's full-resolution
#: activations of 16 images of 64x64 fit the L3 cache, of 64 images they do not; 50-step IG of one
#: 64x64 query takes ~180 ms in passes of 16 against ~250 ms in one pass of 50 on the 2-core test
#: machine), and memory stays bounded.
DEFAULT_INTERNAL_BATCH = 16

#: the named baselines (reference images) accepted everywhere; a number or an array works too
BASELINES = ("zeros", "mean", "blur")


# ------------------------------------------------------------------------------------------ fitted episodes
def require_fitted(fitted: Any, what: str) -> FittedEpisode:
    """Return ``fitted`` if it is a :class:`FittedEpisode`, else raise ModelError saying how to get one."""
    if isinstance(fitted, FittedEpisode):
        return fitted
    if isinstance(fitted, FewShotClassifier):
        raise ModelError(f"{what} needs a fitted episode, got the model {type(fitted).__name__} itself; "
                         "call fitted = model.fit(support_images, support_labels) and pass fitted")
    raise ModelError(f"{what} needs a fitted episode (fitted = model.fit(support_images, support_labels)), "
                     f"got {type(fitted).__name__}")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a module in eval mode (BatchNorm with running statistics, no dropout) and give every
    submodule its own train/eval flag back afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was_training in flags:
            m.training = was_training


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, numpy and random for the block (Captum draws noise and baselines from the global
    generators) and restore their previous states afterwards, so callers' random streams are untouched."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        np.random.seed(int(seed) % (2 ** 32))
        random.seed(int(seed))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's informational warnings about hooks it sets and removes itself."""
    with warnings.catch_warnings():
        for text in ("Setting forward, backward hooks", "Input Tensor .* did not already require gradients",
                     "Setting backward hooks on ReLU"):
            warnings.filterwarnings("ignore", message=text, category=UserWarning)
        yield


# ------------------------------------------------------------------------------------------ inputs
def as_images(images: Any, what: str = "query_images", single: bool = False) -> torch.Tensor:
    """A detached float32 batch (n, C, H, W) from a tensor or array (n, C, H, W) or one image (C, H, W).

    Args:
        images: the images.
        what: the argument's name, for error messages.
        single: require exactly one image.

    Raises:
        DataError: not an array, wrong shape, empty, NaN or infinite pixels.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what} must be a tensor or array (n, C, H, W), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"{what} must have shape (n, C, H, W) with n >= 1 (or (C, H, W) for one image), "
                        f"got {tuple(images.shape)}")
    if single and images.shape[0] != 1:
        raise DataError(f"{what} must be one image (C, H, W) or (1, C, H, W), got {tuple(images.shape)}")
    x = images.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite pixels; repair or drop those images first")
    return x


# ------------------------------------------------------------------------------------------ baselines
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) with reflected borders."""
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


def make_baseline(inputs: torch.Tensor, spec: Any, blur_sigma: float | None = None) -> torch.Tensor:
    """Reference images (n, C, H, W) for ``inputs`` (n, C, H, W).

    Args:
        inputs: the images.
        spec: "zeros" (black), "mean" (each image's mean intensity per channel), "blur" (a strong
            Gaussian blur of each image), a number, or a tensor/array broadcastable to the inputs.
        blur_sigma: the blur's width in pixels (default max(H, W) / 8, at least 1).

    Raises:
        DataError: an unknown name or a tensor that does not fit the inputs.
    """
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return torch.full_like(inputs, float(spec))
    if isinstance(spec, (torch.Tensor, np.ndarray)):
        b = torch.as_tensor(spec).to(inputs.dtype)
        try:
            return b.expand_as(inputs).clone()
        except RuntimeError:
            raise DataError(f"a baseline of shape {tuple(b.shape)} does not fit images {tuple(inputs.shape)}; "
                            "give (C, H, W), (1, C, H, W) or (n, C, H, W)") from None
    if spec == "zeros":
        return torch.zeros_like(inputs)
    if spec == "mean":
        return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous()
    if spec == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, max(inputs.shape[2:]) / 8)
        return gaussian_blur(inputs, float(sigma))
    raise DataError(f"unknown baseline {spec!r}; use one of {list(BASELINES)}, a number or a tensor")


def baseline_name(spec: Any) -> str | float:
    """How a baseline is recorded in results: its name or number, else "custom" (an array)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return float(spec)
    return "custom"


# ------------------------------------------------------------------------------------------ explained classes
def _labels(spec: Any, n: int, n_way: int, what: str) -> list[int]:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
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


def resolve_classes(target: Any, contrast: Any, n: int, n_way: int,
                    logits: torch.Tensor | None = None) -> tuple[list[int], list[int] | None]:
    """The explained class of each query, and the contrast class (or None).

    Args:
        target: "predicted" (top class), an episode label, or one label per query.
        contrast: None, "runner_up" (the best class other than the target), an episode label or
            one per query.
        n, n_way: queries and classes.
        logits: (n, n_way), needed for "predicted" and "runner_up".

    Raises:
        ModelError: a spec that is not understood, the wrong number of labels, a contrast equal to
            the target; EpisodeError: a class outside the episode.
    """
    def scores(spec: Any, what: str, allowed: str) -> torch.Tensor | None:
        """The logits when ``spec`` is the named choice ``allowed``; None for explicit labels."""
        if not isinstance(spec, str):
            return None
        if spec != allowed:
            raise ModelError(f"{what}={spec!r} is not understood; give {allowed!r}, an episode label "
                             f"0..{n_way - 1} or one label per query")
        if logits is None:
            raise ModelError(f"{what}={spec!r} needs the model's logits")
        return logits

    by_score = scores(target, "target", "predicted")
    targets = by_score.argmax(1).tolist() if by_score is not None else _labels(target, n, n_way, "target")
    if contrast is None:
        return targets, None
    by_score = scores(contrast, "contrast", "runner_up")
    if by_score is not None:
        if n_way < 2:
            raise ModelError("a contrast needs at least two classes in the episode")
        masked = by_score.clone()
        masked[torch.arange(n), torch.as_tensor(targets)] = -math.inf
        contrasts = masked.argmax(1).tolist()
    else:
        contrasts = _labels(contrast, n, n_way, "contrast")
    if any(t == c for t, c in zip(targets, contrasts, strict=True)):
        raise ModelError("the contrast class equals the target class for some queries; a contrast must be "
                         "another class (or use contrast='runner_up')")
    return targets, contrasts


def fitted_classes(fitted: FittedEpisode, images: torch.Tensor, target: Any, contrast: Any = None,
                   batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``resolve_classes`` for a fitted episode and its query images (n, C, H, W); the logits are
    computed only when a named spec needs them. Returns long tensors (n,) and (n,) or None."""
    logits = None
    if isinstance(target, str) or isinstance(contrast, str):
        with torch.no_grad(), eval_mode(fitted):
            logits = torch.cat([fitted(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    targets, contrasts = resolve_classes(target, contrast, len(images), fitted.n_way, logits)
    return (torch.as_tensor(targets, dtype=torch.long),
            None if contrasts is None else torch.as_tensor(contrasts, dtype=torch.long))


def selection_weights(targets: Sequence[int] | torch.Tensor, contrasts: Sequence[int] | torch.Tensor | None,
                      n_way: int) -> torch.Tensor:
    """(n, n_way) float weights: +1 at each query's target, -1 at its contrast (if any)."""
    rows = torch.arange(len(targets))
    w = torch.zeros(len(targets), n_way)
    w[rows, torch.as_tensor(targets, dtype=torch.long)] = 1.0
    if contrasts is not None:
        w[rows, torch.as_tensor(contrasts, dtype=torch.long)] -= 1.0
    return w


def explained_value(logits: torch.Tensor, weights: torch.Tensor, output: str = "logit") -> torch.Tensor:
    """(n, n_way) logits and weights -> (n,) explained quantity: ``logit[target] - logit[contrast]``,
    or with ``output="probability"`` the same on the softmax probabilities."""
    if output == "probability":
        logits = logits.softmax(-1)
    elif output != "logit":
        raise DataError(f"unknown output {output!r}; use 'logit' or 'probability'")
    # the zero weights add exact zeros, so this is bit for bit the difference of the two entries
    return (logits * weights.to(logits.dtype)).sum(dim=1)


class ExplainedOutput(nn.Module):
    """Wraps a fitted episode so that forward returns the explained quantity (n, 1).

    ``weights`` (n, n_way) is passed as an additional forward argument, one row per query:
    +1 at the target, -1 at the contrast (if any). Captum repeats additional forward arguments
    together with the inputs (integration steps, noise samples, perturbations), so each expanded
    row keeps its own query's target.
    """

    def __init__(self, fitted: FittedEpisode):
        super().__init__()
        self.fitted = fitted

    def forward(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return explained_value(self.fitted(images), weights)[:, None]


# ------------------------------------------------------------------------------------------ layers
def _classifier(owner: FewShotClassifier | FittedEpisode) -> FewShotClassifier:
    return owner.model if isinstance(owner, FittedEpisode) else owner


def conv_layers(owner: FewShotClassifier | FittedEpisode) -> list[str]:
    """Names (relative to the backbone) of layers whose output is a spatial map: for the project's
    backbones, the blocks and every Conv2d; for an external backbone, the layers its dry run found
    (``spatial_layers``: modules with 4-D outputs, ``token_map`` of a ViT, ``output_map``).
    ``owner``: a model or a fitted episode."""
    backbone = _classifier(owner).backbone
    found = getattr(backbone, "spatial_layers", None)
    if isinstance(found, list):
        return list(found)
    names = []
    for name, module in backbone.named_modules():
        if name and (isinstance(module, nn.Conv2d) or (name.count(".") == 1 and name.startswith("blocks."))):
            names.append(name)
    return names


def default_layer(owner: FewShotClassifier | FittedEpisode) -> str:
    """The backbone layer that layer methods (Grad-CAM, Guided Grad-CAM, concept probes) use when
    none is given, relative to the backbone: its ``default_cam_layer`` (an external backbone sets it
    from a dry run: the last module with a spatial map, or a ViT's token map). A backbone without one
    that states its input (``in_channels``, ``image_size``) is run once with hooks to find the last
    module whose output is a map (N, C, h, w) larger than 1x1.

    Raises:
        ModelError: the backbone has no such layer (the message says why and what to do).
    """
    backbone = _classifier(owner).backbone
    layer = getattr(backbone, "default_cam_layer", None)
    if isinstance(layer, str) and layer:
        return layer
    name = getattr(backbone, "backbone_name", type(backbone).__name__)
    reason = getattr(backbone, "no_layer_reason", None)
    if reason:
        raise ModelError(f"backbone {name} has no layer for layer methods (Grad-CAM, concepts, similarity maps): "
                         f"{reason}")
    cin, size = getattr(backbone, "in_channels", None), getattr(backbone, "image_size", None)
    if isinstance(cin, int) and size is not None:
        from ..models.spatial import find_spatial_layers, trace_outputs

        traces, _ = trace_outputs(backbone, torch.zeros(2, cin, *tuple(size)))
        names, _ = find_spatial_layers(traces, 2)
        if names:
            return names[-1]
    raise ModelError(f"backbone {name} has no default layer for layer methods; pass layer= one of "
                     f"{conv_layers(owner)} (a module whose output is a map (N, C, h, w))")


#: methods that replace the backward pass of nonlinearity modules (Captum's module rules)
MODULE_RULE_METHODS = ("deeplift", "guided_backprop", "guided_gradcam")
#: the guided methods and what each map would be where the guided rule changes nothing
GUIDED_METHODS = {"guided_backprop": ("the plain input gradient (saliency with abs=False)",
                                      "saliency (abs=False), smoothgrad or integrated_gradients"),
                  "guided_gradcam": ("Grad-CAM times the plain input gradient",
                                     "gradcam (beside saliency for pixel-level detail)")}
#: activation modules other than nn.ReLU (and its subclasses). Captum's Guided Backprop clamps the
#: gradient only at nn.ReLU modules and passes every other activation's gradient unchanged. Gates
#: (Sigmoid, Hardsigmoid, Softmax, Tanh) are not listed: a ReLU network with squeeze-excitation
#: gates is still guided at each of its rectifiers.
OTHER_ACTIVATIONS = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
                     nn.Hardswish, nn.Hardtanh, nn.Softplus)
#: the module types with a DeepLIFT rule in Captum (``captum.attr._core.deep_lift.SUPPORTED_NON_LINEAR``,
#: Captum 0.7-0.9). Captum matches the exact type, so a subclass of one of them gets no rule either.
DEEPLIFT_RULES = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softmax,
                  nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
#: module types DeepLIFT has no rule for (Captum passes plain gradients through them)
NO_DEEPLIFT_RULE = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU, nn.RReLU,
                    nn.CELU, nn.SELU, nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _backbone_name(backbone: nn.Module) -> str:
    return str(getattr(backbone, "backbone_name", type(backbone).__name__))


def _guided_refusal(method: str, name: str, modules: list[nn.Module]) -> str | None:
    """Why a guided method would not be guided on these modules, or None when it would."""
    others = sorted({type(m).__name__ for m in modules
                     if isinstance(m, OTHER_ACTIVATIONS) and not isinstance(m, nn.ReLU)})
    has_relu = any(isinstance(m, nn.ReLU) for m in modules)
    if has_relu and not others:
        return None
    would_be, instead = GUIDED_METHODS[method]
    if has_relu:
        kinds = f"{', '.join(others)} activations beside its ReLUs, whose gradients would pass unguided"
        result = "a mix of guided and plain gradients"
    elif others:
        kinds = f"{', '.join(others)} activations and no nn.ReLU"
        result = would_be
    else:
        kinds = "no nn.ReLU modules (its activations are functions or of other kinds)"
        result = would_be
    return (f"{method} passes only positive gradients back through nn.ReLU modules (the guided rule changes no "
            f"other activation), and backbone {name} has {kinds}, so the map would be {result}, not a guided "
            f"map; use {instead} instead")


def method_refusal(owner: FewShotClassifier | FittedEpisode, method: str) -> str | None:
    """Why ``method`` cannot give its own answer on this model's backbone (one sentence that says
    what to use instead), or None when it can. See :func:`check_method_backbone`."""
    if method not in MODULE_RULE_METHODS:
        return None
    backbone = _classifier(owner).backbone
    name = _backbone_name(backbone)
    if not getattr(backbone, "hookable", True):
        return (f"{method} rewrites the backward pass of the backbone's activation modules, but backbone {name} "
                "is TorchScript and its modules run inside compiled code; use integrated_gradients, saliency or a "
                "perturbation method (occlusion, feature_ablation), or load the network as a py: factory")
    modules = list(backbone.modules())
    if method in GUIDED_METHODS:
        return _guided_refusal(method, name, modules)
    without = sorted({type(m).__name__ for m in modules if isinstance(m, NO_DEEPLIFT_RULE)
                      or (isinstance(m, DEEPLIFT_RULES) and type(m) not in DEEPLIFT_RULES)})
    if without:
        return (f"deeplift has no rule for {without} in backbone {name} (Captum would pass plain gradients "
                "through them, so the result would not be DeepLIFT); use integrated_gradients or gradient_shap")
    return None


def refused_methods(owner: FewShotClassifier | FittedEpisode, methods: Sequence[str]) -> dict[str, str]:
    """The methods among ``methods`` that this model's backbone refuses, each with its reason (for
    method pickers and ``--methods`` checks: offer or accept only the others)."""
    reasons = {m: method_refusal(owner, m) for m in methods}
    return {m: reason for m, reason in reasons.items() if reason is not None}


def check_method_backbone(owner: FewShotClassifier | FittedEpisode, method: str) -> None:
    """Raise ModelError when ``method`` cannot give its own answer on this backbone, where Captum
    would otherwise return another map under the method's name:

    - a module-rule method (DeepLIFT, Guided Backprop, Guided Grad-CAM) on a backbone whose
      modules no hook reaches (TorchScript);
    - Guided Backprop or Guided Grad-CAM on any backbone, built-in or external, whose activations
      are not all nn.ReLU (the built-in ResNet-12's LeakyReLU, a ViT's GELU, functional
      activations): the guided rule changes only nn.ReLU modules, so the map would be the plain
      gradient (saliency) or Grad-CAM times it;
    - DeepLIFT through modules it has no rule for (GELU, SiLU, attention; LeakyReLU, ELU and the
      other rules Captum has are fine).
    """
    reason = method_refusal(owner, method)
    if reason is not None:
        raise ModelError(reason)


def resolve_layer(owner: FewShotClassifier | FittedEpisode,
                  layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """A layer of a model or fitted episode -> (its name relative to the model, the module).

    Args:
        owner: a FewShotClassifier or a FittedEpisode.
        layer: a name relative to the model ("backbone.blocks.2") or to its backbone ("blocks.2"),
            a module of the model, or None for :func:`default_layer`.

    Raises:
        ModelError: an unknown name, a foreign module, or no default layer.
    """
    model = _classifier(owner)
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer and name:
                return name, module
        raise ModelError("the given layer module is not part of this model; pass a layer name such as 'blocks.3'")
    if layer is None:
        layer = default_layer(model)
    for candidate in (layer, f"backbone.{layer}"):
        if candidate and candidate in named:
            return candidate, named[candidate]
    raise ModelError(f"unknown layer {layer!r}; the backbone's spatial layers are {conv_layers(model)}")
