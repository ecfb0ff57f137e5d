"""
Tests for L{aigateway.otlp}: the span encoding gives the message the
OpenTelemetry exporter's own encoding gives, for every kind of value.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace import set_span_in_context
from opentelemetry.trace.status import Status, StatusCode
from twisted.trial.unittest import SynchronousTestCase

from aigateway.otlp import SpanExporter, encodeSpans

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

    def test_empty(self) -> None:
        """
        No spans, no bytes.
        """
        self.assertEqual(encodeSpans([]), b"")
        self.assertEqual(encode_spans([]).SerializeToString(), b"")


class ExporterTests(SynchronousTestCase):
    def test_direct(self) -> None:
        """
        The exporter's client takes serialized bytes, so this encoding is
        the one used; if a new exporter changes that, this fails.
        """
        sent = []
        exporter = SpanExporter(endpoint="http://127.0.0.1:1/v1/traces")
        self.assertTrue(exporter.direct)

        class Client:
            def export(self, data):
                sent.append(data)
                return type("Result", (), {"success": True})()

        exporter._client = Client()
        spans = _spans()
        self.assertEqual(exporter.export(spans), SpanExportResult.SUCCESS)
        self.assertEqual(ExportTraceServiceRequest.FromString(sent[0]), encode_spans(spans))
