"""The scoring rule of a fitted episode, written as plain numbers for the bundle's predictor.

The bundle's predictor (:mod:`fsl_xai.deploy.predict`) turns ONNX embeddings into class scores with
numpy alone, so every model the bundle can carry must score a query from its embedding and a few
fixed arrays. :func:`scoring_rule` reads that rule off a :class:`~fsl_xai.models.FittedEpisode`:

- ProtoNet: minus the squared Euclidean distance to the class means, or a scaled cosine;
- SimpleShot: the same distance after centring on the base mean and L2-normalising;
- the fine-tuning baseline: its trained head (``q W^T + b``, or a scaled cosine to the head's rows),
  which is fixed once the support set is fitted;
- Matching Networks: log of the attention on each class's support embeddings;
- the transductive model only without refinement (``iterations=0``): with refinement a query's
  scores depend on the other queries scored with it, which a per-image predictor cannot reproduce.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ModelError
from ..models import (
    FineTuneClassifier,
    FittedEpisode,
    MatchingNetwork,
    PrototypicalNetwork,
    SimpleShot,
    TransductivePrototypes,
)

#: what the bundle can carry, in words (for error messages and the model card)
SUPPORTED = ("protonet (euclidean or cosine), simpleshot, finetune (linear or cosine head), matching, "
             "transductive with iterations=0")


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def scoring_rule(fitted: FittedEpisode) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The rule (JSON-ready) and the arrays (float32) that score embeddings as ``fitted`` does.

    Returns:
        (rule, arrays): ``rule`` has ``name`` (squared_euclidean, cosine, linear or matching),
        ``l2_normalize``, ``scale``, ``temperature`` and ``description``; ``arrays`` has ``vectors``
        (n_classes, D) (or the support embeddings for matching), and where the rule needs them
        ``center`` (D,), ``bias`` (n_classes,) and ``member`` (n_classes, n_support).

    Raises:
        ModelError: the model refines its prototypes with the queries, or is of a kind the
            predictor does not know; the message lists what is supported.
    """
    model = fitted.model
    rule: dict[str, Any] = {"l2_normalize": False, "scale": 1.0, "temperature": 1.0}
    arrays: dict[str, np.ndarray] = {}
    if isinstance(model, TransductivePrototypes) and model.refines_with_queries():
        raise ModelError(
            f"the transductive model refines its prototypes with the queries scored together ({model.iterations} "
            "iterations), so one image's prediction depends on the others and a per-image predictor cannot "
            f"reproduce it; export a checkpoint of a supported model: {SUPPORTED}")
    if isinstance(model, PrototypicalNetwork):  # the transductive model without refinement included
        arrays["vectors"] = _array(fitted.prototypes_)
        if model.distance == "cosine":
            rule |= {"name": "cosine", "scale": float(model.cosine_scale),
                     "description": f"{model.cosine_scale:g} x cosine similarity to each class mean"}
        else:
            rule |= {"name": "squared_euclidean",
                     "description": "minus the squared Euclidean distance to each class mean"}
    elif isinstance(model, SimpleShot):
        arrays["vectors"] = _array(fitted.prototypes_)
        centred = model.center and model.has_base_mean
        if centred:
            arrays["center"] = _array(model.base_mean_)
        rule |= {"name": "squared_euclidean", "l2_normalize": bool(model.normalize),
                 "description": "minus the squared Euclidean distance to each class mean of the support embeddings, "
                                "all " + ("centred on the base-class mean and " if centred else "")
                                + ("L2-normalised" if model.normalize else "as they are")}
    elif isinstance(model, FineTuneClassifier):
        weight, bias = fitted.extras_["head_weight"], fitted.extras_["head_bias"]
        arrays["vectors"] = _array(weight)
        if model.head == "cosine":
            rule |= {"name": "cosine", "scale": float(model.cosine_scale),
                     "description": f"{model.cosine_scale:g} x cosine similarity to each row of the head trained "
                                    f"on the support set ({model.steps} steps)"}
        else:
            arrays["bias"] = _array(bias)
            rule |= {"name": "linear", "description": "the linear head trained on the support set "
                                                      f"({model.steps} steps): embedding @ W^T + b"}
    elif isinstance(model, MatchingNetwork):
        labels = fitted.support_labels_
        arrays["vectors"] = _array(fitted.support_embeddings_)
        arrays["member"] = _array(torch.nn.functional.one_hot(labels, fitted.n_way).T)
        rule |= {"name": "matching", "temperature": float(model.temperature),
                 "description": "log of the softmax attention (cosine / temperature) on each class's support "
                                "embeddings"}
    else:
        raise ModelError(f"the bundle's predictor does not know how {type(model).__name__} scores a query; "
                         f"supported: {SUPPORTED}")
    return rule, arrays
