"""Format and version checks of stored files, the one home for every kind CRAB writes.

Every file or record CRAB writes carries ``format`` (a name such as
``"crab-model"``) and ``format_version`` (an integer bumped on incompatible
changes).  :func:`check_format` is the single reader-side check.
"""

from __future__ import annotations

from typing import Any, Mapping

from crab import __version__
from crab.core.errors import CrabError, ModelCompatibilityError


def format_record(name: str, version: int) -> dict[str, Any]:
    """The ``format`` / ``format_version`` / ``crab_version`` fields a writer stores."""
    return {"format": name, "format_version": int(version), "crab_version": __version__}


def check_format(
    record: Any,
    *,
    name: str,
    version: int,
    where: Any,
    what: str,
    remedy: str,
    error: type[CrabError] = ModelCompatibilityError,
) -> None:
    """Raise ``error`` unless ``record`` is a mapping of format ``name`` at ``version``.

    Parameters
    ----------
    record : mapping
        The stored record (a JSON object, a torch checkpoint dict, HDF5 attributes).
    name, version : str, int
        The expected ``format`` and ``format_version``.
    where : path or str
        What to name in the message (the file).
    what : str
        What the file should be, e.g. ``"CRAB model"``.
    remedy : str
        How to get a readable file, e.g. ``"retrain the model"``.
    error : exception class
        The :class:`CrabError` subclass to raise.
    """
    if not isinstance(record, Mapping) or record.get("format") != name:
        raise error(f"{where}: not a {what} file")
    found = record.get("format_version")
    if found != version:
        by = record.get("crab_version")
        raise error(
            f"{where}: {what} format version {found}" + (f" (written by crab {by})" if by else "")
            + f" is not supported by crab {__version__}, which reads version {version}; {remedy}"
        )
