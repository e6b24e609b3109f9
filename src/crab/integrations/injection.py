"""What every bridge to a simulation framework shares: the one path that adds CRAB glitches to TOD.

The litebird_sim bridge (:mod:`crab.integrations.litebird`) and the TOAST
operator (:mod:`crab.integrations.toast_operator`) only translate their
framework's objects (observations, detector tables, units) into the terms
used here, so that both give the same bytes for the same detectors and samples:

* a detector's random streams are keyed on an integer **key**, by default
  :func:`crab.core.rng.detector_key` of its name (:func:`detector_keys`);
* a sample's **absolute index** is ``round(t0 * f_s) + i``
  (:func:`absolute_start_sample`), ``t0`` the time of the first sample of the
  observation in seconds, ``f_s`` the sampling rate in Hz and ``i`` the
  sample's index from there;
* detectors are put on **wafers** by name (:func:`assign_wafers`,
  :meth:`crab.models.glitch_layer.wafer.WaferGrouping.by_name`);
* the generator is built once per seed and rate (:func:`make_source`) and the
  glitches are **added**, scaled by one factor per detector (framework units per
  pW), chunk by chunk (:func:`add_generated`).

Hence a bridge's result equals ``TodGenerator(model, seed).generate(keys,
start_sample, n_samples)`` (``crab generate --start`` for keys ``0 .. n-1``)
times the conversion factor.  The glitches can also be marked in the
framework's flags (:func:`add_generated`'s ``flags``: where the glitch signal
rendered from the truth of the generated glitches exceeds a threshold), so that
flagging and deglitching codes can be scored.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from crab.core import rng
from crab.core.errors import InputError

#: Samples generated at a time per detector block (bounds memory: about ``12 * n_detectors * chunk`` bytes).
DEFAULT_CHUNK_SAMPLES = 1 << 20


class SliceGenerator(Protocol):
    """What a bridge needs of a generator: slice-exact TOD for detector keys and absolute samples."""

    def generate(self, detector_keys: Sequence[int], start_sample: int, n_samples: int) -> np.ndarray:
        """float32 ``(len(detector_keys), n_samples)`` in pW, samples ``[start_sample, start_sample + n_samples)``."""
        ...


def absolute_start_sample(start_time_s: float, sampling_rate_hz: float) -> int:
    """Absolute index of a sample at ``start_time_s``: ``round(start_time_s * sampling_rate_hz)``.

    Parameters
    ----------
    start_time_s : float
        Time of the sample (s), non-negative.
    sampling_rate_hz : float
        Sampling rate (Hz), positive.

    Returns
    -------
    int
        The index (exact: Python int).  A time off the sample grid gives the nearest index.
    """
    t = float(start_time_s)
    fs = float(sampling_rate_hz)
    if not (np.isfinite(t) and np.isfinite(fs) and fs > 0):
        raise InputError(f"need a finite start time and a positive sampling rate, got {start_time_s!r} s, {sampling_rate_hz!r} Hz")
    n = int(np.rint(t * fs))
    if n < 0:
        raise InputError(f"start time {t} s is before 0 s: CRAB keys glitches on non-negative absolute times; shift the clock")
    return n


def detector_keys(names: Iterable[str]) -> list[int]:
    """Random-stream keys of detector names (:func:`crab.core.rng.detector_key`)."""
    return [rng.detector_key(str(n)) for n in names]


def make_source(model: Any, seed: int, sampling_rate_hz: float, *, n_workers: int | None = None, cond: Any = None, allow_extrapolation: bool = False) -> SliceGenerator:
    """A slice-exact generator for ``model`` with ``seed`` at ``sampling_rate_hz``.

    ``model`` may be

    * a stored model (path, loaded by :func:`crab.models.registry.load_generation_model`)
      or a loaded one (:class:`crab.models.base.GenerativeModel`): wrapped in
      :class:`crab.generation.TodGenerator` ``(model, seed, n_workers=n_workers, cond=cond)``;
    * a ready generator with ``generate(detector_keys, start_sample, n_samples)``
      (a :class:`~crab.generation.TodGenerator`, or ``generate_many`` like
      :class:`crab.physics.noise.NoiseGenerator`): it carries its own seed, which must
      equal ``seed``;
    * a callable ``model(seed, sampling_rate_hz) -> generator`` (a factory).

    Raises
    ------
    InputError
        The generator's seed or sampling rate differs from the one asked.
    """
    seed = rng.check_seed(seed)
    if isinstance(model, (str, os.PathLike)):
        from crab.models.registry import load_generation_model  # noqa: PLC0415 - torch is imported only when a GAN is used

        model = load_generation_model(model)
    if hasattr(model, "generate_many") or hasattr(model, "generate"):
        source = model
        own = getattr(model, "seed", None)
        if own is not None and int(own) != seed:
            raise InputError(f"the generator passed as model was built with seed {own}, but seed {seed} was asked")
    elif callable(model):
        source = model(seed, sampling_rate_hz)
    else:
        from crab.generation import TodGenerator  # noqa: PLC0415

        options = {k: v for k, v in (("cond", cond), ("allow_extrapolation", allow_extrapolation or None)) if v is not None}
        source = TodGenerator(model, seed, n_workers=n_workers, **options)
    rate = getattr(source, "output_rate_hz", getattr(source, "sampling_rate_hz", None))
    if rate is not None and not np.isclose(float(rate), float(sampling_rate_hz), rtol=1e-9, atol=0):
        raise InputError(f"the model generates {float(rate):g} Hz TOD, but the TOD is sampled at {float(sampling_rate_hz):g} Hz; use a model trained at that rate")
    return source


def generate_block(source: Any, keys: Sequence[int], start: int, n: int) -> np.ndarray:
    """The generator's TOD of detector ``keys`` at absolute samples ``[start, start + n)`` (pW, ``(len(keys), n)``)."""
    if hasattr(source, "generate_many"):
        out = source.generate_many(list(keys), start, n)
    else:
        out = source.generate(list(keys), start, n)
    out = np.asarray(out)
    if out.shape != (len(keys), n):
        raise InputError(f"generator returned shape {out.shape}, expected ({len(keys)}, {n})")
    return out


