"""What a run needs of the machine, checked before it starts: memory (and :func:`format_bytes` for messages).

The disk-space check of an output is :func:`crab.core.paths.check_free_space`.
"""

from __future__ import annotations

import os
from pathlib import Path

from crab.core.errors import InputError


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``'512 B'``, ``'3.2 GiB'``, ``'2.1e+03 EiB'``."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(x) < 1024:
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.3g} {unit}"
        x /= 1024
    return f"{x:.3g} EiB"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup (v2) memory limit, if it has one."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        rel = line.split(":", 2)[2].lstrip("/")
        base = Path("/sys/fs/cgroup") / rel
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text().strip()))
    except (OSError, ValueError, IndexError):
        return None


def _rlimit_available() -> int | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, int(soft) - used)


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get: the least of the machine's available memory, the
    cgroup's room and the address-space limit (``ulimit -v``); None when none is known."""
    known = [v for v in (_meminfo_available(), _cgroup_available(), _rlimit_available()) if v is not None]
    return min(known) if known else None


def check_memory(n_bytes: int, *, what: str, remedy: str) -> None:
    """Raise :class:`InputError` if ``n_bytes`` exceed :func:`available_memory_bytes`.

    ``what`` says what needs the memory, ``remedy`` how to need less.
    """
    avail = available_memory_bytes()
    if avail is not None and n_bytes > avail:
        raise InputError(f"{what} needs about {format_bytes(n_bytes)} of memory, but {format_bytes(avail)} are available; {remedy}")
