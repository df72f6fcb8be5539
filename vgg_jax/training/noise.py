"""Where the noise of absl, orbax and asyncio is quieted, each for no longer than the call or
the reader that causes it (one exception, explained at Checkpoints.close): a warning that is
expected by design, or tracebacks of reads orbax abandoned, would otherwise hide the one
message that matters."""

from __future__ import annotations

import contextlib
import gc
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


class AbandonedReadsQuieted:
    """After a failed read, orbax abandons the checkpoint's other reads. Each ends as a
    traceback: unraisable "Event loop is closed" errors, and asyncio's "Task exception was
    never retrieved" for reads that failed too. Within the block those alone go to the debug
    log; every other error passes on. At its end, garbage collection makes any abandoned task
    still unreported report, while still quieted. A hook installed after this one and still in
    place is left there, with this one passing everything on. (Checkpoints keeps the block
    open past its close once a read has failed: see Checkpoints.close.)"""

    def __enter__(self) -> AbandonedReadsQuieted:
        self.previous, self.quieting = sys.unraisablehook, True
        sys.unraisablehook = self.hook
        logging.getLogger("asyncio").addFilter(self.abandoned_read_failed)
        return self

    def __exit__(self, *exception) -> None:
        gc.collect()
        self.quieting = False
        logging.getLogger("asyncio").removeFilter(self.abandoned_read_failed)
        if sys.unraisablehook == self.hook:  # (a bound method: equal, not the same object)
            sys.unraisablehook = self.previous

    def hook(self, unraisable) -> None:
        error = unraisable.exc_value
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if self.quieting and closed_loop:
            _logger.debug("An abandoned checkpoint read ended after its event loop closed.")
            return
        self.previous(unraisable)

    def abandoned_read_failed(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Task exception was never retrieved") and "OCDBT" in message:
            _logger.debug("An abandoned checkpoint read failed too: %s", message)
            return False
        return True
