"""Checks of output paths, the one home of "exists / folder missing" (every writer calls these).

:func:`check_output_file` for one file, :func:`check_parent_folder` for the folder that will
hold it, :func:`check_output_dir` for a folder of outputs that a later run may replace.
"""

from __future__ import annotations

import os
from pathlib import Path

from crab.core.errors import InputError


def check_output_file(path: str | os.PathLike, *, overwrite: bool, option: str = "--overwrite") -> Path:
    """Check that a file may be written at ``path``; return it as a :class:`Path`.

    Raises :class:`InputError` if ``path`` is a folder, if it exists and
    ``overwrite`` is false (the message names ``option``), or if its folder
    does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise InputError(f"output file {p} exists (use {option} to replace it)")
    check_parent_folder(p)
    return p


def check_parent_folder(path: str | os.PathLike) -> Path:
    """Raise :class:`InputError` unless the folder that will hold ``path`` exists."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder")
    return p


def check_output_dir(path: str | os.PathLike, *, overwrite: bool, marker: str) -> Path:
    """Check that a folder of outputs may be written (or replaced) at ``path``; return it as a :class:`Path`.

    An empty or missing folder is accepted.  A non-empty one is accepted only
    if ``overwrite`` is true and it holds ``marker``, a file whose presence
    says that CRAB wrote the folder (e.g. ``metrics.json`` of a validation
    report): a folder of other files is never replaced.  Raises
    :class:`InputError` otherwise, if ``path`` is a file, or if the folder
    that will hold it does not exist.
    """
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output {out} exists and is not a folder")
        contents = list(out.iterdir())
        if contents and not overwrite:
            raise InputError(f"output folder {out} exists (pass overwrite to replace it)")
        if contents and not (out / marker).exists():
            raise InputError(f"output folder {out} exists and does not hold {marker} (a previous CRAB output); refusing to replace it")
    if not out.parent.exists():
        raise InputError(f"parent folder of {out} does not exist")
    return out
