"""How far to trust an explanation: the quality checks of attribution maps, in one namespace.

Each check lives in its own module; this one gathers their public names:

- :mod:`~fsl_xai.explain.deletion`: ``deletion_insertion`` (Petsiuk et al. 2018);
- :mod:`~fsl_xai.explain.localization`: ``localization`` (pointing game, energy inside a mask);
- :mod:`~fsl_xai.explain.randomization`: ``randomization_check`` (Adebayo et al. 2018);
- :mod:`~fsl_xai.explain.support_randomization`: ``support_check``, its few-shot analogue (shuffled
  support labels, support images of other classes) and ``support_check_summary`` over episodes;
- :mod:`~fsl_xai.explain.infidelity`: ``infidelity_sensitivity`` (Yeh et al. 2019);
- :mod:`~fsl_xai.explain.quality_report`: ``quality_table``, every metric for several methods with
  n, the undefined count and a 95% confidence interval;
- :mod:`~fsl_xai.explain.badge_checks`: ``badges``, the per-map checks shown next to a heatmap.

Every check takes a fitted episode and changes neither it nor its model; every metric is defined
on degenerate maps (flat, all zero, all negative) as a value or an explicit undefined (NaN, counted
in the table), never silently dropped.
"""

from __future__ import annotations

from .badge_checks import DEFAULT_COMPLETENESS_THRESHOLD, BadgeCheck, Badges, badges
from .deletion import DeletionInsertionResult, deletion_insertion, pixel_ranks
from .infidelity import InfidelitySensitivityResult, infidelity_sensitivity
from .localization import LocalizationResult, localization
from .method_maps import MethodLike, as_maps, flat_maps, method_attributions, method_maps, method_name, random_maps
from .quality_report import ALL_METRICS, COLUMNS, HIGHER_IS_BETTER, SUPPORT_METRICS, quality_table
from .randomization import (
                            RandomizationResult,
                            layer_groups,
                            randomization_check,
                            randomization_status,
                            randomized_copy,
                            spearman_rows,
)
from .support_randomization import (
    DEFAULT_SUPPORT_THRESHOLD,
    SUPPORT_VARIANTS,
    SupportCheckResult,
    perturbed_support,
    shuffled_labels,
    support_check,
    support_check_summary,
)

__all__ = [
    "ALL_METRICS", "COLUMNS", "HIGHER_IS_BETTER", "BadgeCheck", "Badges", "DeletionInsertionResult",
    "InfidelitySensitivityResult", "LocalizationResult", "MethodLike", "RandomizationResult", "as_maps", "badges",
    "deletion_insertion", "flat_maps", "infidelity_sensitivity", "layer_groups", "localization", "method_attributions",
    "method_maps", "method_name", "pixel_ranks", "quality_table", "random_maps", "randomization_check",
    "randomization_status", "randomized_copy", "spearman_rows",
    "DEFAULT_COMPLETENESS_THRESHOLD", "DEFAULT_SUPPORT_THRESHOLD", "SUPPORT_METRICS", "SUPPORT_VARIANTS",
    "SupportCheckResult", "perturbed_support", "shuffled_labels", "support_check", "support_check_summary",
]
