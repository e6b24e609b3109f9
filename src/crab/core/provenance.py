"""What a run records next to its outputs so it can be reproduced.

Every command writes (or embeds) a *run record*: the full configuration,
the seed, the package version, the versions of the main libraries, the
command line and the time.  JSON files are written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from crab import __version__
from crab.core.paths import clean_stale_temporaries, temporary_path


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy scalars/arrays, paths and tuples to JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that affect results."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "h5py", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "unknown")
    return out


def run_record(config: Any, seed: int | None, **extra: Any) -> dict[str, Any]:
    """The record of one run: configuration, seed, versions, command line, time."""
    rec = {
        "crab_version": __version__,
        "seed": seed,
        "config": to_jsonable(config),
        "versions": library_versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(to_jsonable(extra))
    return rec


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary name in the same folder (:func:`crab.core.paths.temporary_path`), then
    rename to ``path``; the temporaries a killed writer of ``path`` left are removed first."""
    p = Path(path)
    clean_stale_temporaries(p.parent if str(p.parent) else Path("."), p.name)
    tmp = temporary_path(p)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())