def assign_wafers(source: Any, keys: Sequence[int], wafers: Sequence[str] | None) -> None:
    """Put detector ``keys`` on the wafers named ``wafers`` (same order), if the source has wafers.

    ``None`` leaves the source's own grouping: key ``k`` on wafer ``k // N`` (``N`` the
    wafer size the model was fitted on; :class:`crab.models.glitch_layer.wafer.WaferGrouping`),
    which puts detectors keyed on their names each on its own wafer.
    """
    if wafers is None or not hasattr(source, "assign_wafers"):
        return
    from crab.models.glitch_layer.wafer import WaferGrouping  # noqa: PLC0415

    source.assign_wafers(WaferGrouping.by_name([int(k) for k in keys], [str(w) for w in wafers]))


def _check_spans(spans: Sequence[tuple[int, int]] | None, n_samples: int) -> list[tuple[int, int]]:
    if spans is None:
        return [(0, n_samples)] if n_samples else []
    out = sorted((int(a), int(b)) for a, b in spans if int(b) > int(a))
    if any(a < 0 or b > n_samples for a, b in out):
        raise InputError(f"sample spans {out[:3]} reach outside the TOD's {n_samples} samples")
    return out


def add_generated(
    tod: np.ndarray,
    keys: Sequence[int],
    source: Any,
    abs_start: int,
    factors: float | Sequence[float] | np.ndarray = 1.0,
    *,
    rows: Sequence[int] | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
    wafers: Sequence[str] | None = None,
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    flags: np.ndarray | None = None,
    flag_mask: int = 1,
    flag_threshold: float | None = None,
) -> None:
    """Add the generated glitches of detector ``keys`` to ``tod`` in place: the injection path of every bridge.

    Parameters
    ----------
    tod : ndarray, shape (n_rows, n_samples)
        Floating-point TOD; sample ``j`` is at absolute index ``abs_start + j``.
        Modified in place: ``tod[row] += factor * crab_tod`` (the product in
        float64, cast to ``tod.dtype``, then added).
    keys : sequence of int
        Detector keys (:func:`detector_keys` of names), one per row in ``rows``.
    source : generator
        From :func:`make_source`.
    abs_start : int
        Absolute sample index of ``tod[:, 0]``.
    factors : float or sequence of float
        ``tod`` units per pW: one for all, or one per key.
    rows : sequence of int, optional
        Row of ``tod`` of each key (default: ``0 .. len(keys) - 1``, and ``tod``
        must have exactly that many rows).
    spans : sequence of (int, int), optional
        Sample ranges ``[first, last)`` of ``tod`` to add to (e.g. the intervals of a
        TOAST view); default: all samples.  The glitches are the same as without
        spans where they are added (the generator is slice-exact).
    wafers : sequence of str, optional
        Wafer name of each key (:func:`assign_wafers`).
    chunk_samples : int
        Samples generated at a time (bounds memory; never changes the result).
    flags : ndarray of unsigned int, shape of ``tod``, optional
        Flags to mark the glitches in: ``flags[row, j] |= flag_mask`` where the generated
        glitch signal (:func:`crab.generation.truth.glitch_signal`, rendered from the truth of
        every glitch placed, the wafer's included) times the factor exceeds ``flag_threshold``
        in magnitude (``tod`` units; e.g. a fraction of the noise RMS).  Needs a model
        whose method lists its glitches.
    flag_mask : int
        The bit(s) set.
    flag_threshold : float
        Needed with ``flags``: positive, ``tod`` units.

    Raises
    ------
    InputError
        A TOD that is not a floating-point 2-D array with a row for every key,
        non-finite factors, spans outside the TOD, or flags asked of a generator
        that does not list its glitches.
    """
    keys = [int(k) for k in keys]
    if tod.ndim != 2:
        raise InputError(f"TOD must be a 2-D array (n_detectors, n_samples), got shape {tod.shape}")
    if rows is None:
        if tod.shape[0] != len(keys):
            raise InputError(f"TOD must have shape ({len(keys)}, n_samples) for {len(keys)} detectors, got {tod.shape}")
        rows_idx: Any = slice(None)
    else:
        rows_idx = np.asarray(rows, dtype=np.intp)
        if rows_idx.shape != (len(keys),) or np.unique(rows_idx).size != len(keys) or (len(keys) and not 0 <= rows_idx.min() <= rows_idx.max() < tod.shape[0]):
            raise InputError(f"need one distinct row of the TOD's {tod.shape[0]} for each of {len(keys)} detectors, got {list(rows_idx)[:5]}")
    if not np.issubdtype(tod.dtype, np.floating):
        raise InputError(f"TOD must be a floating-point array, got {tod.dtype}")
    scale = np.broadcast_to(np.asarray(factors, dtype=np.float64), (len(keys),))[:, None]
    if not np.all(np.isfinite(scale)):
        raise InputError(f"conversion factors must be finite, got {scale.ravel()[~np.isfinite(scale.ravel())][:3]}")
    chunk = int(chunk_samples)
    if chunk < 1:
        raise InputError(f"chunk_samples must be at least 1, got {chunk_samples}")
    if not keys:
        return
    assign_wafers(source, keys, wafers)
    flagger = _flagger(flags, tod.shape, source, flag_mask, flag_threshold)
    spans_ = _check_spans(spans, tod.shape[1])
    if not spans_:
        return
    lo, hi = spans_[0][0], max(b for _, b in spans_)
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        parts = [(max(a, s), min(b, e)) for a, b in spans_ if a < e and b > s]
        if not parts:
            continue
        g0, g1 = parts[0][0], max(b for _, b in parts)
        added = (generate_block(source, keys, abs_start + g0, g1 - g0).astype(np.float64) * scale).astype(tod.dtype)
        marked = None if flagger is None else flagger(keys, abs_start + g0, g1 - g0, scale)
        for a, b in parts:
            tod[rows_idx, a:b] += added[:, a - g0 : b - g0]
            if marked is not None:
                flags[rows_idx, a:b] |= marked[:, a - g0 : b - g0]


