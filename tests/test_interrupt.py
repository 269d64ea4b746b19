"""``interrupt.graceful``: a SIGINT becomes a pending interrupt, also in a process that
started with SIGINT blocked (the mask is inherited from whatever started it)."""

from __future__ import annotations

import os
import signal

import pytest

from cnnvis_jax import interrupt


@pytest.mark.parametrize("blocked", [False, True])
def test_sigint_inside_graceful_is_pending_then_raised(blocked):
    previous = signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK,
                                      {signal.SIGINT})  # fmt: skip
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
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
