"""A few-shot model fitted to one support set.

``model.fit(support_images, support_labels)`` returns a :class:`FittedEpisode`: the model's
backbone and weights are shared (the model is a submodule, nothing is copied), and the state learned
from the support set (prototypes, support embeddings, a fine-tuned head, frozen transductive
prototypes) belongs to the fitted episode. Fitting never changes the model, so one trained model can
serve any number of episodes at once: the workbench, an evaluation and a quality check each hold
their own fitted episode and none has to repair the model afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ModelError

if TYPE_CHECKING:
    from .base import FewShotClassifier


class FittedEpisode(nn.Module):
    """A few-shot model together with the state it learned from one support set.

    Build it with ``model.fit(...)`` or ``model.fit_embeddings(...)``, not directly. Every method that
    changes the support set returns a new ``FittedEpisode``; this one never changes.

    Attributes:
        model: the few-shot model (a submodule: its backbone and weights are shared).
        support_embeddings_: (n_support, D), detached.
        support_labels_: (n_support,) episode labels 0..n_way-1.
        class_counts_: (n_way,) support images per class.
        prototypes_: (n_way, D) class representatives (class means in the model's prototype space).
        extras_: model-specific tensors learned from the support set (for example a fine-tuned head,
            ``head_weight``/``head_bias``, or transductive prototypes frozen with a query batch,
            ``refined_prototypes``).
    """

    model: FewShotClassifier

    def __init__(self, model: FewShotClassifier, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                 prototypes: torch.Tensor, extras: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.support_embeddings_ = support_embeddings
        self.support_labels_ = support_labels
        self.class_counts_ = torch.bincount(support_labels, minlength=len(prototypes))
        self.prototypes_ = prototypes
        self.extras_: dict[str, torch.Tensor] = dict(extras or {})

    # ------------------------------------------------------------------ what it is
    @property
    def backbone(self) -> nn.Module:
        """The model's backbone (shared)."""
        return self.model.backbone

    @property
    def n_way(self) -> int:
        """Number of classes of the episode."""
        return len(self.prototypes_)

    def fingerprint(self) -> str:
        """The model's weights fingerprint (provenance of predictions and maps)."""
        return self.model.fingerprint()

    def extra_repr(self) -> str:
        return f"n_way={self.n_way}, n_support={len(self.support_labels_)}"

    # ------------------------------------------------------------------ scoring
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) -> embeddings (N, D), with the shared backbone."""
        return self.model.embed(images)

    def logits_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """query_embeddings: (n_query, D) -> logits (n_query, n_way)."""
        return self.model.logits_from_fitted(self, query_embeddings)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        """query_images: (n_query, C, H, W) -> logits (n_query, n_way); for distance models a
        class's logit is minus the query's distance to its prototype."""
        self.model.check_images(query_images, "query_images")
        return self.logits_from_embeddings(self.model.embed(query_images))

    def distances(self, query_images: torch.Tensor) -> torch.Tensor:
        """(n_query, n_way) distances to each class (minus the logits)."""
        return -self.forward(query_images)

    # ------------------------------------------------------------------ new fitted episodes
    def add_to_class(self, embedding: torch.Tensor, label: int) -> FittedEpisode:
        """A new fitted episode with one more support case (embedding (D,)) in class ``label``,
        without re-embedding the support set."""
        if not 0 <= int(label) < self.n_way:
            raise ModelError(f"label {label} is not a class of this episode (0..{self.n_way - 1})")
        return self.model.add_to_fitted(self, embedding.detach().reshape(-1), int(label))

    def queries_frozen(self) -> bool:
        """False only when the model refines its prototypes with whatever batch it scores and this
        episode has not been frozen with its queries (see :meth:`with_queries`); an explainer's
        perturbed copies must not take part in that refinement."""
        return self.model.frozen_with_queries(self)

    def with_query_embeddings(self, query_embeddings: torch.Tensor) -> FittedEpisode:
        """For a model that refines its prototypes with the query batch (``refines_with_queries()``),
        a new fitted episode whose refinement is frozen with these query embeddings (n_query, D), so
        that later calls (an explainer's perturbed copies) do not take part in it; otherwise self."""
        if not self.model.refines_with_queries():
            return self
        return self.model.freeze_queries(self, query_embeddings.detach())

    def with_queries(self, query_images: torch.Tensor) -> FittedEpisode:
        """As :meth:`with_query_embeddings`, from query images (n_query, C, H, W)."""
        if not self.model.refines_with_queries():
            return self
        self.model.check_images(query_images, "query_images")
        with torch.no_grad():
            return self.with_query_embeddings(self.model.embed(query_images))
