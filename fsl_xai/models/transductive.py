"""Transductive prototype refinement: soft k-means over the queries (the "dynamic prototype
update" of Ren et al., 2018, applied at test time)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .protonet import PrototypicalNetwork


class TransductivePrototypes(PrototypicalNetwork):
    """ProtoNet whose prototypes are refined with the unlabelled queries scored together.

    Starting from the support means ``p_c`` (``prototypes_``), each of ``iterations`` rounds
    softly assigns every query to the classes, ``m_qc = softmax_c(logit_qc / temperature)``, and
    moves the prototypes to the weighted mean of support and queries::

        p_c <- (sum of support embeddings of c + w * sum_q m_qc z_q) / (n_c + w * sum_q m_qc)

    with ``w = query_weight``. Logits are then scored against the refined prototypes with the
    ProtoNet distance (squared Euclidean or cosine).

    Queries passed together change each other's prototypes: ``forward(batch)`` refines with
    exactly the batch given, so a query's logits depend on the other queries in that call. For
    attribution this means the perturbed or interpolated inputs an explainer passes would take
    part in the refinement. To explain a query against the prototypes refined with its episode,
    call :meth:`fit_queries` first: the refined prototypes are then frozen in
    ``refined_prototypes_`` and used for every later call until the next ``fit_support``,
    ``add_to_class`` or :meth:`clear_queries`.

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
        self.refined_prototypes_: torch.Tensor | None = None

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

    def logits_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        self._require_fitted()
        if self.refined_prototypes_ is not None:
            return self.score(query_embeddings, self.refined_prototypes_)
        return self.score(query_embeddings, self.refine(self.prototypes_, self.class_counts_, query_embeddings))

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        prototypes = self.compute_prototypes(support_embeddings, support_labels)
        counts = torch.bincount(support_labels, minlength=len(prototypes))
        return self.score(query_embeddings, self.refine(prototypes, counts, query_embeddings))

    # ------------------------------------------------------------------ frozen refinement
    def fit_query_embeddings(self, query_embeddings: torch.Tensor) -> "TransductivePrototypes":
        """Refine with these query embeddings (n_query, D) and freeze the result."""
        self._require_fitted()
        with torch.no_grad():
            self.refined_prototypes_ = self.refine(self.prototypes_, self.class_counts_,
                                                   query_embeddings.detach()).detach()
        return self

    def fit_queries(self, query_images: torch.Tensor) -> "TransductivePrototypes":
        """Refine with these query images (n_query, C, H, W) and freeze the result (for attribution)."""
        self._require_fitted()
        self._check_images(query_images, "query_images")
        with torch.no_grad():
            return self.fit_query_embeddings(self.embed(query_images))

    def clear_queries(self) -> "TransductivePrototypes":
        """Go back to refining with each batch given."""
        self.refined_prototypes_ = None
        return self

    def fit_support_embeddings(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> "TransductivePrototypes":
        self.refined_prototypes_ = None
        return super().fit_support_embeddings(support_embeddings, support_labels)

    def add_to_class(self, embedding: torch.Tensor, label: int) -> "TransductivePrototypes":
        super().add_to_class(embedding, label)
        self.refined_prototypes_ = None
        return self

    def config(self) -> dict:
        return super().config() | {"model": self.name, "iterations": self.iterations,
                                   "temperature": self.temperature, "query_weight": self.query_weight}
