"""
Tests for L{aigateway.web.relay}: the relay, in memory.

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
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import Response, ResponseFailed, TransportProxyProducer
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from aigateway.config import loadConfig
from aigateway.testing.fakellm import FakeLLM
from aigateway.build import buildGateway
from aigateway.web.site import GatewaySite
from aigateway.observe.report import Metrics, Telemetry
from aigateway.http.client import UpstreamAgent
from tests.lab import FAKE_BACKENDS, UPSTREAM_KEY, CHAT

KEY = UPSTREAM_KEY
CONFIG = FAKE_BACKENDS + """
routes:
  - {name: local, match: {pathPrefix: /local}, backend: local, timeout: 30s}
  - {name: pinned, match: {pathPrefix: /pinned}, backend: pinned}
  - {name: small, match: {pathPrefix: /small}, backend: local, maxRequestBody: 100}
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


class _Connections:
    """
    The connections the gateway's upstream agent makes, each to a
    L{StringTransport}, for the test to answer on.
    """

    def __init__(self) -> None:
        self.connections: list[tuple[StringTransport, object]] = []
        self.failure: Exception | None = None

    def endpointForURI(self, uri):
        return self

    def connect(self, factory):
        if self.failure is not None:
            return fail(self.failure)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((transport, protocol))
        return succeed(protocol)


def _received(value: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes, bool]:
    """
    What an HTTP/1.1 client makes of C{value}: the status, the fields, the
    body, and whether its framing says the body is whole (status 0 for no
    answer at all).
    """
    if not value:
        return 0, {}, b"", False
    head, _, rest = value.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, field = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(field.strip())
    if b"content-length" in fields:
        length = int(fields[b"content-length"][0])
        return status, fields, rest[:length], len(rest) >= length
    if fields.get(b"transfer-encoding") != [b"chunked"]:
        return status, fields, rest, False
    body = b""
    while True:
        line, crlf, rest = rest.partition(b"\r\n")
        if not crlf:
            return status, fields, body, False
        size = int(line, 16)
        body += rest[:size]
        if size == 0 or len(rest) < size + 2:
            return status, fields, body, size == 0 and rest.startswith(b"\r\n")
        rest = rest[size + 2:]


