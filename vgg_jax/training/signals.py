"""SIGINT and SIGTERM during a run: the first asks for a checkpoint after the current step
(how clusters preempt: exit 128 + the signal, "retry"); a second stops at once."""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any

logger = logging.getLogger("vgg_jax")

INTERRUPTED_TWICE = (
    "Interrupted a second time: stopped at once, without saving a checkpoint; rerun the same "
    "command to resume from the last one saved."
)


class InterruptedTwice(KeyboardInterrupt):
    """The second SIGINT or SIGTERM of a run; `signal_name` says which, for the exit code."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextlib.contextmanager
def stop_requests():
    """Turns SIGINT/SIGTERM into a request to stop after the current step; a second one
    raises InterruptedTwice. Yields a dict whose "signal" is set when a stop was asked for."""
    request: dict[str, Any] = {"signal": None}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if request["signal"] is not None:
            raise InterruptedTwice(name)
        request["signal"] = name
        logger.warning("%s received: saving a checkpoint after this step.", name)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
