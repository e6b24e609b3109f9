"""Validation: how close synthetic TOD is to the Monte Carlo, against the Monte Carlo's own scatter.

:func:`validate` (see :mod:`crab.validation.validate` for the method)
compares synthetic sets with held-out Monte Carlo (one reference, or several
independent runs: the stronger test) and returns a :class:`ValidationResult`;
:func:`validate_phi` checks a phi-conditioned model at several solar
modulation potentials.

Modules, in the order the data goes through them:

``config``                 :class:`ValidationConfig`, :data:`TARGET_METRICS`
``inputs``                 reading and checking the TOD sets
``set_analysis``           :func:`analyse`: glitches, noise per block, window features of one TOD
``floor``                  the reference's halves and random re-splits
``metrics``, ``spectra``   two-sample statistics at the array level
``classifier``             the classifier two-sample test
``nearest_window``         the nearest-window search of the memorisation test
``rate_metrics``, ``distribution_metrics``, ``classifier_metric``, ``memorisation``, ``seams``
                           the metrics, each beside its floor (``builder``: the verdicts)
``scoring``                one set against one reference (the reference's tests set up once)
``multi_reference``        K >= 2 references: every set against each, the references against each other
``combine``                the verdict of a metric over K references (the pass rule)
``results``                :class:`MetricResult`, :class:`SetResult`, :class:`ValidationResult`
``validate``               :func:`validate`, the sequence of the steps above
``outputs``, ``report``, ``plots``
                           the report folder (``metrics.json``, ``report.md``, PNG plots)
``phi``                    :func:`validate_phi`
``inspect``                summaries and plots of a simulated file (``crab inspect``)
"""

from crab.validation.config import TARGET_METRICS, ValidationConfig
from crab.validation.inputs import check_compatible, tod_from_array
from crab.validation.outputs import write_outputs
from crab.validation.phi import PhiPoint, trained_phis, validate_phi
from crab.validation.results import MetricResult, SetResult, ValidationResult
from crab.validation.seams import seam_period
from crab.validation.set_analysis import SetAnalysis, analyse, wafer_pair_correlation
from crab.validation.validate import validate

__all__ = [
    "ValidationConfig",
    "MetricResult",
    "SetResult",
    "ValidationResult",
    "SetAnalysis",
    "analyse",
    "validate",
    "tod_from_array",
    "check_compatible",
    "seam_period",
    "write_outputs",
    "wafer_pair_correlation",
    "TARGET_METRICS",
    "PhiPoint",
    "trained_phis",
    "validate_phi",
]
