"""Graceful interruption: Ctrl-C (SIGINT) or SIGTERM ends long work at a safe point.

A long loop runs inside :func:`graceful` and calls :func:`check` after each step has
saved its state: there the first SIGINT or SIGTERM only sets a flag, and
:func:`check` raises :class:`Interrupted` (a :class:`KeyboardInterrupt`) at the next
safe point; a second Ctrl-C raises :class:`KeyboardInterrupt` at once. Outside such
loops nothing changes.

An interrupt never lands inside a running XLA computation this way, which is what
made interrupted commands crash instead of exiting.

A process can start with SIGINT and SIGTERM blocked, or SIGINT ignored (both are
inherited from whatever started it: a job runner, a shell's background job, a Python
parent); they would then never arrive. :func:`graceful` and :func:`delivered` let them
through for as long as they are active.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()
_depth = 0


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`check` once work was interrupted; its state is saved."""


def requested() -> bool:
    """Whether an interrupt is pending."""
    return _requested.is_set()


def check(what: str = "work") -> None:
    """Raise :class:`Interrupted` when an interrupt is pending (call it where the
    state is saved and the loop can stop)."""
    if _requested.is_set():
        raise Interrupted(f"{what} interrupted; its state is saved")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def delivered(signals=STOP_SIGNALS):
    """For the duration, let ``signals`` reach this process and the processes it starts:
    unblock them in the calling thread, and in the main thread handle a SIGINT that was
    left ignored (as a shell leaves it for background jobs) as Python does by default
    (:class:`KeyboardInterrupt`; the processes started meanwhile then start with
    SIGINT's default action). The previous mask and handler are restored after."""
    previous_int = None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) == signal.SIG_IGN):  # fmt: skip
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocking = hasattr(signal, "pthread_sigmask")  # POSIX; elsewhere nothing is blocked
    previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, signals) if blocking else None
    try:
        yield
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


@contextlib.contextmanager
def graceful(enabled: bool = True):
    """Turn the first SIGINT/SIGTERM into a pending interrupt (main thread only;
    nested uses share the outermost one). With ``enabled`` False (work that saves
    no state to stop at) signals keep their usual meaning."""
    global _depth
    if not enabled:
        yield
        return
    if threading.current_thread() is not threading.main_thread() or _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    _requested.clear()
    previous = {}

    def handler(signum, frame):
        if _requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        _requested.set()

    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    _depth = 1
    try:
        with delivered():
            yield
    finally:
        _depth = 0
        for sig, old in previous.items():
            signal.signal(sig, old)
        pending = _requested.is_set()
        _requested.clear()
    if pending:  # interrupted after the last check: stop now, the work is saved
        raise Interrupted("interrupted after the work finished")
