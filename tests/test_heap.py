"""
Tests for L{aigateway.app.heap}.
"""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from aigateway.app.heap import HeapSettler


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class HeapSettlerTests(SynchronousTestCase):
    def test_freezeWhileRunning(self) -> None:
        """
        Started, the objects alive are out of the collector's way, and
        cyclic garbage made before is gone; stopped, nothing stays frozen.
        """
        _Cycle()
        settler = HeapSettler(interval=3600)
        settler.startService()
        try:
            self.assertGreater(gc.get_freeze_count(), 1000)
            self.assertFalse(any(isinstance(o, _Cycle) for o in gc.get_objects()))
        finally:
            settler.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_twistdService(self) -> None:
        """
        C{twistd aigateway} runs the gateway with a heap settler beside it.
        """
        from aigateway.app.tap import Options, makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("listen: tcp:0:interface=127.0.0.1\nbackends: {}\n")
        options = Options()
        options.parseOptions(["-c", path])
        top = makeService(options)
        self.assertEqual(sorted(type(s).__name__ for s in top), ["GatewayService", "HeapSettler"])
