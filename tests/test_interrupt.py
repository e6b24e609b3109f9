"""A stop signal stops long loops even when its first exception is swallowed."""

from __future__ import annotations

import os
import signal

import pytest

from crab.core import interrupt
from crab.generation import TodGenerator, load_generation_model
from crab.physics.montecarlo import MonteCarloConfig, MonteCarloSimulator

from test_generation import make_model_dir


def _swallowed_signal(sig: int) -> None:
    """Deliver ``sig`` to this process and swallow what the handler raises (as a weakref callback would)."""
    try:
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    except interrupt.Interrupted:
        pass
    else:  # pragma: no cover
        pytest.fail("the handler did not raise")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_generation_stops_after_a_swallowed_signal(tmp_path, sig):
    gen = TodGenerator(load_generation_model(make_model_dir(tmp_path / "m"), method="gan"), 3)
    with interrupt.stop_on_signals():
        chunks = gen.iter_chunks(1, 0, 10**9, chunk_samples=4096)
        next(chunks)
        _swallowed_signal(sig)
        with pytest.raises(interrupt.Interrupted, match=signal.Signals(sig).name):
            next(chunks)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored, flag cleared
    interrupt.check()


def test_monte_carlo_stops_after_a_swallowed_signal():
    sim = MonteCarloSimulator(MonteCarloConfig(n_detectors=1), 1)
    with interrupt.stop_on_signals():
        run = sim.run(10**6, chunk_s=1.0)
        next(run)
        _swallowed_signal(signal.SIGTERM)
        with pytest.raises(interrupt.Interrupted):
            next(run)


def test_outside_the_block_signals_are_untouched():
    before = signal.getsignal(signal.SIGTERM)
    interrupt.check()  # nothing pending: no error
    assert signal.getsignal(signal.SIGTERM) is before
