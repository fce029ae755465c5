"""SimpleShot (Wang et al., 2019): nearest centroid on centred, L2-normalised features."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import FewShotClassifier

if TYPE_CHECKING:
    from ..data.imageset import ImageSet


class SimpleShot(FewShotClassifier):
    """Nearest class centroid after the "CL2N" feature transform of Wang et al. (2019).

    Every embedding ``x`` is mapped to ``t(x) = normalize(x - base_mean_)``; prototypes are the
    class means of the transformed support embeddings and a query's logit for a class is minus the
    squared Euclidean distance between its transformed embedding and that prototype.

    The base-class mean comes from :meth:`fit_base` (embeddings of the images the backbone was
    trained on, e.g. ``model.fit_base(embed_all(model, base_images))``). It is a buffer, so it is
    saved in the ``state_dict`` and in checkpoints. Until ``fit_base`` is called the centring step
    is skipped (the "L2N" variant of the paper); ``has_base_mean`` says which applies.

    Args:
        backbone: the feature extractor.
        center: subtract the base-class mean (when one is set).
        normalize: L2-normalise after centring.
    """

    name = "simpleshot"

    def __init__(self, backbone: nn.Module, center: bool = True, normalize: bool = True):
        super().__init__(backbone)
        self.center = bool(center)
        self.normalize = bool(normalize)
        # empty until fit_base: an empty buffer (rather than None) stays in state_dict, so a
        # checkpoint always has the key
        self.register_buffer("base_mean_", torch.zeros(0))

    @property
    def has_base_mean(self) -> bool:
        return self.base_mean_.numel() > 0

    def fit_base(self, base: torch.Tensor | np.ndarray | "ImageSet", batch_size: int = 256) -> "SimpleShot":
        """Set the centring vector to the mean embedding of the base classes.

        Args:
            base: base-class embeddings (n_base, D), or base images (n_base, C, H, W) / an
                ImageSet, which are embedded here (eval mode, no_grad, see ``evaluation.embed_all``).
            batch_size: images per forward pass when images are given.

        Call it after (pre-)training, before fitting support sets; it clears any fitted support.
        """
        from ..data.imageset import ImageSet

        if isinstance(base, ImageSet) or getattr(base, "ndim", None) == 4:
            from ..evaluation import embed_all

            base = embed_all(self, base, batch_size=batch_size)
        emb = torch.as_tensor(np.asarray(base) if not isinstance(base, torch.Tensor) else base).detach().to(torch.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ModelError(f"fit_base needs base-class embeddings (n_base, D) or images (n_base, C, H, W), "
                             f"got shape {tuple(emb.shape)}; pass the base (training) images or embed_all(model, images)")
        out_dim = getattr(self.backbone, "out_dim", None)
        if out_dim is not None and emb.shape[1] != out_dim:
            raise ModelError(f"base embeddings have {emb.shape[1]} features but the backbone gives {out_dim}; "
                             "embed the base images with this model's backbone")
        if not torch.isfinite(emb).all():
            raise ModelError("base embeddings contain NaN or infinite values; check the base images and weights")
        self.base_mean_ = emb.mean(0)
        self.prototypes_ = self.support_embeddings_ = self.support_labels_ = self.class_counts_ = None
        return self

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D): centred on the base mean (if set) and L2-normalised."""
        if self.center and self.has_base_mean:
            if self.base_mean_.shape[0] != embeddings.shape[-1]:
                raise ModelError(f"the base mean has {self.base_mean_.shape[0]} features but the embeddings "
                                 f"have {embeddings.shape[-1]}; call fit_base again with this backbone")
            embeddings = embeddings - self.base_mean_
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        return embeddings

    def compute_prototypes(self, support_embeddings: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        return super().compute_prototypes(self.transform(support_embeddings), support_labels)

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return super().score(self.transform(query_embeddings), prototypes)

    def add_to_class(self, embedding: torch.Tensor, label: int) -> "SimpleShot":
        """Add one case: the raw embedding joins the support set and the prototype (a mean of
        transformed embeddings) moves to (n * p + t(e)) / (n + 1)."""
        self._require_fitted()
        protos = self.prototypes_
        super().add_to_class(embedding, label)
        n = self.class_counts_[label].to(protos.dtype) - 1
        t = self.transform(embedding.detach().reshape(1, -1))[0]
        self.prototypes_ = protos.clone()
        self.prototypes_[label] = (protos[label] * n + t) / (n + 1)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the base mean's size is only known once set: take the stored one's shape before copying
        key = prefix + "base_mean_"
        if key in state_dict:
            self.base_mean_ = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict:
        return {"model": self.name, "center": self.center, "normalize": self.normalize}
