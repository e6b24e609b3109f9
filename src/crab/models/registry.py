"""Which generative method a stored model belongs to, and its loader."""

from __future__ import annotations

import os
from pathlib import Path

from crab.core.errors import InputError, ModelCompatibilityError

def is_template_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a template model (a ``.json`` file or a folder with ``template.json``)."""
    from crab.models.template.template import TEMPLATE_FILE

    p = Path(path)
    return (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / TEMPLATE_FILE).exists())


def load_generation_model(path: str | os.PathLike, *, method: str = "auto", sampling_rate_hz: float | None = None):
    """Load what to generate with: a trained model directory or a template model.

    Parameters
    ----------
    path : path-like
        Model directory (``crab train``) or template model (``.json`` file or
        folder with ``template.json``).
    method : str
        ``"gan"``, ``"template"`` or ``"auto"`` (from the path).
    sampling_rate_hz : float, optional
        Required sampling rate (Hz); another rate is a ModelCompatibilityError.

    Raises
    ------
    ModelCompatibilityError
        Missing, unreadable, another format version or another sampling rate.
    """
    if method not in ("auto", "gan", "template"):
        raise InputError(f"method must be 'gan', 'template' or 'auto', got {method!r}")
    p = Path(path)
    if not p.exists():
        raise ModelCompatibilityError(f"model not found: {p} (expected a directory written by `crab train` or a template .json)")
    if method == "template" or (method == "auto" and is_template_path(p)):
        from crab.models.template.template import load_template

        return load_template(p, sampling_rate_hz=sampling_rate_hz)
    from crab.core.errors import CrabError
    from crab.models.gan.store import load_model

    try:
        return load_model(p, sampling_rate_hz=sampling_rate_hz)
    except CrabError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        # a model.pt whose configuration or weights this version cannot rebuild
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelCompatibilityError(f"{p}: model incompatible with this version of crab ({msg}); retrain it or use the crab version that wrote it") from None
