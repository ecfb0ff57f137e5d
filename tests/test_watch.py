"""
Tests for L{aigateway.app.watch}: which events ask for a reload, and the
debounce, on a fake notifier and a L{Clock}.
"""

from __future__ import annotations

import os

from twisted.internet import inotify
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from aigateway.app.watch import ConfigWatcher

__all__ = ["FakeNotifier"]


class FakeNotifier:
    """
    What L{ConfigWatcher} uses of L{inotify.INotify}, with a way to make
    the kernel's events by hand.

    @ivar watches: the watched directories, each with its mask and
        callbacks.
    """

    def __init__(self, reactor: object = None) -> None:
        self.made = 0
        self.reading = False
        self.closed = False
        self.watches: dict[str, tuple[int, list]] = {}

    def __call__(self, reactor: object) -> "FakeNotifier":
        self.made += 1
        return self

    def startReading(self) -> None:
        self.reading = True

    def watch(self, path: FilePath, mask: int, callbacks: list) -> None:
        self.watches[path.path] = (mask, callbacks)

    def loseConnection(self) -> None:
        self.closed = True

    def event(self, path: str, mask: int = inotify.IN_CLOSE_WRITE) -> None:
        """
        The kernel says C{path} changed, if its directory is watched.
        """
        watched = self.watches.get(os.path.dirname(path))
        if watched is not None and watched[0] & mask:
            for callback in watched[1]:
                callback(None, FilePath(path), mask)


class ConfigWatcherTests(SynchronousTestCase):
    """
    L{ConfigWatcher} asks for one reload a short while after the last
    change to a name that matters.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = os.path.join(self.directory, "gateway.yaml")
        self.notifier = FakeNotifier()
        self.changes: list[None] = []
        self.watcher = ConfigWatcher(self.clock, [self.config], lambda: self.changes.append(None),
                                     debounce=0.1, notifier=self.notifier)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    def test_watchesTheDirectory(self) -> None:
        """
        The directory is watched, not the file, for writes, creations,
        moves into place and deletions.
        """
        self.assertTrue(self.notifier.reading)
        self.assertEqual(list(self.notifier.watches), [self.directory])
        mask = self.notifier.watches[self.directory][0]
        for event in (inotify.IN_CLOSE_WRITE, inotify.IN_MOVED_TO, inotify.IN_CREATE, inotify.IN_DELETE):
            self.assertTrue(mask & event)

    def test_watchesFromThePrivilegedStart(self) -> None:
        """
        The watch begins in the privileged start, before listeners open
        their ports in theirs, and the start after it keeps that watch.
        """
        notifier = FakeNotifier()
        watcher = ConfigWatcher(self.clock, [self.config], lambda: None, notifier=notifier)
        watcher.privilegedStartService()
        self.assertEqual((notifier.made, list(notifier.watches)), (1, [self.directory]))
        watcher.startService()
        self.assertEqual(notifier.made, 1)
        watcher.stopService()

    def test_debounce(self) -> None:
        """
        Events closer together than the debounce make one reload, the
        debounce after the last of them.
        """
        self.notifier.event(self.config, inotify.IN_CREATE)
        self.clock.advance(0.06)
        self.notifier.event(self.config, inotify.IN_CLOSE_WRITE)
        self.clock.advance(0.06)
        self.assertEqual(self.changes, [])
        self.clock.advance(0.04)
        self.assertEqual(len(self.changes), 1)
        self.clock.advance(10)
        self.assertEqual(len(self.changes), 1)

    def test_laterChangeReloadsAgain(self) -> None:
        """
        A change after the reload asks for another one.
        """
        self.notifier.event(self.config)
        self.clock.advance(0.1)
        self.notifier.event(self.config, inotify.IN_MOVED_TO)
        self.clock.advance(0.1)
        self.assertEqual(len(self.changes), 2)

    def test_otherNamesIgnored(self) -> None:
        """
        Other files in the directory, such as an editor's swap file, are
        not a change.
        """
        self.notifier.event(os.path.join(self.directory, ".gateway.yaml.swp"))
        self.clock.advance(1)
        self.assertEqual(self.changes, [])

    def test_configMapData(self) -> None:
        """
        A Kubernetes ConfigMap's C{..data} symlink moved into place is a
        change.
        """
        self.notifier.event(os.path.join(self.directory, "..data"), inotify.IN_MOVED_TO)
        self.clock.advance(0.1)
        self.assertEqual(len(self.changes), 1)

    def test_newPaths(self) -> None:
        """
        Files named after a reload are followed from then on, in their own
        directories.
        """
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        keyFile = os.path.join(other, "openai.key")
        self.watcher.watch([self.config, keyFile])
        self.assertEqual(sorted(self.notifier.watches), sorted([self.directory, other]))
        self.notifier.event(keyFile)
        self.clock.advance(0.1)
        self.assertEqual(len(self.changes), 1)

    def test_stopCancelsPending(self) -> None:
        """
        Stopped, the watcher closes its notifier and forgets a pending
        reload.
        """
        self.notifier.event(self.config)
        self.watcher.stopService()
        self.assertTrue(self.notifier.closed)
        self.clock.advance(1)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failureLogged(self) -> None:
        """
        A reload that raises is logged, and the watcher goes on.
        """
        def broken() -> None:
            raise RuntimeError("boom")

        self.watcher.changed = broken
        self.notifier.event(self.config)
        self.clock.advance(0.1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.watcher.changed = lambda: self.changes.append(None)
        self.notifier.event(self.config)
        self.clock.advance(0.1)
        self.assertEqual(len(self.changes), 1)
