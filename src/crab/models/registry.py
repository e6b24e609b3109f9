"""The generative methods: from a model's kind to the function that loads it.

Adding a method is one folder under :mod:`crab.models` (see the contract in
:mod:`crab.models.base`) and one line of :data:`METHODS`.  Loaders are named
as dotted paths and imported only when used, so torch is imported only for
the GAN.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crab.core.errors import CrabError, InputError, ModelCompatibilityError


@dataclass(frozen=True)
class MethodSpec:
    """How to recognise and load a stored model of one method.

    Attributes
    ----------
    marker : str
        File a model directory of this method holds (e.g. ``model.pt``).
    suffix : str
        Suffix of a model stored as a single file (e.g. ``.json``; ``""`` if none).
    loader : str
        ``"module:function"``: ``function(path, sampling_rate_hz=None)`` returns
        the loaded model (a :class:`crab.models.base.GenerativeModel`).
    retrain : str
        How to make a model of this method (for error messages).
    options : tuple of str
        Keyword options the loader takes beyond ``sampling_rate_hz`` (e.g. ``allow_unfinished``);
        asked of a method without them, they are ignored (a template fit is never unfinished).
    """

    marker: str
    suffix: str
    loader: str
    retrain: str
    options: tuple[str, ...] = ()

    def holds(self, path: Path) -> bool:
        """Whether ``path`` holds a stored model of this method."""
        if path.is_dir():
            return (path / self.marker).exists()
        return path.is_file() and (path.name == self.marker or (bool(self.suffix) and path.suffix == self.suffix))

    def load(self, path: Path, sampling_rate_hz: float | None, **options: Any) -> Any:
        module, _, func = self.loader.partition(":")
        kw = {k: v for k, v in options.items() if k in self.options}
        return getattr(importlib.import_module(module), func)(path, sampling_rate_hz=sampling_rate_hz, **kw)


#: Every generative method, by the ``kind`` of its models.  The first is the default.
METHODS: dict[str, MethodSpec] = {
    "gan": MethodSpec("model.pt", ".pt", "crab.models.gan.store:load_model", "`crab train`", options=("allow_unfinished",)),
    "template": MethodSpec("template.json", ".json", "crab.models.template.model:load_template", "`crab generate --method template --fit MC.h5 --save-template ...`"),
}


def method_names() -> list[str]:
    """Names of the generative methods (the CLI's ``--method`` choices)."""
    return list(METHODS)


def method_of(path: str | os.PathLike) -> str | None:
    """The method whose stored model ``path`` holds, or None if none is recognised."""
    p = Path(path)
    return next((name for name, spec in METHODS.items() if spec.holds(p)), None)


def is_template_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a template model (a ``.json`` file or a folder with ``template.json``)."""
    return method_of(path) == "template"


def load_generation_model(path: str | os.PathLike, *, method: str = "auto", sampling_rate_hz: float | None = None, allow_unfinished: bool = False):
    """Load what to generate with: a stored model of any method in :data:`METHODS`.

    Parameters
    ----------
    path : path-like
        Model directory or file (``crab train``'s directory, a template ``.json``...).
    method : str
        A name in :data:`METHODS`, or ``"auto"`` (recognised from the path; the
        first method when nothing is recognised, so its loader says what is missing).
    sampling_rate_hz : float, optional
        Required sampling rate (Hz); another rate is a ModelCompatibilityError.
    allow_unfinished : bool
        Accept the model of a training that did not finish (see :func:`crab.models.gan.store.load_model`).

    Returns
    -------
    GenerativeModel
        See :mod:`crab.models.base`.

    Raises
    ------
    ModelCompatibilityError
        Missing, unreadable, another format version, another sampling rate, or an
        unfinished training (unless ``allow_unfinished``).
    """
    if method != "auto" and method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)} or 'auto', got {method!r}")
    p = Path(path)
    if not p.exists():
        raise ModelCompatibilityError(f"model not found: {p} (expected a directory written by `crab train` or a template .json)")
    name = method if method != "auto" else (method_of(p) or next(iter(METHODS)))
    spec = METHODS[name]
    try:
        return spec.load(p, sampling_rate_hz, allow_unfinished=allow_unfinished)
    except CrabError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError) as exc:
        # a stored model whose configuration or weights this version cannot rebuild
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelCompatibilityError(f"{p}: model incompatible with this version of crab ({msg}); make it again with {spec.retrain}") from None