def _flagger(flags: np.ndarray | None, shape: tuple[int, ...], source: Any, flag_mask: int, flag_threshold: float | None):
    """``mark(keys, start, n, scale)`` -> the flag bits of a block (None without ``flags``), once the inputs are checked."""
    if flags is None:
        return None
    if not isinstance(flags, np.ndarray) or flags.shape != tuple(shape) or not np.issubdtype(flags.dtype, np.unsignedinteger):
        raise InputError(f"flags must be an unsigned-integer array of the TOD's shape {tuple(shape)}, got {getattr(flags, 'dtype', type(flags))} {getattr(flags, 'shape', '')}")
    mask = int(flag_mask)
    if mask < 1 or mask > np.iinfo(flags.dtype).max:
        raise InputError(f"flag_mask must be a positive bit mask that fits {flags.dtype}, got {flag_mask!r}")
    if flag_threshold is None or not (np.isfinite(flag_threshold) and flag_threshold > 0):
        raise InputError(f"flags need a positive flag_threshold in the TOD's units (e.g. a fraction of its noise RMS), got {flag_threshold!r}")
    from crab.generation.truth import glitch_signal, lists_glitches  # noqa: PLC0415

    if not lists_glitches(source):
        raise InputError("flags need a model whose method lists its glitches (the template, or a GAN with additive glitches); this generator does not")

    bit = flags.dtype.type(mask)

    def mark(keys: Sequence[int], start: int, n: int, scale: np.ndarray) -> np.ndarray:
        sig = glitch_signal(source, keys, start, n) * scale
        return np.where(np.abs(sig) > float(flag_threshold), bit, flags.dtype.type(0))

    return mark


__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "SliceGenerator",
    "absolute_start_sample",
    "add_generated",
    "assign_wafers",
    "detector_keys",
    "generate_block",
    "make_source",
]
