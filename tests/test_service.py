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
from twisted.internet.defer import succeed
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
from tests.test_otlp import _Response
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


class Collector:
    """
    An agent in front of the fake LLM that takes the posts of spans itself
    (any URL ending in C{/v1/traces}) and answers them 200.

    @ivar posts: the URL of each post of spans, and its spans as
        C{(service.name, span name)} pairs.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.posts: list[tuple[str, list[tuple[str, str]]]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        if not uri.endswith(b"/v1/traces"):
            return self.agent.request(method, uri, headers, bodyProducer)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        export = ExportTraceServiceRequest.FromString(bodyProducer.body)
        spans = []
        for resourceSpans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resourceSpans.resource.attributes}["service.name"]
            spans += [(service, span.name) for scope in resourceSpans.scope_spans for span in scope.spans]
        self.posts.append((uri.decode(), spans))
        return succeed(_Response(200))


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
        self.collector = Collector(self.upstream)
        self.directory = os.path.abspath(case.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "gateway.yaml")
        self.files = {self.path: text}
        self.notifier = FakeNotifier()
        self.service = GatewayService(self.reactor, self.path, self.collector, environ={},
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


class TracingReloadTests(SynchronousTestCase):
    """
    A reload applies tracing changes, the exporter included: turning
    tracing on, moving its endpoint, changing its sampling or service
    name, turning it off.
    """

    def tracing(self, tracing: str) -> bytes:
        return configText(["a"], extra=f"tracing: {tracing}\n" if tracing else "")

    def setUp(self) -> None:
        self.gateway = MemoryService(self, self.tracing(""))
        self.gateway.service.startService()
        self.addCleanup(self.gateway.service.stopService)

    def spansAfterRequest(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """
        Make one request, let the spans go, and return the posts of spans
        it caused.
        """
        before = len(self.gateway.collector.posts)
        self.assertEqual(self.gateway.post("/a").status(), 200)
        for _ in range(3):
            self.gateway.reactor.advance(10)
        return self.gateway.collector.posts[before:]

    def reload(self, tracing: str) -> list[str]:
        with capturedLogs() as events:
            self.gateway.change(text=self.tracing(tracing))
        return [formatEvent(e) for e in events]

    def test_turnedOn(self) -> None:
        """
        Uncommenting C{tracing.otlp} in a running gateway makes spans, sent
        to that endpoint, and the log says so.
        """
        self.assertEqual(self.spansAfterRequest(), [])
        lines = self.reload("{otlp: {endpoint: 'http://collector:4318/v1/traces'}}")
        self.assertIn("tracing: spans to http://collector:4318/v1/traces (service aigateway, sampling 1)",
                      lines)
        posts = self.spansAfterRequest()
        self.assertEqual([url for url, spans in posts], ["http://collector:4318/v1/traces"])
        self.assertIn(("aigateway", "chat gpt-4o-mini"), posts[0][1])

    def test_changed(self) -> None:
        """
        A new endpoint and service name take effect on reload; spans of the
        old settings no longer go anywhere new.
        """
        self.reload("{otlp: {endpoint: 'http://one/v1/traces'}}")
        self.assertEqual([url for url, spans in self.spansAfterRequest()], ["http://one/v1/traces"])
        self.reload("{otlp: {endpoint: 'http://two/v1/traces'}, serviceName: gw2}")
        posts = self.spansAfterRequest()
        self.assertEqual([url for url, spans in posts], ["http://two/v1/traces"])
        self.assertEqual({service for service, name in posts[0][1]}, {"gw2"})

    def test_sampling(self) -> None:
        """
        C{sampleRatio: 0} on reload stops the spans, and the log says so.
        """
        self.reload("{otlp: {endpoint: 'http://one/v1/traces'}}")
        self.assertEqual(len(self.spansAfterRequest()), 1)
        lines = self.reload("{otlp: {endpoint: 'http://one/v1/traces'}, sampleRatio: 0}")
        self.assertIn("tracing: spans to http://one/v1/traces (service aigateway, sampling 0)", lines)
        self.assertEqual(self.spansAfterRequest(), [])

    def test_turnedOff(self) -> None:
        """
        Commenting tracing out again stops the spans.
        """
        self.reload("{otlp: {endpoint: 'http://one/v1/traces'}}")
        self.assertEqual(len(self.spansAfterRequest()), 1)
        self.assertIn("tracing: off (no tracing.otlp endpoint)", self.reload(""))
        self.assertEqual(self.spansAfterRequest(), [])

    def test_unchangedKept(self) -> None:
        """
        A reload that leaves the exporter's settings alone keeps its tracer
        provider (spans queued are not lost) and logs nothing about
        tracing; C{captureContent} still applies.
        """
        self.reload("{otlp: {endpoint: 'http://one/v1/traces'}}")
        provider = self.gateway.service.tracerProvider
        lines = self.reload("{otlp: {endpoint: 'http://one/v1/traces'}, captureContent: true}")
        self.assertIs(self.gateway.service.tracerProvider, provider)
        self.assertEqual([line for line in lines if line.startswith("tracing")], [])
        self.assertTrue(self.gateway.service.current.gateway.root.telemetry.config.captureContent)


class StartupTests(SynchronousTestCase):
    """
    The start says, in a few lines, what listens where, which routes are
    served and whether tracing is on.
    """

    def test_summary(self) -> None:
        """
        One line for the listeners, one per route, one for tracing; no
        secret in any.
        """
        text = configText(["a", "b"], extra="tracing: {otlp: {endpoint: 'http://u:pw@collector/v1/traces', "
                                               "headers: {authorization: secret-header}}}\n")
        gateway = MemoryService(self, text)
        with capturedLogs() as events:
            gateway.service.startService()
        self.addCleanup(gateway.service.stopService)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(lines[-4:], [
            "aigateway 0.1.0 serving on tcp:8080; admin on tcp:9090",
            "route a: pathPrefix /a -> backend local (openai, http://fakellm)",
            "route b: pathPrefix /b -> backend local (openai, http://fakellm)",
            "tracing: spans to http://collector/v1/traces (service aigateway, sampling 1)",
        ])
        self.assertNotIn("secret", " ".join(lines))
        self.assertNotIn("pw", " ".join(lines))

    def test_noAdminNoTracing(self) -> None:
        """
        Without an admin listener or tracing, the lines say so.
        """
        text = b"listen: tcp:8080\nbackends: {b: {provider: anthropic, authToken: {value: sk-x}}}\n" \
               b"routes: [{name: m, match: {path: /m, methods: [POST]}, backend: b}]\n"
        gateway = MemoryService(self, text)
        with capturedLogs() as events:
            gateway.service.startService()
        self.addCleanup(gateway.service.stopService)
        self.assertEqual([formatEvent(e) for e in events][-3:], [
            "aigateway 0.1.0 serving on tcp:8080; admin on nothing (no admin.listen)",
            "route m: path /m POST -> backend b (anthropic, https://api.anthropic.com)",
            "tracing: off (no tracing.otlp endpoint)",
        ])


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
