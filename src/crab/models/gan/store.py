"""The GAN's stored model: saving and loading ``model.pt`` in a model directory.

See ``docs/design.md``: ``model.pt`` is a plain dict saved with
:func:`torch.save` and loaded with ``weights_only=True`` (no pickled code).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crab import __version__
from crab.core.errors import InputError, ModelCompatibilityError
from crab.core.formats import check_format, format_record
from crab.models.base import TileSource, reject_options
from crab.models.gan.config import ModelConfig
from crab.models.gan.network import Generator
from crab.models.glitch_layer.wafer import WaferLayer, grouping_for
from crab.physics.noise import NoiseParams
from crab.core.provenance import atomic_write_bytes
from crab.models.gan.transform import AmplitudeTransform

MODEL_FORMAT = "crab-model"
#: Bumped when model.pt changes incompatibly; loading another version is an error.
MODEL_FORMAT_VERSION = 2  # 2: the additive glitches' pulse table (height bands x phases)
MODEL_FILE = "model.pt"
#: Folder of a model directory that holds the snapshots of a training (``TrainConfig.snapshot_every``).
SNAPSHOT_DIR = "snapshots"
#: The training's record beside ``model.pt``: ``{"finished", "epoch", "epochs"}``, rewritten by
#: training at its start, after every epoch and at its end (``finished`` true only then).
TRAINING_STATE_FILE = "training_state.json"
#: Key of ``model.pt``'s ``extra`` set by training: whether the model was finished is in the
#: training's :data:`TRAINING_STATE_FILE` (a model saved otherwise is complete as it is).
TRAINING_RECORD_KEY = "training_record"


def write_training_state(model_dir: str | os.PathLike, *, finished: bool, epoch: int, epochs: int) -> Path:
    """Write the training's :data:`TRAINING_STATE_FILE` in ``model_dir`` (atomically)."""
    body = {"finished": bool(finished), "epoch": int(epoch), "epochs": int(epochs)}
    return atomic_write_bytes(Path(model_dir) / TRAINING_STATE_FILE, (json.dumps(body, indent=1) + "\n").encode())


