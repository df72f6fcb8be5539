"""Where the noise of absl, orbax and asyncio is quieted, each for no longer than the call that
causes it: a warning that is expected by design, or tracebacks of reads orbax abandoned, would
otherwise hide the one message that matters."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

_logger = logging.getLogger("vgg_jax")


@contextlib.contextmanager
def absl_records_dropped(drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Within the block, absl records (orbax logs through absl) for which `drop` is true are
    dropped."""
    absl_logger = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return not drop(record)

    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


@contextlib.contextmanager
def absl_level(level: int) -> Iterator[None]:
    """absl's logger at `level` within the block."""
    absl_logger = logging.getLogger("absl")
    previous = absl_logger.level
    absl_logger.setLevel(level)
    try:
        yield
    finally:
        absl_logger.setLevel(previous)


def a_missing_metric_warning(record: logging.LogRecord) -> bool:
    """Orbax warns at every save without metrics once it tracks them; mid-epoch checkpoints
    have none by design."""
    return "did not provide metrics" in record.getMessage()


def quiet_abandoned_reads() -> None:
    """After a failed read, orbax leaves the checkpoint's other reads running. Each ends later
    as a traceback: unraisable "Event loop is closed" errors, and asyncio's "Task exception was
    never retrieved" for reads that failed too. Those alone go to the debug log from the first
    checkpoint read on. They end after the read that started them has returned, at a time no
    call of ours brackets (at the latest, at interpreter shutdown), so this hook stays for the
    process: the one process-wide hook, installed once, passing every other error on."""
    previous = sys.unraisablehook
    if getattr(previous, "quiets_abandoned_reads", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            _logger.debug("An abandoned checkpoint read ended after its event loop closed.")
            return
        previous(unraisable)

    def abandoned_read_failed(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Task exception was never retrieved") and "OCDBT" in message:
            _logger.debug("An abandoned checkpoint read failed too: %s", message)
            return False
        return True

    hook.quiets_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(abandoned_read_failed)
