"""Clean stops of long runs on SIGTERM and SIGINT.

A signal handler that raises can lose its exception: when the signal lands
while Python runs a weakref callback or a ``__del__`` method, the exception is
printed as "Exception ignored in ..." and the run goes on as if nothing
happened (a 3-year generation then ignores ``kill`` for minutes). So the
handler here does two things: it raises :class:`Interrupted` at once, which
stops blocking waits promptly, and it records the signal, so that the next
:func:`check` in a long loop raises again if the first one was swallowed.

Long loops (generation chunks, Monte Carlo chunks, training batches) call
:func:`check` once per step; the CLI wraps every command in
:func:`stop_on_signals`. Writers clean up on ``KeyboardInterrupt`` (of which
:class:`Interrupted` is a subclass), so a stopped run leaves nothing
half-written under a final name.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["Interrupted", "check", "stop_on_signals"]

_received: int | None = None


class Interrupted(KeyboardInterrupt):
    """Raised when the process received a stop signal (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _handler(signum: int, frame: object) -> None:  # noqa: ARG001
    global _received
    _received = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise :class:`Interrupted` if a stop signal arrived inside :func:`stop_on_signals`."""
    if _received is not None:
        raise Interrupted(_received)


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Turn the given signals into :class:`Interrupted` for the duration of the block.

    Outside the main thread (where handlers cannot be installed) the block runs
    unchanged. The previous handlers are restored on exit.
    """
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in signals}
    _received = None
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _received = None
