"""Explanations of few-shot decisions.

- ``attribution``: Captum methods on prototype distances behind one call, ``explain`` /
  ``explain_episode`` -> ``AttributionMap``; ``list_methods()``.
- ``support``: explanations through the support set: exact leave-one-out ``support_influence``,
  ``support_attribution`` (pixels of the support images), ``similarity_map`` and ``nearest_support``.
- ``quality`` and ``concepts`` (deletion/insertion, localisation, randomisation, infidelity, quality
  table, TCAV): their public names are also reachable here, imported on first use.
"""

from __future__ import annotations

import importlib

from .attribution import (METHODS, AttributionMap, ExplainedOutput, MethodSpec, conv_layers, explain,
                          explain_episode, grid_mask, list_methods, normalize_maps, superpixel_mask)
from .support import (SimilarityMap, SupportAttribution, leave_one_out_logits, nearest_support,
                      similarity_map, support_attribution, support_influence)

__all__ = [
    "METHODS", "AttributionMap", "ExplainedOutput", "MethodSpec", "SimilarityMap", "SupportAttribution",
    "conv_layers", "explain", "explain_episode", "grid_mask", "leave_one_out_logits", "list_methods",
    "nearest_support", "normalize_maps", "similarity_map", "superpixel_mask", "support_attribution",
    "support_influence",
]

_LAZY_MODULES = ("quality", "concepts")


def __getattr__(name: str):
    # quality and concepts are imported on first use, so that attribution works on its own
    for module_name in _LAZY_MODULES:
        module = importlib.import_module(f"{__name__}.{module_name}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
