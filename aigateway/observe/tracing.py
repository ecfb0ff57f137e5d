"""
The gateway's tracer provider: OpenTelemetry spans made for one purpose,
to be encoded to OTLP as they end (L{aigateway.observe.otlp}).

The SDK's spans guard every field with a lock, check each attribute
against its limits as it is set and run the span processors' hooks at
both ends; for the gateway's two spans per request that was as much CPU
as the rest of the request's tracing.  The spans here are plain records
behind the OpenTelemetry API: sampled by the SDK's samplers, numbered by
its ID generator, carrying its L{Resource}, and handed to a
L{SpanSender} when they end.  Attribute values are kept as the SDK keeps
them; unlike the SDK's spans, these have no limit on how many attributes,
events or links they hold (the gateway's own spans have a few dozen
attributes).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace as api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.status import Status, StatusCode
from twisted.internet.defer import Deferred

from aigateway.observe.otlp import SpanSender

__all__ = ["SendingTracerProvider"]

_SCALARS = (str, bool, int, float)
_LISTS = (list, tuple)
_UNSET = Status(StatusCode.UNSET)


def _cleaned(name: str, value: Any) -> Any:
    """
    C{value} as the SDK keeps an attribute value: sequences as tuples,
    mappings copied, anything else as its text or L{None}.
    """
    return BoundedAttributes(None, {name: value}, immutable=False).get(name)


def _linkable(context: api.SpanContext | None, attributes: Mapping[str, Any] | None) -> bool:
    """
    Whether the SDK keeps a link: to a valid context, or one that at least
    carries attributes or trace state.
    """
    return bool(context and (context.is_valid or attributes or context.trace_state))


class _Span(api.Span):
    """
    A recording span: what L{aigateway.observe.otlp.encodeSpan} reads, and the
    OpenTelemetry API's methods to fill it in.
    """

    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0

    def __init__(self, name: str, context: api.SpanContext, parent: api.SpanContext | None,
                 kind: api.SpanKind, tracer: "_Tracer", attributes: Mapping[str, Any] | None,
                 links: Sequence[api.Link], start_time: int | None) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.resource = tracer.resource
        self.instrumentation_scope = tracer.scope
        self._sender = tracer.sender
        self.events: list[Event] = []
        self.links = [link for link in links if link and _linkable(link.context, link.attributes)]
        self.status = _UNSET
        self.start_time = start_time if start_time is not None else time.time_ns()
        self.end_time: int | None = None
        self.attributes: dict[str, Any] = {}
        if attributes:
            self.set_attributes(attributes)

    def get_span_context(self) -> api.SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is not None:
            return
        kept = self.attributes
        for name, value in attributes.items():
            if value.__class__ in _SCALARS:
                kept[name] = value
            elif value.__class__ in _LISTS and all(item.__class__ in _SCALARS for item in value):
                kept[name] = tuple(value)
            else:
                kept[name] = _cleaned(name, value)

    def set_attribute(self, key: str, value: Any) -> None:
        self.set_attributes({key: value})

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        if self.end_time is None:
            self.events.append(Event(name, attributes, timestamp if timestamp is not None else time.time_ns()))

    def add_link(self, context: api.SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self.end_time is None and _linkable(context, attributes):
            self.links.append(api.Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET changes nothing.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if not isinstance(status, Status):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        kind = type(exception)
        recorded = {
            "exception.type": kind.__qualname__ if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        self._sender.on_end(self)


class _Tracer(api.Tracer):
    def __init__(self, provider: "SendingTracerProvider", scope: InstrumentationScope) -> None:
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.ids = provider.idGenerator
        self.sender = provider.sender
        self.scope = scope

    def start_span(self, name: str, context: Any = None, kind: api.SpanKind = api.SpanKind.INTERNAL,
                   attributes: Mapping[str, Any] | None = None, links: Sequence[api.Link] | None = (),
                   start_time: int | None = None, record_exception: bool = True,
                   set_status_on_exception: bool = True) -> api.Span:
        links = links or ()
        parent: api.SpanContext | None = api.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            traceId = parent.trace_id
            random = parent.trace_flags.random_trace_id
        else:
            parent = None
            traceId = self.ids.generate_trace_id()
            random = self.ids.is_trace_id_random()
        sampling = self.sampler.should_sample(context, traceId, name, kind, attributes, links)
        flags = api.TraceFlags.SAMPLED if sampling.decision.is_sampled() else api.TraceFlags.DEFAULT
        if random:
            flags |= api.TraceFlags.RANDOM_TRACE_ID
        spanContext = api.SpanContext(traceId, self.ids.generate_span_id(), is_remote=False,
                                      trace_flags=api.TraceFlags(flags), trace_state=sampling.trace_state)
        if not sampling.decision.is_recording():
            return api.NonRecordingSpan(spanContext)
        if sampling.attributes:
            attributes = dict(sampling.attributes, **(attributes or {}))
        return _Span(name, spanContext, parent, kind, self, attributes, links, start_time)

    @contextmanager
    def start_as_current_span(self, name: str, context: Any = None,
                              kind: api.SpanKind = api.SpanKind.INTERNAL,
                              attributes: Mapping[str, Any] | None = None,
                              links: Sequence[api.Link] | None = (), start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[api.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with api.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                          set_status_on_exception=set_status_on_exception) as current:
            yield current


class SendingTracerProvider(api.TracerProvider):
    """
    A tracer provider whose spans leave through a L{SpanSender}, flushed
    from the reactor.

    @ivar sampler: decides which traces are recorded and sent (the SDK's
        samplers; by default every trace).
    """

    def __init__(self, sender: SpanSender, resource: Resource | None = None,
                 sampler: Sampler = ALWAYS_ON, idGenerator: IdGenerator | None = None) -> None:
        self.sender = sender
        self.resource = resource if resource is not None else Resource.create()
        self.sampler = sampler
        self.idGenerator = idGenerator if idGenerator is not None else RandomIdGenerator()
        self._tracers: dict[tuple, _Tracer] = {}

    def get_tracer(self, instrumenting_module_name: str, instrumenting_library_version: str | None = None,
                   schema_url: str | None = None, attributes: Mapping[str, Any] | None = None) -> api.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url,
               repr(sorted((attributes or {}).items())))
        tracer = self._tracers.get(key)
        if tracer is None:
            scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version,
                                         schema_url, attributes)
            tracer = self._tracers[key] = _Tracer(self, scope)
        return tracer

    def flush(self) -> Deferred[None]:
        """
        Send every span that waits; fires when the collector has answered.
        """
        return self.sender.flush()