class _Wire:
    """
    The gateway with its own upstream agent, both sides on
    L{StringTransport}s: the test writes what the upstream sends and reads
    what the client gets.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.upstream = _Connections()
        agent = UpstreamAgent(self.clock, endpointFactory=self.upstream)
        config = loadConfig(CONFIG)
        self.metrics = Metrics()
        telemetry = Telemetry(config.tracing, self.metrics, self.clock, accessLog=config.accessLog)
        self.site = GatewaySite(buildGateway(config, agent, self.clock, {}, telemetry=telemetry).root,
                                self.clock)

    def ask(self, stream: bool, path: bytes = b"/local") -> None:
        """
        A client sends a chat completion, streamed or not, to C{path}.
        """
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = self.site.buildProtocol(address)
        self.client = StringTransport(peerAddress=address)
        self.channel.makeConnection(self.client)
        body = json.dumps(dict(CHAT, stream=stream)).encode()
        self.channel.dataReceived(
            b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )

    def answer(self, *reads: bytes, lost: Exception | None = None, index: int = -1) -> None:
        """
        The upstream sends C{reads}, one read each, on its connection
        C{index}, then maybe loses the connection.
        """
        protocol = self.upstream.connections[index][1]
        for data in reads:
            protocol.dataReceived(data)
        if lost is not None:
            protocol.connectionLost(Failure(lost))

    def received(self) -> tuple[int, dict[bytes, list[bytes]], bytes, bool]:
        """
        What the client got, once the gateway is done with its request (a
        connection the gateway closes is then closed).
        """
        if self.client.disconnecting and not self.client.disconnected:
            self.client.disconnected = True
            self.channel.connectionLost(Failure(ConnectionDone()))
        return _received(self.client.value())

    def upstreamErrors(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value(
            "aigateway_upstream_errors_total", {"route": "local", "kind": kind}
        ) or 0


JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class BrokenAnswerTests(SynchronousTestCase):
    """
    An upstream answer that breaks after its head never reaches the client
    as a complete one, and is counted as C{stream_broken}.
    """

    def setUp(self) -> None:
        self.wire = _Wire()

    def assertBroken(self, body: bytes) -> dict[bytes, list[bytes]]:
        """
        The client got a 200 head, C{body}, and a connection closed without
        the end its framing promised; the broken answer was counted.

        @return: the fields of the head.
        """
        status, fields, received, complete = self.wire.received()
        self.assertEqual((status, received, complete), (200, body, False))
        self.assertTrue(self.wire.client.disconnecting)
        self.assertEqual(self.wire.upstreamErrors("stream_broken"), 1)
        return fields

    def test_resetUntilClose(self) -> None:
        """
        A JSON body framed by the close and cut by a reset, an abort or a
        TLS error ends without the final chunk.
        """
        from OpenSSL import SSL
        from twisted.internet.error import ConnectionAborted

        for lost in (ConnectionLost(), ConnectionAborted(), SSL.Error()):
            self.wire = _Wire()
            self.wire.ask(stream=False)
            self.wire.answer(JSON_HEAD + b"\r\n" + b'{"id":', b'"chat-1",', lost=lost)
            self.assertBroken(b'{"id":"chat-1",')

    def test_streamResetUntilClose(self) -> None:
        """
        A stream framed by the close and cut by a reset ends with an
        C{error} event and without the final chunk.
        """
        self.wire.ask(stream=True)
        self.wire.answer(SSE_HEAD + b"\r\n" + b"data: one\n\n", lost=ConnectionLost())
        status, _, received, complete = self.wire.received()
        self.assertTrue(received.startswith(b"data: one\n\nevent: error\ndata: {\"error\""), received)
        self.assertFalse(complete)
        self.assertEqual(self.wire.upstreamErrors("stream_broken"), 1)

    def test_cleanCloseUntilClose(self) -> None:
        """
        The same body ended by a clean close is relayed whole, with the
        final chunk.
        """
        self.wire.ask(stream=False)
        self.wire.answer(JSON_HEAD + b"\r\n" + b'{"id":', b'"chat-1"}', lost=ConnectionDone())
        status, _, received, complete = self.wire.received()
        self.assertEqual((status, received, complete), (200, b'{"id":"chat-1"}', True))
        self.assertEqual(self.wire.upstreamErrors("stream_broken"), 0)

    def test_lengthCutShort(self) -> None:
        """
        A body cut at 80 bytes of its 220, by a reset or a clean close,
        reaches the client as 80 bytes of a promised 220.
        """
        for lost in (ConnectionLost(), ConnectionDone()):
            self.wire = _Wire()
            self.wire.ask(stream=False)
            self.wire.answer(JSON_HEAD + b"Content-Length: 220\r\n\r\n" + b"x" * 80, lost=lost)
            self.assertEqual(self.assertBroken(b"x" * 80)[b"content-length"], [b"220"])

    def test_chunkedCutShort(self) -> None:
        """
        A chunked body cut inside a chunk, or between chunks, ends without
        the final chunk.
        """
        for rest in (b"50\r\n" + b"x" * 40, b"28\r\n" + b"x" * 40 + b"\r\n"):
            self.wire = _Wire()
            self.wire.ask(stream=False)
            self.wire.answer(JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + rest, lost=ConnectionLost())
            self.assertBroken(b"x" * 40)


CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"
# Chunked bodies that break RFC 9112 (a bad size, a size line too long, no
# CRLF after the data, a chunk too large, a control character in an
# extension, a malformed trailer).
MALFORMED_CHUNKS = [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"5;" + b"e" * 5000,
    b"5\r\nhelloX\r\n0\r\n\r\n",
    b"80000000\r\nhello",
    b"5;x=\x00\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
]


class MalformedBodyTests(SynchronousTestCase):
    """
    An upstream body that breaks its framing is a broken answer: a 502
    when nothing of it has reached the client yet, a broken stream after.
    """

    def assertRefused(self, wire: _Wire, message: str) -> None:
        """
        The client got a 502 in the OpenAI envelope, with none of the
        upstream's fields, and the broken answer was counted.
        """
        status, fields, body, complete = wire.received()
        self.assertEqual((status, complete), (502, True))
        self.assertEqual(json.loads(body)["error"],
                         {"message": message, "type": "upstream_error", "code": "upstream_stream_error"})
        self.assertNotIn(b"x-request-id", fields)
        self.assertEqual(fields[b"content-type"], [b"application/json"])
        self.assertEqual(wire.upstreamErrors("stream_broken"), 1)

    def test_malformedBeforeAnyByte(self) -> None:
        """
        A malformed chunk before any body byte was relayed, in the head's
        read or a read of its own, is answered with a 502, for a JSON
        answer as for a stream.
        """
        for chunks in MALFORMED_CHUNKS:
            for head in (JSON_HEAD, SSE_HEAD):
                for together in (True, False):
                    wire = _Wire()
                    wire.ask(stream=head is SSE_HEAD)
                    answer = head + b"X-Request-Id: req-1\r\n" + CHUNKED
                    wire.answer(*([answer + chunks] if together else [answer, chunks]))
                    self.assertRefused(wire, "the upstream's answer was malformed")

    def test_resetBeforeAnyByte(self) -> None:
        """
        An upstream that resets after its head, before any body byte, is
        answered with a 502, whatever its framing.
        """
        for framing in (b"\r\n", CHUNKED, b"Content-Length: 220\r\n\r\n"):
            wire = _Wire()
            wire.ask(stream=False)
            wire.answer(JSON_HEAD + b"X-Request-Id: req-1\r\n" + framing, lost=ConnectionLost())
            self.assertRefused(wire, "the upstream connection broke before the answer was complete")

    def test_malformedAfterBytes(self) -> None:
        """
        A malformed chunk after some of the body was relayed breaks the
        client's answer: an C{error} event for a stream, and no final
        chunk either way.
        """
        for chunks in MALFORMED_CHUNKS:
            for stream in (False, True):
                for together in (True, False):
                    wire = _Wire()
                    wire.ask(stream)
                    first = b"b\r\ndata: one\n\n\r\n"
                    head = (SSE_HEAD if stream else JSON_HEAD) + CHUNKED
                    wire.answer(*([head + first, chunks] if together else [head, first, chunks]))
                    status, _, body, complete = wire.received()
                    self.assertEqual((status, complete), (200, False))
                    self.assertTrue(wire.client.disconnecting)
                    if stream:
                        self.assertTrue(body.startswith(b"data: one\n\nevent: error\ndata: "), body)
                        self.assertIn(b"the upstream's answer was malformed", body)
                    else:
                        self.assertEqual(body, b"data: one\n\n")
                    self.assertEqual(wire.upstreamErrors("stream_broken"), 1)


class PooledConnectionTests(SynchronousTestCase):
    """
    Two clients, one after the other, each get their own answer, whatever
    the upstream sent after the first.
    """

    SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stolen\":true}"
    OWN = JSON_HEAD + b"Content-Length: 12\r\n\r\n{\"own\":true}"

    def test_lateBytes(self) -> None:
        """
        Bytes after a framed answer (a body after a 204, or past a
        Content-Length), in a later read before or after the next client's
        request, never become the next client's answer.
        """
        for first, firstBody in ((b"HTTP/1.1 204 No Content\r\n\r\n", b""),
                                 (JSON_HEAD + b"Content-Length: 2\r\n\r\n{}", b"{}")):
            for smuggledFirst in (True, False):
                if first.startswith(JSON_HEAD) and not smuggledFirst:
                    # Bytes that come after a request was sent on a kept
                    # connection are its answer: HTTP/1.1 can't tell.
                    continue
                wire = _Wire()
                wire.ask(stream=False)
                wire.answer(first)
                self.assertEqual(wire.received()[2], firstBody)
                if smuggledFirst:
                    wire.answer(self.SMUGGLED, index=0)
                wire.ask(stream=False)
                if not smuggledFirst:
                    wire.answer(self.SMUGGLED, index=0)
                self.assertEqual(len(wire.upstream.connections), 2)
                self.assertEqual(wire.client.value(), b"")
                wire.answer(self.OWN)
                self.assertEqual(wire.received()[::2], (200, b'{"own":true}'))


class MalformedHeadTests(SynchronousTestCase):
    """
    An upstream answer whose head breaks HTTP/1.1 is refused whole.
    """

    def test_controlCharacters(self) -> None:
        """
        A NUL, a CR or LF alone, an ESC or a DEL in an upstream field, or
        a folded field, makes a 502 in the OpenAI envelope: none of the
        upstream's fields reach the client, and it is counted as
        C{malformed}.
        """
        for fields in (b"X-Id: a\x00b\r\n", b"X-Id: a\rb\r\n", b"X-Id: a\nSet-Cookie: s=1\r\n",
                       b"X-Id: \x1b[2J\r\n", b"X-Id: a\x7f\r\n", b"X-Id: a\r\n b\r\n"):
            for stream in (False, True):
                wire = _Wire()
                wire.ask(stream)
                wire.answer((SSE_HEAD if stream else JSON_HEAD) + fields + b"Content-Length: 2\r\n\r\n{}")
                status, received, body, complete = wire.received()
                self.assertEqual((status, complete), (502, True), fields)
                self.assertEqual(json.loads(body)["error"]["code"], "upstream_error")
                self.assertEqual(received[b"content-type"], [b"application/json"])
                self.assertNotIn(b"x-id", received)
                self.assertNotIn(b"set-cookie", received)
                self.assertEqual(wire.upstreamErrors("malformed"), 1)


class UpstreamFailureTests(SynchronousTestCase):
    """
    A 502 names the upstream's host and the cause in words, in the error
    body and in the one log line, and never the client's query.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def assertFailure(self, message: str, code: str, connect: Exception | None = None,
                      lost: Exception | None = None) -> None:
        """
        The connection fails with C{connect}, or is made and then lost with
        C{lost} before a byte of answer: the client gets a 502 with
        C{message} and C{code}, and the log one line that says it.
        """
        del self.events[:]
        wire = _Wire()
        wire.upstream.failure = connect
        wire.ask(stream=False, path=b"/local?api-key=sk-caller-secret")
        if lost is not None:
            wire.answer(lost=lost)
        status, _, body, _ = wire.received()
        self.assertEqual((status, json.loads(body)["error"]["message"], json.loads(body)["error"]["code"]),
                         (502, message, code))
        logged = [formatEvent(e) for e in self.events if e.get("log_namespace") == "aigateway.web.relay"]
        self.assertEqual(logged, [f"route local: {message}"])
        self.assertNotIn(b"sk-caller-secret", wire.client.value())

    def test_nameNotResolved(self) -> None:
        """
        A host name that does not resolve.
        """
        from twisted.internet.error import DNSLookupError

        self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: name not resolved",
                           "upstream_unreachable", connect=DNSLookupError("api.example"))

    def test_refused(self) -> None:
        """
        A port nobody listens on.
        """
        self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: connection refused",
                           "upstream_unreachable", connect=ConnectionRefusedError())

    def test_timedOut(self) -> None:
        """
        A connection attempt that takes longer than the connect timeout, or
        that the kernel gives up on.
        """
        from twisted.internet.error import TCPTimedOutError, TimeoutError

        for error in (TimeoutError(), TCPTimedOutError()):
            self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: timed out connecting",
                               "upstream_unreachable", connect=error)

    def test_otherConnectError(self) -> None:
        """
        Another failure to connect says what the kernel said.
        """
        from twisted.internet.error import NoRouteError

        self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: no route to host",
                           "upstream_unreachable", connect=NoRouteError())

    def test_tls(self) -> None:
        """
        A TLS handshake that fails, with OpenSSL's reason, or a certificate
        for another host.
        """
        from OpenSSL import SSL
        from service_identity import VerificationError

        self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: TLS failure "
                           "(certificate verify failed)", "upstream_unreachable",
                           lost=SSL.Error([("SSL routines", "", "certificate verify failed")]))
        self.assertFailure("cannot connect to the upstream 127.0.0.1:9000: TLS failure "
                           "(the certificate does not match the host name)", "upstream_unreachable",
                           lost=VerificationError([]))

    def test_reset(self) -> None:
        """
        A connection reset, or closed, before a byte of answer.
        """
        self.assertFailure("the upstream 127.0.0.1:9000 reset the connection before answering",
                           "upstream_reset", lost=ConnectionLost())
        self.assertFailure("the upstream 127.0.0.1:9000 closed the connection before answering",
                           "upstream_reset", lost=ConnectionDone())


