"""The few-shot model interface shared by every method.

A model is a backbone plus a rule that turns support embeddings into class representatives
(``prototypes_``) and scores query embeddings against them. ``forward(query_images)`` returns
logits (higher = more likely); for distance-based models the logit of a class is minus the
distance to its prototype, so an attribution on a logit explains a distance.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError


class FewShotClassifier(nn.Module):
    """Base class. Subclasses set ``name`` and override ``compute_prototypes`` and/or ``score``.

    Learned state from a support set ends in ``_``: ``support_embeddings_`` (n_support, D),
    ``support_labels_`` (n_support,), ``prototypes_`` (n_way, D), ``class_counts_`` (n_way,).
    """

    name = "base"
    #: whether ``forward`` is differentiable with respect to the query pixels
    differentiable = True

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.prototypes_: torch.Tensor | None = None
        self.support_embeddings_: torch.Tensor | None = None
        self.support_labels_: torch.Tensor | None = None
        self.class_counts_: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks for subclasses
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) -> embeddings (N, D)."""
        return self.backbone(images)

    def compute_prototypes(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """(n_support, D), (n_support,) -> (n_way, D); the class means by default (differentiable)."""
        n_way = int(support_labels.max()) + 1
        onehot = torch.nn.functional.one_hot(support_labels, n_way).to(support_embeddings.dtype)
        return onehot.T @ support_embeddings / onehot.sum(0, keepdim=True).T

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """(n_query, D), (n_way, D) -> logits (n_query, n_way): minus squared Euclidean distance."""
        # exact difference form: differentiable everywhere (cdist's gradient is NaN at distance 0)
        return -(query_embeddings[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)

    # ------------------------------------------------------------------ fitting and scoring
    @staticmethod
    def _check_support(support_labels: torch.Tensor, n_support: int) -> torch.Tensor:
        labels = torch.as_tensor(support_labels, dtype=torch.long).reshape(-1)
        if labels.numel() != n_support:
            raise ModelError(f"{n_support} support images but {labels.numel()} support labels")
        if labels.numel() == 0:
            raise ModelError("the support set is empty; give at least one image per class")
        if labels.min() < 0:
            raise ModelError(f"support labels must be episode labels 0..n_way-1, got {int(labels.min())}")
        n_way = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=n_way)
        if (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ModelError(f"support labels must cover 0..{n_way - 1} without gaps; classes {empty} have no image")
        return labels

    def fit_support(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> "FewShotClassifier":
        """Embed the support set (n_support, C, H, W) and store the prototypes."""
        self._check_images(support_images, "support_images")
        with torch.no_grad():
            emb = self.embed(support_images)
        return self.fit_support_embeddings(emb, support_labels)

    def fit_support_embeddings(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> "FewShotClassifier":
        """Store prototypes from precomputed support embeddings (n_support, D)."""
        labels = self._check_support(support_labels, len(support_embeddings))
        self.support_embeddings_ = support_embeddings.detach()
        self.support_labels_ = labels
        self.class_counts_ = torch.bincount(labels)
        with torch.no_grad():
            self.prototypes_ = self.compute_prototypes(self.support_embeddings_, labels).detach()
        return self

    def _require_fitted(self) -> None:
        if self.prototypes_ is None:
            raise ModelError(f"{type(self).__name__} has no support set yet; call fit_support(images, labels) first")

    def _check_images(self, images: torch.Tensor, what: str) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ModelError(f"{what} must be a tensor (N, C, H, W), got {shape}")
        cin = getattr(self.backbone, "in_channels", None)
        if cin is not None and images.shape[1] != cin:
            raise ModelError(
                f"{what} have {images.shape[1]} channel(s) but the backbone expects {cin}; "
                "convert the images (ImageSet.convert(channels=...)) or use a model trained on such images"
            )

    def logits_from_embeddings(self, query_embeddings: torch.Tensor) -> torch.Tensor:
        """(n_query, D) -> (n_query, n_way) against the stored prototypes."""
        self._require_fitted()
        return self.score(query_embeddings, self.prototypes_)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        """query_images: (n_query, C, H, W) -> logits (n_query, n_way)."""
        self._require_fitted()
        self._check_images(query_images, "query_images")
        return self.logits_from_embeddings(self.embed(query_images))

    def distances(self, query_images: torch.Tensor) -> torch.Tensor:
        """(n_query, n_way) distances to each prototype (minus the logits)."""
        return -self.forward(query_images)

    def episode_logits(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                       query_images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits for a whole episode with one backbone pass over support and query
        together (used in meta-training and for support-pixel attribution)."""
        labels = self._check_support(support_labels, len(support_images))
        emb = self.embed(torch.cat([support_images, query_images]))
        s, q = emb[: len(support_images)], emb[len(support_images):]
        return self.logits_from_support(q, s, labels)

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        """Differentiable logits (n_query, n_way) of query embeddings (n_query, D) for a support set
        given as embeddings (n_support, D) with episode labels (n_support,); stores nothing.

        Models whose scores use more than the prototypes (matching, fine-tuning, transductive)
        override this together with ``logits_from_embeddings``.
        """
        return self.score(query_embeddings, self.compute_prototypes(support_embeddings, support_labels))

    # ------------------------------------------------------------------ incremental update
    def add_to_class(self, embedding: torch.Tensor, label: int) -> "FewShotClassifier":
        """Add one confirmed case (embedding (D,)) to class ``label`` without re-embedding the
        support set: the mean prototype moves to (n * p + e) / (n + 1)."""
        self._require_fitted()
        if not 0 <= label < len(self.prototypes_):
            raise ModelError(f"label {label} is not a class of this episode (0..{len(self.prototypes_) - 1})")
        e = embedding.detach().reshape(1, -1)
        n = self.class_counts_[label].to(e.dtype)
        self.support_embeddings_ = torch.cat([self.support_embeddings_, e])
        self.support_labels_ = torch.cat([self.support_labels_, torch.tensor([label])])
        self.class_counts_ = self.class_counts_.clone()
        self.class_counts_[label] += 1
        self.prototypes_ = self.prototypes_.clone()
        self.prototypes_[label] = (self.prototypes_[label] * n + e[0]) / (n + 1)
        return self

    def fingerprint(self) -> str:
        """A short hash of the weights and configuration (for provenance of predictions and maps)."""
        import hashlib
        import json

        h = hashlib.sha1(json.dumps(self.config(), sort_keys=True, default=str).encode())
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def config(self) -> dict:
        """Parameters needed to rebuild this model (stored in checkpoints)."""
        return {"model": self.name}
