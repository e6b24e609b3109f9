"""Progress bars (tqdm) with one look across commands.

Bars go to stderr, show rate and ETA, and are disabled when stderr is not a
terminal unless forced (``CRAB_PROGRESS=1``) or explicitly turned off
(``CRAB_PROGRESS=0`` or ``disable=True``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_enabled(disable: bool | None = None) -> bool:
    """Whether to draw progress bars."""
    if disable is not None:
        return not disable
    env = os.environ.get("CRAB_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def bar(total: float | None = None, desc: str = "", unit: str = "it", disable: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar on stderr with rate and ETA."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(disable), file=sys.stderr, dynamic_ncols=True, smoothing=0.1, **kw)
