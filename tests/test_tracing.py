"""
Tests for L{aigateway.observe.tracing}: the gateway's spans reach the collector as
the OpenTelemetry SDK's spans would, for the same calls.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.trace.status import Status, StatusCode
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from aigateway.observe.otlp import SpanSender
from aigateway.observe.tracing import SendingTracerProvider
from tests.test_otlp import ATTRIBUTES, _Agent

REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "x1")]))
INVALID = SpanContext(0, 0, is_remote=False)
UNSAMPLED = SpanContext(0x1AF7651916CD43DD8448EB211C80319C, 0xC7AD6B7169203331, is_remote=True,
                        trace_flags=TraceFlags(0))


class _Numbers(IdGenerator):
    """
    Trace and span IDs counted up from 1.
    """

    def __init__(self) -> None:
        self.next = 0

    def _count(self) -> int:
        self.next += 1
        return self.next

    def generate_trace_id(self) -> int:
        return self._count() << 64 | 0xABC

    def generate_span_id(self) -> int:
        return self._count()

    def is_trace_id_random(self) -> bool:
        return True


def _story(provider: Any) -> None:
    """
    What a tracer user does: parents remote, local and none; attributes of
    every kind, some after the span ended; events, links (some to no valid
    span), statuses, a new name, an exception, a value OTLP cannot carry.
    """
    tracer = provider.get_tracer("aigateway")
    other = provider.get_tracer("other", "1.2", schema_url="https://scope")
    server = tracer.start_span("POST", context=set_span_in_context(NonRecordingSpan(REMOTE)),
                               kind=SpanKind.SERVER, attributes={"url.path": "/openai"}, start_time=1000)
    server.set_attributes(ATTRIBUTES)
    server.set_attribute("mapping", {"a": 1, "b": [1, "x"], "c": object()})
    server.set_attribute("not a value", object())
    server.add_event("said", {"what": "hi", "n": 3}, timestamp=1500)
    server.add_event("bare", timestamp=1600)
    client = tracer.start_span("chat gpt-4o", context=set_span_in_context(server), kind=SpanKind.CLIENT,
                               links=[Link(REMOTE, {"why": "because"}), Link(REMOTE), Link(INVALID)],
                               start_time=1100)
    client.set_attribute("gen_ai.usage.input_tokens", 9)
    client.add_link(REMOTE, {"added": "later"})
    client.add_link(INVALID)
    client.add_link(INVALID, {"kept": "for its attributes"})
    client.set_status(Status(StatusCode.ERROR, "upstream broke"))
    try:
        raise ValueError("no good")
    except ValueError as e:
        client.record_exception(e, {"extra": 1}, timestamp=1700)
    client.end(2000)
    client.set_attribute("late", 1)
    client.end(3000)
    server.update_name("POST openai")
    server.set_status(StatusCode.OK)
    server.set_status(StatusCode.ERROR, "ignored after OK")
    server.end(4000)
    with other.start_as_current_span("root", start_time=5000, end_on_exit=False) as root:
        inner = other.start_span("inner", start_time=5100)
        inner.end(5200)
    root.end(6000)


class SameAsSDKTests(SynchronousTestCase):
    """
    For the same calls, the spans posted are those the SDK's own spans and
    OTLP encoder give.
    """

    def setUp(self) -> None:
        # Both warn, through the standard library, of the values they drop.
        quiet = logging.getLogger("opentelemetry")
        self.addCleanup(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.CRITICAL)

    def test_sameMessage(self) -> None:
        """
        Names, kinds, IDs, parents, times, attributes, events, links,
        statuses, resource and scopes all match.
        """
        resource = Resource.create({"service.name": "aigateway"})
        kept = InMemorySpanExporter()
        sdk = TracerProvider(resource=resource, id_generator=_Numbers(), shutdown_on_exit=False)
        sdk.add_span_processor(SimpleSpanProcessor(kept))
        _story(sdk)

        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        _story(SendingTracerProvider(sender, resource, ALWAYS_ON, _Numbers()))
        sender.flush()

        [(_, _, body, _)] = agent.posts
        ours = ExportTraceServiceRequest.FromString(body)
        expected = encode_spans(kept.get_finished_spans())
        self.assertEqual(ours, expected)
        names = [span.name for scope in ours.resource_spans[0].scope_spans for span in scope.spans]
        self.assertEqual(names, ["chat gpt-4o", "POST openai", "inner", "root"])
        client = ours.resource_spans[0].scope_spans[0].spans[0]
        self.assertEqual([dict((a.key, a.value.string_value) for a in link.attributes) for link in client.links],
                         [{"why": "because"}, {}, {"added": "later"}, {"kept": "for its attributes"}])

    def test_sampling(self) -> None:
        """
        The sampler decides as in the SDK: with a ratio of 0 a new trace is
        neither recorded nor sent, while a sampled caller's trace is, under
        the caller's trace ID; the flags a caller would be sent match.
        """
        def starts(provider: Any) -> list[tuple[int, int, bool]]:
            tracer = provider.get_tracer("aigateway")
            seen = []
            for parent in (None, REMOTE, UNSAMPLED):
                context = set_span_in_context(NonRecordingSpan(parent)) if parent else None
                span = tracer.start_span("s", context=context)
                own = span.get_span_context()
                seen.append((own.trace_id, int(own.trace_flags), span.is_recording()))
                span.end()
            return seen

        sampler = ParentBased(TraceIdRatioBased(0))
        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        ours = starts(SendingTracerProvider(sender, sampler=sampler, idGenerator=_Numbers()))
        sdk = starts(TracerProvider(sampler=sampler, id_generator=_Numbers(), shutdown_on_exit=False))
        self.assertEqual(ours, sdk)
        self.assertEqual([recording for _, _, recording in ours], [False, True, False])
        self.assertEqual(ours[1][0], REMOTE.trace_id)
        sender.flush()
        [(_, _, body, _)] = agent.posts
        [span] = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
        self.assertEqual(span.parent_span_id, REMOTE.span_id.to_bytes(8, "big"))

    def test_tracersShared(self) -> None:
        """
        Asking twice for a tracer of the same scope gives the same tracer.
        """
        provider = SendingTracerProvider(SpanSender(Clock(), _Agent(), "http://collector/v1/traces"))
        get: Callable[..., Any] = provider.get_tracer
        self.assertIs(get("aigateway"), get("aigateway"))
        self.assertIsNot(get("aigateway"), get("aigateway", "2"))
        scoped = get("aigateway", attributes={"tags": ["a", "b"]})
        self.assertIs(scoped, get("aigateway", attributes={"tags": ["a", "b"]}))
        self.assertEqual(scoped.scope.attributes, {"tags": ("a", "b")})
