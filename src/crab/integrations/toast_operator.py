"""Cosmic-ray glitches as a TOAST 3 operator (optional extra ``crab-tod[toast]``).

:class:`CrabCosmicRays` adds the glitches of a CRAB model (a GAN trained by
``crab train`` or a template baseline) to the detector data of every
observation, with the conventions of :mod:`crab.integrations.injection`
(shared with the litebird_sim bridge):

* **Seed.** The CRAB seed is the operator's ``realization`` (a non-negative
  integer): ``crab generate --seed REALIZATION``.
* **Detectors.** Detector ``name`` has the key
  :func:`crab.core.rng.detector_key` ``(name)``, or, with ``key_column``, the
  integer in that column of the focalplane table (``crab generate
  --detectors N`` makes keys ``0 .. N-1``).
* **Samples.** The absolute index of a sample is ``round(t0 * f_s) + i``: ``t0``
  the time of the observation's first sample (``ob.shared[times]``, unix seconds
  in TOAST's satellite and ground simulations), ``f_s`` the focalplane's sample
  rate and ``i`` the sample's index in the observation.  2023-02-23 at 19 Hz is
  sample 3.19e10, far below the 2^53 a run may address
  (:data:`crab.core.units.MAX_SAMPLES`), so no other time origin is needed: the
  glitches of a sample are ``crab generate --start T`` with ``T`` its unix time.
  A ``t0`` off the sample grid uses the nearest grid index.
* **Wafers.** Detectors with the same value in the focalplane column
  ``wafer_column`` (default ``"wafer"``) share their wafer's hits (a model with
  a wafer layer): :meth:`crab.models.glitch_layer.wafer.WaferGrouping.by_name`.
  Without that column (``fake_hexagon_focalplane`` has none) the model's own
  grouping holds: key ``k`` on wafer ``k // N`` (``N`` the wafer size it was
  fitted on), which puts detectors keyed on their names each on its own wafer
  and detectors keyed ``0 .. N-1`` on the wafers of ``crab generate``.

Each process generates only its own detectors and samples, and the generator
is slice-exact, so the result does not depend on how TOAST distributes
observations, detectors and samples over processes, nor on views: each
sample gets the same value whatever else is computed.  Only ``t0`` is shared
(along the process row, when an observation is split in time).

Units: CRAB TOD are pW of absorbed-power equivalent.  ``conversion_factor``
(a Quantity) is the number of ``det_data`` units per pW: dimensionless (the
default) for detector data in power units (W, pW...; converted), e.g.
``2.8 * u.K / u.pW`` for data in K (:func:`crab.integrations.litebird.kcmb_per_pw`
estimates it).  Units that do not convert are an :class:`crab.core.errors.InputError`.

Importing this module imports TOAST; the core of CRAB never does.
"""

from __future__ import annotations

import numpy as np
import traitlets
from astropy import units as u
from toast.observation import default_values as defaults
from toast.ops.operator import Operator
from toast.timing import function_timer
from toast.traits import Int, Quantity, Unicode, Unit, trait_docs

from crab.core.errors import InputError
from crab.integrations.injection import DEFAULT_CHUNK_SAMPLES, absolute_start_sample, add_generated, detector_keys, make_source

#: The focalplane column read for wafers when ``wafer_column`` keeps its default (absent: no grouping).
DEFAULT_WAFER_COLUMN = "wafer"


