"""Fine-tuning baseline (Chen et al., 2019, "Baseline" and "Baseline++")."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import FewShotClassifier
from .fitted import FittedEpisode


class FineTuneClassifier(FewShotClassifier):
    """A classifier head trained on the support embeddings of each episode; the backbone is frozen.

    ``head="linear"`` (Baseline): ``logits = q W^T + b``, started at ``W = 2 p``, ``b = -|p|^2``
    (p = class means), which ranks classes exactly as squared-Euclidean ProtoNet does.
    ``head="cosine"`` (Baseline++): ``logits = scale * cos(q, w_c)``, started at ``w_c = p``.
    The head is then trained with cross-entropy and Adam for ``steps`` steps on the support
    embeddings (full batch, or shuffled mini-batches of ``batch_size`` drawn with ``seed``), so
    the same support set always gives the same head.

    A fitted episode's ``prototypes_`` keeps the class means (for display); the trained head is in
    its ``extras_``: ``head_weight`` (n_way, D) and ``head_bias`` (n_way,). Logits are not
    distances; ``distances`` returns minus the logits like every model. The head is trained on
    detached support embeddings, so ``episode_logits`` is differentiable with respect to the query
    pixels only (the model is not meant for meta-training). ``add_to_class`` re-trains the head
    from the stored support embeddings plus the new one (no re-embedding).

    Args:
        backbone: the (pre-trained) feature extractor.
        head: "linear" or "cosine".
        steps: optimisation steps per support set (0 keeps the prototype initialisation).
        lr: Adam learning rate.
        weight_decay: L2 penalty on the head.
        cosine_scale: the scale of the cosine head.
        batch_size: mini-batch size (None = the whole support set each step).
        seed: seeds the mini-batch order.
    """

    name = "finetune"

    def __init__(self, backbone: nn.Module, head: str = "linear", steps: int = 100, lr: float = 0.01,
                 weight_decay: float = 0.0, cosine_scale: float = 10.0, batch_size: int | None = None,
                 seed: int = 0):
        super().__init__(backbone)
        if head not in ("linear", "cosine"):
            raise ModelError(f"unknown head {head!r}; choose 'linear' or 'cosine'")
        if steps < 0 or lr <= 0 or weight_decay < 0 or (batch_size is not None and batch_size < 1):
            raise ModelError(f"need steps >= 0, lr > 0, weight_decay >= 0 and batch_size >= 1 (or None); "
                             f"got steps={steps}, lr={lr}, weight_decay={weight_decay}, batch_size={batch_size}")
        self.head = head
        self.steps = int(steps)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.cosine_scale = float(cosine_scale)
        self.batch_size = batch_size
        self.seed = int(seed)

    # ------------------------------------------------------------------ the head
    def head_logits(self, query_embeddings: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(n_query, D) through a head (n_way, D), (n_way,) -> logits (n_query, n_way)."""
        if self.head == "cosine":
            return self.cosine_scale * F.normalize(query_embeddings, dim=-1) @ F.normalize(weight, dim=-1).T
        return query_embeddings @ weight.T + bias

    def init_head(self, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's starting point from prototypes (n_way, D)."""
        if self.head == "cosine":
            return prototypes.clone(), torch.zeros(len(prototypes), dtype=prototypes.dtype)
        return 2 * prototypes, -prototypes.pow(2).sum(-1)

    def train_head(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                   prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train a head on detached support embeddings (n_support, D); returns (weight, bias).

        Cross-entropy (mean over the batch) plus ``weight_decay`` times the parameters added to the
        gradient, minimised by Adam (betas 0.9, 0.999, eps 1e-8) as ``torch.optim.Adam`` does. The
        gradients are written out by hand and run in float64 NumPy: a few-shot head is tiny, and
        per-call overhead, not arithmetic, would dominate hundreds of steps per episode.
        """
        w0, b0 = self.init_head(prototypes.detach())
        if self.steps == 0:
            return w0, b0
        dtype = support_embeddings.dtype
        x = support_embeddings.detach().cpu().numpy().astype(np.float64)
        y = support_labels.cpu().numpy()
        n, n_way = len(x), len(w0)
        onehot = np.eye(n_way)[y]
        cosine = self.head == "cosine"
        if cosine:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        weight = w0.cpu().numpy().astype(np.float64)
        bias = b0.cpu().numpy().astype(np.float64)
        m_w, v_w, m_b, v_b = (np.zeros_like(weight), np.zeros_like(weight), np.zeros_like(bias), np.zeros_like(bias))
        beta1, beta2, eps, lr, wd = 0.9, 0.999, 1e-8, self.lr, self.weight_decay
        batch = n if self.batch_size is None else min(self.batch_size, n)
        gen = torch.Generator().manual_seed(self.seed)
        order, pos = np.arange(n), n
        for step in range(1, self.steps + 1):
            if batch == n:
                xb, yb = x, onehot
            else:
                if pos + batch > n:
                    order, pos = torch.randperm(n, generator=gen).numpy(), 0
                idx = order[pos: pos + batch]
                pos += batch
                xb, yb = x[idx], onehot[idx]
            if cosine:
                w_norm = np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
                w_unit = weight / w_norm
                z = self.cosine_scale * xb @ w_unit.T
            else:
                z = xb @ weight.T + bias
            z = z - z.max(1, keepdims=True)
            prob = np.exp(z)
            prob /= prob.sum(1, keepdims=True)
            g = (prob - yb) / len(xb)  # d(mean cross-entropy) / d(logits)
            if cosine:
                g_unit = self.cosine_scale * g.T @ xb
                g_w = (g_unit - w_unit * (g_unit * w_unit).sum(1, keepdims=True)) / w_norm
                g_b = np.zeros_like(bias)
            else:
                g_w, g_b = g.T @ xb, g.sum(0)
            if wd:
                g_w = g_w + wd * weight
                if not cosine:
                    g_b = g_b + wd * bias
            c1, c2 = 1 - beta1 ** step, 1 - beta2 ** step
            m_w = beta1 * m_w + (1 - beta1) * g_w
            v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
            weight = weight - lr * (m_w / c1) / (np.sqrt(v_w / c2) + eps)
            if not cosine:
                m_b = beta1 * m_b + (1 - beta1) * g_b
                v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
                bias = bias - lr * (m_b / c1) / (np.sqrt(v_b / c2) + eps)
        return torch.from_numpy(weight).to(dtype), torch.from_numpy(bias).to(dtype)

    # ------------------------------------------------------------------ fitting and scoring
    def uses_class_means(self) -> bool:
        return False

    def episode_extras(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                       prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        weight, bias = self.train_head(support_embeddings, support_labels, prototypes)
        return {"head_weight": weight, "head_bias": bias}

    def logits_from_fitted(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> torch.Tensor:
        return self.head_logits(query_embeddings, fitted.extras_["head_weight"], fitted.extras_["head_bias"])

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        prototypes = self.compute_prototypes(support_embeddings.detach(), support_labels)
        weight, bias = self.train_head(support_embeddings, support_labels, prototypes)
        return self.head_logits(query_embeddings, weight, bias)

    def add_to_fitted(self, fitted: FittedEpisode, embedding: torch.Tensor, label: int) -> FittedEpisode:
        """Re-train the head from the stored support embeddings plus this one."""
        emb = torch.cat([fitted.support_embeddings_, embedding.reshape(1, -1)])
        labels = torch.cat([fitted.support_labels_, torch.tensor([label])])
        return self.fit_embeddings(emb, labels)

    def config(self) -> dict:
        return {"model": self.name, "head": self.head, "steps": self.steps, "lr": self.lr,
                "weight_decay": self.weight_decay, "cosine_scale": self.cosine_scale,
                "batch_size": self.batch_size, "seed": self.seed}
