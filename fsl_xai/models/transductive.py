"""Transductive prototype refinement: soft k-means over the queries (the "dynamic prototype
update" of Ren et al., 2018, applied at test time)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .fitted import FittedEpisode
from .protonet import PrototypicalNetwork


class TransductivePrototypes(PrototypicalNetwork):
    """ProtoNet whose prototypes are refined with the unlabelled queries scored together.

    Starting from the support means ``p_c`` (a fitted episode's ``prototypes_``), each of ``iterations`` rounds
    softly assigns every query to the classes, ``m_qc = softmax_c(logit_qc / temperature)``, and
    moves the prototypes to the weighted mean of support and queries::

        p_c <- (sum of support embeddings of c + w * sum_q m_qc z_q) / (n_c + w * sum_q m_qc)

    with ``w = query_weight``. Logits are then scored against the refined prototypes with the
    ProtoNet distance (squared Euclidean or cosine).

    Queries passed together change each other's prototypes: a fitted episode's ``forward(batch)``
    refines with exactly the batch given, so a query's logits depend on the other queries in that
    call. For attribution this means the perturbed or interpolated inputs an explainer passes would
    take part in the refinement. To explain a query against the prototypes refined with its
    episode, use ``fitted.with_queries(episode_query_images)``: a new fitted episode whose refined
    prototypes (``extras_["refined_prototypes"]``) are frozen and used for every call.

    Args:
        backbone: the feature extractor.
        distance: "euclidean" (squared) or "cosine", as in ProtoNet.
        cosine_scale: the scale of cosine logits.
        iterations: rounds of refinement (0 = plain ProtoNet).
        temperature: softness of the query assignments.
        query_weight: weight of a (fully assigned) query relative to one support image.
    """

    name = "transductive"

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", cosine_scale: float = 10.0,
                 iterations: int = 3, temperature: float = 1.0, query_weight: float = 1.0):
        super().__init__(backbone, distance=distance, cosine_scale=cosine_scale)
        if iterations < 0 or not temperature > 0 or query_weight < 0:
            raise ModelError(f"need iterations >= 0, temperature > 0 and query_weight >= 0; got "
                             f"iterations={iterations}, temperature={temperature}, query_weight={query_weight}")
        self.iterations = int(iterations)
        self.temperature = float(temperature)
        self.query_weight = float(query_weight)

    def refine(self, prototypes: torch.Tensor, class_counts: torch.Tensor,
               query_embeddings: torch.Tensor) -> torch.Tensor:
        """Support prototypes (n_way, D) with their support counts (n_way,) -> refined (n_way, D)
        using the query embeddings (n_query, D); differentiable."""
        counts = class_counts.to(prototypes.dtype)[:, None]
        sums = prototypes * counts
        refined = prototypes
        for _ in range(self.iterations):
            weights = self.query_weight * torch.softmax(self.score(query_embeddings, refined) / self.temperature, dim=1)
            refined = (sums + weights.T @ query_embeddings) / (counts + weights.sum(0)[:, None])
        return refined

    def refines_with_queries(self) -> bool:
        return self.iterations > 0

    def uses_class_means(self) -> bool:
        return False

    def logits_from_fitted(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> torch.Tensor:
        frozen = fitted.extras_.get("refined_prototypes")
        if frozen is not None:
            return self.score(query_embeddings, frozen)
        return self.score(query_embeddings, self.refine(fitted.prototypes_, fitted.class_counts_, query_embeddings))

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        prototypes = self.compute_prototypes(support_embeddings, support_labels)
        counts = torch.bincount(support_labels, minlength=len(prototypes))
        return self.score(query_embeddings, self.refine(prototypes, counts, query_embeddings))

    def frozen_with_queries(self, fitted: FittedEpisode) -> bool:
        return not self.refines_with_queries() or "refined_prototypes" in fitted.extras_

    def freeze_queries(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> FittedEpisode:
        """A fitted episode whose prototypes are refined with these query embeddings (n_query, D)
        and then frozen (``extras_["refined_prototypes"]``)."""
        with torch.no_grad():
            refined = self.refine(fitted.prototypes_, fitted.class_counts_, query_embeddings).detach()
        return FittedEpisode(self, fitted.support_embeddings_, fitted.support_labels_, fitted.prototypes_,
                             {**fitted.extras_, "refined_prototypes": refined})

    def config(self) -> dict:
        return super().config() | {"model": self.name, "iterations": self.iterations,
                                   "temperature": self.temperature, "query_weight": self.query_weight}
