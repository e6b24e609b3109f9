"""The detectors of ``crab impact``: pairs of orthogonal detectors on pixels of the LiteBIRD focal plane.

The IMO shipped with litebird_sim (``lbs.PTEP_IMO_LOCATION``) gives, for the
channel asked (default ``M1-140``: MFT, 140 GHz), the band, the NET of one
detector, and the focal-plane pixels.  Pair ``p`` sits on the pixel of the
channel's ``2p``-th detector (its quaternion: where it looks and how it is
oriented); its two detectors share that quaternion and have polarisation
angles 0 and 90 deg (``p`` even) or 45 and 135 deg (``p`` odd), so that the
binned map-maker solves I, Q and U without a half-wave plate.  They sample at
the model's rate (19 Hz for CRAB's default models, not the IMO's 31 Hz).

Wafers: by default every detector is on the IMO wafer of the first pixel
(``M02`` for ``M1-140``: the first pixels of the channel are neighbours on one
wafer), so a wafer-aware model gives them all the same wafer hits, each with
its own coupling.  ``detectors_per_wafer`` splits them into wafers ``W00``,
``W01``, ... of that many detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crab.core.errors import InputError
from crab.integrations.impact.config import ImpactConfig

#: Telescope of a channel by the first letter of its name.
TELESCOPES = {"L": "LFT", "M": "MFT", "H": "HFT"}


@dataclass(frozen=True)
class Channel:
    """What ``crab impact`` takes from the IMO about one frequency channel.

    Attributes
    ----------
    name, telescope : str
    bandcenter_ghz, bandwidth_ghz : float
        Top-hat band (GHz).
    net_uk_sqrt_s : float
        NET of one detector (uK_CMB sqrt(s)), ``net_detector_ukrts``.
    fwhm_arcmin : float
        Beam FWHM (arcmin).
    imo_url : str
        Where the channel is in the IMO.
    """

    name: str
    telescope: str
    bandcenter_ghz: float
    bandwidth_ghz: float
    net_uk_sqrt_s: float
    fwhm_arcmin: float
    imo_url: str


def telescope_of(channel: str) -> str:
    try:
        return TELESCOPES[channel[:1].upper()]
    except KeyError:
        raise InputError(f"channel {channel!r}: expected an IMO channel name such as M1-140 (L..., M... or H...)") from None


def load_imo(lbs: Any):
    """The IMO shipped with litebird_sim (no network)."""
    return lbs.Imo(flatfile_location=lbs.PTEP_IMO_LOCATION)


def channel_info(lbs: Any, imo: Any, config: ImpactConfig) -> tuple[Channel, Any]:
    """The channel's :class:`Channel` and its litebird_sim ``FreqChannelInfo``."""
    tel = telescope_of(config.channel)
    url = f"/releases/{config.imo_release}/satellite/{tel}/{config.channel}/channel_info"
    try:
        info = lbs.FreqChannelInfo.from_imo(imo, url)
    except (KeyError, ValueError, OSError):
        raise InputError(f"channel {config.channel!r} is not in the IMO release {config.imo_release!r} shipped with litebird_sim") from None
    ch = Channel(
        name=config.channel,
        telescope=tel,
        bandcenter_ghz=float(info.bandcenter_ghz),
        bandwidth_ghz=float(info.bandwidth_ghz),
        net_uk_sqrt_s=float(info.net_detector_ukrts),
        fwhm_arcmin=float(info.fwhm_arcmin),
        imo_url=url,
    )
    return ch, info


def instrument(lbs: Any, imo: Any, config: ImpactConfig):
    """The telescope's ``InstrumentInfo`` (boresight to spin axis)."""
    return lbs.InstrumentInfo.from_imo(imo, f"/releases/{config.imo_release}/satellite/{telescope_of(config.channel)}/instrument_info")


def pair_angles_deg(pair: int) -> tuple[float, float]:
    """Polarisation angles of the two detectors of pair ``pair`` (deg)."""
    return (0.0, 90.0) if pair % 2 == 0 else (45.0, 135.0)


def make_detectors(lbs: Any, imo: Any, channel_obj: Any, channel: Channel, config: ImpactConfig, sampling_rate_hz: float, net_uk_sqrt_s: float) -> list:
    """The ``lbs.DetectorInfo`` of the run, pair by pair (see the module docstring).

    Names are ``{wafer}_{pixel:03d}_{angle:03d}`` (e.g. ``M02_030_045``); the glitches of
    a detector are keyed on its name.
    """
    objs = list(channel_obj.detector_objs)
    if 2 * (config.n_pairs - 1) >= len(objs):
        raise InputError(f"channel {channel.name} has {len(objs)} detectors in the IMO: at most {len(objs)} detectors ({len(objs) // 2} pairs)")
    dets = []
    first_wafer = None
    for p in range(config.n_pairs):
        imo_det = lbs.DetectorInfo.from_imo(imo, objs[2 * p])
        first_wafer = first_wafer or str(imo_det.wafer or "W00")
        for k, angle in enumerate(pair_angles_deg(p)):
            i = 2 * p + k
            wafer = first_wafer if config.detectors_per_wafer is None else f"W{i // int(config.detectors_per_wafer):02d}"
            dets.append(
                lbs.DetectorInfo(
                    name=f"{wafer}_{int(imo_det.pixel if imo_det.pixel is not None else p):03d}_{int(angle):03d}",
                    wafer=wafer,
                    pixel=imo_det.pixel,
                    channel=channel.name,
                    sampling_rate_hz=float(sampling_rate_hz),
                    bandcenter_ghz=channel.bandcenter_ghz,
                    bandwidth_ghz=channel.bandwidth_ghz,
                    net_ukrts=float(net_uk_sqrt_s),
                    fwhm_arcmin=channel.fwhm_arcmin,
                    pol_angle_rad=float(np.radians(angle)),
                    pol_efficiency=1.0,
                    quat=imo_det.quat,
                )
            )
    names = [d.name for d in dets]
    if len(set(names)) != len(names):
        raise InputError(f"detector names are not unique: {names}")
    return dets
