"""The physics Monte Carlo simulator: cosmic rays at L2 -> shield -> wafer -> TES -> TOD arrays.

This module composes the stages (see ``docs/design.md``) of a run defined by
:class:`crab.physics.montecarlo_config.MonteCarloConfig`:

1. :mod:`crab.physics.spectra`   modulated spectra, Poisson primaries on the wafer;
2. :mod:`crab.physics.transport` CSDA through the aluminium-equivalent shield;
3. :mod:`crab.physics.deposit`   direct (absorber) and wafer hits, straggled deposits;
4. :mod:`crab.physics.tes`       nonlinear TES pulses of direct hits;
   :mod:`crab.physics.wafer_thermal` the linear wafer path;
   :mod:`crab.physics.decimation` the anti-alias filter and decimation;
5. :mod:`crab.physics.noise`     white + 1/f detector noise at the sampling rate.

It returns arrays and the truth of every hit as an
:class:`crab.physics.events.EventTable`; writing them to a file is the job of
:mod:`crab.io.montecarlo_file`.

- :class:`MonteCarloSimulator` streams ``(tod_chunk, events)`` of any chunk size;
- :func:`simulate` returns ``(tod, events, info)`` in memory;
- :func:`simulate_hits` returns the response to given hits.

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

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from crab.core import interrupt, rng
from crab.core.errors import InputError
from crab.physics.decimation import Decimator, antialias_sos
from crab.physics.deposit import deposit_hits, sample_positions
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable
from crab.physics.montecarlo_config import MonteCarloConfig
from crab.physics.noise import NoiseGenerator
from crab.physics.spectra import PrimarySampler
from crab.physics.tes import J_PER_KEV, TESModel
from crab.physics.transport import transport_through_shield
from crab.physics.wafer_thermal import WaferPath


@dataclass(frozen=True)
class SimulationInfo:
    """What a Monte Carlo run is, apart from its samples and hits.

    Attributes
    ----------
    sampling_rate_hz : float
        Output sampling rate (Hz).
    detectors : list of str
        Detector names, one per TOD row.
    config : dict
        The run's :class:`MonteCarloConfig` as JSON-friendly data (:meth:`MonteCarloConfig.to_dict`).
    seed : int
        The run's seed.
    units : str
        Units of the TOD: ``"pW"`` of absorbed-power equivalent.
    """

    sampling_rate_hz: float
    detectors: list[str]
    config: dict[str, Any]
    seed: int
    units: str = "pW"



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

    def info(self) -> SimulationInfo:
        """The :class:`SimulationInfo` of this run (config, seed, detector names)."""
        return SimulationInfo(
            sampling_rate_hz=self.fs,
            detectors=self.config.detector_names(),
            config=self.config.to_dict(),
            seed=self.seed,
        )


# --------------------------------------------------------------------------- in memory
def simulate(config: MonteCarloConfig, duration_s: float, seed: int, *, chunk_s: float | None = None) -> tuple[np.ndarray, EventTable, SimulationInfo]:
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
    info : SimulationInfo
        Sampling rate, detector names, config and seed.
    """
    sim = MonteCarloSimulator(config, seed)
    tods, evs = [], []
    for tod, ev in sim.run(duration_s, chunk_s=chunk_s):
        tods.append(tod)
        evs.append(ev)
    return np.concatenate(tods, axis=1), EventTable.concatenate(evs), sim.info()


def simulate_hits(config: MonteCarloConfig, hits: EventTable, duration_s: float, seed: int = 0) -> np.ndarray:
    """TOD (float32, pW) of the response to given hits, with the config's noise if ``add_noise``.

    The array-level entry point for known deposits: ``hits`` is an
    :class:`EventTable` (times in s, detector index or -1 with kind 1 for the
    wafer, energies in keV).  No cosmic rays are drawn.
    """
    sim = MonteCarloSimulator(config, seed, hits=hits)
    return np.concatenate([tod for tod, _ in sim.run(duration_s)], axis=1)
