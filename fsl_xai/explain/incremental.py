"""Incremental forward passes for perturbation methods (Occlusion, Feature Ablation).

A perturbation method runs the network on hundreds of copies of one image that each differ from
it in a small window. In a Conv-4 a change confined to rows ``[y, y + h)`` of a block's input can
only change rows ``[y - 1, y + h + 1)`` of its 3x3 convolution and about half as many rows after
the 2x2 pooling, so each block needs to recompute only a small window around the change, on
top of the unperturbed image's cached activations (the idea of incremental inference for
occlusion explanations; Nakandala et al., SIGMOD 2019). The result is the same function: the only
difference from a full forward pass is the order of floating-point sums inside the convolutions.

``IncrementalForward`` is a drop-in for ``core.ExplainedOutput`` handed to Captum: Captum still builds
the perturbations, baselines and attributions; only the forward is cheaper. Each image of a batch
is compared with its reference (Captum repeats the query batch once per perturbation, so row
``j`` of a batch is a perturbation of query ``j % n``); rows whose change is not small enough
fall back to a full forward, so a wrong guess costs time, never correctness.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import FittedEpisode
from .core import explained_value

#: the incremental path is used when every changed window is at most this share of the image
MAX_CHANGED_SHARE = 0.25


def supports(fitted: nn.Module) -> bool:
    """True for fitted episodes whose backbone is a stack of [3x3 conv (stride 1, padding 1), Identity or
    eval-mode BatchNorm, 2x2 max-pool, ReLU] blocks followed by a flatten (the Conv-4)."""
    from ..models.backbones import Conv4

    if not isinstance(fitted, FittedEpisode) or type(fitted.backbone) is not Conv4:
        return False
    block: Any
    for block in fitted.backbone.blocks:
        if len(block) != 4:
            return False
        conv, norm, pool, act = block
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1):
            return False
        if not (isinstance(norm, nn.Identity) or (isinstance(norm, nn.BatchNorm2d) and not norm.training)):
            return False
        if not (isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
                and pool.padding in (0, (0, 0)) and not pool.ceil_mode):
            return False
        if not isinstance(act, nn.ReLU):
            return False
    return True


def _span(changed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) bool -> first index and length of each row's changed span (length 0 when unchanged)."""
    n, length = changed.shape
    idx = torch.arange(length).expand(n, length)
    first = torch.where(changed, idx, length).min(1).values
    last = torch.where(changed, idx, -1).max(1).values
    size = (last - first + 1).clamp(min=0)
    return first.clamp(max=length - 1), size


def _window(start: torch.Tensor, size: int, limit: int) -> tuple[torch.Tensor, int]:
    """Shift per-image windows of a common size into [0, limit)."""
    size = min(size, limit)
    return start.clamp(min=0, max=limit - size), size


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, C, H, W), rows (N, h), cols (N, w) -> (N, C, h, w): crop i from image ``batch[i]``
    (default i)."""
    if batch is None:
        batch = torch.arange(rows.shape[0])
    out = x[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, h, w, C)
    return out.permute(0, 3, 1, 2)


def _paste(base: torch.Tensor, batch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patch: torch.Tensor,
           py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Crops of ``base[batch[i]]`` at absolute (rows, cols) with ``patch`` (N, C, ph, pw), whose
    top-left is at absolute (py, px), written over them where they overlap."""
    crop = _gather(base, rows, cols, batch)
    ph, pw = patch.shape[2:]
    pr, pc = rows - py[:, None], cols - px[:, None]
    inside = ((pr >= 0) & (pr < ph))[:, None, :, None] & ((pc >= 0) & (pc < pw))[:, None, None, :]
    values = _gather(patch, pr.clamp(0, ph - 1), pc.clamp(0, pw - 1))
    return torch.where(inside, values, crop)


