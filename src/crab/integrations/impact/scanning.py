"""Scanning: litebird_sim's default LiteBIRD scanning strategy, one observation per time chunk.

:class:`Scan` holds what the whole run shares (the spacecraft's attitude
quaternions from the IMO's scanning parameters, the telescope, the detectors)
and makes, for each time chunk, a litebird_sim ``Observation`` whose TOD
(``obs.tod``, float32 K_CMB, zeros) the glitches are added to.  Chunk ``c``
starts at the absolute sample ``round(start_s * f_s) + c * chunk_samples``
and its ``start_time_global`` is that sample's time, so the bridge
(:func:`crab.integrations.litebird.apply_cosmic_rays_to_observations`) gives
every chunk exactly its slice of one continuous glitch series.

:meth:`Scan.pair_pointing` computes the pointing of one pair of detectors
(both share a quaternion, so it is computed once per pair) and turns it into
HEALPix pixels and the angle ``psi`` that the binned map-maker uses, exactly
as litebird_sim's ``make_binned_map`` does it (no HWP): ``psi = pol_angle +
psi_pointing``, with the pointing rotated to Galactic coordinates if asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from crab.integrations.impact.config import ImpactConfig


class Scan:
    """The mission's scanning for ``crab impact``.

    Parameters
    ----------
    lbs : module
        litebird_sim.
    imo : litebird_sim.Imo
    instrument : litebird_sim.InstrumentInfo
    detectors : sequence of litebird_sim.DetectorInfo
        Pairs: detectors ``2p`` and ``2p + 1`` share their quaternion.
    config : ImpactConfig
    sampling_rate_hz : float
    """

    def __init__(self, lbs: Any, imo: Any, instrument: Any, detectors: Sequence[Any], config: ImpactConfig, sampling_rate_hz: float) -> None:
        self.lbs = lbs
        self.instrument = instrument
        self.detectors = list(detectors)
        self.config = config
        self.sampling_rate_hz = float(sampling_rate_hz)
        self.first_sample = int(np.rint(config.start_s * self.sampling_rate_hz))
        self.n_samples = round(config.duration_s * self.sampling_rate_hz)
        self.chunk_samples = max(1, round(config.chunk_s * self.sampling_rate_hz))
        strategy = lbs.SpinningScanningStrategy.from_imo(imo=imo, url=f"/releases/{config.imo_release}/satellite/scanning_parameters/")
        self.strategy = strategy
        span_s = (self.n_samples + 1) / self.sampling_rate_hz
        self.spin2ecliptic_quats = strategy.generate_spin2ecl_quaternions(
            start_time=self.first_sample / self.sampling_rate_hz, time_span_s=span_s, delta_time_s=config.scan_quaternion_step_s
        )
        self._galactic = config.coordinates == "galactic"

    @property
    def n_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_samples)

    def chunks(self) -> Iterator[tuple[int, int]]:
        """``(first absolute sample, n_samples)`` of every chunk, in time order."""
        for c in range(self.n_chunks):
            s0 = c * self.chunk_samples
            yield self.first_sample + s0, min(self.chunk_samples, self.n_samples - s0)

    def observation(self, first_sample: int, n_samples: int, *, allocate_tod: bool = True):
        """A litebird_sim ``Observation`` of every detector over ``[first_sample, first_sample + n_samples)``
        (absolute samples), its pointings prepared (computed on demand)."""
        lbs = self.lbs
        obs = lbs.Observation(
            detectors=[asdict(d) for d in self.detectors],
            n_samples_global=int(n_samples),
            start_time_global=first_sample / self.sampling_rate_hz,
            sampling_rate_hz=self.sampling_rate_hz,
            allocate_tod=allocate_tod,
        )
        lbs.prepare_pointings(obs, self.instrument, self.spin2ecliptic_quats)
        return obs

    def pair_pointing(self, obs: Any, pair: int, hpx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (RING, int64) and pointing orientation ``psi`` (rad) of pair ``pair`` in ``obs``:
        the detector ``2 * pair``'s pointing, shared by its partner."""
        ptg, _ = obs.get_pointings(2 * pair)
        if self._galactic:
            from litebird_sim.coordinates import rotate_coordinates_e2g  # noqa: PLC0415

            ptg = rotate_coordinates_e2g(ptg)
        pix = hpx.ang2pix(ptg[:, :2]).astype(np.int64)
        return pix, np.ascontiguousarray(ptg[:, 2])

    def coordinate_system(self):
        """litebird_sim's ``CoordinateSystem`` of the maps."""
        cs = self.lbs.CoordinateSystem
        return cs.Galactic if self._galactic else cs.Ecliptic

    def describe(self) -> dict[str, Any]:
        s = self.strategy
        return {
            "strategy": "litebird_sim SpinningScanningStrategy from the IMO's scanning_parameters",
            "spin_sun_angle_deg": float(np.degrees(s.spin_sun_angle_rad)),
            "precession_rate_hz": float(s.precession_rate_hz),
            "spin_rate_hz": float(s.spin_rate_hz),
            "spin_boresight_angle_deg": float(np.degrees(self.instrument.spin_boresight_angle_rad)),
            "hwp": None,
            "quaternion_step_s": self.config.scan_quaternion_step_s,
            "first_sample": self.first_sample,
            "n_samples": self.n_samples,
            "chunk_samples": self.chunk_samples,
            "n_chunks": self.n_chunks,
            "coordinates": self.config.coordinates,
        }
