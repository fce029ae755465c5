"""Few-shot models and backbones, by name."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ModelError
from .backbones import BACKBONES, list_backbones, make_backbone
from .base import FewShotClassifier
from .protonet import PrototypicalNetwork

MODELS: dict[str, Callable[..., FewShotClassifier]] = {
    "protonet": PrototypicalNetwork,
}


def list_models() -> list[str]:
    return sorted(MODELS)


def make_model(name: str, backbone: nn.Module, **kwargs) -> FewShotClassifier:
    """Build a registered few-shot model around a backbone."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {list_models()}")
    return MODELS[name](backbone, **kwargs)


__all__ = ["BACKBONES", "MODELS", "FewShotClassifier", "PrototypicalNetwork", "list_backbones",
           "list_models", "make_backbone", "make_model"]
