"""Checks of output paths, the one home of "exists / folder missing" (every writer calls these)."""

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
