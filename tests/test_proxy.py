"""
Tests for L{aigateway.proxy}: the relay, in memory.

Two kinds of upstream: the real fake LLM resource behind treq's
C{RequestTraversalAgent} (for what a client sees end to end), and an agent
whose responses the test writes by hand, byte by byte, behind a gateway
whose client side is a real C{HTTPChannel} on a C{StringTransport} (for
streaming, backpressure, disconnects and timeouts).
"""

from __future__ import annotations

import json

from treq import collect
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import Response, ResponseFailed, TransportProxyProducer
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from aigateway.config import loadConfig
from aigateway.fakellm import FakeLLM
from aigateway.service import buildGateway
from aigateway.site import GatewaySite
from tests.lab import CHAT

KEY = "sk-upstream-secret"
CONFIG = f"""
backends:
  local:
    provider: openai
    url: http://127.0.0.1:9000
    authToken: {{value: {KEY}}}
  pinned:
    provider: openai
    url: http://127.0.0.1:9000
    model: gpt-pinned
    authToken: {{value: {KEY}}}
routes:
  - {{name: local, match: {{pathPrefix: /local}}, backend: local, timeout: 30s}}
  - {{name: pinned, match: {{pathPrefix: /pinned}}, backend: pinned}}
  - {{name: small, match: {{pathPrefix: /small}}, backend: local, maxRequestBody: 100}}
"""


class _Gateway:
    """
    The gateway in memory in front of the fake LLM resource.
    """

    def __init__(self, config: str = CONFIG) -> None:
        self.clock = Clock()
        self.fakellm = FakeLLM(self.clock, key=KEY)
        self.upstream = RequestTraversalAgent(self.fakellm)
        root = buildGateway(loadConfig(config), self.upstream, self.clock, {}).root
        self.client = StubTreq(root)

    def pump(self) -> None:
        for _ in range(5):
            self.upstream.flush()
            self.client.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.pump()


