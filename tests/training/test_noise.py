"""The quieting of orbax's abandoned reads (vgg_jax.training.noise) lasts as long as the reader
that needs it: inside, only those errors are dropped; after, the hooks are as they were."""

import logging
import sys
import types

from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.noise import AbandonedReadsQuieted


def unraisable(error):
    return types.SimpleNamespace(exc_value=error, exc_type=type(error), object=None)


def test_only_abandoned_reads_are_dropped_and_only_within_the_block(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    before = sys.unraisablehook
    asyncio_filters = list(logging.getLogger("asyncio").filters)
    with AbandonedReadsQuieted():
        sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
        sys.unraisablehook(unraisable(RuntimeError("something else")))
        record = logging.LogRecord("asyncio", logging.ERROR, "", 0,
                                   "Task exception was never retrieved: OCDBT ...", None, None)  # fmt: skip
        assert not logging.getLogger("asyncio").filter(record)
    assert seen == ["something else"]
    assert sys.unraisablehook is before
    assert logging.getLogger("asyncio").filters == asyncio_filters
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    assert seen == ["something else", "Event loop is closed"]  # after the block: passed on


def test_a_hook_installed_meanwhile_stays_and_ours_passes_everything_on(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    with AbandonedReadsQuieted():
        ours = sys.unraisablehook
        later = lambda u: ours(u)  # noqa: E731 (a later hook that chains to ours)
        sys.unraisablehook = later
    assert sys.unraisablehook is later
    later(unraisable(RuntimeError("Event loop is closed")))
    assert seen == ["Event loop is closed"]


def test_a_checkpoint_reader_quiets_from_its_first_read_until_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    before = sys.unraisablehook
    store = Checkpoints(tmp_path / "checkpoints")
    assert sys.unraisablehook is before
    assert store.first_readable([], read=lambda step: None) is None
    assert sys.unraisablehook is not before
    store.close()
    assert sys.unraisablehook is before


def test_after_a_failed_read_the_quieting_outlasts_the_reader(tmp_path, monkeypatch):
    """Orbax's abandoned reads can end after the reader has closed, at shutdown at the latest
    (the fault matrix's evaluate case printed them after its error): once a read has failed,
    the quieting stays, still passing every other error on."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    before = sys.unraisablehook
    store = Checkpoints(tmp_path / "checkpoints")

    def unreadable(step):
        raise ValueError("damaged")

    assert store.first_readable([1], read=unreadable) is None  # no checkpoint 1: unreadable
    assert 1 in store.unreadable
    store.close()
    assert sys.unraisablehook is not before
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    sys.unraisablehook(unraisable(RuntimeError("something else")))
    assert seen == ["something else"]
