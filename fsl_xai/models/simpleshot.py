"""SimpleShot (Wang et al., 2019): nearest centroid on centred, L2-normalised features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import FewShotClassifier


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

    def fit_base(self, base_embeddings: torch.Tensor | np.ndarray) -> SimpleShot:
        """Set the centring vector to the mean embedding of the base classes.

        Args:
            base_embeddings: (n_base, D) embeddings of the images the backbone was trained on, for
                example ``embed_all(model, base_images)``.

        Call it after (pre-)training, before fitting support sets: fitted episodes made earlier keep
        the prototypes they were fitted with.
        """
        emb = torch.as_tensor(np.asarray(base_embeddings) if not isinstance(base_embeddings, torch.Tensor)
                              else base_embeddings).detach().to(torch.float32)
        if emb.ndim != 2 or len(emb) == 0:
            raise ModelError(f"fit_base needs base-class embeddings (n_base, D), got shape {tuple(emb.shape)}; "
                             "embed the base (training) images first: fit_base(embed_all(model, images))")
        out_dim = getattr(self.backbone, "out_dim", None)
        if out_dim is not None and emb.shape[1] != out_dim:
            raise ModelError(f"base embeddings have {emb.shape[1]} features but the backbone gives {out_dim}; "
                             "embed the base images with this model's backbone")
        if not torch.isfinite(emb).all():
            raise ModelError("base embeddings contain NaN or infinite values; check the base images and weights")
        self.base_mean_ = emb.mean(0)
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

    def prototype_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.transform(embeddings)

    def score(self, query_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return super().score(self.transform(query_embeddings), prototypes)

    def uses_class_means(self) -> bool:
        return False  # prototypes are means of transformed embeddings

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the base mean's size is only known once set: take the stored one's shape before copying
        key = prefix + "base_mean_"
        if key in state_dict:
            self.base_mean_ = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict:
        return {"model": self.name, "center": self.center, "normalize": self.normalize}
