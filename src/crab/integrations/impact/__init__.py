"""From glitches to B-modes: what the generated cosmic-ray TOD does to LiteBIRD maps (``crab impact``).

The chain, one module per step (optional extra ``crab-tod[litebird]``: litebird_sim
and healpy are imported only when a run starts):

* :mod:`~crab.integrations.impact.config`: :class:`ImpactConfig`, every parameter with its unit;
* :mod:`~crab.integrations.impact.focalplane`: the detectors (orthogonal pairs on pixels of
  the IMO's focal plane) and the channel's band and NET;
* :mod:`~crab.integrations.impact.scanning`: litebird_sim's default LiteBIRD scanning
  strategy, one ``Observation`` per time chunk, the pointing of each pair;
* :mod:`~crab.integrations.impact.timelines`: white noise of the comparison maps, flags of
  the threshold deglitcher, the noise level of the TOD;
* :mod:`~crab.integrations.impact.mapmaking`: the binned map-maker accumulated chunk by chunk
  (equal to litebird_sim's ``make_binned_map``), litebird_sim's destriper;
* :mod:`~crab.integrations.impact.spectra`: mask, healpy spectra, the headline ratio, the bias on r;
* :mod:`~crab.integrations.impact.reference`: the shipped primordial BB for r = 0.001 (CAMB);
* :mod:`~crab.integrations.impact.run`: :func:`run_impact`, the chunk loop;
* :mod:`~crab.integrations.impact.report`: ``cl.csv``, FITS maps, the plot, the run record.

See ``docs/impact.md`` for the assumptions and the comparison with Tominaga et al. 2021.
"""

from crab.integrations.impact.config import ImpactConfig
from crab.integrations.impact.run import ImpactResult, require_litebird, run_impact

__all__ = ["ImpactConfig", "ImpactResult", "require_litebird", "run_impact"]
