"""Statistics for the offline analysis: pure numpy functions, deterministic for a seed.

Every interval comes back as an `Estimate`; methods, references and measured coverage
are described in docs/statistics.md.
"""

from analysis.stats.agreement import cohen_kappa
from analysis.stats.calibration import (
    Calibration,
    ReliabilityBin,
    brier,
    calibration,
    ece,
    ece_debiased,
    mce,
    reliability_bins,
)
from analysis.stats.cost import expected_cost, per_thousand
from analysis.stats.estimate import Estimate
from analysis.stats.latency import quantile, slo_compliance
from analysis.stats.multiple import holm
from analysis.stats.pairing import PairedComparison, mcnemar_midp, paired_compare
from analysis.stats.power import mde_paired, n_for_paired
from analysis.stats.proportions import (
    accuracy,
    clopper_pearson,
    clopper_pearson_lower,
    wilson_interval,
)
from analysis.stats.recalibration import Recalibrated, recalibrate_cv
from analysis.stats.thresholds import ThresholdResult, risk_coverage, threshold_for_precision

__all__ = [
    "Calibration",
    "Estimate",
    "PairedComparison",
    "Recalibrated",
    "ReliabilityBin",
    "ThresholdResult",
    "accuracy",
    "brier",
    "calibration",
    "clopper_pearson",
    "clopper_pearson_lower",
    "cohen_kappa",
    "ece",
    "ece_debiased",
    "expected_cost",
    "holm",
    "mce",
    "mcnemar_midp",
    "mde_paired",
    "n_for_paired",
    "paired_compare",
    "per_thousand",
    "quantile",
    "recalibrate_cv",
    "reliability_bins",
    "risk_coverage",
    "slo_compliance",
    "threshold_for_precision",
    "wilson_interval",
]
