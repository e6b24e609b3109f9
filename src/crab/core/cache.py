"""A small thread-safe cache that keeps a bounded number of entries (the oldest inserted go first).

The tile sources cache what neighbouring tiles and the detectors of a wafer
share (drawn events, rendered wafer signals, truth rows); generation threads
read and fill it concurrently.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any


class BoundedCache:
    """A mapping that keeps its newest ``size`` entries; :meth:`put` drops the oldest inserted beyond that.

    Reads take no lock (a missing entry is recomputed by the caller, which gives the same value);
    writes are serialised.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._entries: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The entry of ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: Hashable, value: Any) -> Any:
        """Store ``value`` under ``key``, drop the oldest entries beyond ``size``, and return ``value``."""
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.pop(next(iter(self._entries)))
        return value

    def __len__(self) -> int:
        return len(self._entries)
