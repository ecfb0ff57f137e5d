"""
Tests for L{aigateway.observe.tracing}: the SDK's tracer provider, its spans
posted from the reactor as the OpenTelemetry exporter would encode them, and
their attributes bounded.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.trace import SpanLimits
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

from aigateway.config import TracingConfig
from aigateway.observe.otlp import SpanSender
from aigateway.observe.report import buildTracerProvider
from aigateway.observe.tracing import MAX_ATTRIBUTE_LENGTH, SendingTracerProvider, spanLimits
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


def _sent(agent: _Agent) -> list:
    """
    The spans of every post C{agent} was sent, in order.
    """
    return [span for _, _, body, _ in agent.posts
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope in resource.scope_spans for span in scope.spans]


class SentAsExportedTests(SynchronousTestCase):
    """
    The SDK's spans, posted by a L{SpanSender}, are the message the OTLP
    exporter's own encoder gives for them.
    """

    def setUp(self) -> None:
        # The SDK warns, through the standard library, of the values it drops.
        quiet = logging.getLogger("opentelemetry")
        self.addCleanup(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.CRITICAL)

    def test_sameMessage(self) -> None:
        """
        Names, kinds, IDs, parents, times, attributes, events, links,
        statuses, resource and scopes all match.
        """
        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        provider = SendingTracerProvider(sender, Resource.create({"service.name": "aigateway"}), ALWAYS_ON,
                                         _Numbers())
        self.assertIsInstance(provider, TracerProvider)
        kept = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(kept))
        _story(provider)
        self.assertEqual(agent.posts, [])
        sender.flush()

        [(_, _, body, _)] = agent.posts
        ours = ExportTraceServiceRequest.FromString(body)
        self.assertEqual(ours, encode_spans(kept.get_finished_spans()))
        names = [span.name for scope in ours.resource_spans[0].scope_spans for span in scope.spans]
        self.assertEqual(names, ["chat gpt-4o", "POST openai", "inner", "root"])
        client = ours.resource_spans[0].scope_spans[0].spans[0]
        self.assertEqual([dict((a.key, a.value.string_value) for a in link.attributes) for link in client.links],
                         [{"why": "because"}, {}, {"added": "later"}, {"kept": "for its attributes"}])

    def test_sampling(self) -> None:
        """
        With a ratio of 0 a new trace is neither recorded nor sent, while a
        sampled caller's trace is, under the caller's trace ID.
        """
        agent = _Agent()
        sender = SpanSender(Clock(), agent, "http://collector/v1/traces")
        tracer = SendingTracerProvider(sender, sampler=ParentBased(TraceIdRatioBased(0)),
                                       idGenerator=_Numbers()).get_tracer("aigateway")
        recording = []
        for parent in (None, REMOTE, UNSAMPLED):
            context = set_span_in_context(NonRecordingSpan(parent)) if parent else None
            span = tracer.start_span("s", context=context)
            recording.append(span.is_recording())
            span.end()
        self.assertEqual(recording, [False, True, False])
        sender.flush()
        [span] = _sent(agent)
        self.assertEqual(span.trace_id, REMOTE.trace_id.to_bytes(16, "big"))
        self.assertEqual(span.parent_span_id, REMOTE.span_id.to_bytes(8, "big"))

    def test_flushAndShutdown(self) -> None:
        """
        The provider's flush fires once the collector has answered; the
        SDK's synchronous flush starts the post; after shutdown no span is
        taken.
        """
        agent = _Agent()
        provider = SendingTracerProvider(SpanSender(Clock(), agent, "http://collector/v1/traces"))
        tracer = provider.get_tracer("aigateway")
        tracer.start_span("one").end()
        d = provider.flush()
        self.assertNoResult(d)
        agent.answer(0, 200)
        self.successResultOf(d)
        tracer.start_span("two").end()
        self.assertFalse(provider.force_flush())
        self.assertEqual(len(agent.posts), 2)
        agent.answer(1, 200)
        provider.shutdown()
        tracer.start_span("three").end()
        self.successResultOf(provider.flush())
        self.assertEqual([span.name for span in _sent(agent)], ["one", "two"])
        self.assertEqual(provider.sender.sent, 2)


class LimitTests(SynchronousTestCase):
    """
    Span attributes are bounded: 8 KiB per value and 128 per span, unless
    the OpenTelemetry environment variables say otherwise.
    """

    def setUp(self) -> None:
        quiet = logging.getLogger("opentelemetry")
        self.addCleanup(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.CRITICAL)

    def spans(self, environ: dict[str, str]) -> list:
        agent = _Agent()
        config = TracingConfig(otlpEndpoint="http://collector/v1/traces")
        provider = buildTracerProvider(config, Clock(), agent, environ)
        span = provider.get_tracer("aigateway").start_span("POST")
        # The SDK keeps the newest attributes, and warns of those it drops.
        span.set_attributes({f"a{i}": i for i in range(200)})
        span.set_attributes({"gen_ai.input.messages": "x" * 20000, "gen_ai.response.finish_reasons": ("y" * 9000,)})
        span.end()
        provider.flush()
        return _sent(agent)

    def test_defaults(self) -> None:
        """
        A long value is cut at L{MAX_ATTRIBUTE_LENGTH} characters, in
        sequences too; attributes beyond 128 are dropped and counted.
        """
        [span] = self.spans({})
        values = {a.key: a.value for a in span.attributes}
        self.assertEqual(values["gen_ai.input.messages"].string_value, "x" * MAX_ATTRIBUTE_LENGTH)
        self.assertEqual(values["gen_ai.response.finish_reasons"].array_value.values[0].string_value,
                         "y" * MAX_ATTRIBUTE_LENGTH)
        self.assertEqual(len(span.attributes), 128)
        self.assertEqual(span.dropped_attributes_count, 202 - 128)

    def test_environment(self) -> None:
        """
        The span-specific variables win over the general ones; C{unset}
        lifts a limit.
        """
        [span] = self.spans({"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "5",
                             "OTEL_ATTRIBUTE_COUNT_LIMIT": "unset"})
        values = {a.key: a.value for a in span.attributes}
        self.assertEqual(values["gen_ai.input.messages"].string_value, "x" * 10)
        self.assertEqual(len(span.attributes), 202)
        [span] = self.spans({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "unset", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3"})
        values = {a.key: a.value for a in span.attributes}
        self.assertEqual(len(values["gen_ai.input.messages"].string_value), 20000)
        self.assertEqual(len(span.attributes), 3)

    def test_badVariable(self) -> None:
        """
        A limit that is not a whole number is an error naming the variable.
        """
        e = self.assertRaises(ValueError, spanLimits, {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "8k"})
        self.assertIn("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", str(e))
        limits = spanLimits({})
        self.assertIsInstance(limits, SpanLimits)
        self.assertEqual((limits.max_span_attribute_length, limits.max_span_attributes), (8192, 128))
