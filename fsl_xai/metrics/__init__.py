"""Subgroup metrics with honest intervals: error rates, sensitivity/specificity and calibration per
subgroup (cluster bootstrap over episodes or Wilson), disparity between subgroups, and the
cross-population protocol (support from one subgroup, queries from another)."""

from .cross_population import CrossPopulationResult, cross_population
from .intervals import (CI_METHODS, Interval, cluster_bootstrap, cluster_bootstrap_proportion,
                        newcombe_difference_interval, proportion_interval, wilson_interval)
from .subgroups import (DEFAULT_AGE_BANDS, MISSING, band_labels, bin_column, class_probabilities, class_table,
                        disparity, disparity_table, subgroup_table)

__all__ = [
    "CI_METHODS", "CrossPopulationResult", "DEFAULT_AGE_BANDS", "Interval", "MISSING", "band_labels", "bin_column",
    "class_probabilities", "class_table", "cluster_bootstrap", "cluster_bootstrap_proportion", "cross_population",
    "disparity", "disparity_table", "newcombe_difference_interval", "proportion_interval", "subgroup_table",
    "wilson_interval",
]