@trait_docs
class CrabCosmicRays(Operator):
    """Add CRAB cosmic-ray glitches to the detector data of every observation.

    The glitches are *added* to ``det_data`` (created, in ``det_data_units``, if
    missing): applying twice adds twice.  Every selected local detector gets
    them, whatever its per-detector flags (a cosmic ray hits a flagged detector
    too).  With ``view``, only the samples inside the view's intervals are
    changed, and they get the same values as without a view.  See the module
    docstring for the seed, the absolute sample index, the wafers and the units.
    """

    API = Int(0, help="Internal interface version for this operator")

    model = Unicode(None, allow_none=True, help="CRAB model: a `crab train` directory or a template model (.json or folder)")

    realization = Int(0, help="Realization index: the CRAB seed (`crab generate --seed`), >= 0")

    times = Unicode(defaults.times, help="Observation shared key for timestamps (s)")

    det_data = Unicode(defaults.det_data, help="Observation detdata key to add the glitches to")

    det_data_units = Unit(defaults.det_data_units, help="Output units if creating detector data")

    conversion_factor = Quantity(
        1.0 * u.dimensionless_unscaled,
        help="det_data units per pW of CRAB TOD (e.g. K / pW); dimensionless: det_data in power units",
    )

    conversion_column = Unicode(
        None,
        allow_none=True,
        help="Focalplane column of per-detector conversion factors (det_data units per pW); overrides conversion_factor",
    )

    wafer_column = Unicode(
        DEFAULT_WAFER_COLUMN,
        allow_none=True,
        help="Focalplane column naming each detector's wafer (detectors of a wafer share its hits); None: no grouping",
    )

    key_column = Unicode(
        None,
        allow_none=True,
        help="Focalplane column of non-negative integer CRAB detector keys; None: the key of the detector name",
    )

    view = Unicode(None, allow_none=True, help="Use this view of the data in all observations")

    det_flags = Unicode(
        None,
        allow_none=True,
        help="Observation detdata key of the per-sample flags to mark the glitches in (created as uint8 if missing); None: no flags",
    )

    det_flag_mask = Int(1, help="Bit(s) set in det_flags on the samples of a glitch")

    flag_threshold = Quantity(
        None,
        allow_none=True,
        help="With det_flags: flag the samples where the generated glitch signal exceeds this (det_data units, e.g. a fraction of the noise RMS)",
    )

    n_workers = Int(None, allow_none=True, help="Generator threads per process (None: the CPUs available); never changes the result")

    chunk_samples = Int(DEFAULT_CHUNK_SAMPLES, help="Samples generated at a time per detector (bounds memory)")

    @traitlets.validate("realization")
    def _check_realization(self, proposal):
        return _at_least(proposal, 0, "realization must be >= 0 (it is the CRAB seed)")

    @traitlets.validate("chunk_samples")
    def _check_chunk_samples(self, proposal):
        return _at_least(proposal, 1, "chunk_samples must be >= 1")

    @traitlets.validate("n_workers")
    def _check_n_workers(self, proposal):
        return _at_least(proposal, 1, "n_workers must be >= 1 or None")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._sources = {}

    @function_timer
    def _exec(self, data, detectors=None, **kwargs):
        if self.model is None:
            raise InputError("CrabCosmicRays needs a model: a `crab train` directory or a template model")
        for ob in data.obs:
            if self.view is not None and self.view not in ob.intervals:
                raise InputError(f"view {self.view!r} is not among the intervals of observation {ob.name!r}")
            # collective along the process row: before any process skips the observation
            t0 = _first_time(ob, self.times)
            dets = ob.select_local_detectors(detectors)
            dtype = ob.detdata[self.det_data].dtype if self.det_data in ob.detdata else np.float64
            ob.detdata.ensure(self.det_data, dtype=dtype, detectors=dets, create_units=self.det_data_units)
            if not dets or ob.n_local_samples == 0:
                continue
            dd = ob.detdata[self.det_data]
            flags, threshold = self._flags(ob, dets, dd.units)
            if dd.detector_shape != (ob.n_local_samples,):
                raise InputError(f"det_data {self.det_data!r} must hold one value per sample, got a detector shape {dd.detector_shape}")
            fp = ob.telescope.focalplane
            fs = float(fp.sample_rate.to_value(u.Hz))
            abs_start = absolute_start_sample(t0, fs) + int(ob.local_index_offset)
            spans = None if self.view is None else [(s.start, s.stop) for s in ob.view[self.view].slices]
            add_generated(
                dd.data,
                self._keys(fp, dets),
                self._source(fs),
                abs_start,
                self._factors(fp, dets, dd.units),
                rows=dd.indices(dets),
                spans=spans,
                wafers=self._wafers(fp, dets),
                chunk_samples=self.chunk_samples,
                flags=flags,
                flag_mask=self.det_flag_mask,
                flag_threshold=threshold,
            )

    def _flags(self, ob, dets, units):
        """``(flags array, threshold in det_data units)`` of an observation, or ``(None, None)`` without ``det_flags``."""
        if self.det_flags is None:
            return None, None
        if self.flag_threshold is None:
            raise InputError("det_flags is set but flag_threshold is not: say above which glitch height (det_data units) to flag")
        try:
            threshold = float(self.flag_threshold.to_value(units))
        except u.UnitConversionError:
            raise InputError(f"flag_threshold is in {self.flag_threshold.unit}, which does not convert to det_data's {units}") from None
        ob.detdata.ensure(self.det_flags, dtype=np.uint8, detectors=dets)
        fl = ob.detdata[self.det_flags]
        dd = ob.detdata[self.det_data]
        if not np.array_equal(fl.indices(dets), dd.indices(dets)) or fl.data.shape != dd.data.shape:
            raise InputError(f"det_flags {self.det_flags!r} and det_data {self.det_data!r} hold different detectors or orders")
        return fl.data, threshold

    def _finalize(self, data, **kwargs):
        self._sources.clear()

    def _requires(self):
        req = {"shared": [self.times], "detdata": [self.det_data], "intervals": []}
        if self.view is not None:
            req["intervals"].append(self.view)
        return req

    def _provides(self):
        return {"detdata": [self.det_data] + ([self.det_flags] if self.det_flags is not None else [])}

    # ---------------------------------------------------------------- per observation
    def _source(self, fs: float):
        """The generator of ``(model, realization, fs)``, loaded once until :meth:`finalize`."""
        key = (str(self.model), int(self.realization), fs, self.n_workers)
        if key not in self._sources:
            self._sources[key] = make_source(str(self.model), int(self.realization), fs, n_workers=self.n_workers)
        return self._sources[key]

    def _keys(self, fp, dets: list[str]) -> list[int]:
        if self.key_column is None:
            return detector_keys(str(d) for d in dets)
        if self.key_column not in fp.detector_data.colnames:
            raise InputError(f"the focalplane has no column {self.key_column!r} (key_column); its columns: {', '.join(fp.detector_data.colnames)}")
        keys = []
        for d in dets:
            v = fp[d][self.key_column]
            if not (isinstance(v, (int, np.integer)) and v >= 0):
                raise InputError(f"key_column {self.key_column!r} must hold non-negative integers, got {v!r} for detector {d!r}")
            keys.append(int(v))
        return keys

    def _wafers(self, fp, dets: list[str]) -> list[str] | None:
        col = self.wafer_column
        if col is None:
            return None
        if col not in fp.detector_data.colnames:
            if col == DEFAULT_WAFER_COLUMN:
                return None
            raise InputError(f"the focalplane has no column {col!r} (wafer_column); its columns: {', '.join(fp.detector_data.colnames)}")
        return [str(fp[d][col]) for d in dets]

    def _factors(self, fp, dets: list[str], units) -> np.ndarray:
        """``det_data`` units per pW of each detector (float64)."""
        if self.conversion_column is None:
            given = [self.conversion_factor] * len(dets)
            what = "conversion_factor"
        else:
            if self.conversion_column not in fp.detector_data.colnames:
                raise InputError(f"the focalplane has no column {self.conversion_column!r} (conversion_column)")
            given = [u.Quantity(fp[d][self.conversion_column]) for d in dets]
            what = f"conversion_column {self.conversion_column!r}"
        out = np.empty(len(dets), np.float64)
        for i, q in enumerate(given):
            try:
                out[i] = (q * u.pW).to_value(units)
            except u.UnitConversionError:
                raise InputError(
                    f"det_data {self.det_data!r} is in {units}, but {what} ({q}) turns pW into {(q * u.pW).unit}: give it in {units} / pW"
                ) from None
        return out


def _at_least(proposal, minimum: int, message: str):
    """A trait validator's value if it is None (where the trait allows it) or at least ``minimum``, else ``TraitError(message)``."""
    value = proposal["value"]
    if value is not None and value < minimum:
        raise traitlets.TraitError(message)
    return value


def _first_time(ob, times: str) -> float:
    """Time (s) of the observation's first sample, known to every process of the observation's row."""
    if times not in ob.shared:
        raise InputError(f"observation {ob.name!r} has no shared timestamps {times!r}")
    stamps = ob.shared[times].data
    mine = (int(ob.local_index_offset), float(stamps[0]) if len(stamps) else None)
    row = ob.comm_row
    everyone = row.allgather(mine) if row is not None and ob.comm_row_size > 1 else [mine]
    first = [t for off, t in everyone if off == 0 and t is not None]
    if not first:
        if ob.n_all_samples == 0 or ob.n_local_samples == 0:
            return 0.0
        raise InputError(f"observation {ob.name!r}: no process of the row holds its first sample")
    return first[0]


__all__ = ["CrabCosmicRays", "DEFAULT_WAFER_COLUMN"]
