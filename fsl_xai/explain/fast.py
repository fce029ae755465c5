"""A faster copy of a fitted episode for explaining: the same function, computed with a backbone
whose BatchNorm layers are folded into the convolutions and whose weights are channels-last.

Explanations and quality metrics run thousands of forward passes through the same backbone; the
folded copy is built once per set of weights (and rebuilt when they change) and never touches
the caller's model or fitted episode.
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from ..models import FittedEpisode

#: explain with a fast copy of the backbone (BatchNorm folded into the convolutions, channels-last
#: memory). Same function up to float rounding; set False to run Captum on the fitted episode as it is.
OPTIMIZE = True
_FAST_BACKBONES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


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
    # torch's stubs leave out Module.to's memory_format keyword, which it accepts
    fast = fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for p in fast.parameters():
        p.requires_grad_(False)
    _FAST_BACKBONES[backbone] = (key, fast)
    return fast


def explanation_model(fitted: FittedEpisode) -> FittedEpisode:
    """The fitted episode to hand to Captum: with ``OPTIMIZE``, a shallow twin that shares the
    support state and every submodule except the backbone, which is ``fast_backbone``'s copy.
    Neither ``fitted`` nor its model is changed."""
    if not OPTIMIZE:
        return fitted
    model = fitted.model
    twin_model = copy.copy(model)
    twin_model._modules = dict(model._modules)  # a new dict: the original keeps its own backbone
    twin_model._modules["backbone"] = fast_backbone(model.backbone)
    twin_model.training = False
    twin = copy.copy(fitted)
    twin._modules = dict(fitted._modules)
    twin._modules["model"] = twin_model
    twin.training = False
    return twin
