"""Click parameter types and options shared by the sub-commands."""

from __future__ import annotations

import click

from crab.core.errors import InputError
from crab.core.rng import MAX_SEED
from crab.core.units import parse_duration_s


class Duration(click.ParamType):
    """A duration in seconds or with a unit: ``1800``, ``90s``, ``2h``, ``3d``, ``3y``."""

    name = "duration"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx) -> float:  # noqa: D401
        if isinstance(value, float):
            return value
        try:
            return parse_duration_s(value, allow_zero=self.allow_zero)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


def seed_range(offset: int = 0) -> click.IntRange:
    """A seed option's type: an unsigned 64-bit integer (0 .. 2^64 - 1 - ``offset``), its range shown in ``--help``."""
    return click.IntRange(0, MAX_SEED - offset)


#: A seed: an unsigned 64-bit integer, 0 to 2^64 - 1.
SEED = seed_range()

DURATION = Duration()
DURATION_OR_ZERO = Duration(allow_zero=True)


def positive_int(ctx, param, value):
    """Callback: an integer >= 1."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def positive_float(ctx, param, value):
    """Callback: a finite float > 0."""
    if value is not None and not (value > 0 and value < float("inf")):
        raise click.BadParameter(f"must be a positive number, got {value}")
    return value


def nonnegative_int(ctx, param, value):
    """Callback: an integer >= 0."""
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value
