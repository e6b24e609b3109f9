"""Training windows from TOD files or arrays: loading, time split, high-pass, transform.

The path of the data, from files to the tensors the GAN sees:

1. :func:`load_tod_sources` reads ``crab`` HDF5 files (:func:`crab.io.tod.read_tod`)
   or plain ``.npz`` files (``tod``: (n_det, n) or (n,) array, ``sampling_rate_hz``:
   scalar) and checks them: finite samples, one sampling rate for all files.
2. :func:`prepare_training_data` splits every detector's series *by time*: the
   first part trains, the last ``val_fraction`` validates, with a gap of one
   window between them.  Each part is high-passed **separately**
   (:func:`crab.physics.noise.highpass`, cut ``highpass_hz``), so no validation sample
   leaks into a training window, not even through the filter.  The noise
   parameters (white + 1/f, used at generation for the slow drifts the GAN
   does not learn) are fitted on the raw training part, and the global
   :class:`~crab.models.gan.transform.AmplitudeTransform` on the high-passed training
   part.  There is no per-window normalisation: a glitch keeps its absolute
   height.  The high-passed series keep the mean level of the raw training
   TOD (pile-up of glitches makes it positive); only the slow fluctuations
   are removed, and generation adds them back as zero-mean noise.
3. :class:`WindowSampler` draws random crops of the training parts
   (augmentation by shifting; every crop lies inside one training part) and
   :class:`WindowDataset` serves fixed windows (the validation set) as a torch
   :class:`~torch.utils.data.Dataset`.

Window length
-------------
The default window is 256 samples (13.5 s at 19 Hz, 8.3 s at 31 Hz).  It must
hold the longest glitch tail (wafer hits relax in up to about 1 s, i.e. about
20 samples at 19 Hz; five tail time constants are ~100 samples) and several
glitches (a detector sees of the order of one hit per second or less, so a
window typically holds several to ~10), so that the discriminator sees glitch
shapes *and* their rate and pile-up.  Longer windows cost proportionally more
per window without adding information the streaming generator needs (its
receptive field is local); 256 is also a multiple of the generator's
upsampling factor (16).  The paper's 264 TODs of 1800 s correspond to ~6.8 s
windows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crab.physics.conditions import COND_KEYS, cond_name
from crab.core.errors import FileFormatError, InputError
from crab.physics.noise import NoiseParams, clip_glitches, fit_noise_params, highpass
from crab.core.stats import robust_sigma
from crab.models.gan.transform import AmplitudeTransform

#: Default window length (samples); see the module docstring.
DEFAULT_WINDOW_SAMPLES = 256


@dataclass
class TodSource:
    """One input file read into memory.

    Attributes
    ----------
    tod : ndarray of float32, shape (n_detectors, n_samples)
    sampling_rate_hz : float
    detectors : list of str
    path : Path
    units : str
    cond : dict of str to float
        Physical conditions of the whole file that a conditioned model can
        learn (:data:`COND_KEYS`; e.g. ``phi_gv`` of a ``crab simulate`` file,
        read from its configuration).
    events : crab.physics.events.EventTable or None
        The file's truth table (a Monte Carlo file's ``/events``), None without one.
    start_time_s : float
        Time of sample 0 on the clock of ``events`` (s).
    """

    tod: np.ndarray
    sampling_rate_hz: float
    detectors: list[str]
    path: Path
    units: str = "pW"
    cond: dict[str, float] = field(default_factory=dict)
    events: Any = None
    start_time_s: float = 0.0


def _conditions(config: dict, where: str) -> dict[str, float]:
    out = {}
    for k in COND_KEYS:
        if k in config:
            try:
                v = float(np.asarray(config[k]).reshape(()))
            except (TypeError, ValueError):
                raise FileFormatError(f"{where}: {k} must be one number, got {config[k]!r}") from None
            if not np.isfinite(v):
                raise InputError(f"{where}: {k} is not finite ({v!r})")
            out[k] = v
    return out


def _load_npz(p: Path) -> TodSource:
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if "tod" not in keys or "sampling_rate_hz" not in keys:
                raise FileFormatError(f"{p}: a .npz input needs arrays 'tod' (n_det, n_samples) and 'sampling_rate_hz', found {sorted(keys)}")
            tod = np.asarray(z["tod"])
            rate = np.asarray(z["sampling_rate_hz"])
            dets = [str(d) for d in z["detectors"]] if "detectors" in keys else None
            units = str(z["units"]) if "units" in keys else "pW"
            cond = _conditions({k: z[k] for k in COND_KEYS if k in keys}, str(p))
    except FileFormatError:
        raise
    except Exception as exc:  # zipfile / pickle / value errors of a corrupt file
        raise FileFormatError(f"{p}: not a readable .npz file ({exc.__class__.__name__})") from None
    if rate.size != 1 or not np.issubdtype(rate.dtype, np.number):
        raise FileFormatError(f"{p}: 'sampling_rate_hz' must be one number, got shape {rate.shape} dtype {rate.dtype}")
    rate = float(rate.reshape(()))
    if not np.isfinite(rate) or rate <= 0:
        raise InputError(f"{p}: sampling_rate_hz must be a positive finite number of Hz, got {rate!r}")
    if not np.issubdtype(tod.dtype, np.number) or tod.ndim not in (1, 2):
        raise FileFormatError(f"{p}: 'tod' must be a numeric array of shape (n_samples,) or (n_detectors, n_samples), got shape {tod.shape} dtype {tod.dtype}")
    tod = np.atleast_2d(tod).astype(np.float32)
    if dets is None or len(dets) != tod.shape[0]:
        dets = [f"D{i:03d}" for i in range(tod.shape[0])]
    return TodSource(tod=tod, sampling_rate_hz=rate, detectors=dets, path=p, units=units, cond=cond)


def load_tod_source(path: str | os.PathLike) -> TodSource:
    """Read one ``crab`` HDF5 file or ``.npz`` file; raise a one-line error if it is unusable.

    Raises
    ------
    FileFormatError
        Missing or unreadable file, wrong layout.
    InputError
        NaN or infinite samples, bad sampling rate, empty TOD.
    """
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"training data file not found: {p}")
    if p.is_dir():
        raise FileFormatError(f"{p} is a folder, expected a TOD file (.h5 from `crab simulate`, or .npz)")
    if p.suffix.lower() == ".npz":
        src = _load_npz(p)
    else:
        from crab.io.tod import read_tod

        try:
            f = read_tod(p, check_finite=False)
        except FileFormatError as exc:
            if p.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
                raise FileFormatError(f"{p}: unsupported training data (expected a crab HDF5 TOD file or a .npz with 'tod' and 'sampling_rate_hz'): {exc}") from None
            raise
        src = TodSource(
            tod=f.tod, sampling_rate_hz=f.meta.sampling_rate_hz, detectors=list(f.meta.detectors), path=p, units=f.meta.units or "pW",
            cond=_conditions(f.meta.config or {}, str(p)), events=f.events, start_time_s=float(f.meta.start_time_s or 0.0),
        )
    if src.tod.size == 0 or src.tod.shape[1] == 0:
        raise InputError(f"{p}: the TOD is empty")
    bad = ~np.isfinite(src.tod)
    if bad.any():
        det, idx = np.argwhere(bad)[0]
        raise InputError(f"{p}: TOD contains {int(bad.sum())} NaN or infinite samples (first: detector {int(det)}, sample {int(idx)}); clean or drop them before training")
    return src


def load_tod_sources(paths: Sequence[str | os.PathLike]) -> list[TodSource]:
    """Read several files and check they share one sampling rate and units."""
    if not paths:
        raise InputError("no training data given (pass at least one --data FILE)")
    sources = [load_tod_source(p) for p in paths]
    rates = [s.sampling_rate_hz for s in sources]
    if not np.allclose(rates, rates[0], rtol=1e-9, atol=0):
        detail = ", ".join(f"{s.path.name}: {s.sampling_rate_hz:g} Hz" for s in sources)
        raise InputError(f"training files have different sampling rates ({detail}); resample them to one rate or train separate models")
    return sources


# --------------------------------------------------------------------------- split
def split_bounds(n_samples: int, window_samples: int, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((train_start, train_stop), (val_start, val_stop))`` of a series of ``n_samples``.

    The validation part is the last ``val_fraction`` of the series; a gap of
    one window separates it from the training part.  Both parts must hold at
    least one window.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(n_samples * val_fraction))
    gap = window_samples
    n_train = n_samples - n_val - gap
    if n_train < window_samples or n_val < window_samples:
        need = int(np.ceil(max(window_samples / val_fraction, (2 * window_samples) / (1.0 - val_fraction)))) + 1
        raise InputError(
            f"too few samples: {n_samples} per detector cannot hold one training window and one validation window of "
            f"{window_samples} samples (val_fraction {val_fraction}, gap of one window); need at least about {need} samples "
            f"or a shorter window_samples ([train] table of crab train --config)"
        )
    return (0, n_train), (n_samples - n_val, n_samples)


@dataclass
class TrainingData:
    """Everything training needs from the data, already high-passed and transformed.

    Attributes
    ----------
    train : list of ndarray, each (channels, n) float32
        Training parts in the transformed amplitude space.
    val : list of ndarray, each (channels, n) float32
        Validation parts in the transformed amplitude space.
    transform : AmplitudeTransform
        Fitted on the high-passed training parts.
    noise_params : NoiseParams
        Fitted on the raw training parts.
    noise_sigma : float
        Robust white-noise RMS of the high-passed training data (TOD units).
    sampling_rate_hz, window_samples, highpass_hz
    channels : int
        Channels per window (1: every detector is its own series).
    detectors : list of str
    units : str
    files : list of dict
        Path, detectors, samples and conditions of every input file (provenance).
    cond_names : list of str
        Conditions the model is trained on (empty: unconditioned).
    cond_range : list of (float, float)
        Range of each condition over the training files.
    train_cond, val_cond : ndarray, shape (n_series, len(cond_names))
        Raw condition values of each training / validation series.
    """

    train: list[np.ndarray]
    val: list[np.ndarray]
    transform: AmplitudeTransform
    noise_params: NoiseParams
    noise_sigma: float
    sampling_rate_hz: float
    window_samples: int
    highpass_hz: float | None
    channels: int
    detectors: list[str]
    units: str = "pW"
    files: list[dict] = field(default_factory=list)
    cond_names: list[str] = field(default_factory=list)
    cond_range: list[tuple[float, float]] = field(default_factory=list)
    train_cond: np.ndarray | None = None
    val_cond: np.ndarray | None = None

    @property
    def n_train_samples(self) -> int:
        return int(sum(a.shape[-1] for a in self.train))

    def val_windows(self, stride: int | None = None, max_windows: int | None = None) -> np.ndarray:
        """Fixed validation windows (n, channels, window_samples), transformed space.

        ``stride`` defaults to half a window; ``max_windows`` keeps an evenly
        spaced subset.
        """
        return fixed_windows(self.val, self.window_samples, stride or self.window_samples // 2, max_windows)

    def train_windows(self, stride: int | None = None, max_windows: int | None = None) -> np.ndarray:
        """Fixed training windows (for reference statistics), transformed space."""
        return fixed_windows(self.train, self.window_samples, stride or self.window_samples // 2, max_windows)

    def val_windows_cond(self, stride: int | None = None, max_windows: int | None = None) -> np.ndarray:
        """Raw condition values (n, len(cond_names)) of the windows of :meth:`val_windows`."""
        return _window_rows(self.val, self.val_cond, self.window_samples, stride or self.window_samples // 2, max_windows)

    def train_windows_cond(self, stride: int | None = None, max_windows: int | None = None) -> np.ndarray:
        """Raw condition values (n, len(cond_names)) of the windows of :meth:`train_windows`."""
        return _window_rows(self.train, self.train_cond, self.window_samples, stride or self.window_samples // 2, max_windows)


def default_highpass_hz(sampling_rate_hz: float, window_samples: int) -> float:
    """The default high-pass cut (Hz): one cycle per four window durations; drifts slower than
    that are left to the noise model.

    At 19 Hz and 256 samples this is 18.6 mHz (about the 1/f knee of the
    detectors, ~20 mHz), a time constant 1 / (2 pi f) of about 9 s, far longer
    than the slowest glitch tails (~1 s).  Why not one cycle per window:
    docs/experiments.md ("Training recipe").
    """
    return float(sampling_rate_hz) / (4.0 * float(window_samples))


def prepare_training_data(
    sources: Sequence[TodSource],
    window_samples: int = DEFAULT_WINDOW_SAMPLES,
    val_fraction: float = 0.2,
    highpass_hz: float | None = None,
    channels: int = 1,
    transform_noise_multiple: float = 2.0,
    transform: AmplitudeTransform | None = None,
    noise_params: NoiseParams | None = None,
    cond_names: Sequence[str] = (),
    highpass_clip_sigma: float | None = None,
) -> TrainingData:
    """Split, high-pass and transform the sources (see the module docstring).

    Parameters
    ----------
    sources : sequence of TodSource
        From :func:`load_tod_sources`.
    window_samples : int
        Window length (samples).
    val_fraction : float
        Fraction of each series (at its end) kept for validation.
    highpass_hz : float, optional
        High-pass cut (Hz); default :func:`default_highpass_hz`; 0 disables.
    channels : int
        1 (each detector a separate series) or the number of detectors of
        every file (detectors generated jointly).
    transform_noise_multiple : float
        Linear range of the asinh transform, in robust noise RMS.
    transform, noise_params : optional
        Use these instead of fitting (when resuming a run).
    cond_names : sequence of str
        Conditions to train on (:data:`COND_KEYS`); every source must carry
        them (``TodSource.cond``) and together they must span a range.
    highpass_clip_sigma : float, optional
        Glitch-preserving high-pass: the part of every glitch above this many
        robust noise sigma (:func:`crab.physics.noise.clip_glitches`) is taken out
        before the high-pass and added back after it, so big glitches keep
        their shape instead of getting the filter's undershoot (a negative
        lobe of a few seconds after every big glitch, which the GAN learned
        and the raw Monte Carlo does not have); the noise and the drifts are
        high-passed exactly as without it.  None: plain high-pass.
    """
    if not sources:
        raise InputError("no training data given")
    window_samples = int(window_samples)
    if window_samples < 2:
        raise InputError(f"window_samples must be >= 2, got {window_samples}")
    rate = float(sources[0].sampling_rate_hz)
    if highpass_hz is None:
        highpass_hz = default_highpass_hz(rate, window_samples)
    if highpass_hz < 0 or (highpass_hz and highpass_hz >= rate / 2):
        raise InputError(f"highpass_hz must be in [0, {rate / 2:g}) Hz (Nyquist), got {highpass_hz}")
    if channels != 1 and any(s.tod.shape[0] != channels for s in sources):
        raise InputError(f"joint generation of {channels} channels needs every file to have {channels} detectors, got {[s.tod.shape[0] for s in sources]}")
    cond_names = [cond_name(c) for c in cond_names]
    if len(set(cond_names)) != len(cond_names):
        raise InputError(f"conditions named twice: {cond_names}")
    for s in sources:
        missing = [c for c in cond_names if c not in s.cond]
        if missing:
            raise InputError(f"{s.path}: conditioned training needs {missing} for every file, but this file does not record it (a `crab simulate` file records phi_gv; a .npz needs a 'phi_gv' scalar)")
    file_cond = np.array([[s.cond[c] for c in cond_names] for s in sources], dtype=np.float64).reshape(len(sources), len(cond_names))
    cond_range = [(float(file_cond[:, j].min()), float(file_cond[:, j].max())) for j in range(len(cond_names))]
    flat = [c for c, (lo, hi) in zip(cond_names, cond_range) if not hi > lo]
    if flat:
        raise InputError(f"conditioned training needs files at several values of {flat}; all files have {[file_cond[0, cond_names.index(c)] for c in flat]}")

    raw_train, raw_val = [], []
    for s in sources:
        (a0, a1), (b0, b1) = split_bounds(s.tod.shape[1], window_samples, val_fraction)
        raw_train.append(s.tod[:, a0:a1].astype(np.float64))
        raw_val.append(s.tod[:, b0:b1].astype(np.float64))

    if noise_params is None:
        try:
            n_min = min(r.shape[1] for r in raw_train)
            rows = np.concatenate([r[:, :n_min] for r in raw_train], axis=0)
            noise_params = fit_noise_params(rows, rate, nperseg=min(4096, n_min))
        except Exception as exc:  # least squares can fail on degenerate data
            raise InputError(f"cannot fit the noise model on the training data ({exc.__class__.__name__}: {exc})") from None

    # The high-pass removes the slow drifts but keeps the mean level of the training TOD
    # (glitch pile-up makes it positive): generation adds zero-mean low-frequency noise only.
    # With conditions, the level is that of the files at the same condition (pile-up grows with the flux).
    clip = highpass_clip_sigma if highpass_hz and highpass_clip_sigma else None
    clipped = [clip_glitches(r, rate, clip) for r in raw_train] if clip else raw_train
    # the clipped-off glitch peaks are added back whole: the level is the mean of the clipped TOD
    means = np.array([c.mean() for c in clipped])
    levels = [float(means[(file_cond == file_cond[j]).all(axis=1)].mean()) for j in range(len(sources))]

    def hp(x: np.ndarray, level: float, xc: np.ndarray | None = None) -> np.ndarray:
        if clip:
            xc = clip_glitches(x, rate, clip) if xc is None else xc
            return highpass(xc, rate, highpass_hz) + (x - xc) + level
        return (highpass(x, rate, highpass_hz) if highpass_hz else x - x.mean(axis=-1, keepdims=True)) + level

    hp_train = [hp(r, lv, c if clip else None) for r, lv, c in zip(raw_train, levels, clipped)]
    hp_val = [hp(r, lv) for r, lv in zip(raw_val, levels)]
    pooled = np.concatenate([h.reshape(-1) for h in hp_train])
    if transform is None:
        transform = AmplitudeTransform.fit(pooled, noise_multiple=transform_noise_multiple)
    sigma = float(np.median([robust_sigma(row) for h in hp_train for row in h]))

    def to_series(parts: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        out, cond = [], []
        for j, h in enumerate(parts):
            y = transform.forward(h.astype(np.float64)).astype(np.float32)
            rows = [y[i : i + 1] for i in range(y.shape[0])] if channels == 1 else [y]
            out.extend(rows)
            cond.extend([file_cond[j]] * len(rows))
        return out, np.array(cond, dtype=np.float64).reshape(len(out), len(cond_names))

    train_series, train_cond = to_series(hp_train)
    val_series, val_cond = to_series(hp_val)

    dets = list(sources[0].detectors) if channels != 1 else [d for s in sources for d in s.detectors]
    return TrainingData(
        train=train_series,
        val=val_series,
        transform=transform,
        noise_params=noise_params,
        noise_sigma=sigma,
        sampling_rate_hz=rate,
        window_samples=window_samples,
        highpass_hz=float(highpass_hz) if highpass_hz else None,
        channels=channels,
        detectors=list(dict.fromkeys(dets)),
        units=sources[0].units,
        files=[{"path": str(s.path), "n_detectors": int(s.tod.shape[0]), "n_samples": int(s.tod.shape[1]), "sampling_rate_hz": s.sampling_rate_hz, "cond": dict(s.cond)} for s in sources],
        cond_names=cond_names,
        cond_range=cond_range,
        train_cond=train_cond,
        val_cond=val_cond,
    )


# --------------------------------------------------------------------------- windows
def _window_index(series: Sequence[np.ndarray], window_samples: int, stride: int, max_windows: int | None) -> list[tuple[int, int]]:
    """(series, start) of the windows :func:`fixed_windows` returns, in its order."""
    idx = [(k, start) for k, s in enumerate(series) for start in range(0, s.shape[-1] - window_samples + 1, stride)]
    if not idx:
        raise InputError(f"no window of {window_samples} samples fits in the series")
    if max_windows is not None and len(idx) > max_windows:
        idx = [idx[i] for i in np.linspace(0, len(idx) - 1, max_windows).round().astype(int)]
    return idx


def fixed_windows(series: Sequence[np.ndarray], window_samples: int, stride: int, max_windows: int | None = None) -> np.ndarray:
    """All windows at ``stride`` of every series, shape (n, channels, window_samples);
    ``max_windows`` keeps an evenly spaced subset."""
    idx = _window_index(series, window_samples, stride, max_windows)
    return np.stack([series[k][:, a : a + window_samples] for k, a in idx]).astype(np.float32)


def _window_rows(series: Sequence[np.ndarray], per_series: np.ndarray | None, window_samples: int, stride: int, max_windows: int | None) -> np.ndarray:
    """Rows of ``per_series`` (n_series, m) for the windows of :func:`fixed_windows` (m = 0 when None)."""
    idx = _window_index(series, window_samples, stride, max_windows)
    table = np.zeros((len(series), 0)) if per_series is None else np.asarray(per_series, dtype=np.float64)
    return table[[k for k, _ in idx]]


class WindowDataset(torch.utils.data.Dataset):
    """Fixed windows (n, channels, window_samples) as a torch Dataset of float32 tensors."""

    def __init__(self, windows: np.ndarray) -> None:
        self.windows = torch.as_tensor(np.ascontiguousarray(windows, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.windows[i]


class WindowSampler:
    """Random crops of the training series (each crop inside one series, so no leak).

    A crop start is uniform over all valid starts of all series, so every
    training sample is seen equally often (apart from the series ends).
    Randomness only from the ``torch.Generator`` passed to :meth:`sample`.
    """

    def __init__(self, series: Sequence[np.ndarray], window_samples: int) -> None:
        self.window_samples = int(window_samples)
        self.series = [torch.as_tensor(np.ascontiguousarray(s, dtype=np.float32)) for s in series]
        starts = [s.shape[-1] - self.window_samples + 1 for s in self.series]
        if any(n < 1 for n in starts):
            raise InputError(f"a training series is shorter than one window of {self.window_samples} samples")
        self.cum_starts = torch.tensor(np.cumsum([0, *starts]), dtype=torch.int64)

    @property
    def n_starts(self) -> int:
        return int(self.cum_starts[-1])

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random windows, shape (n, channels, window_samples)."""
        return self.sample_with_series(n, generator)[0]

    def sample_with_series(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random windows (n, channels, window_samples) and the index of the series of each (n,)."""
        u = torch.randint(0, self.n_starts, (n,), generator=generator)
        which = torch.searchsorted(self.cum_starts, u, right=True) - 1
        offs = u - self.cum_starts[which]
        w = self.window_samples
        return torch.stack([self.series[int(k)][:, int(o) : int(o) + w] for k, o in zip(which, offs)]), which
