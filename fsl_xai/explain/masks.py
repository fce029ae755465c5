"""Feature masks for perturbation methods: a grid of square patches and SLIC-style superpixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
