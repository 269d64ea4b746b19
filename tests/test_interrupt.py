"""``interrupt.graceful``: a SIGINT becomes a pending interrupt, also in a process that
started with SIGINT blocked or ignored (both are inherited from whatever started it);
the caller's mask and handler are back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from cnnvis_jax import interrupt


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("handler", [signal.default_int_handler, signal.SIG_IGN])
def test_sigint_inside_graceful_is_pending_then_raised(blocked, handler):
    previous = signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK,
                                      {signal.SIGINT})  # fmt: skip
    previous_handler = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(interrupt.Interrupted):
            with interrupt.graceful():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    if interrupt.requested():
                        break
                assert interrupt.requested()
                interrupt.check("the loop")
        # the caller's mask and handler are back
        assert (signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])) == blocked
        assert signal.getsignal(signal.SIGINT) == handler
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        signal.signal(signal.SIGINT, previous_handler)


def test_delivered_handles_an_ignored_sigint_and_restores_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.delivered():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10_000):  # the handler runs between bytecodes
                    pass
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
