"""Exceptions raised by CRAB.

Every error a user can cause (bad input, wrong file, incompatible model)
is a :class:`CrabError` whose message names what was wrong and what was
expected.  The CLI prints it as one line and exits with a non-zero status.
An :class:`OSError` whose cause is outside CRAB (permission denied, disk full,
missing folder: :func:`os_error_message`) is printed the same way.
"""

import errno
import os
import re


class CrabError(Exception):
    """A user-facing error with a one-line explanation."""


class InputError(CrabError, ValueError):
    """An argument or a data file has the wrong value, shape, units or content."""


class FileFormatError(CrabError):
    """A file is missing, unreadable, or not in the format CRAB expects."""


class ModelCompatibilityError(CrabError):
    """A trained model does not match what was asked (sampling rate, window, version)."""


#: errno values of an OSError whose cause is outside CRAB (the machine, the file system, the user's
#: rights): the CLI reports them as one ``error:`` line, like a CrabError.
OUTSIDE_ERRNOS = {
    errno.EACCES: "permission denied (use a file or folder you may read and write)",
    errno.EPERM: "operation not permitted (use a file or folder you may read and write)",
    errno.ENOSPC: "no space left on the device (free some space or write elsewhere)",
    errno.EDQUOT: "disk quota exceeded (free some space or write elsewhere)",
    errno.EROFS: "read-only file system (write elsewhere)",
    errno.ENOENT: "no such file or folder (check the path)",
    errno.ENOTDIR: "a part of the path is not a folder (check the path)",
    errno.EISDIR: "is a folder (give a file)",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files on the system",
    errno.EFBIG: "file too large for the file system (write elsewhere or make a shorter run)",
    errno.EIO: "input/output error (check the device)",
    errno.ENOMEM: "out of memory (make a smaller run)",
    errno.ENOTEMPTY: "folder not empty",
    errno.EXDEV: "cannot move across file systems",
}

#: What h5py (HDF5) puts in the text of its OSErrors: ``errno = 13, error message = '...'`` and ``name = '...'``.
_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_NAME = re.compile(r"(?:file)?name = '([^']*)'")


def _user_path(name: str) -> str:
    """The final name of a temporary (``.NAME.tmp-...`` -> ``NAME``): what the user asked to write."""
    head, _, tail = name.rpartition("/")
    if tail.startswith(".") and ".tmp-" in tail:
        tail = tail[1:].rpartition(".tmp-")[0]
    return f"{head}/{tail}" if head else tail


def os_error_message(exc: BaseException) -> str | None:
    """One line for an OSError whose cause is outside CRAB (see :data:`OUTSIDE_ERRNOS`), else None.

    Works for Python's OSErrors (``errno``, ``filename``) and h5py's (the errno in the text).
    """
    if not isinstance(exc, OSError):
        return None
    code, name = exc.errno, exc.filename
    text = str(exc)
    if code is None:
        m = _H5_ERRNO.search(text)
        code = int(m.group(1)) if m else None
    if name is None:
        n = _H5_NAME.search(text)
        name = n.group(1) if n else None
    if code not in OUTSIDE_ERRNOS:
        return None
    where = _user_path(os.fsdecode(name)) if name else ""
    if where and getattr(exc, "filename2", None):
        where += f" -> {_user_path(os.fsdecode(exc.filename2))}"
    return f"{where}: {OUTSIDE_ERRNOS[code]}" if where else OUTSIDE_ERRNOS[code]
