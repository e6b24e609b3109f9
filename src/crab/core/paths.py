"""Checks of output paths, the one home of "exists / folder missing / no space" (every writer calls these).

:func:`check_output_file` for one file, :func:`check_parent_folder` for the folder that will
hold it, :func:`check_output_dir` for a folder of outputs that a later run may replace,
:func:`check_free_space` for the room an output needs.

Temporary files
---------------
Every output is written under a temporary name beside its final one and renamed
into place when complete.  :func:`temporary_path` is the one place those names are
made: ``.NAME.tmp-PID-hHOST-RANDOM`` (the process id and a tag of the host that
writes it).  :func:`clean_stale_temporaries` removes the ones of a final name whose
process is gone (killed with ``kill -9``, a power cut), and
:func:`check_output_file` / :func:`check_output_dir` call it, so the next run that
writes the same output removes what a killed one left.

Folders CRAB replaces
---------------------
``--overwrite`` and ``--fresh`` replace a folder of outputs.  :func:`replaceable_contents`
lists what CRAB wrote there (by the folder's run record and the names it writes) and
refuses a folder that holds anything else; :func:`remove_contents` removes only that list.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from crab.core.errors import InputError
from crab.core.resources import format_bytes

_TMP_MARK = ".tmp-"
#: ``PID-hHOST-RANDOM`` (or ``PID-RANDOM``, the names before the host tag), after ``.NAME.tmp-``.
_TMP_TAIL = re.compile(r"(?P<pid>\d+)-(?:(?P<host>h[0-9a-f]{6})-)?[0-9a-f]+")


def _host_tag() -> str:
    return "h" + hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()


def temporary_path(final: str | os.PathLike) -> Path:
    """The temporary name an output is written under before it is renamed to ``final``.

    ``.NAME.tmp-PID-hHOST-RANDOM`` in the folder of ``final``: hidden, recognised by
    :func:`clean_stale_temporaries` of a later run, unique per process and call.
    """
    p = Path(final)
    return p.with_name(f".{p.name}{_TMP_MARK}{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:8]}")


def _temporary_owner(entry_name: str, final_name: str) -> tuple[int, str | None] | None:
    """``(pid, host tag)`` if ``entry_name`` is a temporary of ``final_name`` (see :func:`temporary_path`), else None."""
    prefix = f".{final_name}{_TMP_MARK}"
    if not entry_name.startswith(prefix):
        return None
    m = _TMP_TAIL.fullmatch(entry_name[len(prefix):])
    return None if m is None else (int(m["pid"]), m["host"])


def is_temporary(entry_name: str) -> bool:
    """Whether ``entry_name`` is a name :func:`temporary_path` makes (of any final name)."""
    if not entry_name.startswith(".") or _TMP_MARK not in entry_name:
        return False
    final = entry_name[1:].rpartition(_TMP_MARK)[0]
    return bool(final) and _temporary_owner(entry_name, final) is not None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as gone)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    try:  # Linux: a killed child not yet reaped is a zombie, gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(entry_name: str, final_name: str) -> bool:
    owner = _temporary_owner(entry_name, final_name)
    if owner is None:
        return False
    pid, host = owner
    return (host is None or host == _host_tag()) and not process_alive(pid)


def is_stale_temporary(entry_name: str) -> bool:
    """Whether ``entry_name`` is a temporary (of any final name) whose process is gone."""
    return is_temporary(entry_name) and _stale(entry_name, entry_name[1:].rpartition(_TMP_MARK)[0])


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


_T = TypeVar("_T")


def write_folder_atomically(out: str | os.PathLike, write: Callable[[Path], _T]) -> _T:
    """Build a folder with ``write(tmp)`` under a temporary name, then put it in place of ``out``.

    A folder already at ``out`` is replaced only once the new one is complete (moved aside,
    then removed); if ``write`` fails, the temporary folder is removed and ``out`` is untouched.
    Callers check beforehand that ``out`` may be replaced (:func:`check_output_dir`).
    Returns what ``write`` returns.
    """
    out = Path(out)
    tmp = temporary_path(out)
    tmp.mkdir()
    try:
        value = write(tmp)
        old = None
        if out.exists():
            old = temporary_path(out)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return value


def clean_stale_temporaries(folder: str | os.PathLike, final_name: str) -> list[Path]:
    """Remove the temporaries of ``final_name`` in ``folder`` whose process is gone; return them.

    Only names made by :func:`temporary_path` for ``final_name`` are touched, and only
    when written on this host by a process that no longer runs (files or folders).
    """
    d = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for e in entries:
        if _stale(e.name, final_name):
            _remove(d / e.name)
            removed.append(d / e.name)
    return removed


def check_output_file(path: str | os.PathLike, *, overwrite: bool, option: str = "--overwrite") -> Path:
    """Check that a file may be written at ``path``; return it as a :class:`Path`.

    Raises :class:`InputError` if ``path`` is a folder, if it exists and
    ``overwrite`` is false (the message names ``option``), or if its folder
    does not exist or cannot be written.  Removes the stale temporaries of
    ``path`` (:func:`clean_stale_temporaries`).
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise InputError(f"output file {p} exists (use {option} to replace it)")
    check_parent_folder(p)
    clean_stale_temporaries(_parent(p), p.name)
    return p


