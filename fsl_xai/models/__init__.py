"""Few-shot models and backbones, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ModelError
from .backbones import BACKBONES, list_backbones, make_backbone
from .base import FewShotClassifier
from .finetune import FineTuneClassifier
from .fitted import FittedEpisode
from .matching import MatchingNetwork
from .protonet import PrototypicalNetwork
from .simpleshot import SimpleShot
from .transductive import TransductivePrototypes

MODELS: dict[str, Callable[..., FewShotClassifier]] = {
    "protonet": PrototypicalNetwork,
    "simpleshot": SimpleShot,
    "matching": MatchingNetwork,
    "finetune": FineTuneClassifier,
    "transductive": TransductivePrototypes,
}


def list_models() -> list[str]:
    return sorted(MODELS)


def make_model(name: str, backbone: nn.Module, **kwargs) -> FewShotClassifier:
    """Build a registered few-shot model around a backbone; ``kwargs`` are the model's options
    (``model.config()`` minus the ``model`` key rebuilds the same model)."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of {list_models()}")
    try:
        return MODELS[name](backbone, **kwargs)
    except TypeError as exc:
        raise ModelError(f"bad options for model {name!r}: {exc}") from exc


__all__ = ["BACKBONES", "MODELS", "FewShotClassifier", "FineTuneClassifier", "FittedEpisode", "MatchingNetwork",
           "PrototypicalNetwork", "SimpleShot", "TransductivePrototypes", "list_backbones",
           "list_models", "make_backbone", "make_model"]
