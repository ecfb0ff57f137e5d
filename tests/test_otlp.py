"""
Tests for L{aigateway.observe.otlp}: the span encoding gives the message the
OpenTelemetry exporter's own encoding gives, for every kind of value and for
the gateway's own spans, and the span processor posts them in batches.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace import set_span_in_context
from opentelemetry.trace.status import Status, StatusCode
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from aigateway.observe.otlp import SpanSender, encodeSpans
from aigateway.observe.tracing import SendingTracerProvider

ATTRIBUTES = {
    "text": "héllo \u2603",
    "empty": "",
    "yes": True,
    "no": False,
    "zero": 0,
    "count": 42,
    "big": 2**62,
    "negative": -5,
    "ratio": 0.25,
    "nothing": 0.0,
    "names": ("a", "b"),
    "numbers": (1, -2, 300),
    "flags": (True, False),
    "floats": (1.5,),
    "none": (),
}


def _spans() -> list:
    """
    Spans of two resources and three scopes: server and client kinds,
    remote and local parents, trace state, events, links and statuses.
    """
    kept = InMemorySpanExporter()
    spans = []
    for resource in (Resource.create({"service.name": "aigateway", "n": 1}), Resource({"k": "v"}, "https://schema")):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(kept))
        for name, version, schema in (("aigateway", None, None), ("other", "1.2", "https://scope")):
            tracer = provider.get_tracer(name, version, schema_url=schema)
            remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                                 trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))
            server = tracer.start_span("POST bench", context=set_span_in_context(NonRecordingSpan(remote)),
                                       kind=SpanKind.SERVER, attributes=ATTRIBUTES)
            server.add_event("said", {"what": "hi", "n": 3})
            server.add_event("bare")
            client = tracer.start_span(
                "chat gpt-4o", context=set_span_in_context(server), kind=SpanKind.CLIENT,
                links=[Link(remote, {"why": "because"}), Link(remote)],
            )
            client.set_status(Status(StatusCode.ERROR, "upstream broke"))
            client.end()
            server.set_status(Status(StatusCode.OK))
            server.end()
            root = tracer.start_span("root", kind=SpanKind.INTERNAL)
            root.end()
    spans = list(kept.get_finished_spans())
    return spans


class EncodingTests(SynchronousTestCase):
    def test_sameMessage(self) -> None:
        """
        The bytes parse to the message the exporter's own encoder builds.
        """
        spans = _spans()
        self.assertEqual(len(spans), 12)
        ours = ExportTraceServiceRequest.FromString(encodeSpans(spans))
        self.assertEqual(ours, encode_spans(spans))
        self.assertEqual(len(ours.resource_spans), 2)
        self.assertEqual(ours.resource_spans[0].scope_spans[0].spans[0].name, "chat gpt-4o")

    def test_gatewaySpans(self) -> None:
        """
        The spans of a request through the gateway, content captured and
        continuing a caller's trace, are posted as the exporter's encoder
        gives them.
        """
        from tests.memory import MemoryGateway
        from tests.test_telemetry import CHAT, CONFIG

        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        provider = _provider(sender)
        kept = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(kept))
        gateway = MemoryGateway(CONFIG % {"capture": "true"}, tracerProvider=provider)
        gateway.post(self, "/local", CHAT, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                            "user-agent": "lab/1"})
        sender.flush()
        [(_, _, body, _)] = agent.posts
        spans = kept.get_finished_spans()
        self.assertEqual([span.name for span in spans], ["chat gpt-4o-mini", "POST local"])
        self.assertEqual(ExportTraceServiceRequest.FromString(body), encode_spans(spans))

    def test_openInferenceSpans(self) -> None:
        """
        With both conventions and content capture, the OpenInference
        attributes (the flattened message lists included) are posted byte
        for byte as the exporter's encoder writes them.
        """
        from tests.memory import MemoryGateway
        from tests.test_telemetry import CHAT, CONFIG

        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        provider = _provider(sender)
        kept = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(kept))
        gateway = MemoryGateway(CONFIG % {"capture": "true"} + "  conventions: [genai, openinference]\n",
                                tracerProvider=provider)
        gateway.post(self, "/local", CHAT, {"user-agent": "lab/1"})
        sender.flush()
        [(_, _, body, _)] = agent.posts
        spans = kept.get_finished_spans()
        self.assertEqual(spans[0].attributes["llm.input_messages.0.message.content"], "Whats your favorite poem?")
        self.assertEqual(spans[1].attributes["openinference.span.kind"], "CHAIN")
        self.assertEqual(body, encode_spans(spans).SerializeToString())
        for name in (b"openinference.span.kind", b"llm.input_messages.0.message.role", b"input.value",
                     b"llm.token_count.total", b"Whats your favorite poem?"):
            self.assertIn(name, body)

    def test_empty(self) -> None:
        """
        No spans, no bytes.
        """
        self.assertEqual(encodeSpans([]), b"")
        self.assertEqual(encode_spans([]).SerializeToString(), b"")


class _Agent:
    """
    Records posts; each is answered by the test.
    """

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, Headers, bytes, Deferred]] = []
        self.cancelled = 0

    def request(self, method, uri, headers=None, bodyProducer=None):
        d: Deferred = Deferred(lambda d: setattr(self, "cancelled", self.cancelled + 1))
        self.posts.append((uri, headers, bodyProducer.body, d))
        return d

    def answer(self, index: int, code: int) -> None:
        response = _Response(code)
        self.posts[index][3].callback(response)


class _Response:
    def __init__(self, code: int) -> None:
        self.code = code
        self.phrase = b"whatever"
        self.length = 0
        self.headers = Headers()

    def deliverBody(self, protocol) -> None:
        from twisted.web.client import ResponseDone

        protocol.makeConnection(None)
        protocol.connectionLost(Failure(ResponseDone()))


def _provider(sender: SpanSender, sample: bool = True) -> SendingTracerProvider:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    return SendingTracerProvider(sender, Resource.create({"service.name": "aigateway"}),
                                 ALWAYS_ON if sample else ALWAYS_OFF)


class SenderTests(SynchronousTestCase):
    """
    Spans posted in batches from the reactor.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = _Agent()
        self.sender = SpanSender(self.clock, self.agent, "http://collector:4318/v1/traces",
                                 {"x-api-key": "k"}, interval=1.0, batchSize=3, maxPending=5)
        self.tracer = _provider(self.sender).get_tracer("aigateway")

    def spans(self, count: int) -> None:
        for i in range(count):
            self.tracer.start_span(f"s{i}").end()

    def sentNames(self, index: int) -> list[str]:
        message = ExportTraceServiceRequest.FromString(self.agent.posts[index][2])
        return [span.name for span in message.resource_spans[0].scope_spans[0].spans]

    def test_interval(self) -> None:
        """
        Spans wait for the interval, then go in one protobuf post with the
        configured headers.
        """
        self.spans(2)
        self.assertEqual(self.agent.posts, [])
        self.clock.advance(1.0)
        [(uri, headers, _, _)] = self.agent.posts
        self.assertEqual(uri, b"http://collector:4318/v1/traces")
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/x-protobuf"])
        self.assertEqual(headers.getRawHeaders(b"x-api-key"), [b"k"])
        self.assertEqual(self.sentNames(0), ["s0", "s1"])
        self.agent.answer(0, 200)
        self.assertEqual((self.sender.sent, self.sender.dropped), (2, 0))
        self.clock.advance(10)
        self.assertEqual(len(self.agent.posts), 1)

    def test_fullBatch(self) -> None:
        """
        A full batch goes at once.
        """
        self.spans(4)
        self.assertEqual(self.sentNames(0), ["s0", "s1", "s2"])
        self.clock.advance(1.0)
        self.assertEqual(self.sentNames(1), ["s3"])

    def test_unsampled(self) -> None:
        """
        Spans the sampler drops are never sent.
        """
        sender = SpanSender(self.clock, self.agent, "http://collector/v1/traces", interval=1.0)
        tracer = _provider(sender, sample=False).get_tracer("aigateway")
        tracer.start_span("no").end()
        self.clock.advance(5)
        self.assertEqual(self.agent.posts, [])

    def test_refusedAndSlow(self) -> None:
        """
        A refused batch is dropped, counted and logged once a minute; while
        a collector is slow, spans beyond C{maxPending} are dropped; one
        that does not answer in time is given up on.
        """
        from twisted.logger import globalLogPublisher

        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.spans(3)
        self.agent.answer(0, 503)
        self.assertEqual(self.sender.dropped, 3)
        warnings = [e for e in events if e.get("problem")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("answered 503", warnings[0]["problem"])
        self.spans(3)
        self.spans(3)
        self.assertEqual(len(self.agent.posts), 2)
        self.assertEqual(self.sender.dropped, 3 + 1)
        self.clock.advance(10)
        self.assertEqual(self.agent.cancelled, 1)
        self.assertEqual(self.sender.dropped, 3 + 1 + 3)
        self.assertEqual(len([e for e in events if e.get("problem")]), 1)

    def test_flush(self) -> None:
        """
        A flush sends what waits and fires once the collector answered.
        """
        self.spans(1)
        d = self.sender.flush()
        self.assertNoResult(d)
        self.agent.answer(0, 200)
        self.successResultOf(d)
        self.assertEqual(self.sender.sent, 1)
