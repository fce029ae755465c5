"""Small foreign networks for the external-backbone tests, built from torch.nn only (loaded as
``py:tests.fsl_xai.models._factories:FUNCTION``)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv stages and a global pooling: images (N, 1, 32, 32) -> embeddings (N, 16)."""

    input_size = (1, 32, 32)
    mean = (0.5,)
    std = (0.25,)

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class SmallViT(nn.Module):
    """A tiny ViT: 8x8 patches of a (N, 1, 32, 32) image, a class token, two encoder layers; the
    class token's final state is the embedding (N, 24), or with ``pool="mean"`` the mean of the
    final patch tokens."""

    input_size = (1, 32, 32)

    def __init__(self, dim: int = 24, patch: int = 8, size: int = 32, pool: str = "cls"):
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        n = (size // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        out = self.norm(self.encoder(tokens))
        return out[:, 0] if self.pool == "cls" else out[:, 1:].mean(1)


class MapCNN(nn.Module):
    """A CNN that returns its last map (N, 16, 8, 8) rather than embeddings."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def small_cnn() -> nn.Module:
    return SmallCNN()


def small_vit() -> nn.Module:
    return SmallViT()


def small_vit_mean() -> nn.Module:
    return SmallViT(pool="mean")


def frozen_vit() -> nn.Module:
    """A ViT whose weights do not require gradients (a frozen pretrained network)."""
    net = SmallViT()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def map_cnn() -> nn.Module:
    return MapCNN()


def needs_arguments(width: int) -> nn.Module:
    return nn.Conv2d(1, width, 3)


def not_a_module() -> str:
    return "a string"


def three_d_output() -> nn.Module:
    """Returns tokens (N, T, C) as its output: neither embeddings nor a map."""
    return nn.Sequential(nn.Conv2d(1, 4, 4, stride=4), nn.Flatten(2))
