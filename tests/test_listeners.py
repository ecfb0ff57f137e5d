"""
Tests for L{aigateway.app.listeners}: ports that follow the endpoint
strings, on a memory reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from aigateway.app.listeners import CannotListen, Listeners, _Listening

__all__ = ["ListeningReactor"]


@implementer(IListeningPort)
class _Port:
    def __init__(self, reactor: "ListeningReactor", port: int) -> None:
        self.reactor = reactor
        self.port = port

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        del self.reactor.open[self.port]

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.port)


class ListeningReactor(MemoryReactorClock):
    """
    A memory reactor and clock that knows which TCP ports are open, and
    refuses to listen on some as if they were in use.

    @ivar open: the factory listening on each open port, in the order they
        were opened.
    """

    def __init__(self, refused: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.refused = set(refused)
        self.open: dict[int, Any] = {}

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        if port in self.refused:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        self.open[port] = factory
        return _Port(self, port)


class ListenersTests(SynchronousTestCase):
    """
    L{Listeners} opens and closes one port per endpoint string.
    """

    def setUp(self) -> None:
        self.reactor = ListeningReactor(refused=(9,))
        self.listeners = Listeners(self.reactor, ServerFactory)

    def test_opensWhenStarted(self) -> None:
        """
        Nothing listens before the start; then every endpoint does, in
        order, each with a factory of its own.
        """
        self.listeners.follow(["tcp:8080", "tcp:8081"])
        self.assertEqual(self.reactor.open, {})
        self.listeners.startService()
        self.assertEqual(list(self.reactor.open), [8080, 8081])
        self.assertIsNot(self.reactor.open[8080], self.reactor.open[8081])
        self.assertEqual(self.listeners.descriptions, ("tcp:8080", "tcp:8081"))

    def test_follow(self) -> None:
        """
        While running, an endpoint added is opened and one removed is
        closed; one that stays keeps its port and factory.
        """
        self.listeners.follow(["tcp:8080", "tcp:8081"])
        self.listeners.startService()
        kept = self.reactor.open[8081]
        closed = self.listeners.follow(["tcp:8081", "tcp:8082"])
        self.successResultOf(closed)
        self.assertEqual(list(self.reactor.open), [8081, 8082])
        self.assertIs(self.reactor.open[8081], kept)
        self.assertEqual(self.listeners.descriptions, ("tcp:8081", "tcp:8082"))

    def test_stop(self) -> None:
        """
        Stopped, every port is closed.
        """
        self.listeners.follow(["tcp:8080", "tcp:8081"])
        self.listeners.startService()
        self.successResultOf(self.listeners.stopService())
        self.assertEqual(self.reactor.open, {})

    def test_startFailureRaises(self) -> None:
        """
        A port in use at the start is an error raised from the start, not
        a log line: C{twistd} does not start.
        """
        self.listeners.follow(["tcp:8080", "tcp:9"])
        with capturedLogs() as events:
            caught = self.assertRaises(CannotListen, self.listeners.startService)
        self.assertEqual(list(events), [])
        self.assertEqual(str(caught), "cannot listen on tcp:9: address already in use")

    def test_privilegedStartFailureRaises(self) -> None:
        """
        The same when C{twistd} listens in the privileged start.
        """
        self.listeners.follow(["tcp:9"])
        caught = self.assertRaises(CannotListen, self.listeners.privilegedStartService)
        self.assertEqual(str(caught), "cannot listen on tcp:9: address already in use")

    def test_laterFailureLogged(self) -> None:
        """
        A port that cannot be opened after a reload is logged and left out,
        so a later reload tries again; the others serve on.
        """
        self.listeners.follow(["tcp:8080"])
        self.listeners.startService()
        with capturedLogs() as events:
            self.listeners.follow(["tcp:8080", "tcp:9"])
        self.assertEqual([formatEvent(e) for e in events], [
            "cannot listen on tcp:9: address already in use"
        ])
        self.assertEqual(self.listeners.descriptions, ("tcp:8080",))
        self.reactor.refused.clear()
        self.listeners.follow(["tcp:8080", "tcp:9"])
        self.assertEqual(list(self.reactor.open), [8080, 9])

    def test_lateListenFailureLogged(self) -> None:
        """
        An endpoint whose listen fails after it was looked at says so in the
        log.
        """
        pending: Deferred[Any] = Deferred()

        class Slow:
            def listen(self, factory: Any) -> Deferred[Any]:
                return pending

        endpoint = _Listening(Slow(), "slow:")  # type: ignore[arg-type]
        result = endpoint.listen(ServerFactory())
        endpoint.checked = True
        with capturedLogs() as events:
            pending.errback(CannotListenError("", 1, OSError(13, "Permission denied")))
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual([formatEvent(e) for e in events],
                         ["cannot listen on slow:: permission denied"])