def _parent(p: Path) -> Path:
    return p.parent if str(p.parent) else Path(".")


def check_parent_folder(path: str | os.PathLike) -> Path:
    """Raise :class:`InputError` unless the folder that will hold ``path`` exists and can be written."""
    p = Path(path)
    parent = _parent(p)
    if not parent.exists():
        raise InputError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder")
    check_writable(parent)
    return p


def check_writable(folder: str | os.PathLike) -> Path:
    """Raise :class:`InputError` if this process may not create files in ``folder`` (an existing folder)."""
    d = Path(folder)
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in folder {d}: permission denied (choose a folder you can write)")
    return d


def check_creatable_folder(path: str | os.PathLike, *, option: str) -> Path:
    """InputError unless the folder ``path`` (made with its parents if missing) can be written:
    its nearest existing ancestor must be a writable folder.  ``option`` names it in the message."""
    out = Path(path)
    home = out
    while not home.exists() and home != home.parent:
        home = home.parent
    if not home.is_dir():
        raise InputError(f"{option} {out}: {home} is not a folder")
    check_writable(home)
    return out


def check_output_dir(path: str | os.PathLike, *, overwrite: bool, marker: str, owned: Sequence[str] | None = None) -> Path:
    """Check that a folder of outputs may be written (or replaced) at ``path``; return it as a :class:`Path`.

    An empty or missing folder is accepted.  A non-empty one is accepted only
    if ``overwrite`` is true and it holds ``marker``, a file whose presence
    says that CRAB wrote the folder (e.g. ``metrics.json`` of a validation
    report): a folder of other files is never replaced; with ``owned`` (file-name
    patterns of what CRAB writes there), neither is one that also holds a file
    matching none of them (a user's file put inside a report folder).  Raises
    :class:`InputError` otherwise, if ``path`` is a file, or if the folder
    that will hold it does not exist or cannot be written.
    """
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output {out} exists and is not a folder")
        contents = [e for e in out.iterdir() if not is_stale_temporary(e.name)]
        if contents and not overwrite:
            raise InputError(f"output folder {out} exists (pass overwrite to replace it)")
        if contents and not (out / marker).exists():
            raise InputError(f"output folder {out} exists and does not hold {marker} (a previous CRAB output); refusing to replace it")
        foreign = sorted(e.name for e in contents if owned is not None and not _matches(e.name, owned))
        if foreign:
            raise InputError(f"output folder {out} holds files CRAB did not write ({', '.join(foreign[:3])}); refusing to replace it: move them or choose another folder")
    if not out.parent.exists():
        raise InputError(f"parent folder of {out} does not exist")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent} is not a folder")
    check_writable(out.parent)
    clean_stale_temporaries(out.parent, out.name)
    return out


