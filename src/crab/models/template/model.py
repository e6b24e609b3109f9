"""The template model: what is fitted, its JSON file (save / load) and its tile source."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crab.core.errors import InputError, ModelCompatibilityError
from crab.core.formats import check_format, format_record
from crab.core.provenance import atomic_write_bytes
from crab.models.base import reject_options
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.glitch_layer.shapes import QUANTILE_P
from crab.models.glitch_layer.wafer import grouping_for
from crab.models.template.source import DEFAULT_BLOCK_SAMPLES, TemplateSource
from crab.physics.noise import NoiseParams

TEMPLATE_FILE = "template.json"
TEMPLATE_FORMAT = "crab-template"
#: Bumped when the JSON layout changes incompatibly (2: rise/delay of the
#: templates, linear wafer response driven by energies).
TEMPLATE_FORMAT_VERSION = 2


@dataclass
class TemplateModel:
    """The fitted template baseline.

    Attributes
    ----------
    sampling_rate_hz : float
        Sampling rate of the fitted TOD (Hz).
    noise_params : NoiseParams
        Noise fitted on the TOD (glitches and wafer model removed).
    direct, wafer : GlitchPopulation
    units : str
    fit_info : dict
        Where and how it was fitted (file, duration, detectors, settings, fit quality).
    path : Path or None
        File it was loaded from.
    """

    sampling_rate_hz: float
    noise_params: NoiseParams
    direct: GlitchPopulation
    wafer: GlitchPopulation
    units: str = "pW"
    fit_info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    #: The method's name in :data:`crab.models.registry.METHODS`.
    kind = "template"

    def tile_source(self, seed: int, *, block_samples: int = DEFAULT_BLOCK_SAMPLES, wafer_size: int | None = None, wafers=None, **options: Any) -> TemplateSource:
        """The template's tiles for ``seed`` (:class:`TemplateSource`); it takes no GAN option (conditions...).

        ``wafer_size`` (detectors per wafer; default: those of the fitted TOD) or ``wafers`` (a
        :class:`~crab.models.glitch_layer.wafer.WaferGrouping` or ``{key: (wafer, position)}``)
        say which detectors share wafer hits."""
        reject_options("template", options, {
            "cond": "conditions (--phi, --phi-schedule, --cond) apply to conditioned GAN models only",
            "allow_extrapolation": "--allow-extrapolation applies to conditioned GAN models only",
        })
        grouping = grouping_for(int(self.fit_info.get("n_detectors", 1)), wafer_size, wafers)
        return TemplateSource(self, seed, block_samples=block_samples, grouping=grouping)

    def to_dict(self) -> dict:
        return {
            **format_record(TEMPLATE_FORMAT, TEMPLATE_FORMAT_VERSION),
            "sampling_rate_hz": self.sampling_rate_hz,
            "units": self.units,
            "noise_params": self.noise_params.to_dict(),
            "direct": self.direct.to_dict(),
            "wafer": self.wafer.to_dict(),
            "quantile_p": QUANTILE_P.tolist(),
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_dict(cls, d: dict, path: Path | None = None) -> "TemplateModel":
        where = path or "template model"
        check_format(
            d, name=TEMPLATE_FORMAT, version=TEMPLATE_FORMAT_VERSION, where=where, what="CRAB template model",
            remedy="fit it again (`crab generate --method template --fit MC.h5 --save-template ...`)",
        )
        if not np.allclose(d.get("quantile_p", []), QUANTILE_P) or len(d.get("quantile_p", [])) != len(QUANTILE_P):
            raise ModelCompatibilityError(f"{where}: quantile grid differs from this version's; fit it again")
        try:
            noise = dict(d["noise_params"])
            for k in ("table_freq_hz", "table_psd"):
                if k in noise:
                    noise[k] = tuple(noise[k])
            return cls(
                sampling_rate_hz=float(d["sampling_rate_hz"]),
                noise_params=NoiseParams(**noise),
                direct=GlitchPopulation(**d["direct"]),
                wafer=GlitchPopulation(**d["wafer"]),
                units=d.get("units", "pW"),
                fit_info=dict(d.get("fit_info", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise ModelCompatibilityError(f"{where}: malformed template model ({exc.__class__.__name__}: {exc})") from None


def save_template(model: TemplateModel, path: str | os.PathLike) -> Path:
    """Write the model as JSON (``path``: a ``.json`` file, or a folder that gets ``template.json``)."""
    p = Path(path)
    if p.suffix != ".json":
        p.mkdir(parents=True, exist_ok=True)
        p = p / TEMPLATE_FILE
    return atomic_write_bytes(p, (json.dumps(model.to_dict(), indent=2) + "\n").encode())


def load_template(path: str | os.PathLike, *, sampling_rate_hz: float | None = None) -> TemplateModel:
    """Read a template model (``.json`` file or folder with ``template.json``).

    Raises
    ------
    ModelCompatibilityError
        Missing, unreadable, another format version, or another sampling rate than asked.
    """
    p = Path(path)
    f = p / TEMPLATE_FILE if p.is_dir() else p
    if not f.exists():
        raise ModelCompatibilityError(f"template model not found: {f} (fit one with `crab generate --method template --fit MC.h5`)")
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCompatibilityError(f"{f}: cannot be read as a template model ({exc.__class__.__name__})") from None
    model = TemplateModel.from_dict(d, path=f)
    if sampling_rate_hz is not None and not np.isclose(model.sampling_rate_hz, sampling_rate_hz, rtol=1e-9, atol=0):
        raise ModelCompatibilityError(f"{f}: template fitted at {model.sampling_rate_hz:g} Hz, but {sampling_rate_hz:g} Hz was asked; fit it on data at that rate")
    return model
