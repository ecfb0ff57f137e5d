"""
Following the configuration on disk: an inotify watch on the directories of
the config file and of the files it names, debounced with the injected
clock.

Directories are watched rather than files: a watch on a file dies with an
editor's atomic save (write a temporary file, rename it over) and with a
Kubernetes ConfigMap update (the C{..data} symlink is swapped), and
C{IN_DELETE_SELF} would end it.  Any close-after-write, create or
move-into-place of a name that matters (the file itself, or C{..data}) asks
for one reload, a short while after the last such event.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import inotify
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath

__all__ = ["ConfigWatcher"]

log = Logger()

_MASK = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_DELETE


class ConfigWatcher(Service):
    """
    Calls C{changed()} once, C{debounce} seconds after the last change to
    any of the watched files.

    @ivar paths: the files that matter, absolute.
    @ivar notifier: makes the inotify reader from the reactor when the
        service starts (L{inotify.INotify}; tests give a fake with its
        C{startReading}, C{watch} and C{loseConnection}).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        paths: Iterable[str],
        changed: Callable[[], None],
        debounce: float = 0.1,
        notifier: Callable[[Any], Any] = inotify.INotify,
    ) -> None:
        self.reactor = reactor
        self.changed = changed
        self.debounce = debounce
        self.notifier = notifier
        self.paths: frozenset[str] = frozenset()
        self._notifier: Any = None
        self._watched: set[str] = set()
        self._pending: IDelayedCall | None = None
        self.watch(paths)

    def watch(self, paths: Iterable[str]) -> None:
        """
        Follow these files from now on (the set can change with a reload).
        """
        self.paths = frozenset(os.path.abspath(p) for p in paths)
        if self._notifier is not None:
            self._addWatches()

    def _names(self) -> set[tuple[str, str]]:
        names = set()
        for path in self.paths:
            directory, name = os.path.split(path)
            names.add((directory, name))
            names.add((directory, "..data"))
        return names

    def _addWatches(self) -> None:
        assert self._notifier is not None
        for directory in {os.path.dirname(p) for p in self.paths}:
            if directory not in self._watched and os.path.isdir(directory):
                self._notifier.watch(FilePath(directory), mask=_MASK, callbacks=[self._event])
                self._watched.add(directory)

    def privilegedStartService(self) -> None:
        """
        Start watching already, before the listeners beside this service
        open their ports in theirs: a change made as soon as a port is open
        is not missed.
        """
        super().privilegedStartService()
        self._startWatching()

    def startService(self) -> None:
        super().startService()
        if self._notifier is None:
            self._startWatching()

    def _startWatching(self) -> None:
        self._notifier = self.notifier(self.reactor)
        self._notifier.startReading()
        self._addWatches()

    def stopService(self) -> None:
        super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        self._watched.clear()

    def _event(self, ignored: object, path: FilePath, mask: int) -> None:
        directory, name = os.path.split(os.fsdecode(path.path))
        if (directory, name) not in self._names():
            return
        if self._pending is not None and self._pending.active():
            self._pending.reset(self.debounce)
        else:
            self._pending = self.reactor.callLater(self.debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self.changed()
        except Exception:
            log.failure("reloading after a change on disk")
