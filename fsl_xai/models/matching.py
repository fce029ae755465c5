"""Matching Networks (Vinyals et al., 2016), without full-context embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import FewShotClassifier
from .fitted import FittedEpisode


class MatchingNetwork(FewShotClassifier):
    """Each query attends over every support embedding; a class's probability is its summed attention.

    ``a_i = softmax_i(cos(q, s_i) / temperature)`` and ``P(c | q) = sum of a_i over the support
    images of class c``. The logit of a class is ``log P(c | q)`` (so logits are log-probabilities,
    always <= 0) and the distance is minus that, the negative log-likelihood.

    The full-context embeddings (bidirectional LSTM over the support, attention LSTM over the
    query) of the paper are left out, as in most re-implementations; the embedding is the
    backbone's. A fitted episode's ``prototypes_`` holds the class means of the support embeddings
    for display, but scores always use the individual support embeddings, so ``add_to_class``
    simply adds one attention target.

    Args:
        backbone: the feature extractor.
        temperature: softmax temperature over cosine similarities (lower = sharper attention).
    """

    name = "matching"

    def __init__(self, backbone: nn.Module, temperature: float = 0.1):
        super().__init__(backbone)
        if not temperature > 0:
            raise ModelError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def attention_logits(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                         support_labels: torch.Tensor, n_way: int | None = None) -> torch.Tensor:
        """(n_query, D), (n_support, D), (n_support,) -> log class probabilities (n_query, n_way)."""
        n_way = int(support_labels.max()) + 1 if n_way is None else n_way
        sims = F.normalize(query_embeddings, dim=-1) @ F.normalize(support_embeddings, dim=-1).T / self.temperature
        member = F.one_hot(support_labels, n_way).T.bool()  # (n_way, n_support)
        # log sum_{i in c} exp(sim_i) - log sum_i exp(sim_i), stable and exact; -inf entries drop out
        per_class = sims[:, None, :].masked_fill(~member[None], float("-inf"))
        return torch.logsumexp(per_class, dim=-1) - torch.logsumexp(sims, dim=-1, keepdim=True)

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        return self.attention_logits(query_embeddings, support_embeddings, support_labels)

    def logits_from_fitted(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> torch.Tensor:
        return self.attention_logits(query_embeddings, fitted.support_embeddings_, fitted.support_labels_,
                                     n_way=fitted.n_way)

    def uses_class_means(self) -> bool:
        return False

    def config(self) -> dict:
        return {"model": self.name, "temperature": self.temperature}