class RelayTests(SynchronousTestCase):
    """
    What a client sees through the gateway, and what the provider sees.
    """

    def setUp(self) -> None:
        self.gateway = _Gateway()

    def post(self, path: str, body: object, headers: dict | None = None):
        d = self.gateway.client.post(
            "http://gw" + path,
            json.dumps(body).encode() if not isinstance(body, bytes) else body,
            headers=dict({"content-type": "application/json"}, **(headers or {})),
            unbuffered=True,
        )
        self.gateway.pump()
        return self.successResultOf(d)

    def test_chat(self) -> None:
        """
        C{POST /local} is a chat completion; upstream saw
        C{/v1/chat/completions} with the backend's key, not the caller's.
        """
        response = self.post("/local", CHAT, {"authorization": "Bearer caller-token"})
        self.assertEqual(response.code, 200)
        document = self.successResultOf(response.json())
        self.assertEqual(document["object"], "chat.completion")
        seen = self.gateway.fakellm.requests[-1]
        self.assertEqual(seen.path, "/v1/chat/completions")
        self.assertEqual(seen.headers["authorization"], f"Bearer {KEY}")
        self.assertEqual(seen.headers["host"], "127.0.0.1:9000")
        self.assertEqual(seen.headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(json.loads(seen.body), CHAT)

    def test_modelOverride(self) -> None:
        """
        A backend's C{model} is what the provider is asked for.
        """
        response = self.post("/pinned/v1/chat/completions", CHAT)
        self.assertEqual(self.successResultOf(response.json())["model"], "gpt-pinned")
        self.assertEqual(json.loads(self.gateway.fakellm.requests[-1].body)["model"], "gpt-pinned")

    def test_upstreamStatusPassedThrough(self) -> None:
        """
        An error status from the provider reaches the client with its body.
        """
        response = self.post("/local", CHAT, {"x-fakellm-status": "429"})
        self.assertEqual(response.code, 429)
        self.assertIn("error", self.successResultOf(response.json()))
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])

    def test_tooLarge(self) -> None:
        """
        A body over the route's limit is a 413 and never goes upstream.
        """
        response = self.post("/small", dict(CHAT, padding="x" * 200))
        self.assertEqual(response.code, 413)
        self.assertEqual(self.successResultOf(response.json())["error"]["code"], "request_too_large")
        self.assertEqual(len(self.gateway.fakellm.requests), 0)

    def test_badJson(self) -> None:
        """
        Invalid JSON is a 400 and never goes upstream.
        """
        response = self.post("/local", b"{not json")
        self.assertEqual(response.code, 400)
        self.assertEqual(len(self.gateway.fakellm.requests), 0)

    def test_firstChunkBeforeUpstreamFinished(self) -> None:
        """
        With 20 ms between chunks, the first chunks reach the client while
        the provider is still writing the rest.
        """
        response = self.post(
            "/local", dict(CHAT, stream=True), {"x-fakellm-chunks": "5", "x-fakellm-gap": "20"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("x-accel-buffering"), ["no"])
        received: list[bytes] = []
        finished = collect(response, received.append)
        self.gateway.pump()
        self.assertTrue(received, "no chunk arrived before the upstream finished")
        self.assertNoResult(finished)
        self.assertNotIn(b"[DONE]", b"".join(received))
        for _ in range(10):
            self.gateway.advance(0.02)
        self.successResultOf(finished)
        self.assertTrue(b"".join(received).endswith(b"data: [DONE]\n\n"))


class _Upstream:
    """
    An agent whose answers the test writes by hand.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, Headers]] = []
        self.pending: list[Deferred] = []
        self.cancelled = 0
        self.transport = StringTransport()

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.calls.append((method, uri, headers))

        def cancel(d: Deferred) -> None:
            self.cancelled += 1
            d.errback(Failure(ResponseFailed([Failure(ConnectionDone())])))

        d: Deferred = Deferred(cancel)
        self.pending.append(d)
        return d

    def respond(self, contentType: bytes = b"text/event-stream", code: int = 200) -> Response:
        response = Response(
            (b"HTTP", 1, 1), code, b"OK", Headers({b"content-type": [contentType]}),
            TransportProxyProducer(self.transport),
        )
        self.pending.pop(0).callback(response)
        return response


class StreamTests(SynchronousTestCase):
    """
    The relay's behaviour on a real HTTP channel: streaming, backpressure,
    disconnects, timeouts and broken upstreams.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = _Upstream()
        config = loadConfig(CONFIG.replace("timeout: 30s", "timeout: 5s"))
        site = GatewaySite(buildGateway(config, self.upstream, self.clock, {}).root, self.clock)
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = site.buildProtocol(address)
        self.client = StringTransport(peerAddress=address)
        self.channel.makeConnection(self.client)
        body = json.dumps(dict(CHAT, stream=True)).encode()
        self.channel.dataReceived(
            b"POST /local HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )

    def test_chunksRelayedAsTheyCome(self) -> None:
        """
        Each upstream chunk is written to the client when it arrives.
        """
        response = self.upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        self.assertIn(b"data: one\n\n", self.client.value())
        self.assertNotIn(b"data: two", self.client.value())
        response._bodyDataReceived(b"data: two\n\n")
        self.assertIn(b"data: two\n\n", self.client.value())
        response._bodyDataFinished(Failure(ResponseDone()))
        self.assertTrue(self.client.value().endswith(b"0\r\n\r\n"))
        self.assertFalse(self.client.disconnecting)

    def test_backpressure(self) -> None:
        """
        A client whose socket is full pauses the upstream read; draining it
        resumes the read.
        """
        response = self.upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        self.client.producer.pauseProducing()
        self.assertEqual(self.upstream.transport.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(self.upstream.transport.producerState, "producing")

    def test_disconnectCancelsUpstreamBody(self) -> None:
        """
        A client that goes away mid-stream stops the upstream transfer.
        """
        response = self.upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.upstream.transport.producerState, "stopped")

    def test_disconnectCancelsUpstreamRequest(self) -> None:
        """
        A client that goes away before the answer starts cancels the
        upstream request.
        """
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.upstream.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeoutBeforeHeaders(self) -> None:
        """
        No answer within the route's timeout is a 504, and the upstream
        request is cancelled.
        """
        self.clock.advance(5)
        self.assertIn(b"HTTP/1.1 504 ", self.client.value())
        self.assertIn(b"upstream_timeout", self.client.value())
        self.assertEqual(self.upstream.cancelled, 1)

    def test_timeoutMidStream(self) -> None:
        """
        A stream still going when the timeout runs out ends with an error
        event and a connection closed without the final chunk.
        """
        response = self.upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        self.clock.advance(5)
        self.assertIn(b"event: error", self.client.value())
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.upstream.transport.producerState, "stopped")

    def test_brokenStream(self) -> None:
        """
        An upstream that breaks mid-stream ends the client's stream with an
        error event and a closed connection, not a clean end.
        """
        response = self.upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        response._bodyDataFinished(Failure(ResponseFailed([Failure(ConnectionDone())])))
        value = self.client.value()
        self.assertIn(b"event: error\ndata: {\"error\"", value)
        self.assertFalse(value.endswith(b"0\r\n\r\n"))
        self.assertTrue(self.client.disconnecting)

    def test_refused(self) -> None:
        """
        A refused connection is a 502 in the OpenAI envelope.
        """
        self.upstream.pending.pop(0).errback(ConnectionRefusedError())
        self.assertIn(b"HTTP/1.1 502 ", self.client.value())
        self.assertIn(b"upstream_unreachable", self.client.value())


class SentAtOnceTests(TestCase):
    """
    Over a real socket, a stream's events leave as they are relayed.
    """

    async def test_eventOnTheWire(self) -> None:
        """
        When an upstream event has been relayed, the client can read it from
        its socket at once, not after the reactor's turn is over.
        """
        import socket

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        upstream = _Upstream()
        site = GatewaySite(buildGateway(loadConfig(CONFIG), upstream, reactor, {}).root, reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.closeChannels)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        body = json.dumps(dict(CHAT, stream=True)).encode()
        client.sendall(b"POST /local HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
        client.setblocking(False)
        for _ in range(100):
            if upstream.calls:
                break
            await deferLater(reactor, 0.01, lambda: None)
        response = upstream.respond()
        response._bodyDataReceived(b"data: one\n\n")
        try:
            received = client.recv(65536)
        except BlockingIOError:
            received = b""
        self.assertIn(b"data: one\n\n", received)
        response._bodyDataFinished(Failure(ResponseDone()))


class SecretsStayOutOfLogsTests(SynchronousTestCase):
    """
    A failure on the way upstream is one line in the log that names no URI,
    query or header value, and the caller gets a 502, not a traceback.
    """

    SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def assertNothingSecret(self) -> None:
        for event in self.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(self.SECRET, text)
            self.assertNotIn("log_failure", event)

    def gateway(self, agent: object) -> StubTreq:
        clock = Clock()
        return StubTreq(buildGateway(loadConfig(CONFIG), agent, clock, {}).root)

    def test_agentFails(self) -> None:
        """
        An upstream client that fails with the URI in its message gives a
        502 and a log line without it.
        """
        class Failing:
            def request(self, method, uri, headers=None, bodyProducer=None):
                return fail(ValueError(f"cannot send {uri!r} with {headers!r}"))

        client = self.gateway(Failing())
        d = client.post(f"http://gw/local/v1/chat/completions?key={self.SECRET}",
                        json.dumps(CHAT).encode(),
                        headers={"content-type": "application/json", "x-api-key": self.SECRET})
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertNothingSecret()
        errors = [e for e in self.events if e.get("log_level") is not None
                  and e["log_level"].name in ("error", "critical")]
        self.assertEqual(len(errors), 1, errors)

    def test_renderingFails(self) -> None:
        """
        A bug while rendering is a 500 in the error envelope and one line
        that names the error's type and place, not the request.
        """
        class Broken(Resource):
            isLeaf = True

            def render(self, request):
                raise RuntimeError(f"boom {request.uri!r}")

        site = GatewaySite(Broken(), Clock())
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(f"GET /x?token={self.SECRET} HTTP/1.1\r\nhost: gw\r\n\r\n".encode())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "), transport.value())
        self.assertIn(b'"internal_error"', transport.value())
        self.assertNothingSecret()
        lines = [e for e in self.events if "RuntimeError" in str(e.get("error", ""))]
        self.assertEqual(len(lines), 1)
