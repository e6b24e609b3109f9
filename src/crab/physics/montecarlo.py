"""The physics Monte Carlo chain: cosmic rays at L2 -> shield -> wafer -> TES -> TOD.

This module composes the stages (see ``docs/design.md``):

1. :mod:`crab.physics.spectra`   modulated spectra, Poisson primaries on the wafer;
2. :mod:`crab.physics.transport` CSDA through the aluminium-equivalent shield;
3. :mod:`crab.physics.deposit`   direct (absorber) and wafer hits, straggled deposits;
4. :mod:`crab.physics.response`  nonlinear TES pulses, linear wafer path, anti-alias
   filter, decimation;
5. :mod:`crab.physics.noise`     white + 1/f detector noise at the sampling rate;

and writes the TOD with the truth of every hit through :mod:`crab.io.tod`.

Three layers, array first:

- :class:`MonteCarloSimulator` streams ``(tod_chunk, events)`` of any chunk size;
- :func:`simulate` returns ``(tod, events, meta)`` in memory;
- :func:`simulate_to_file` writes an HDF5 TOD file atomically, with progress.

Reproducibility
---------------
All randomness is keyed on what it describes (:mod:`crab.core.rng`): the
primaries and geometry of event block ``b`` (``event_block_s`` of time) come
from ``("mc_primaries", b)``, their straggling from ``("mc_deposit", b)``, the
noise of detector ``d`` from ``("mc_noise", d, noise block)``.  Internally
the TOD is built in fixed segments (``segment_s``) with the filter states
carried over, so the bytes do not depend on how the output is chunked, and
the first ``T`` seconds of a longer run equal a run of length ``T``.  Each
cluster of direct hits is integrated independently of the others (only
exactly rounded arithmetic in the integrator), so batching does not change
results either.

Timing conventions
------------------
Output sample ``k`` is at ``t = k / sampling_rate_hz``; internal sample ``j``
at ``j / internal_rate``; the internal rate is ``M`` times the sampling rate
and output sample ``k`` is the low-passed internal sample ``k M``.  The wafer
starts in its steady state: a burn-in of ``wafer_burnin_s`` of wafer hits
before ``t = 0`` (stream ``"mc_burnin"``) sets its temperature.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from crab.core import interrupt
from crab.core import rng
from crab.physics.deposit import WaferConfig, deposit_hits, sample_positions
from crab.core.errors import InputError
from crab.physics.noise import NoiseGenerator, NoiseParams
from crab.core.progress import bar
from crab.core.provenance import to_jsonable
from crab.physics.response import J_PER_KEV, Decimator, TESModel, TESParams, WaferPath, WaferThermalParams, antialias_sos
from crab.physics.spectra import PrimarySampler, SpectraConfig
from crab.io.tod import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable, TodMetadata, TodWriter, default_detector_names
from crab.physics.transport import ShieldConfig, transport_through_shield

#: Default detector noise: NEP 16 aW/sqrt(Hz) (about 5e-5 pW rms per sample at 19 Hz), knee 20 mHz.
DEFAULT_NOISE = NoiseParams(white_asd=1.6e-5, f_knee_hz=0.02, alpha=1.0, f_min_hz=1e-4)


@dataclass
class MonteCarloConfig:
    """Everything that defines a Monte Carlo run (the seed aside).

    Attributes
    ----------
    n_detectors : int
        Detectors on the wafer.
    sampling_rate_hz : float
        Output sampling rate (Hz); 19 Hz in older LiteBIRD studies, 31 Hz in recent ones.
    phi_gv : float
        Solar modulation potential (GV), 0.4 (minimum) to 1.4 (maximum).
    internal_rate_hz : float
        Target integration rate (Hz); the rate used is the nearest integer
        multiple of the sampling rate.  Must be above the sampling rate and
        fast enough for the TES time constants.
    spectra, shield, wafer, tes, wafer_thermal : dataclasses
        Stage parameters (see their modules).
    noise : NoiseParams
        Detector noise at the output rate (pW/sqrt(Hz)).
    add_noise : bool
        Add the noise (off: pure glitch signal).
    antialias_order : int
        Order of the Bessel anti-alias filter.
    antialias_cutoff_frac : float
        Its -3 dB frequency as a fraction of the sampling rate (< 0.5).
    event_block_s : float
        Length of the blocks on which primaries are drawn (s).
    segment_s : float
        Length of the internal processing segments (s); a memory/speed knob,
        it does not change the result.
    pulse_batch_s : float
        Time span of direct-hit clusters integrated together (vectorisation).
    rk4_max_h_rate : float
        Runge-Kutta steps are at most this fraction of the shortest time
        constant met (electrical, ~50-100 us; cooling of very hot absorbers):
        each internal sample interval is split into that many sub-steps.
    relax_tol_pw : float
        A pulse is integrated until it stays below this (pW); a hit arriving
        on a detector before the previous pulse has relaxed is integrated
        together with it (pile-up in the nonlinear TES).
    max_pulse_s : float
        Longest integration of one cluster (s).
    wafer_burnin_s : float
        Wafer history simulated before t = 0 (s), ~10 wafer time constants.
    kappa_landau, kappa_gauss : float
        Straggling regime bounds (see :mod:`crab.physics.deposit`).
    wafer_name : str
        Prefix of the detector names (``W00_D000``, ...).
    """

    n_detectors: int = 4
    sampling_rate_hz: float = 19.0
    phi_gv: float = 0.6
    internal_rate_hz: float = 20000.0
    spectra: SpectraConfig = field(default_factory=SpectraConfig)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    wafer: WaferConfig = field(default_factory=WaferConfig)
    tes: TESParams = field(default_factory=TESParams)
    wafer_thermal: WaferThermalParams = field(default_factory=WaferThermalParams)
    noise: NoiseParams = DEFAULT_NOISE
    add_noise: bool = True
    antialias_order: int = 6
    antialias_cutoff_frac: float = 0.3
    event_block_s: float = 10.0
    segment_s: float = 50.0
    pulse_batch_s: float = 1800.0
    rk4_max_h_rate: float = 0.25
    relax_tol_pw: float = 1e-9
    max_pulse_s: float = 10.0
    wafer_burnin_s: float = 3.0
    kappa_landau: float = 0.01
    kappa_gauss: float = 10.0
    wafer_name: str = "W00"

    # ------------------------------------------------------------------ validation
    def validate(self) -> "MonteCarloConfig":
        """Check the values; raise :class:`InputError` naming the first problem."""
        if isinstance(self.n_detectors, bool) or not isinstance(self.n_detectors, (int, np.integer)) or self.n_detectors < 1:
            raise InputError(f"number of detectors must be an integer >= 1, got {self.n_detectors!r}")
        fs = self.sampling_rate_hz
        if not (isinstance(fs, (int, float, np.number)) and np.isfinite(fs) and fs > 0):
            raise InputError(f"sampling rate must be a positive number of Hz, got {fs!r}")
        if not (np.isfinite(self.internal_rate_hz) and self.internal_rate_hz > 0):
            raise InputError(f"internal rate must be a positive number of Hz, got {self.internal_rate_hz!r}")
        if fs > self.internal_rate_hz:
            raise InputError(
                f"sampling rate {fs:g} Hz is above the internal integration rate {self.internal_rate_hz:g} Hz; "
                f"lower the sampling rate or raise the internal rate"
            )
        if not (np.isfinite(self.phi_gv) and 0 <= self.phi_gv <= 5):
            raise InputError(f"modulation potential phi must be in [0, 5] GV, got {self.phi_gv!r}")
        if not 0 < self.antialias_cutoff_frac < 0.5:
            raise InputError(f"antialias_cutoff_frac must be in (0, 0.5), got {self.antialias_cutoff_frac}")
        if not 1 <= int(self.antialias_order) <= 12:
            raise InputError(f"antialias_order must be in 1..12, got {self.antialias_order}")
        for name in ("event_block_s", "segment_s", "pulse_batch_s", "rk4_max_h_rate", "relax_tol_pw", "max_pulse_s"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"MonteCarloConfig.{name} must be a positive number, got {v!r}")
        if not (np.isfinite(self.wafer_burnin_s) and self.wafer_burnin_s >= 0):
            raise InputError(f"wafer_burnin_s must be >= 0, got {self.wafer_burnin_s!r}")
        self.wafer.detector_centres_mm(int(self.n_detectors))  # raises if they do not fit
        return self

    # ------------------------------------------------------------------ derived timing
    @property
    def decimation_factor(self) -> int:
        """Internal samples per output sample ``M`` (a multiple of 16 when M >= 64)."""
        m = max(1, int(round(self.internal_rate_hz / self.sampling_rate_hz)))
        if m >= 64:
            m = 16 * int(round(m / 16))
        return m

    @property
    def wafer_decimation(self) -> int:
        """Internal samples per sample of the wafer path (16 when that rate stays >= 1 kHz, else 1).

        The wafer path has no content above ~100 Hz (its fastest stage is
        ``tau_link_s``; the TES modes it excites carry 1e-4 of its power), so it
        is computed at ``internal rate / 16`` with the same (analog Bessel)
        anti-alias filter discretised at that rate.
        """
        m = self.decimation_factor
        return 16 if (m % 16 == 0 and m * self.sampling_rate_hz / 16 >= 1000.0) else 1

    @property
    def effective_internal_rate_hz(self) -> float:
        """The internal rate used: ``M`` times the sampling rate (Hz)."""
        return self.decimation_factor * float(self.sampling_rate_hz)

    @property
    def block_samples(self) -> int:
        """Output samples per event block."""
        return max(1, int(round(self.event_block_s * self.sampling_rate_hz)))

    @property
    def segment_blocks(self) -> int:
        """Event blocks per processing segment."""
        return max(1, int(round(self.segment_s / (self.block_samples / self.sampling_rate_hz))))

    @property
    def batch_segments(self) -> int:
        """Processing segments per pulse batch."""
        return max(1, int(round(self.pulse_batch_s / (self.segment_blocks * self.block_samples / self.sampling_rate_hz))))

    def detector_names(self) -> list[str]:
        return default_detector_names(int(self.n_detectors), self.wafer_name)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (see :func:`crab.core.provenance.to_jsonable`)."""
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MonteCarloConfig":
        """Rebuild a config from :meth:`to_dict` output (e.g. a file's ``config`` attribute).

        Raises
        ------
        InputError
            For unknown keys or invalid values.
        """
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown Monte Carlo configuration keys {unknown}; known: {sorted(known)}")
        nested = {
            "spectra": SpectraConfig.from_dict,
            "shield": lambda x: ShieldConfig(**x),
            "wafer": lambda x: WaferConfig(**x),
            "tes": lambda x: TESParams(**x),
            "wafer_thermal": lambda x: WaferThermalParams(**x),
            "noise": lambda x: NoiseParams(**x),
        }
        try:
            for key, make in nested.items():
                if key in d and isinstance(d[key], Mapping):
                    d[key] = make(d[key])
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"invalid Monte Carlo configuration: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"invalid Monte Carlo configuration: {exc}") from None


