"""GAN configuration files: TOML read with :mod:`tomllib` (``crab train --config``).

A file has up to two tables, ``[model]`` (fields of :class:`~crab.models.gan.config.ModelConfig`)
and ``[train]`` (fields of :class:`~crab.models.gan.config.TrainConfig`); a field left out keeps
its default.  Example (``configs/two_event_channels.toml``)::

    [model]
    event_channels = 2
    discriminator_peak_view = false

A name without a folder or suffix (``paper``) is one of the files shipped in ``crab/configs``
(:func:`shipped_configs`).  Setting ``event_channels`` without ``noise_dim`` keeps one Gaussian
noise channel beside the event channels (:func:`model_overrides`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from crab.core.errors import InputError
from crab.models.gan.config import ModelConfig, TrainConfig

#: Tables of a configuration file and the dataclass each one sets.
SECTIONS = {"model": ModelConfig, "train": TrainConfig}

#: ModelConfig fields the trainer sets from the data (not settable in a file).
DERIVED_MODEL_FIELDS = ("window_samples", "cond_dim", "out_channels", "output_bounds", "transform_out_scale")


def settable_fields(section: str) -> list[str]:
    """The keys a configuration file may give in ``[section]``."""
    names = [f.name for f in dataclasses.fields(SECTIONS[section]) if f.init]
    return [n for n in names if n not in DERIVED_MODEL_FIELDS] if section == "model" else names


def shipped_configs() -> list[str]:
    """Names of the configuration files shipped with CRAB (``crab/configs/NAME.toml``)."""
    return sorted(p.name[: -len(".toml")] for p in resources.files("crab").joinpath("configs").iterdir() if p.name.endswith(".toml"))


def _resolve(name: str | os.PathLike) -> tuple[str, bytes]:
    text = os.fspath(name)
    if not text.endswith(".toml") and os.sep not in text and "/" not in text:
        if text not in shipped_configs():
            raise InputError(f"--config {text}: no such shipped configuration (shipped: {', '.join(shipped_configs())}; or give a path to a .toml file)")
        return f"{text} (shipped)", resources.files("crab").joinpath("configs", f"{text}.toml").read_bytes()
    p = Path(text)
    if not p.is_file():
        raise InputError(f"--config {p}: no such file")
    return str(p), p.read_bytes()


def read_config_file(name: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "train": {...}}`` of a configuration file (path or shipped name).

    Raises
    ------
    InputError
        Not TOML, an unknown table or an unknown key (the message names it and the valid ones).
    """
    where, raw = _resolve(name)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: not a valid TOML file ({exc})") from None
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for section, table in doc.items():
        if section not in SECTIONS or not isinstance(table, dict):
            raise InputError(f"{where}: unknown table [{section}]; expected [model] and/or [train]")
        valid = settable_fields(section)
        for key, value in table.items():
            if key not in valid:
                raise InputError(f"{where}: unknown key {key!r} in [{section}]; valid keys: {', '.join(valid)}")
            out[section][key] = tuple(value) if isinstance(value, list) else value
    return out


def model_overrides(model: dict[str, Any]) -> dict[str, Any]:
    """``[model]`` settings, with ``noise_dim`` (one Gaussian plus the event channels, ``upsample_factor``
    latents each) and ``latent_dim`` (the default's coarse latents) following ``event_channels`` when
    the file does not set them."""
    out = dict(model)
    if "event_channels" in out and "noise_dim" not in out:
        base = ModelConfig()
        out["noise_dim"] = base.upsample_factor * (1 + int(out["event_channels"]))
        out.setdefault("latent_dim", base.latent_dim - base.noise_dim + out["noise_dim"])
    return out
