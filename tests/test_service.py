"""
Tests for L{aigateway.app.service} in memory: reloads, listeners that
follow the configuration and the drain, on a memory reactor and clock, a
fake notifier and files kept in a dict.  No processes, no sleeps.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import generate_latest
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from aigateway.app.current import CurrentGateway
from aigateway.app.listeners import CannotListen
from aigateway.app.service import GatewayService
from aigateway.build import Gateway
from aigateway.config import loadConfig
from aigateway.testing.fakellm import FakeLLM
from aigateway.web.site import GatewaySite
from tests.lab import CHAT
from tests.test_listeners import ListeningReactor
from tests.test_watch import FakeNotifier

ROUTE = "  - {{name: {name}, match: {{pathPrefix: /{name}}}, backend: local}}\n"


def configText(routes: list[str] = ["a"], listen: str = "tcp:8080", admin: str = "tcp:9090",
               key: str = "value: sk-fake", extra: str = "") -> bytes:
    text = f"listen: {listen}\nadmin: {{listen: {admin}}}\nshutdownTimeout: 5s\n{extra}"
    text += f"backends: {{local: {{provider: openai, url: 'http://fakellm', authToken: {{{key}}}}}}}\n"
    text += "routes:\n" + "".join(ROUTE.format(name=name) for name in routes)
    return text.encode()


class Connection:
    """
    One client connection through a listener's factory, in memory.
    """

    def __init__(self, factory: Any, upstream: RequestTraversalAgent) -> None:
        self.upstream = upstream
        self.channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransportWithDisconnection(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)

    def request(self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"") -> "Connection":
        self.channel.dataReceived(
            b"%s %s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (method, path, len(body), headers, body)
        )
        self.pump()
        return self

    def pump(self) -> None:
        for _ in range(5):
            self.upstream.flush()

    def status(self) -> int | None:
        answer = self.transport.value()
        return int(answer.split(b" ", 2)[1]) if answer else None

    def body(self) -> bytes:
        return self.transport.value().split(b"\r\n\r\n", 1)[1]


class MemoryService:
    """
    A L{GatewayService} over a memory reactor, in front of the fake LLM, on
    configuration files kept in C{files}.
    """

    def __init__(self, case: SynchronousTestCase, text: bytes, refused: tuple[int, ...] = (),
                 **options: Any) -> None:
        self.reactor = ListeningReactor(refused)
        self.fakellm = FakeLLM(self.reactor, key="sk-fake")
        self.upstream = RequestTraversalAgent(self.fakellm)
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "gateway.yaml")
        self.files = {self.path: text}
        self.notifier = FakeNotifier()
        self.service = GatewayService(self.reactor, self.path, self.upstream, environ={},
                                      readFile=self.read, notifier=self.notifier, **options)

    def read(self, path: str) -> bytes:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory") from None

    def change(self, path: str | None = None, text: bytes | None = None) -> None:
        """
        Write (or, with no text, delete) a file, as inotify sees it, and let
        the debounce pass.
        """
        path = path or self.path
        if text is None:
            del self.files[path]
        else:
            self.files[path] = text
        self.notifier.event(path if os.path.isabs(path) else os.path.join(self.directory, path))
        self.reactor.advance(0.1)

    def connect(self, port: int = 8080) -> Connection:
        return Connection(self.reactor.open[port], self.upstream)

    def post(self, path: str, headers: bytes = b"", port: int = 8080) -> Connection:
        return self.connect(port).request(b"POST", path.encode(), json.dumps(CHAT).encode(), headers)

    def metrics(self) -> str:
        return generate_latest(self.service.metrics.registry).decode()


class ReloadTests(SynchronousTestCase):
    """
    A change of the configuration on disk swaps the route tree, or keeps the
    last good one.
    """

    def setUp(self) -> None:
        self.gateway = MemoryService(self, configText(["a"]))
        self.gateway.service.startService()

    def test_swapKeepsRequestsInFlight(self) -> None:
        """
        A good configuration serves new requests at once; a request that
        started before finishes on the tree it started on.
        """
        before = self.gateway.service.digest
        slow = self.gateway.post("/a", b"x-fakellm-delay: 1000\r\n")
        self.assertIsNone(slow.status())
        self.gateway.change(text=configText(["b"]))
        self.assertNotEqual(self.gateway.service.digest, before)
        self.assertEqual(self.gateway.post("/a").status(), 404)
        self.assertEqual(self.gateway.post("/b").status(), 200)
        self.gateway.reactor.advance(1)
        slow.pump()
        self.assertEqual(slow.status(), 200)
        self.assertIn('aigateway_config_reloads_total{result="ok"} 1.0', self.gateway.metrics())

    def test_brokenKeepsLastGood(self) -> None:
        """
        A broken file changes nothing but the last error and a metric;
        fixing it recovers.
        """
        before = self.gateway.service.digest
        broken = configText(["a"]) + b"  - {name: b, match: {pathPrefix: /b}, backend: nope}\n"
        with capturedLogs() as events:
            self.gateway.change(text=broken)
        self.assertEqual(self.gateway.service.lastError, "routes[1].backend: no backend named 'nope'")
        self.assertEqual(self.gateway.service.digest, before)
        self.assertEqual(self.gateway.post("/a").status(), 200)
        self.assertIn('aigateway_config_reloads_total{result="failed"} 1.0', self.gateway.metrics())
        self.assertIn("configuration not reloaded (file changed): routes[1].backend: no backend named 'nope'",
                      [formatEvent(e) for e in events])
        self.gateway.change(text=configText(["a", "b"]))
        self.assertIsNone(self.gateway.service.lastError)
        self.assertEqual(self.gateway.post("/b").status(), 200)

    def test_deletedThenWritten(self) -> None:
        """
        A configuration deleted keeps serving the last one; written anew,
        it is taken.
        """
        self.gateway.change(text=None)
        self.assertEqual(self.gateway.service.lastError,
                         "cannot read the configuration: No such file or directory")
        self.assertEqual(self.gateway.post("/a").status(), 200)
        self.gateway.change(text=configText(["b"]))
        self.assertEqual(self.gateway.post("/b").status(), 200)

    def test_keyFileChange(self) -> None:
        """
        A change to a backend's key file takes effect with no config edit.
        """
        self.gateway.files["openai.key"] = b"sk-old\n"
        self.gateway.change(text=configText(["a"], key="file: openai.key"))
        self.assertEqual(self.gateway.post("/a").status(), 401)
        self.gateway.change("openai.key", b"sk-fake\n")
        self.assertEqual(self.gateway.post("/a").status(), 200)

    def test_reloadedLog(self) -> None:
        """
        A reload says what asked for it and how many routes it serves.
        """
        with capturedLogs() as events:
            self.assertIsNone(self.gateway.service.reload("SIGHUP"))
        self.assertEqual([formatEvent(e) for e in events], ["configuration reloaded (SIGHUP): 1 routes in 0.0 ms"])

    def test_adminReload(self) -> None:
        """
        C{POST /reload} on the admin listener reloads; C{/config} shows the
        configuration served, its secrets redacted.
        """
        self.gateway.files[self.gateway.path] = configText(["a", "b"])
        answer = self.gateway.connect(9090).request(b"POST", b"/reload")
        self.assertEqual((answer.status(), json.loads(answer.body())),
                         (200, {"reloaded": True, "sha256": self.gateway.service.digest}))
        state = json.loads(self.gateway.connect(9090).request(b"GET", b"/config").body())
        self.assertEqual(state["sha256"], self.gateway.service.digest)
        self.assertEqual(state["config"]["backends"]["local"]["authToken"], {"value": "<redacted>"})
        self.assertEqual([r["name"] for r in state["config"]["routes"]], ["a", "b"])
        self.gateway.files[self.gateway.path] = b"listen: [\n"
        answer = self.gateway.connect(9090).request(b"POST", b"/reload")
        self.assertEqual(answer.status(), 422)
        self.assertEqual(json.loads(answer.body())["reloaded"], False)

    def test_adminOnTheGivenReactor(self) -> None:
        """
        The admin site's connections time out on the reactor the service was
        given, not the global one.
        """
        self.gateway.connect(9090)
        self.assertEqual(len(self.gateway.reactor.getDelayedCalls()), 1)


class ListenerTests(SynchronousTestCase):
    """
    The gateway's and the admin's listeners follow the configuration.
    """

    def test_follow(self) -> None:
        """
        An endpoint added to C{listen} is opened and serves; one removed is
        closed; the admin's follow C{admin.listen}.
        """
        gateway = MemoryService(self, configText(["a"]))
        gateway.service.startService()
        self.assertEqual(list(gateway.reactor.open), [8080, 9090])
        gateway.change(text=configText(["a"], listen="[tcp:8080, tcp:8081]", admin="tcp:9091"))
        self.assertEqual(sorted(gateway.reactor.open), [8080, 8081, 9091])
        self.assertEqual(gateway.post("/a", port=8081).status(), 200)
        gateway.change(text=configText(["a"], listen="tcp:8081", admin="tcp:9091"))
        self.assertEqual(sorted(gateway.reactor.open), [8081, 9091])

    def test_maxConnectionsFollows(self) -> None:
        """
        A new C{maxConnections} applies to the listeners that stay open.
        """
        gateway = MemoryService(self, configText(["a"]))
        gateway.service.startService()
        gateway.change(text=configText(["a"], extra="maxConnections: 1\n"))
        first = gateway.connect()
        self.assertIn(b" 503 ", gateway.connect().transport.value())
        first.transport.loseConnection()

    def test_listenOverride(self) -> None:
        """
        C{--listen} replaces the configuration's C{listen}, across reloads.
        """
        gateway = MemoryService(self, configText(["a"]), listen=("tcp:7000",))
        gateway.service.startService()
        gateway.change(text=configText(["b"], listen="tcp:8081"))
        self.assertEqual(sorted(gateway.reactor.open), [7000, 9090])

    def test_portInUse(self) -> None:
        """
        A port in use stops the start with the error (C{twistd} does not
        start), for the gateway's listeners as for the admin's.
        """
        for port in (8080, 9090):
            gateway = MemoryService(self, configText(["a"]), refused=(port,))
            caught = self.assertRaises(CannotListen, gateway.service.privilegedStartService)
            self.assertEqual(str(caught), f"cannot listen on tcp:{port}: address already in use")


class DrainTests(SynchronousTestCase):
    """
    Stopping lets requests in flight finish, up to C{shutdownTimeout}.
    """

    def setUp(self) -> None:
        self.gateway = MemoryService(self, configText(["a"]))
        self.gateway.service.startService()

    def test_waitsForRequestsInFlight(self) -> None:
        """
        The gateway's ports close at once and the admin's stay open; once
        the request in flight is answered, its connection is closed and the
        rest stops.
        """
        slow = self.gateway.post("/a", b"x-fakellm-delay: 2000\r\n")
        with capturedLogs() as events:
            stopped = self.gateway.service.stopService()
        self.assertEqual(list(self.gateway.reactor.open), [9090])
        self.assertIn("draining 1 requests in flight", [formatEvent(e) for e in events])
        self.gateway.reactor.advance(1.9)
        self.assertNoResult(stopped)
        self.gateway.reactor.advance(0.1)
        slow.pump()
        self.gateway.reactor.advance(0.01)
        self.assertEqual(slow.status(), 200)
        self.assertFalse(slow.transport.connected)
        self.successResultOf(stopped)
        self.assertEqual(self.gateway.reactor.open, {})
        self.assertTrue(self.gateway.notifier.closed)

    def test_givesUpAtShutdownTimeout(self) -> None:
        """
        A request still in flight at C{shutdownTimeout} is let go: its
        connection is closed and the stop completes.
        """
        slow = self.gateway.post("/a", b"x-fakellm-delay: 60000\r\n")
        stopped = self.gateway.service.stopService()
        with capturedLogs() as events:
            self.gateway.reactor.advance(5)
            self.gateway.reactor.advance(0)
        self.assertIn("1 requests still in flight at shutdown", [formatEvent(e) for e in events])
        self.assertFalse(slow.transport.connected)
        self.successResultOf(stopped)
        self.assertEqual(self.gateway.reactor.open, {})

    def test_idleConnectionsClosed(self) -> None:
        """
        With nothing in flight the stop is immediate, and idle connections
        are closed.
        """
        idle = self.gateway.post("/a")
        self.assertEqual(idle.status(), 200)
        self.assertTrue(idle.transport.connected)
        self.successResultOf(self.gateway.service.stopService())
        self.assertFalse(idle.transport.connected)


class _KeySet:
    url = "https://keys.example/jwks"
    ready = False

    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


class CurrentGatewayTests(SynchronousTestCase):
    """
    L{CurrentGateway} swaps the site's tree and keeps the served gateway's
    key sets, and only those, fresh.
    """

    def setUp(self) -> None:
        self.config = loadConfig(configText(["a"], extra="maxRequestBody: 1KiB\n"))
        self.site = GatewaySite(Resource())
        self.old = _KeySet()
        self.oldRoot = Resource()
        self.current = CurrentGateway(self.site, ListeningReactor(), self.config, b"one",
                                      Gateway(self.oldRoot, (self.old,)))  # type: ignore[arg-type]

    def test_swap(self) -> None:
        """
        A swap sets the site's resource and limits; the new key sets start
        and the old ones stop.
        """
        self.assertIs(self.site.resource, self.oldRoot)
        self.assertEqual(self.site.maxRequestBody, 1024)
        self.current.startService()
        self.assertEqual(self.current.pending, ["jwks https://keys.example/jwks"])
        new, root = _KeySet(), Resource()
        self.current.swap(loadConfig(configText(["b"])), b"two", Gateway(root, (new,)))  # type: ignore[arg-type]
        self.assertIs(self.site.resource, root)
        self.assertEqual((self.old.stopped, new.started), (1, 1))
        self.assertNotEqual(self.site.maxRequestBody, 1024)
        self.current.stopService()
        self.assertEqual(new.stopped, 1)

    def test_notRunning(self) -> None:
        """
        Before the start, a swap starts no key set; the start does.
        """
        new = _KeySet()
        self.current.swap(self.config, b"two", Gateway(Resource(), (new,)))  # type: ignore[arg-type]
        self.assertEqual((self.old.stopped, new.started), (0, 0))
        self.current.startService()
        self.assertEqual((self.old.started, new.started), (0, 1))
