"""
OTLP/HTTP span export, with the protobuf encoding written out directly.

The OpenTelemetry exporter builds one protobuf object per span, attribute
and value before serializing them: for the gateway's two spans per request
that took more CPU than making the spans.  L{encodeSpans} writes the same
message (C{ExportTraceServiceRequest}, opentelemetry-proto's trace v1)
straight to bytes.  L{SpanExporter} is the OpenTelemetry exporter with that
encoding; its endpoint, headers, TLS, compression, timeouts and retries are
the exporter's own.  It relies on the exporter sending serialized bytes
through its C{_client}; where that is gone (a newer exporter), it falls
back to the exporter's own encoding, and the tests say so.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from twisted.logger import Logger

__all__ = ["SpanExporter", "encodeSpans"]

log = Logger()

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_traceId = struct.Struct(">QQ").pack
_spanId = struct.Struct(">Q").pack


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(key: bytes, payload: bytes) -> bytes:
    """
    A length-delimited field: C{key} is the field's tag byte.
    """
    size = len(payload)
    return key + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _anyValue(value: Any) -> bytes:
    # AnyValue: string 1, bool 2, int64 3, double 4, array 5, kvlist 6, bytes 7.
    if value.__class__ is str:
        return _field(b"\x0a", _text(value))
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", _text(value))
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _anyValue(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", _attributes(b"\x0a", value))
    raise TypeError(f"cannot export an attribute of type {type(value).__name__}")


# Attribute names, encoded as a KeyValue's key field: the same few dozen
# names come with every span.
_names: dict[str, bytes] = {}


def _attributes(key: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """
    The repeated C{KeyValue} field C{key}: key 1, value 2.
    """
    if not attributes:
        return b""
    out = []
    names = _names
    for name, value in attributes.items():
        encoded = names.get(name)
        if encoded is None:
            encoded = _field(b"\x0a", _text(str(name)))
            if len(names) < 4096:
                names[name] = encoded
        out.append(_field(key, encoded + _field(b"\x12", _anyValue(value))))
    return b"".join(out)


def _flags(parent: Any) -> bytes:
    # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and IS_REMOTE when it is.
    return _fixed32(0x300 if parent is not None and parent.is_remote else 0x100)


def _span(span: Any) -> bytes:
    context = span.get_span_context()
    out = [
        _field(b"\x0a", _traceId(context.trace_id >> 64, context.trace_id & 0xFFFFFFFFFFFFFFFF)),
        _field(b"\x12", _spanId(context.span_id)),
    ]
    state = context.trace_state
    if state:
        out.append(_field(b"\x1a", _text(",".join(f"{k}={v}" for k, v in state.items()))))
    parent = span.parent
    if parent is not None:
        out.append(_field(b"\x22", _spanId(parent.span_id)))
    if span.name:
        out.append(_field(b"\x2a", _text(span.name)))
    # The protocol's SpanKind counts from UNSPECIFIED = 0.
    out.append(b"\x30" + _varint(span.kind.value + 1))
    if span.start_time:
        out.append(b"\x39" + _fixed64(span.start_time))
    if span.end_time:
        out.append(b"\x41" + _fixed64(span.end_time))
    out.append(_attributes(b"\x4a", span.attributes))
    if span.dropped_attributes:
        out.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _field(b"\x12", _text(event.name))
        body += _attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        out.append(_field(b"\x5a", body))
    if span.dropped_events:
        out.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = (
            _field(b"\x0a", _traceId(linked.trace_id >> 64, linked.trace_id & 0xFFFFFFFFFFFFFFFF))
            + _field(b"\x12", _spanId(linked.span_id))
            + _attributes(b"\x22", link.attributes)
        )
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        out.append(_field(b"\x6a", body + b"\x35" + _flags(linked)))
    if span.dropped_links:
        out.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status is not None:
        body = _field(b"\x12", _text(status.description)) if status.description else b""
        if status.status_code.value:
            body += b"\x18" + _varint(status.status_code.value)
        out.append(_field(b"\x7a", body))
    out.append(b"\x85\x01" + _flags(parent))
    return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    body = _field(b"\x0a", _text(scope.name)) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", _text(scope.version))
    return body + _attributes(b"\x1a", scope.attributes)


def encodeSpans(spans: Sequence[Any]) -> bytes:
    """
    The serialized C{ExportTraceServiceRequest} for C{spans}: grouped by
    resource, then by instrumentation scope, in the order first seen.
    """
    # By identity: a resource's hash is a JSON dump of its attributes, and
    # every span of a provider shares the same resource object.
    grouped: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    for span in spans:
        resource = span.resource
        scopes = grouped.get(id(resource))
        if scopes is None:
            scopes = grouped[id(resource)] = (resource, {})
        scope = span.instrumentation_scope or None
        scopes[1].setdefault(scope, []).append(_field(b"\x12", _span(span)))
    out = []
    for resource, scopes in grouped.values():
        body = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
        for scope, encoded in scopes.items():
            scopeBody = _field(b"\x0a", _scope(scope)) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scopeBody += _field(b"\x1a", _text(scope.schema_url))
            body += _field(b"\x12", scopeBody)
        if resource.schema_url:
            body += _field(b"\x1a", _text(resource.schema_url))
        out.append(_field(b"\x0a", body))
    return b"".join(out)


class SpanExporter(OTLPSpanExporter):
    """
    The OTLP/HTTP exporter, encoding with L{encodeSpans}.

    @ivar direct: whether the exporter's client takes serialized bytes, so
        the encoding here is used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        client = getattr(self, "_client", None)
        self.direct = callable(getattr(client, "export", None)) and hasattr(self, "_shutdown")

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if not self.direct or self._shutdown:
            return super().export(spans)
        try:
            data = encodeSpans(spans)
        except Exception:
            log.failure("encoding {count} spans for export", count=len(spans))
            return SpanExportResult.FAILURE
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