class IncrementalForward(nn.Module):
    """``forward(images, weights) -> (n, 1)``, the explained quantity, computed incrementally.

    Args:
        fitted: the fitted episode Captum explains (``supports(fitted)`` must hold); not changed.
        references: (n, C, H, W) the unperturbed queries of this call.
    """

    def __init__(self, fitted: FittedEpisode, references: torch.Tensor):
        super().__init__()
        self.fitted = fitted
        backbone: Any = fitted.backbone  # a Conv-4 (``supports``)
        self.blocks = list(backbone.blocks)
        with torch.no_grad():
            refs = references.detach().contiguous()
            # one reference at a time: a convolution's float sums can depend on the batch it runs
            # in, and a query's maps must not depend on which other queries share its chunk
            per_ref = []
            for r in refs:
                h, acts_r = r[None], [r[None]]
                for block in self.blocks:
                    h = block(h)
                    acts_r.append(h.contiguous())
                per_ref.append(acts_r)
            acts = [torch.cat(level) for level in zip(*per_ref, strict=True)]
        # each block's input, zero-padded by one (the convolutions' own padding)
        self.padded = [F.pad(a, (1, 1, 1, 1)) for a in acts[:-1]]
        self.final = acts[-1]
        self.references = refs
        self.full_rows = 0  # rows computed by a full forward (for tests and benchmarks)

    def forward(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.fitted.logits_from_embeddings(self._embed(images))
        return explained_value(logits, weights)[:, None]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        n_ref = len(self.references)
        n, _, height, width = images.shape
        ref = torch.arange(n) % n_ref
        if images.shape[1:] != self.references.shape[1:]:
            return self._full(images)
        changed = (images != self.references[ref]).any(1)  # (N, H, W)
        y, hh = _span(changed.any(2))
        x, ww = _span(changed.any(1))
        h_max, w_max = int(hh.max()), int(ww.max())
        if h_max == 0:  # nothing changed: the references' own embeddings
            return self.final[ref].flatten(1)
        if h_max * w_max > MAX_CHANGED_SHARE * height * width:
            return self._full(images)
        y, h_max = _window(y, h_max, height)
        x, w_max = _window(x, w_max, width)
        rows = y[:, None] + torch.arange(h_max)
        cols = x[:, None] + torch.arange(w_max)
        patch = _gather(images, rows, cols)  # the changed region of the input
        for k, block in enumerate(self.blocks):
            conv, norm, pool, act = block
            size_h, size_w = self.padded[k].shape[2] - 2, self.padded[k].shape[3] - 2
            # pooled outputs that the change can reach, as windows of a common size
            out_h, out_w = size_h // 2, size_w // 2
            # (a change in rows [y, y + h) reaches conv rows [y - 1, y + h], i.e. at most h // 2 + 2 pooled rows)
            y2, h2 = _window(torch.div(y - 1, 2, rounding_mode="floor"), h_max // 2 + 2, out_h)
            x2, w2 = _window(torch.div(x - 1, 2, rounding_mode="floor"), w_max // 2 + 2, out_w)
            # conv input rows for those outputs, in padded coordinates (the patch sits at +1)
            rows = 2 * y2[:, None] + torch.arange(2 * h2 + 2)
            cols = 2 * x2[:, None] + torch.arange(2 * w2 + 2)
            crop = _paste(self.padded[k], ref, rows, cols, patch, y + 1, x + 1)
            out = act(pool(norm(F.conv2d(crop, conv.weight, conv.bias))))
            patch, y, x, h_max, w_max = out, y2, x2, h2, w2
        rows = torch.arange(self.final.shape[2]).expand(n, -1)
        cols = torch.arange(self.final.shape[3]).expand(n, -1)
        return _paste(self.final, ref, rows, cols, patch, y, x).flatten(1)

    def _full(self, images: torch.Tensor) -> torch.Tensor:
        self.full_rows += len(images)
        return self.fitted.backbone(images.contiguous(memory_format=torch.channels_last))