# --------------------------------------------------------------------------- the simulator
@dataclass
class _Block:
    events: EventTable
    species: np.ndarray


class MonteCarloSimulator:
    """Streaming Monte Carlo of one wafer.

    Parameters
    ----------
    config : MonteCarloConfig
        Run definition (validated here).
    seed : int
        Non-negative seed.
    hits : EventTable, optional
        Use these hits instead of drawing cosmic rays (times in s, detector
        index or -1 for the wafer, energies in keV): the deterministic
        response to known deposits, for tests and studies.  No burn-in.

    Examples
    --------
    >>> sim = MonteCarloSimulator(MonteCarloConfig(n_detectors=2), seed=1)
    >>> for tod, events in sim.run(120.0, chunk_s=60.0):
    ...     pass
    """

    def __init__(self, config: MonteCarloConfig, seed: int, *, hits: EventTable | None = None) -> None:
        self.config = cfg = config.validate()
        self.seed = rng.check_seed(seed)
        self.n_det = int(cfg.n_detectors)
        self.fs = float(cfg.sampling_rate_hz)
        self.m = cfg.decimation_factor
        self.f_int = cfg.effective_internal_rate_hz
        self.dt = 1.0 / self.f_int
        self.tes = TESModel(cfg.tes)
        h_rate = self.dt * float(self.tes.fastest_rate_hz())
        if h_rate > 1.5:
            need = float(self.tes.fastest_rate_hz()) / 1.5
            raise InputError(
                f"internal rate {self.f_int:.6g} Hz is too low for the TES (fastest time constant "
                f"{1e6 / float(self.tes.fastest_rate_hz()):.3g} us): use at least {need:.4g} Hz"
            )
        self.sampler = PrimarySampler(cfg.spectra, cfg.phi_gv, cfg.wafer.area_cm2)
        self.m_w = cfg.wafer_decimation
        self.dt_w = self.dt * self.m_w
        self.wafer_path = WaferPath(self.tes, cfg.wafer_thermal, self.dt_w)
        cutoff = cfg.antialias_cutoff_frac * self.fs
        sos = antialias_sos(self.f_int, cutoff, int(cfg.antialias_order))
        self.dec_direct = Decimator(sos, self.m, self.n_det)
        self.dec_wafer = Decimator(antialias_sos(self.f_int / self.m_w, cutoff, int(cfg.antialias_order)), self.m // self.m_w, 1)
        self.noise = (
            NoiseGenerator(cfg.noise, self.fs, self.seed, "mc_noise", cache_blocks=2 * self.n_det + 4) if cfg.add_noise else None
        )
        self.n_block = cfg.block_samples
        self.n_seg = cfg.segment_blocks * self.n_block
        self._blocks: dict[int, _Block] = {}
        self._pulses: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(self.n_det)]
        self._absorbed_until = np.full(self.n_det, -np.inf)
        self._next_batch_segment = 0
        self._next_segment = 0
        self._wafer_pending: list[tuple[int, float, float]] = []  # (global internal index, phase, energy J)
        self._buffer: list[np.ndarray] = []
        self._buffer_start = 0  # output sample of the buffer's first column
        self._position = 0  # next output sample to hand out
        self._horizon_samples = 0  # requested end (output samples), bounds pulse batches
        self._hits = None
        if hits is not None:
            if len(hits) and (hits.detector.max() >= self.n_det or np.any((hits.detector < 0) != (hits.kind == EVENT_KIND_WAFER))):
                raise InputError("hits: detector indices must be < n_detectors, and -1 exactly for wafer hits (kind 1)")
            if len(hits) and hits.time_s.min() < 0:
                raise InputError("hits: times must be >= 0 s")
            self._hits = hits.sorted()
        else:
            self._burn_in()

    # ------------------------------------------------------------------ events
    def block_time_s(self, block: int) -> float:
        """Start time of event block ``block`` (s)."""
        return block * self.n_block / self.fs

    def block_events(self, block: int) -> EventTable:
        """Hits of event block ``block`` (time-sorted), computed once and cached."""
        return self._block(block).events

    def _block(self, block: int) -> _Block:
        hit = self._blocks.get(block)
        if hit is None and self._hits is not None:
            t0, t1 = self.block_time_s(block), self.block_time_s(block + 1)
            sel = self._hits.select((self._hits.time_s >= t0) & (self._hits.time_s < t1))
            hit = self._blocks[block] = _Block(events=sel, species=np.zeros(len(sel), np.int16))
        if hit is None:
            hit = self._make_block(rng.generator(self.seed, "mc_primaries", block), rng.generator(self.seed, "mc_deposit", block), self.block_time_s(block), self.n_block / self.fs)
            self._blocks[block] = hit
        return hit

    def _make_block(self, g_prim: np.random.Generator, g_dep: np.random.Generator, t0: float, length_s: float) -> _Block:
        cfg = self.config
        prim = self.sampler.sample(g_prim, t0, length_s)
        geom = sample_positions(cfg.wafer, self.n_det, len(prim), g_prim)
        prim.kinetic_energy_mev = transport_through_shield(prim.kinetic_energy_mev, prim.charge_z, prim.mass_number_a, cfg.shield)
        events, species = deposit_hits(prim, geom, cfg.wafer, g_dep, kappa_landau=cfg.kappa_landau, kappa_gauss=cfg.kappa_gauss)
        return _Block(events=events, species=species)

    def _events_between(self, t_start: float, t_stop: float) -> tuple[EventTable, np.ndarray]:
        b0 = int(np.floor(t_start * self.fs / self.n_block))
        b1 = int(np.ceil(t_stop * self.fs / self.n_block))
        tabs, sps = [], []
        for b in range(max(b0, 0), b1):
            blk = self._block(b)
            m = (blk.events.time_s >= t_start) & (blk.events.time_s < t_stop)
            tabs.append(blk.events.select(m))
            sps.append(blk.species[m])
        if not tabs:
            return EventTable(), np.zeros(0, np.int16)
        return EventTable.concatenate(tabs), np.concatenate(sps)

    # ------------------------------------------------------------------ burn-in
    def _burn_in(self) -> None:
        cfg = self.config
        n_out = int(np.ceil(cfg.wafer_burnin_s * self.fs))
        if n_out == 0:
            return
        n_int = n_out * (self.m // self.m_w)
        t_len = n_out / self.fs
        blk = self._make_block(rng.generator(self.seed, "mc_burnin", 0), rng.generator(self.seed, "mc_burnin", 1), -t_len, t_len)
        ev = blk.events.select(blk.events.kind == EVENT_KIND_WAFER)
        idx, phase = self._sample_after(ev.time_s + t_len, self.dt_w)
        e_j = ev.energy_kev * J_PER_KEV
        inside = idx < n_int
        for k, ph, e in zip(idx[~inside] - n_int, phase[~inside], e_j[~inside]):
            self._wafer_pending.append((int(k), float(ph), float(e)))
        w = self.wafer_path.process(n_int, idx[inside], phase[inside], e_j[inside])
        self.dec_wafer.process(w)

    @staticmethod
    def _sample_after(t: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """First sample (spacing ``dt``) at or after each time, and ``sample time - t`` (>= 0)."""
        t = np.asarray(t, dtype=np.float64)
        n = np.ceil(t / dt).astype(np.int64)
        n = np.where(n * dt < t, n + 1, n)
        return n, n * dt - t

    # ------------------------------------------------------------------ direct-hit clusters
    def _run_pulse_batch(self) -> None:
        """Integrate the clusters of direct hits that start in the next batch of segments.

        Clusters are built greedily along each detector's hits: a cluster
        absorbs the next hit when that hit arrives before the cluster's pulse
        (integrated with the hits absorbed so far) has relaxed below
        ``relax_tol_pw``; otherwise the hit starts a new cluster.  This
        depends only on the hits, not on batch boundaries: a cluster that
        starts in this batch may absorb later hits (look-ahead), which the
        next batch then skips.
        """
        cfg = self.config
        s0 = self._next_batch_segment
        last_needed = max(s0 + 1, int(np.ceil(self._horizon_samples / self.n_seg)))
        s1 = min(s0 + cfg.batch_segments, last_needed)
        t_a = s0 * self.n_seg / self.fs
        t_b = s1 * self.n_seg / self.fs
        block_s = self.n_block / self.fs
        horizon = t_b + block_s
        cache: dict[tuple[int, float, int], tuple[int, np.ndarray]] = {}
        while True:
            ev, _ = self._events_between(t_a, horizon)
            direct = ev.select(ev.kind == EVENT_KIND_DIRECT)
            hits = []
            for d in range(self.n_det):
                m = (direct.detector == d) & (direct.time_s > self._absorbed_until[d])
                hits.append((direct.time_s[m], direct.energy_kev[m] * J_PER_KEV))
            # clusters as [start, stop) index ranges per detector; start with single hits before t_b
            groups = [[[k, k + 1] for k in range(int(np.searchsorted(t, t_b, side="left")))] for t, _ in hits]
            while True:
                todo = [(d, g) for d in range(self.n_det) for g in groups[d] if (d, float(hits[d][0][g[0]]), g[1] - g[0]) not in cache]
                if todo:
                    res = self.tes.integrate_clusters(
                        [hits[d][0][g[0] : g[1]] for d, g in todo],
                        [hits[d][1][g[0] : g[1]] for d, g in todo],
                        self.dt,
                        relax_tol_pw=cfg.relax_tol_pw,
                        max_duration_s=cfg.max_pulse_s,
                        max_h_rate=cfg.rk4_max_h_rate,
                    )
                    for (d, g), r in zip(todo, res):
                        cache[(d, float(hits[d][0][g[0]]), g[1] - g[0])] = r
                merged = False
                for d in range(self.n_det):
                    t = hits[d][0]
                    new_groups: list[list[int]] = []
                    k = 0
                    gs = groups[d]
                    while k < len(gs):
                        g = list(gs[k])
                        j0, pulse = cache[(d, float(t[g[0]]), g[1] - g[0])]
                        end_t = (j0 + pulse.size) * self.dt
                        if g[1] < t.size and t[g[1]] < end_t:
                            # absorb the next hit; a single hit that started its own cluster is dropped
                            nxt = g[1]
                            g[1] += 1
                            merged = True
                            if k + 1 < len(gs) and gs[k + 1][0] == nxt:
                                rest = gs[k + 1]
                                k += 1
                                if rest[1] > nxt + 1:  # hits after it go back to singles
                                    gs = gs[: k + 1] + [[q, q + 1] for q in range(nxt + 1, rest[1])] + gs[k + 1 :]
                        new_groups.append(g)
                        k += 1
                    groups[d] = new_groups
                if not merged:
                    break
            # a cluster that may still absorb hits beyond the drawn horizon needs more look-ahead
            late = False
            for d in range(self.n_det):
                for g in groups[d]:
                    j0, pulse = cache[(d, float(hits[d][0][g[0]]), g[1] - g[0])]
                    if (j0 + pulse.size) * self.dt >= horizon:
                        late = True
            if not late:
                break
            horizon += block_s
        for d in range(self.n_det):
            for g in groups[d]:
                self._pulses[d].append(cache[(d, float(hits[d][0][g[0]]), g[1] - g[0])])
                self._absorbed_until[d] = max(self._absorbed_until[d], float(hits[d][0][g[1] - 1]))
        self._next_batch_segment = s1

    # ------------------------------------------------------------------ one segment
    def _render_segment(self) -> np.ndarray:
        s = self._next_segment
        while self._next_batch_segment <= s:
            self._run_pulse_batch()
        k0 = s * self.n_seg
        n_int = self.n_seg * self.m
        j0s, j1s = k0 * self.m, (k0 + self.n_seg) * self.m
        out = np.empty((self.n_det, self.n_seg))
        # direct path, a few detectors at a time to bound memory
        group = 8
        for g0 in range(0, self.n_det, group):
            g1 = min(self.n_det, g0 + group)
            x = np.zeros((g1 - g0, n_int))
            for d in range(g0, g1):
                keep = []
                for j0, pulse in self._pulses[d]:
                    if j0 >= j1s:
                        keep.append((j0, pulse))
                        continue
                    a = max(0, j0s - j0)
                    b = min(pulse.size, j1s - j0)
                    if b > a:
                        x[d - g0, j0 + a - j0s : j0 + b - j0s] += pulse[a:b]
                    if j0 + pulse.size > j1s:
                        keep.append((j0, pulse))
                self._pulses[d] = keep
            zi = self.dec_direct.zi[:, g0:g1, :]
            sub = Decimator(self.dec_direct.sos, self.m, g1 - g0)
            sub.zi = zi
            out[g0:g1] = sub.process(x)
            self.dec_direct.zi[:, g0:g1, :] = sub.zi
        # wafer path (common to all detectors), on its own coarser grid
        ev, _ = self._events_between(k0 / self.fs, (k0 + self.n_seg) / self.fs)
        wev = ev.select(ev.kind == EVENT_KIND_WAFER)
        mw = self.m // self.m_w
        n_int = self.n_seg * mw
        j0s = k0 * mw
        idx, phase = self._sample_after(wev.time_s, self.dt_w)
        e_j = wev.energy_kev * J_PER_KEV
        if self._wafer_pending:
            pk = np.array([p[0] for p in self._wafer_pending], dtype=np.int64)
            idx = np.concatenate([pk, idx])
            phase = np.concatenate([[p[1] for p in self._wafer_pending], phase])
            e_j = np.concatenate([[p[2] for p in self._wafer_pending], e_j])
            self._wafer_pending = []
        local = idx - j0s
        spill = local >= n_int
        for k, ph, e in zip(idx[spill], phase[spill], e_j[spill]):
            self._wafer_pending.append((int(k), float(ph), float(e)))
        w = self.wafer_path.process(n_int, local[~spill], phase[~spill], e_j[~spill])
        out += self.dec_wafer.process(w)[None, :]
        if self.noise is not None:
            out += self.noise.generate_many(list(range(self.n_det)), k0, self.n_seg)
        # forget event blocks no longer needed (before this segment and the clustered range)
        first_needed = min(k0 + self.n_seg, self._next_batch_segment * self.n_seg, self._position) // self.n_block
        for b in [b for b in self._blocks if b < first_needed]:
            del self._blocks[b]
        self._next_segment += 1
        return out.astype(np.float32)

    # ------------------------------------------------------------------ streaming API
    def n_samples_for(self, duration_s: float) -> int:
        """Number of output samples of a run of ``duration_s`` seconds (rounded)."""
        if not (np.isfinite(duration_s) and duration_s > 0):
            raise InputError(f"duration must be a positive number of seconds, got {duration_s!r}")
        n = int(round(duration_s * self.fs))
        if n < 1:
            raise InputError(f"duration {duration_s:g} s is shorter than one sample at {self.fs:g} Hz")
        return n

    def run(self, duration_s: float, chunk_s: float | None = None) -> Iterator[tuple[np.ndarray, EventTable]]:
        """Yield ``(tod_chunk, events)`` covering the next ``duration_s`` seconds.

        Parameters
        ----------
        duration_s : float
            Length of the run (s), from the current position (0 for a fresh simulator).
        chunk_s : float, optional
            Length of each yielded chunk (s, rounded to whole samples);
            default one processing segment.

        Yields
        ------
        tod_chunk : ndarray of float32, shape (n_detectors, n)
            Samples in pW (absorbed-power equivalent), quiescent baseline 0.
        events : EventTable
            The hits whose time falls in the chunk.
        """
        n_total = self.n_samples_for(duration_s)
        n_chunk = self.n_seg if chunk_s is None else max(1, int(round(chunk_s * self.fs)))
        end = self._position + n_total
        self._horizon_samples = max(self._horizon_samples, end)
        while self._position < end:
            n = min(n_chunk, end - self._position)
            tod = self._take(n)
            t0 = self._position / self.fs
            ev, _ = self._events_between(t0, (self._position + n) / self.fs)
            self._position += n
            interrupt.check()  # a stop signal swallowed by a callback still stops the run
            yield tod, ev

    def _take(self, n: int) -> np.ndarray:
        need_end = self._position + n
        have_end = self._buffer_start + sum(b.shape[1] for b in self._buffer)
        while have_end < need_end:
            seg = self._render_segment()
            self._buffer.append(seg)
            have_end += seg.shape[1]
        buf = np.concatenate(self._buffer, axis=1) if len(self._buffer) > 1 else self._buffer[0]
        a = self._position - self._buffer_start
        out = buf[:, a : a + n].copy()
        # keep only what is not yet handed out
        rest = buf[:, a + n :]
        self._buffer = [rest] if rest.shape[1] else []
        self._buffer_start = need_end
        return out

    def metadata(self, description: str = "") -> TodMetadata:
        """The :class:`TodMetadata` of this run (config, seed, detector names)."""
        return TodMetadata(
            sampling_rate_hz=self.fs,
            detectors=self.config.detector_names(),
            start_time_s=0.0,
            units="pW",
            kind="montecarlo",
            config=self.config.to_dict(),
            seed=self.seed,
            description=description or "CRAB physics Monte Carlo (cosmic-ray glitches, TES response, noise)",
        )


# --------------------------------------------------------------------------- array and file layers
def simulate(config: MonteCarloConfig, duration_s: float, seed: int, *, chunk_s: float | None = None) -> tuple[np.ndarray, EventTable, TodMetadata]:
    """Run the Monte Carlo in memory.

    Parameters
    ----------
    config : MonteCarloConfig
    duration_s : float
        Simulated time (s).
    seed : int
        Non-negative seed.
    chunk_s : float, optional
        Internal chunking of the output (does not change the result).

    Returns
    -------
    tod : ndarray of float32, shape (n_detectors, n_samples)
        TOD in pW of absorbed-power equivalent.
    events : EventTable
        Truth of every hit (time-sorted).
    meta : TodMetadata
        Sampling rate, detector names, config and seed.
    """
    sim = MonteCarloSimulator(config, seed)
    tods, evs = [], []
    for tod, ev in sim.run(duration_s, chunk_s=chunk_s):
        tods.append(tod)
        evs.append(ev)
    return np.concatenate(tods, axis=1), EventTable.concatenate(evs), sim.metadata()


def simulate_hits(config: MonteCarloConfig, hits: EventTable, duration_s: float, seed: int = 0) -> np.ndarray:
    """TOD (float32, pW) of the response to given hits, with the config's noise if ``add_noise``.

    The array-level entry point for known deposits: ``hits`` is an
    :class:`EventTable` (times in s, detector index or -1 with kind 1 for the
    wafer, energies in keV).  No cosmic rays are drawn.
    """
    sim = MonteCarloSimulator(config, seed, hits=hits)
    return np.concatenate([tod for tod, _ in sim.run(duration_s)], axis=1)


def simulate_to_file(
    config: MonteCarloConfig,
    duration_s: float,
    seed: int,
    out_path: str | os.PathLike,
    *,
    chunk_s: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """Run the Monte Carlo and write an HDF5 TOD file (atomically: no partial file on failure).

    Parameters
    ----------
    config, duration_s, seed
        As :func:`simulate`.
    out_path : path-like
        Output file (:mod:`crab.io.tod` layout); the full config, the seed and
        the package version are stored as attributes.
    chunk_s : float, optional
        Seconds simulated and written per step (memory bound; result unchanged).
    progress : bool
        Show a progress bar (simulated seconds) on stderr.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.
    """
    sim = MonteCarloSimulator(config, seed)
    n_total = sim.n_samples_for(duration_s)
    meta = sim.metadata(description)
    evs = []
    with TodWriter(out_path, meta, n_samples=n_total, overwrite=overwrite) as writer:
        with bar(total=round(n_total / sim.fs, 3), desc="simulate", unit="s", disable=None if progress else True) as pbar:
            for tod, ev in sim.run(duration_s, chunk_s=chunk_s):
                writer.write(tod)
                evs.append(ev)
                pbar.update(round(tod.shape[1] / sim.fs, 3))
        writer.write_events(EventTable.concatenate(evs))
    return Path(out_path)