def training_state(model_file: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`TRAINING_STATE_FILE` of the training that wrote ``model_file``: beside it, or for a
    snapshot (``DIR/snapshots/epoch_NNNN/model.pt``) in ``DIR``; None when there is none."""
    f = Path(model_file)
    homes = [f.parent] + ([f.parent.parent.parent] if f.parent.parent.name == SNAPSHOT_DIR else [])
    for home in homes:
        try:
            state = json.loads((home / TRAINING_STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            return state
    return None


def check_finished(model_file: Path, extra: dict[str, Any]) -> None:
    """ModelCompatibilityError if ``model_file`` (with its ``extra``) comes from a training that did not finish."""
    if not extra.get(TRAINING_RECORD_KEY):
        return  # not written by a training loop (or written before this record existed): complete as it is
    state = training_state(model_file) or {}
    if state.get("finished"):
        return
    held = f"epoch {extra.get('epoch')}" if extra.get("epoch") is not None else "an early epoch"
    where = f" (it stopped after epoch {state['epoch']} of {state['epochs']})" if "epoch" in state and "epochs" in state else ""
    raise ModelCompatibilityError(
        f"{model_file} holds {held} of a training that did not finish{where}; finish it with `crab train --resume "
        f"--out {model_file.parent} --data ...`, or pass --allow-unfinished to use it as it is"
    )


@dataclass
class TrainedModel:
    """A generator ready for inference, with everything needed to use it.

    Attributes
    ----------
    generator : Generator
        In eval mode (batch-norm running statistics used).
    model_config : ModelConfig
    transform : AmplitudeTransform
        Maps generator output back to TOD units with ``inverse``.
    sampling_rate_hz : float
        Sampling rate the model was trained for (Hz).
    window_samples : int
        Training window length (samples).
    units : str
        TOD units of the training data.
    noise_params : NoiseParams or None
        Fitted noise of the training data (for the slow drifts added at generation).
    highpass_hz : float or None
        Cut of the high-pass applied to the training data (Hz), None if none.
    detectors_trained : list of str
    cond_names : list of str
        Names of conditioning inputs (empty when unconditioned).
    cond_range : list of (float, float)
        Trained range of each conditioning input.
    wafer_layer : WaferLayer or None
        The wafer layer drawn once per wafer and added to the network's output
        (``TrainConfig.wafer_layer``); None: the network makes everything.
    extra : dict
        Everything else stored (epoch, quality statistic, training config...).
    """

    generator: Generator
    model_config: ModelConfig
    transform: AmplitudeTransform
    sampling_rate_hz: float
    window_samples: int
    units: str = "pW"
    noise_params: NoiseParams | None = None
    highpass_hz: float | None = None
    detectors_trained: list[str] = field(default_factory=list)
    cond_names: list[str] = field(default_factory=list)
    cond_range: list[tuple[float, float]] = field(default_factory=list)
    wafer_layer: WaferLayer | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    #: The method's name in :data:`crab.models.registry.METHODS`.
    kind = "gan"

    def tile_source(
        self, seed: int, *, cond=None, allow_extrapolation: bool = False, tile_latents: int | None = None, backend: str | None = None,
        wafer_size: int | None = None, wafers=None, **options: Any
    ) -> TileSource:
        """The GAN's tiles for ``seed`` (:class:`crab.models.gan.source.GanSource`).

        Parameters
        ----------
        seed : int
        cond, allow_extrapolation, tile_latents, backend
            See :class:`~crab.models.gan.source.GanSource` (None: the default).
        wafer_size, wafers
            Which detectors share the wafer layer's hits: ``wafer_size`` detectors per wafer
            (default: those of the training wafer) or ``wafers``, a
            :class:`~crab.models.glitch_layer.wafer.WaferGrouping` or ``{key: (wafer, position)}``.
        """
        from crab.models.gan.source import DEFAULT_TILE_LATENTS, GanSource

        reject_options("gan", options)
        return GanSource(
            self, seed, cond=cond, allow_extrapolation=bool(allow_extrapolation),
            tile_latents=DEFAULT_TILE_LATENTS if tile_latents is None else tile_latents, backend="auto" if backend is None else backend,
            grouping=grouping_for(self.wafer_layer.n_detectors if self.wafer_layer else 1, wafer_size, wafers),
        )


def save_model(
    path: str | os.PathLike,
    generator: Generator,
    transform: AmplitudeTransform,
    sampling_rate_hz: float,
    *,
    units: str = "pW",
    noise_params: NoiseParams | None = None,
    highpass_hz: float | None = None,
    detectors_trained: list[str] | None = None,
    cond_names: list[str] | None = None,
    cond_range: list[tuple[float, float]] | None = None,
    wafer_layer: dict | None = None,
    **extra: Any,
) -> Path:
    """Write ``model.pt`` atomically (``path`` is the file or its directory).

    A generator with additive glitches (``ModelConfig.additive_glitches``) is
    stored with ``transform_out_scale`` = ``transform.out_scale`` (filled in
    when the generator's config leaves it unset; an error when it differs).
    """
    p = Path(path)
    if p.is_dir() or p.suffix != ".pt":
        p = p / MODEL_FILE
    cfg = generator.cfg
    if getattr(generator, "additive", None) is not None:
        k = cfg.transform_out_scale
        if k is not None and not np.isclose(k, transform.out_scale, rtol=1e-6, atol=0):
            raise ValueError(f"the generator adds glitches with transform_out_scale {k}, but the transform's out_scale is {transform.out_scale}")
        cfg = dataclasses.replace(cfg, transform_out_scale=float(transform.out_scale))
    payload = {
        **format_record(MODEL_FORMAT, MODEL_FORMAT_VERSION),
        "model_config": cfg.to_dict(),
        "generator_state": {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()},
        "transform": transform.to_dict(),
        "sampling_rate_hz": float(sampling_rate_hz),
        "window_samples": int(cfg.window_samples),
        "units": units,
        "noise_params": None if noise_params is None else noise_params.to_dict(),
        "highpass_hz": None if highpass_hz is None else float(highpass_hz),
        "detectors_trained": list(detectors_trained or []),
        "cond_names": list(cond_names or []),
        "cond_range": [list(map(float, r)) for r in (cond_range or [])],
        "wafer_layer": wafer_layer,
        "extra": extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(p, buf.getvalue())


def load_model(
    path: str | os.PathLike,
    *,
    sampling_rate_hz: float | None = None,
    window_samples: int | None = None,
    allow_unfinished: bool = False,
) -> TrainedModel:
    """Load a model directory (or its ``model.pt``) for generation.

    Parameters
    ----------
    path : path-like
        Model directory written by ``crab train``, or the ``model.pt`` file.
    sampling_rate_hz : float, optional
        If given, the model must have been trained at this rate (Hz).
    window_samples : int, optional
        If given, the model must have been trained with this window length.
    allow_unfinished : bool
        Accept the model of a training that did not finish (killed, interrupted):
        otherwise an error that says which epoch it holds (:func:`check_finished`).

    Raises
    ------
    ModelCompatibilityError
        Missing directory/file, not a CRAB model, another format version, a
        sampling rate / window length different from the one asked, or an
        unfinished training (unless ``allow_unfinished``).
    """
    p = Path(path)
    if not p.exists():
        raise ModelCompatibilityError(f"model not found: {p} (expected a directory written by `crab train`)")
    f = p / MODEL_FILE if p.is_dir() else p
    if not f.exists():
        raise ModelCompatibilityError(f"{p} has no {MODEL_FILE}: not a trained CRAB model directory (is training finished?)")
    try:
        d = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on corrupt files
        raise ModelCompatibilityError(f"{f}: cannot be read as a CRAB model ({exc.__class__.__name__})") from None
    check_format(d, name=MODEL_FORMAT, version=MODEL_FORMAT_VERSION, where=f, what="CRAB model", remedy="retrain the model with `crab train`")
    rate = float(d["sampling_rate_hz"])
    if sampling_rate_hz is not None and not np.isclose(rate, sampling_rate_hz, rtol=1e-9, atol=0):
        raise ModelCompatibilityError(f"{f}: model trained for {rate:g} Hz, but {sampling_rate_hz:g} Hz was asked; train a model at that rate")
    if window_samples is not None and int(d["window_samples"]) != int(window_samples):
        raise ModelCompatibilityError(f"{f}: model trained with windows of {d['window_samples']} samples, but {window_samples} were asked")
    if not allow_unfinished:
        check_finished(f, dict(d.get("extra") or {}))
    try:
        cfg = ModelConfig.from_dict(d["model_config"], str(f))
        gen = Generator(cfg)
        gen.load_state_dict(d["generator_state"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelCompatibilityError(
            f"{f}: the stored network (written by crab {d.get('crab_version')}) cannot be rebuilt by crab {__version__}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    gen.eval()
    return TrainedModel(
        generator=gen,
        model_config=cfg,
        transform=AmplitudeTransform.from_dict(d["transform"]),
        sampling_rate_hz=rate,
        window_samples=int(d["window_samples"]),
        units=d.get("units", "pW"),
        noise_params=None if d.get("noise_params") is None else NoiseParams(**d["noise_params"]),
        highpass_hz=d.get("highpass_hz"),
        detectors_trained=list(d.get("detectors_trained", [])),
        cond_names=list(d.get("cond_names", [])),
        cond_range=[tuple(r) for r in d.get("cond_range", [])],
        wafer_layer=_wafer_layer(d.get("wafer_layer"), f),
        extra=dict(d.get("extra", {})),
        path=f,
    )


def _wafer_layer(d: dict | None, where) -> WaferLayer | None:
    if d is None:
        return None
    try:
        return WaferLayer.from_dict(d)
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise ModelCompatibilityError(f"{where}: malformed wafer layer ({exc.__class__.__name__}: {exc})") from None