class UpstreamHostTests(SynchronousTestCase):
    """
    What of an upstream URL an error may name.
    """

    def test_hostOnly(self) -> None:
        """
        The host and an explicit port; no user, password, path or query.
        """
        from aigateway.web.relay import upstreamHost

        self.assertEqual(upstreamHost(b"https://api.openai.com/v1/chat/completions"), "api.openai.com")
        self.assertEqual(upstreamHost(b"https://u:secret@gw.example:8443/v1beta/models/x?key=AIza-secret"),
                         "gw.example:8443")
        self.assertEqual(upstreamHost(b"http://[::1]:9000/v1"), "[::1]:9000")


class LogTests(SynchronousTestCase):
    """
    What the relay logs never holds what a URI or a field can carry.
    """

    def test_failureLoggedWithoutURI(self) -> None:
        """
        An unexpected upstream failure is logged with the route's name, not
        the client's URI, whose query may hold a key.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        wire = _Wire()
        wire.upstream.failure = RuntimeError("no endpoint")
        wire.ask(stream=False, path=b"/local?api-key=sk-caller-secret")
        self.assertEqual(wire.received()[0], 502)
        self.assertEqual(self.flushLoggedErrors(), [])
        logged = [formatEvent(e) for e in events if e.get("log_namespace") == "aigateway.web.relay"]
        self.assertEqual(len(logged), 1)
        self.assertIn("local", logged[0])
        self.assertNotIn("sk-caller-secret", logged[0])


class SecretsStayOutOfLogsTests(SynchronousTestCase):
    """
    A bug while rendering is one line in the log that names no URI, query
    or header value, and the caller gets a 500, not a traceback.
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
