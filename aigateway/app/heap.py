"""
Short pauses from Python's cycle collector.

A full collection walks every object the process holds, and most of them
(modules, classes, the configuration) are made at start and live for
good: in a running gateway one took 30-40 ms every couple of seconds,
which is what the slowest requests waited for.  L{HeapSettler} moves the
objects alive at start into the collector's permanent generation
(C{gc.freeze}), so a full collection walks only what came later, and
does it again every so often, after one real full collection, so what a
reload left behind is not kept forever.
"""

from __future__ import annotations

import gc

from twisted.application.internet import TimerService

__all__ = ["HeapSettler", "settle"]


def settle() -> None:
    """
    Collect everything, then exempt what is left from later collections.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class HeapSettler(TimerService):
    """
    L{settle} when started, and every C{interval} seconds after.
    """

    def __init__(self, interval: float = 600.0) -> None:
        super().__init__(interval, settle)

    def stopService(self):
        gc.unfreeze()
        return super().stopService()