def check_free_space(folder: str | os.PathLike, n_bytes: int, *, what: str) -> None:
    """Raise :class:`InputError` if ``folder``'s file system has less than ``n_bytes`` free.

    ``what`` names the output in the message (e.g. ``"gen.h5 (4 detectors x 3 y at 19 Hz)"``).
    """
    d = Path(os.path.abspath(folder if str(folder) else "."))
    try:
        usage = shutil.disk_usage(d)
    except OSError:  # no statistics: nothing to check against
        return
    if usage.total == 0:  # a pseudo file system (sysfs, procfs) reports no blocks at all
        return
    if n_bytes > usage.free:
        raise InputError(
            f"{what} needs {format_bytes(n_bytes)} of disk space, but {d} has {format_bytes(usage.free)} free; "
            "free some space, write elsewhere, or make a shorter run"
        )


# --------------------------------------------------------------------------- folders CRAB replaces
def is_run_record(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON run record written by CRAB (:func:`crab.core.provenance.run_record`)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rec, dict) and "crab_version" in rec and "config" in rec


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pp = pat.split("/")
        if len(pp) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pp)):
            return True
    return False


def _matches_folder(rel: str, patterns: Sequence[str]) -> bool:
    """Whether folder ``rel`` is on the way to a file of ``patterns`` (a pattern goes on below it)."""
    parts = rel.split("/")
    for pat in patterns:
        pp = pat.split("/")
        if len(pp) > len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pp)):
            return True
    return False


def replaceable_contents(folder: str | os.PathLike, owned: Sequence[str], *, marker: str, what: str, option: str) -> list[Path]:
    """What ``option`` (``--overwrite``, ``--fresh``) may remove from ``folder``: every entry, all CRAB's.

    Parameters
    ----------
    folder : path-like
        The folder to replace (missing or empty: nothing to remove).
    owned : sequence of str
        Glob patterns (``/`` between levels, e.g. ``"snapshots/epoch_*/model.pt"``) of the files
        CRAB writes there.  Temporaries (:func:`temporary_path`) of processes that are gone count as CRAB's.
    marker : str
        The folder's run record (:func:`is_run_record`): a folder holding files without it is not CRAB's.
    what, option : str
        For the messages: what the folder is (``"model folder"``), the option asked.

    Returns
    -------
    list of Path
        The files (deepest first) and then the folders to remove, for :func:`remove_contents`.

    Raises
    ------
    InputError
        The folder holds a file CRAB did not write, has files but no run record, or a
        CRAB process still writes in it; nothing is removed.
    """
    root = Path(folder)
    if not root.exists():
        return []
    if not root.is_dir():
        raise InputError(f"{option}: {root} exists and is not a folder")
    files: list[Path] = []
    dirs: list[Path] = []
    foreign: list[str] = []
    busy: list[str] = []
    for here, subdirs, names in os.walk(root, topdown=True, followlinks=False):
        h = Path(here)
        for name in list(subdirs):
            p = h / name
            if p.is_symlink():
                subdirs.remove(name)
                names.append(name)
            elif is_temporary(name):
                subdirs.remove(name)
                (files if is_stale_temporary(name) else busy).append(p)
            elif _matches_folder(p.relative_to(root).as_posix(), owned):
                dirs.append(p)
            else:
                subdirs.remove(name)
                foreign.append(p.relative_to(root).as_posix() + "/")
        for name in names:
            p = h / name
            rel = p.relative_to(root).as_posix()
            if is_temporary(name):
                (files if is_stale_temporary(name) else busy).append(p)
            elif _matches(rel, owned):
                files.append(p)
            else:
                foreign.append(rel)
    if busy:
        raise InputError(f"{option}: a CRAB process is still writing in {root} ({busy[0].name}); wait for it to finish or stop it first")
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{option}: {what} {root} holds files CRAB did not write ({shown}); refusing to replace it: move them or choose another folder")
    if any(not is_temporary(p.name) for p in files) and not is_run_record(root / marker):
        raise InputError(f"{option}: {root} is not a {what} written by CRAB (no {marker} run record); refusing to replace it: choose another folder")
    return sorted(files, key=lambda p: -len(p.parts)) + sorted(dirs, key=lambda p: -len(p.parts))


def remove_contents(paths: Sequence[Path]) -> None:
    """Remove what :func:`replaceable_contents` listed: files and temporaries, then the emptied folders."""
    for p in paths:
        if p.is_dir() and not p.is_symlink() and not is_temporary(p.name):
            try:
                p.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
        else:
            _remove(p)
