"""ray_call: a signal that arrives while a call into Ray runs is raised after it returns, as the
command's own handlers would raise it, and the handlers in place before are set back."""

import os
import signal

import pytest

from faithprobe.errors import Cancelled
from faithprobe.run.ray_connect import ray_call


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGTERM, Cancelled),
                                              (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_during_the_call_is_raised_after_it(sig, raised):
    calls = []

    def raising(signum, frame):
        raise AssertionError("the handler in place ran inside the call")

    def call(x):
        os.kill(os.getpid(), sig)
        calls.append(x)  # the call goes on to its end
        return x + 1

    before = {s: signal.signal(s, raising) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(raised):
            ray_call(call, 1)
        assert calls == [1]
        assert signal.getsignal(signal.SIGTERM) is raising
        assert signal.getsignal(signal.SIGINT) is raising
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_without_a_signal_the_call_returns_its_value():
    before = signal.getsignal(signal.SIGTERM)
    assert ray_call(lambda a, b=0: a * b, 3, b=4) == 12
    assert signal.getsignal(signal.SIGTERM) is before
