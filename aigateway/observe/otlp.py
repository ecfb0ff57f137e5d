"""
OTLP/HTTP span export from the reactor, with the protobuf encoding
written out directly.

The OpenTelemetry exporter builds one protobuf object per span, attribute
and value before serializing them, and the SDK's batch processor sends
from a thread of its own, whose bursts of Python work every second held
the reactor's requests back for milliseconds.  Here L{SpanSender} is a
span processor of the SDK's C{TracerProvider}: it encodes each span to
its C{Span} message bytes as it ends (L{encodeSpan}, which reads only the
public C{ReadableSpan} API and gives the message the exporter's own
C{encode_spans} gives), and posts the batches through the gateway's own
HTTP agent: no thread, no burst.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from aigateway.http.client import BytesBody

__all__ = ["SpanSender", "encodeSpan", "encodeSpans"]

log = Logger()

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_halves = struct.Struct(">QQ").pack
_spanId = struct.Struct(">Q").pack


def _ids(context: Any) -> bytes:
    """
    A span context's IDs as fields 1 (trace ID) and 2 (span ID), as both
    C{Span} and C{Link} messages number them.
    """
    traceId = context.trace_id
    return (b"\x0a\x10" + _halves(traceId >> 64, traceId & 0xFFFFFFFFFFFFFFFF)
            + b"\x12\x08" + _spanId(context.span_id))


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
    return key + _varint(len(payload)) + payload


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


# Encoded attributes: names, and whole fields (tag, length and name-value
# pair) for short strings, integers and booleans (methods, routes, models,
# status codes), which repeat from span to span.
_names: dict[str, bytes] = {}
_pairs: dict[tuple[bytes, str, type, object], bytes] = {}
_CACHED = 8192


def _attributes(key: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """
    The repeated C{KeyValue} field C{key}: key 1, value 2.
    """
    if attributes is None:
        return b""
    out = []
    append = out.append
    pairs = _pairs
    names = _names
    # A span's attributes are a mapping whose items() is a generator in
    # Python: copied into a dict once (for the SDK's, by their own copy()),
    # they are read in C.
    copy = getattr(attributes, "copy", None)
    for name, value in (copy() if copy is not None else dict(attributes)).items():
        kind = value.__class__
        if kind is str:
            if len(value) <= 64:
                encoded = pairs.get((key, name, kind, value))
                if encoded is not None:
                    append(encoded)
                    continue
                cacheable = True
            else:
                cacheable = False
            data = value.encode("utf-8", "replace")
            size = len(data)
            inner = (b"\x0a" + _SMALL[size] if size < 0x80 else b"\x0a" + _varint(size)) + data
        elif kind is int or kind is bool:
            encoded = pairs.get((key, name, kind, value))
            if encoded is not None:
                append(encoded)
                continue
            cacheable = True
            inner = _anyValue(value)
        else:
            cacheable = False
            inner = _anyValue(value)
        prefix = names.get(name)
        if prefix is None:
            prefix = _field(b"\x0a", _text(str(name)))
            if len(names) < _CACHED:
                names[name] = prefix
        size = len(inner)
        pair = prefix + (b"\x12" + _SMALL[size] if size < 0x80 else b"\x12" + _varint(size)) + inner
        size = len(pair)
        encoded = (key + _SMALL[size] if size < 0x80 else key + _varint(size)) + pair
        if cacheable and len(pairs) < _CACHED:
            pairs[(key, name, kind, value)] = encoded
        append(encoded)
    return b"".join(out)


# The protocol's SpanKind counts from UNSPECIFIED = 0.
_KINDS = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}


def _flags(parent: Any) -> bytes:
    # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and IS_REMOTE when it is.
    return _fixed32(0x300 if parent is not None and parent.is_remote else 0x100)


_UNREMOTE = b"\x85\x01" + _fixed32(0x100)


def _span(span: ReadableSpan) -> bytes:
    # Each of the span's properties is a Python call: each is read once.
    context = span.context
    traceId = context.trace_id
    out = [b"\x0a\x10", _halves(traceId >> 64, traceId & 0xFFFFFFFFFFFFFFFF), b"\x12\x08",
           _spanId(context.span_id)]
    state = context.trace_state
    if state:
        out.append(_field(b"\x1a", _text(",".join(f"{k}={v}" for k, v in state.items()))))
    parent = span.parent
    if parent is not None:
        out += (b"\x22\x08", _spanId(parent.span_id))
    name = span.name
    if name:
        out.append(_field(b"\x2a", _text(name)))
    out.append(_KINDS[span.kind])
    start = span.start_time
    if start:
        out += (b"\x39", _fixed64(start))
    end = span.end_time
    if end:
        out += (b"\x41", _fixed64(end))
    out.append(_attributes(b"\x4a", span.attributes))
    dropped = span.dropped_attributes
    if dropped:
        out.append(b"\x50" + _varint(dropped))
    events = span.events
    if events:
        for event in events:
            body = b"\x09" + _fixed64(event.timestamp) if event.timestamp else b""
            if event.name:
                body += _field(b"\x12", _text(event.name))
            body += _attributes(b"\x1a", event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + _varint(event.dropped_attributes)
            out.append(_field(b"\x5a", body))
    dropped = span.dropped_events
    if dropped:
        out.append(b"\x60" + _varint(dropped))
    links = span.links
    if links:
        for link in links:
            linked = link.context
            body = _ids(linked) + _attributes(b"\x22", link.attributes)
            if link.dropped_attributes:
                body += b"\x28" + _varint(link.dropped_attributes)
            out.append(_field(b"\x6a", body + b"\x35" + _flags(linked)))
    dropped = span.dropped_links
    if dropped:
        out.append(b"\x70" + _varint(dropped))
    status = span.status
    if status is not None:
        code = status.status_code.value
        if code or status.description:
            body = _field(b"\x12", _text(status.description)) if status.description else b""
            if code:
                body += b"\x18" + _varint(code)
            out.append(_field(b"\x7a", body))
        else:
            out.append(b"\x7a\x00")
    out.append(_UNREMOTE if parent is None or not parent.is_remote else b"\x85\x01" + _fixed32(0x300))
    return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    body = _field(b"\x0a", _text(scope.name)) if scope.name else b""
    if scope.version:
        body += _field(b"\x12", _text(scope.version))
    return body + _attributes(b"\x1a", scope.attributes)


class _Batch:
    """
    Encoded spans waiting to be sent, grouped by resource (by identity: a
    resource's hash is a JSON dump of its attributes, and every span of a
    provider shares one resource object) and scope, in the order first seen.
    """

    def __init__(self) -> None:
        self.groups: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
        # Resource and scope by identity (hashing a scope is a Python call),
        # each with the list of its group; both are kept, so their ids stay
        # their own.
        self._scopes: dict[tuple[int, int], tuple[Any, list[bytes]]] = {}
        self.count = 0

    def add(self, span: ReadableSpan) -> None:
        resource = span.resource
        scope = span.instrumentation_scope
        found = self._scopes.get((id(resource), id(scope)))
        if found is None:
            group = self.groups.get(id(resource))
            if group is None:
                group = self.groups[id(resource)] = (resource, {})
            found = self._scopes[id(resource), id(scope)] = (scope, group[1].setdefault(scope or None, []))
        found[1].append(encodeSpan(span))
        self.count += 1

    def body(self) -> bytes:
        """
        The C{ExportTraceServiceRequest} holding the spans.
        """
        out = []
        for resource, scopes in self.groups.values():
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


def encodeSpan(span: ReadableSpan) -> bytes:
    """
    A finished span as the C{spans} field of a C{ScopeSpans} message.
    """
    return _field(b"\x12", _span(span))


def encodeSpans(spans: Sequence[ReadableSpan]) -> bytes:
    """
    The serialized C{ExportTraceServiceRequest} for C{spans}.
    """
    batch = _Batch()
    for span in spans:
        batch.add(span)
    return batch.body()


class SpanSender(SpanProcessor):
    """
    A span processor that encodes each sampled span as it ends
    (L{on_end}) and posts them to an OTLP/HTTP endpoint
    (C{application/x-protobuf}) in batches: every C{interval} seconds, or
    at once when C{batchSize} are waiting.

    Spans must end on the reactor's thread, as the gateway's do.  A batch
    the collector refuses or does not take within C{timeout} is dropped
    (and logged, at most once a minute); while C{maxPending} spans wait
    behind a slow collector, newer ones are dropped and counted in
    C{dropped}.  After L{shutdown}, spans are no longer taken.
    """

    def __init__(self, reactor: Any, agent: Any, endpoint: str, headers: Mapping[str, str] | None = None,
                 interval: float = 1.0, batchSize: int = 512, maxPending: int = 8192,
                 timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.agent = agent
        self.url = endpoint.encode("utf-8")
        self.headers = Headers({b"content-type": [b"application/x-protobuf"]})
        for name, value in (headers or {}).items():
            self.headers.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
        self.interval = interval
        self.batchSize = batchSize
        self.maxPending = maxPending
        self.timeout = timeout
        self.dropped = 0
        self.sent = 0
        self._batch = _Batch()
        self._pending = 0
        self._timer: Any = None
        self._sending: set[Deferred[None]] = set()
        self._lastComplaint = float("-inf")
        self._shutdown = False

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown or not span.context.trace_flags.sampled:
            return
        if self._pending >= self.maxPending:
            self.dropped += 1
            return
        self._batch.add(span)
        self._pending += 1
        if self._batch.count >= self.batchSize:
            self.send()
        elif self._timer is None:
            self._timer = self.reactor.callLater(self.interval, self.send)

    def send(self) -> Deferred[None]:
        """
        Post the spans waiting now; fires when the collector has answered
        (or the post failed).
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, _Batch()
        if not batch.count:
            return succeed(None)
        d = Deferred.fromCoroutine(self._post(batch))
        self._sending.add(d)
        d.addBoth(lambda _: self._sending.discard(d))
        return d

    async def _post(self, batch: _Batch) -> None:
        attempt = self.agent.request(b"POST", self.url, self.headers, BytesBody(batch.body()))
        timer = self.reactor.callLater(self.timeout, attempt.cancel)
        try:
            response = await attempt
            await readBody(response)
        except Exception as e:
            self._complain(f"the trace collector at {self.url.decode()} could not be reached: "
                           f"{e.__class__.__name__}", batch.count)
        else:
            if 200 <= response.code < 300:
                self.sent += batch.count
            else:
                self._complain(f"the trace collector at {self.url.decode()} answered {response.code}",
                               batch.count)
        finally:
            if timer.active():
                timer.cancel()
            self._pending -= batch.count

    def _complain(self, problem: str, count: int) -> None:
        self.dropped += count
        now = self.reactor.seconds()
        if now - self._lastComplaint >= 60:
            self._lastComplaint = now
            log.warn("{problem}; {count} spans dropped ({dropped} so far)",
                     problem=problem, count=count, dropped=self.dropped)

    def flush(self) -> Deferred[None]:
        """
        Send what waits and wait for every post in flight.
        """
        self.send()
        return DeferredList(list(self._sending)).addCallback(lambda _: None)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """
        The SDK's synchronous flush, which the reactor cannot wait for:
        start posting what waits (L{flush} gives a Deferred) and say
        whether nothing is still in flight.
        """
        self.send()
        return not self._sending

    def shutdown(self) -> None:
        """
        Take no more spans, and start posting those that wait.
        """
        self.send()
        self._shutdown = True
