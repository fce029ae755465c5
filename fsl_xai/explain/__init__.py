"""Explanations of few-shot decisions. Every function takes a fitted episode
(``model.fit(support_images, support_labels)``) and changes neither it nor its model.

- ``attribution``: Captum methods on prototype distances behind one call, ``explain`` /
  ``explain_episode`` -> ``AttributionMap``; the registry in ``methods`` (``METHODS``,
  ``method_spec(name)``, ``list_methods()``), whose entries say everything about a method.
- ``support``: explanations through the support set: exact leave-one-out ``support_influence``
  and ``support_attribution`` (pixels of the support images); ``similarity``: ``similarity_map``
  and ``nearest_support``.
- ``core``: the helpers all of them share (baselines, the explained quantity, layers, checks).
- ``quality`` (deletion/insertion, localisation, randomisation of the model and of the support
  set, infidelity, quality table, badges)
  and ``concepts`` (TCAV): their public names are also reachable here, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .attribution import AttributionMap, completeness_gaps, explain, explain_episode, normalize_maps
from .core import BASELINES, ExplainedOutput, conv_layers, make_baseline, resolve_layer
from .fast import explanation_model, fast_backbone
from .masks import grid_mask, superpixel_mask
from .methods import INTEGRATION_RULES, METHODS, MainParam, MethodSpec, list_methods, method_spec
from .similarity import SimilarityMap, nearest_support, similarity_map
from .support import SupportAttribution, SupportInfluence, leave_one_out_logits, support_attribution, support_influence

__all__ = [
    "BASELINES", "INTEGRATION_RULES", "METHODS", "AttributionMap", "ExplainedOutput", "MainParam", "MethodSpec",
    "SimilarityMap", "SupportAttribution", "SupportInfluence", "completeness_gaps", "conv_layers", "explain",
    "explain_episode",
    "explanation_model", "fast_backbone", "grid_mask", "leave_one_out_logits", "list_methods", "make_baseline",
    "method_spec", "nearest_support", "normalize_maps", "resolve_layer", "similarity_map", "superpixel_mask",
    "support_attribution", "support_influence",
]

_LAZY_MODULES = ("quality", "concepts")


def __getattr__(name: str) -> Any:
    # the quality checks and TCAV are imported on first use
    for module_name in _LAZY_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
