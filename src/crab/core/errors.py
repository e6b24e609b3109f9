"""Exceptions raised by CRAB.

Every error a user can cause (bad input, wrong file, incompatible model)
is a :class:`CrabError` whose message names what was wrong and what was
expected.  The CLI prints it as one line and exits with a non-zero status.
"""


class CrabError(Exception):
    """A user-facing error with a one-line explanation."""


class InputError(CrabError, ValueError):
    """An argument or a data file has the wrong value, shape, units or content."""


class FileFormatError(CrabError):
    """A file is missing, unreadable, or not in the format CRAB expects."""


class ModelCompatibilityError(CrabError):
    """A trained model does not match what was asked (sampling rate, window, version)."""
