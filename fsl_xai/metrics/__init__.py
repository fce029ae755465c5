"""Subgroup metrics with honest intervals: error rates, sensitivity/specificity and calibration per
subgroup (cluster bootstrap over episodes or Wilson) as a :class:`SubgroupReport`, disparity between
subgroups, and the cross-population protocol (support from one subgroup, queries from another).

The interval functions live in :mod:`fsl_xai.intervals`; the most used ones are re-exported here.
"""

from ..intervals import (
    CI_METHODS,
    Interval,
    cluster_bootstrap,
    cluster_bootstrap_proportion,
    newcombe_difference_interval,
    proportion_interval,
    wilson_interval,
)
from .cross_population import CrossPopulationResult, cross_population
from .disparity import disparity, disparity_table
from .grouping import DEFAULT_AGE_BANDS, MISSING, Group, band_labels, bin_column, subgroups
from .subgroups import (
    SubgroupReport,
    SubgroupSettings,
    class_probabilities,
    class_table,
    subgroup_report,
    subgroup_table,
)

__all__ = [
    "CI_METHODS", "CrossPopulationResult", "DEFAULT_AGE_BANDS", "Group", "Interval", "MISSING", "SubgroupReport",
    "SubgroupSettings", "band_labels", "bin_column", "class_probabilities", "class_table", "cluster_bootstrap",
    "cluster_bootstrap_proportion", "cross_population", "disparity", "disparity_table", "newcombe_difference_interval",
    "proportion_interval", "subgroup_report", "subgroup_table", "subgroups", "wilson_interval",
]
