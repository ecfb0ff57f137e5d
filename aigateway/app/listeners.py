"""
The listening ports of one site, following the configuration's endpoint
strings: one L{StreamServerEndpointService} per string, parented in a
L{MultiService}.

A port that cannot be opened when the gateway starts stops the start with
L{CannotListen}, which C{twistd aigateway} turns into one line and a
non-zero exit.  One that cannot be opened after a reload is logged, in the
same words, and the others serve on.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["CannotListen", "Listeners", "listenFailureReason"]

log = Logger()


def listenFailureReason(failure: Failure) -> str:
    """
    Why a listen failed, in words: the socket error's own (C{address
    already in use}, C{permission denied}), else the error's message.
    """
    error = failure.value
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        reason = error.socketError.strerror or str(error.socketError)
    else:
        reason = failure.getErrorMessage()
    return reason[:1].lower() + reason[1:]


class CannotListen(Exception):
    """
    A listener could not be opened.  Its text is the one line a user reads:
    C{cannot listen on tcp:8080: address already in use}.

    @ivar description: the endpoint string.
    @ivar reason: why, in words.
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(description, reason)
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot listen on {self.description}: {self.reason}"


@implementer(IStreamServerEndpoint)
class _Listening:
    """
    An endpoint that keeps why listening on it failed, for L{Listeners} to
    raise or log, rather than leaving the failure to the service that
    listens on it (which logs it and goes on without its port).

    @ivar failure: why the listen failed, or L{None}.
    @ivar checked: whether L{Listeners} has looked at C{failure} already; a
        failure that comes later than that is logged here.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, description: str) -> None:
        self.endpoint = endpoint
        self.description = description
        self.failure: Failure | None = None
        self.checked = False

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.endpoint.listen(factory).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return None
        self.failure = failure
        if self.checked:
            _logFailure(self.description, failure)
        return None


def _logFailure(description: str, failure: Failure) -> None:
    log.error("cannot listen on {endpoint}: {error}", endpoint=description,
              error=listenFailureReason(failure))


class Listeners(MultiService):
    """
    A site's listeners, one child per endpoint string, named by it.

    @ivar factory: makes the protocol factory of a new listener.
    @ivar endpoint: makes the endpoint an endpoint string describes, from
        the reactor and the string (L{serverFromString}; a worker's adopts
        the socket its supervisor opened).
    """

    def __init__(
        self,
        reactor: Any,
        factory: Callable[[], IProtocolFactory],
        endpoint: Callable[[Any, str], IStreamServerEndpoint] = serverFromString,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.factory = factory
        self.endpoint = endpoint

    @property
    def descriptions(self) -> tuple[str, ...]:
        """
        The endpoint strings listened on, in the order they were added.
        """
        return tuple(listener.name for listener in self)

    def follow(self, descriptions: Iterable[str]) -> Deferred[Any]:
        """
        Listen on exactly these endpoints from now on: close the ports that
        are no longer wanted, open the new ones (at once if running).

        @return: a Deferred that fires when the closed ports are closed.
        """
        wanted = tuple(descriptions)
        stopping = [listener.disownServiceParent() for listener in list(self) if listener.name not in wanted]
        for description in wanted:
            if description not in self.namedServices:
                listener = StreamServerEndpointService(
                    _Listening(self.endpoint(self.reactor, description), description), self.factory()
                )
                listener.setName(description)
                listener.setServiceParent(self)
        if self.running:
            self._check(raising=False)
        return gatherResults([d for d in stopping if d is not None])

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._check(raising=True)

    def startService(self) -> None:
        super().startService()
        self._check(raising=True)

    def _check(self, raising: bool) -> None:
        """
        Look at the listens that ended since the last look: raise the first
        failure as L{CannotListen} (while starting), or log each and drop
        its listener.
        """
        for listener in list(self):
            endpoint = listener.endpoint
            if endpoint.checked:
                continue
            endpoint.checked = True
            if endpoint.failure is None:
                continue
            if raising:
                raise CannotListen(listener.name, listenFailureReason(endpoint.failure))
            _logFailure(listener.name, endpoint.failure)
            listener.disownServiceParent()
