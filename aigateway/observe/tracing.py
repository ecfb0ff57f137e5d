"""
The gateway's tracer provider: the OpenTelemetry SDK's own
C{TracerProvider}, whose spans leave through a L{SpanSender}, a span
processor that batches them on the reactor and posts them over OTLP/HTTP
through the gateway's HTTP agent.

Span attributes are bounded by the SDK's L{SpanLimits}: with
C{captureContent} whole prompts and answers become attribute values, so
each value is cut at L{MAX_ATTRIBUTE_LENGTH} characters and a span keeps
at most L{MAX_SPAN_ATTRIBUTES} attributes, unless the OpenTelemetry
environment variables (C{OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT},
C{OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT}, C{OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT},
C{OTEL_ATTRIBUTE_COUNT_LIMIT}) say otherwise; C{unset} lifts a limit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from twisted.internet.defer import Deferred

from aigateway.observe.otlp import SpanSender

__all__ = ["MAX_ATTRIBUTE_LENGTH", "MAX_SPAN_ATTRIBUTES", "SendingTracerProvider", "spanLimits"]

MAX_ATTRIBUTE_LENGTH = 8192
MAX_SPAN_ATTRIBUTES = 128


def _limit(environ: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    """
    The first of the variables C{names} that is set, as a limit for
    L{SpanLimits} (C{unset}: none), or C{default}.

    @raise ValueError: when the variable is neither a whole number of zero
        or more nor C{unset}.
    """
    for name in names:
        text = environ.get(name, "").strip()
        if not text:
            continue
        if text.lower() == "unset":
            return SpanLimits.UNSET
        if text.isdigit():
            return int(text)
        raise ValueError(f"{name} must be a whole number of zero or more, or 'unset', not {text!r}")
    return default


def spanLimits(environ: Mapping[str, str] = os.environ) -> SpanLimits:
    """
    The limits on the gateway's span attributes: L{MAX_ATTRIBUTE_LENGTH}
    characters per value and L{MAX_SPAN_ATTRIBUTES} attributes per span,
    unless C{environ} sets the OpenTelemetry variables for them.
    """
    length = _limit(environ, ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
                    MAX_ATTRIBUTE_LENGTH)
    count = _limit(environ, ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
                   MAX_SPAN_ATTRIBUTES)
    return SpanLimits(max_span_attributes=count, max_attribute_length=length, max_span_attribute_length=length)


class SendingTracerProvider(TracerProvider):
    """
    The SDK's tracer provider, its spans sent by a L{SpanSender} from the
    reactor.

    @ivar sender: the span processor that posts the spans.
    """

    def __init__(self, sender: SpanSender, resource: Resource | None = None,
                 sampler: Sampler = ALWAYS_ON, idGenerator: IdGenerator | None = None,
                 limits: SpanLimits | None = None) -> None:
        # The service flushes the sender as it stops, while the reactor
        # still runs; at exit it no longer does.
        super().__init__(sampler=sampler, resource=resource, shutdown_on_exit=False,
                         id_generator=idGenerator, span_limits=limits or spanLimits({}))
        self.sender = sender
        self.add_span_processor(sender)

    def flush(self) -> Deferred[None]:
        """
        Send every span that waits; fires when the collector has answered.
        """
        return self.sender.flush()
