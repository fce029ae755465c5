"""Prototypical Networks (Snell et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import FewShotClassifier


class PrototypicalNetwork(FewShotClassifier):
    """Prototypes are class means; logits are minus the squared Euclidean distance, or a scaled
    cosine similarity with ``distance="cosine"``."""

    name = "protonet"

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", cosine_scale: float = 10.0):
        super().__init__(backbone)
        if distance not in ("euclidean", "cosine"):
            raise ModelError(f"unknown distance {distance!r}; choose 'euclidean' or 'cosine'")
        self.distance = distance
        self.cosine_scale = cosine_scale

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            return self.cosine_scale * F.normalize(query_embeddings, dim=-1) @ F.normalize(prototypes, dim=-1).T
        return super().score(query_embeddings, prototypes)

    def config(self) -> dict:
        return {"model": self.name, "distance": self.distance, "cosine_scale": self.cosine_scale}
