"""The few-shot model interface shared by every method.

A model is a backbone plus a rule that turns support embeddings into class representatives
(prototypes) and scores query embeddings against them. Fitting a support set returns a
:class:`~fsl_xai.models.fitted.FittedEpisode` and leaves the model unchanged; the fitted episode's
``forward(query_images)`` returns logits (higher = more likely). For distance-based models the
logit of a class is minus the distance to its prototype, so an attribution on a logit explains a
distance.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .fitted import FittedEpisode


class FewShotClassifier(nn.Module):
    """Base class. Subclasses set ``name`` and override the hooks below (``prototype_space``,
    ``score``, ``episode_extras``, ``logits_from_fitted``, ``logits_from_support``) and the
    capability methods where they differ.

    The model holds only what training learned (the backbone's weights and model-level statistics
    such as SimpleShot's base mean). Everything learned from a support set lives in the
    :class:`FittedEpisode` that :meth:`fit` returns.
    """

    name = "base"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    # ------------------------------------------------------------------ capabilities
    def is_differentiable(self) -> bool:
        """Whether the logits are differentiable with respect to the query pixels (gradient methods)."""
        return True

    def refines_with_queries(self) -> bool:
        """Whether the prototypes are refined with the query batch scored together (transductive):
        such a model must be frozen with its episode's queries before attribution
        (``FittedEpisode.with_queries``)."""
        return False

    def uses_class_means(self) -> bool:
        """Whether the logits are ``score(query, class means of the support embeddings)``, so that a
        prototype without one support image has the closed form ``(n p - e) / (n - 1)``."""
        return True

    # ------------------------------------------------------------------ hooks for subclasses
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) -> embeddings (N, D)."""
        return self.backbone(images)

    def prototype_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D): the space in which prototypes are class means (the identity here)."""
        return embeddings

    def compute_prototypes(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """(n_support, D), (n_support,) -> (n_way, D): class means in ``prototype_space`` (differentiable)."""
        n_way = int(support_labels.max()) + 1
        onehot = torch.nn.functional.one_hot(support_labels, n_way).to(support_embeddings.dtype)
        return onehot.T @ self.prototype_space(support_embeddings) / onehot.sum(0, keepdim=True).T

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """(n_query, D), (n_way, D) -> logits (n_query, n_way): minus squared Euclidean distance."""
        # exact difference form: differentiable everywhere (cdist's gradient is NaN at distance 0)
        return -(query_embeddings[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)

    def episode_extras(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor,
                       prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model-specific state learned from a support set besides the prototypes (none here)."""
        return {}

    def logits_from_fitted(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> torch.Tensor:
        """(n_query, D) -> (n_query, n_way) against a fitted episode's state."""
        return self.score(query_embeddings, fitted.prototypes_)

    def logits_from_support(self, query_embeddings: torch.Tensor, support_embeddings: torch.Tensor,
                            support_labels: torch.Tensor) -> torch.Tensor:
        """Differentiable logits (n_query, n_way) of query embeddings (n_query, D) for a support set
        given as embeddings (n_support, D) with episode labels (n_support,); stores nothing.

        Models whose scores use more than the prototypes (matching, fine-tuning, transductive)
        override this together with ``logits_from_fitted``.
        """
        return self.score(query_embeddings, self.compute_prototypes(support_embeddings, support_labels))

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_support_labels(support_labels: torch.Tensor, n_support: int) -> torch.Tensor:
        """Episode labels (n_support,) as a long tensor, checked: one per support image, 0..n_way-1
        without gaps. Raises ModelError saying what to fix."""
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

    def check_images(self, images: torch.Tensor, what: str) -> None:
        """Raise ModelError unless ``images`` is a (N, C, H, W) tensor with the backbone's channels."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ModelError(f"{what} must be a tensor (N, C, H, W), got {shape}")
        cin = getattr(self.backbone, "in_channels", None)
        if cin is not None and images.shape[1] != cin:
            raise ModelError(
                f"{what} have {images.shape[1]} channel(s) but the backbone expects {cin}; "
                "convert the images (ImageSet.convert(channels=...)) or use a model trained on such images"
            )

    # ------------------------------------------------------------------ fitting
    def fit(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> FittedEpisode:
        """Embed the support set (n_support, C, H, W) and return the fitted episode; the model is
        not changed."""
        self.check_images(support_images, "support_images")
        with torch.no_grad():
            emb = self.embed(support_images)
        return self.fit_embeddings(emb, support_labels)

    def fit_embeddings(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> FittedEpisode:
        """The fitted episode of precomputed support embeddings (n_support, D) with their episode
        labels (n_support,); the model is not changed."""
        labels = self.check_support_labels(support_labels, len(support_embeddings))
        emb = support_embeddings.detach()
        with torch.no_grad():
            prototypes = self.compute_prototypes(emb, labels).detach()
            extras = self.episode_extras(emb, labels, prototypes)
        return FittedEpisode(self, emb, labels, prototypes, extras)

    def add_to_fitted(self, fitted: FittedEpisode, embedding: torch.Tensor, label: int) -> FittedEpisode:
        """A new fitted episode with one more support case (embedding (D,)) in class ``label``
        (called by ``FittedEpisode.add_to_class``, which checks the label). The class's prototype
        moves to (n p + e) / (n + 1) in ``prototype_space``; nothing is re-embedded."""
        e = embedding.reshape(1, -1)
        n = fitted.class_counts_[label].to(e.dtype)
        prototypes = fitted.prototypes_.clone()
        with torch.no_grad():
            prototypes[label] = (prototypes[label] * n + self.prototype_space(e)[0]) / (n + 1)
            emb = torch.cat([fitted.support_embeddings_, e])
            labels = torch.cat([fitted.support_labels_, torch.tensor([label])])
            extras = self.episode_extras(emb, labels, prototypes)
        return FittedEpisode(self, emb, labels, prototypes, extras)

    def frozen_with_queries(self, fitted: FittedEpisode) -> bool:
        """Whether ``fitted`` scores a batch without refining with it (always, unless the model
        ``refines_with_queries()``)."""
        return not self.refines_with_queries()

    def freeze_queries(self, fitted: FittedEpisode, query_embeddings: torch.Tensor) -> FittedEpisode:
        """For models that ``refines_with_queries()``: a fitted episode frozen with these queries."""
        raise ModelError(f"{type(self).__name__} does not refine its prototypes with the queries")

    # ------------------------------------------------------------------ scoring without a fit
    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        """A model alone has no classes: fit a support set first."""
        raise ModelError(f"{type(self).__name__} has no support set; call fitted = model.fit(support_images, "
                         "support_labels) and score the queries with fitted(query_images)")

    def episode_logits(self, support_images: torch.Tensor, support_labels: torch.Tensor,
                       query_images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits for a whole episode with one backbone pass over support and query
        together (used in meta-training and for support-pixel attribution)."""
        labels = self.check_support_labels(support_labels, len(support_images))
        emb = self.embed(torch.cat([support_images, query_images]))
        s, q = emb[: len(support_images)], emb[len(support_images):]
        return self.logits_from_support(q, s, labels)

    # ------------------------------------------------------------------ provenance
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
