"""Feature extractors, by name. Every backbone maps (N, C, H, W) images to (N, out_dim) features
and exposes ``feature_map`` (the last spatial map, for Grad-CAM and similarity maps)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelError


class Backbone(nn.Module):
    """A feature extractor: images (N, C, H, W) -> embeddings (N, out_dim).

    ``make_backbone`` records what it was built for: ``out_dim``, ``in_channels``, ``image_size``
    (H, W) and ``backbone_name``; ``default_cam_layer`` names the layer Grad-CAM uses by default.
    """

    default_cam_layer = "blocks.3"
    out_dim: int
    in_channels: int
    image_size: tuple[int, int]
    backbone_name: str


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """conv, BatchNorm, max-pool, ReLU: the classic conv-BN-ReLU-pool block with the last two swapped.

    ReLU is monotone, so ``max(relu(a), relu(b)) == relu(max(a, b))`` exactly: the block computes
    the same function (and, with the ReLU after the pool, Guided Backprop routes the same
    gradients), but the ReLU and its backward run on a quarter of the values. On a CPU the
    full-resolution activations of the first block are memory-bound, so this cuts its cost
    noticeably. Parameter names are unchanged (the ReLU and pool have no state)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.MaxPool2d(2), nn.ReLU(inplace=False))


class Conv4(Backbone):
    """The classic four-block ConvNet of few-shot learning (Vinyals et al. 2016; Snell et al. 2017).

    Features are the flattened last map, so a 28x28 input gives 64 features and 64x64 gives 1024.
    """

    default_cam_layer = "blocks.3"

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.blocks = nn.Sequential(*[_conv_block(in_channels if i == 0 else width, width) for i in range(4)])

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) -> (N, width, H/16, W/16)."""
        return self.blocks(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(images))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        # pool before the (monotone) LeakyReLU: the same function, the activation on 1/4 of the values
        self.out = nn.Sequential(nn.MaxPool2d(2), nn.LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(Backbone):
    """ResNet-12 (Oreshkin et al. 2018): four residual blocks of three 3x3 convolutions, then
    global average pooling. ``widths`` defaults to a narrower (64, 96, 128, 256) for CPU use;
    pass (64, 160, 320, 640) for the published size."""

    default_cam_layer = "blocks.3"

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 96, 128, 256)):
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.Sequential(*[_ResBlock(chans[i], chans[i + 1]) for i in range(len(widths))])

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(images))


BACKBONES: dict[str, Callable[..., Backbone]] = {"conv4": Conv4, "resnet12": ResNet12}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def make_backbone(name: str, in_channels: int = 3, image_size: int | tuple[int, int] = 28, **kwargs) -> Backbone:
    """Build a registered backbone and record its ``out_dim`` for this input size.

    ``name`` may also be an external spec (``timm:NAME``, ``torchscript:PATH``, ``py:MODULE:FUNCTION``):
    then ``in_channels`` and ``image_size`` are the defaults of its input transform (used where the
    network states none) and ``kwargs`` go to :func:`fsl_xai.models.external.load_external`.

    Raises:
        ModelError: the name is unknown, or the image is too small for the backbone.
    """
    if ":" in str(name):
        from .external import load_external  # external builds on Backbone: imported here, not at the top

        return load_external(name, default_channels=in_channels, default_size=image_size, **kwargs)
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose one of {list_backbones()}, or an external "
                         "timm:NAME, torchscript:PATH or py:MODULE:FUNCTION")
    hw = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if min(hw) < 16:
        raise ModelError(f"backbone {name!r} needs images of at least 16x16 pixels, got {hw}")
    net = BACKBONES[name](in_channels=in_channels, **kwargs)
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, in_channels, *hw))
    net.train()
    net.out_dim = int(out.shape[1])
    net.in_channels = in_channels
    net.image_size = hw
    net.backbone_name = name
    return net
