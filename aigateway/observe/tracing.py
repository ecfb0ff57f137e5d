"""
The gateway's tracer provider: the OpenTelemetry SDK's own
C{TracerProvider}, whose spans leave through a L{SpanSender}, a span
processor that batches them on the reactor and posts them over OTLP/HTTP
through the gateway's HTTP agent.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from twisted.internet.defer import Deferred

from aigateway.observe.otlp import SpanSender

__all__ = ["SendingTracerProvider"]

class SendingTracerProvider(TracerProvider):
    """
    The SDK's tracer provider, its spans sent by a L{SpanSender} from the
    reactor.

    @ivar sender: the span processor that posts the spans.
    """

    def __init__(self, sender: SpanSender, resource: Resource | None = None,
                 sampler: Sampler = ALWAYS_ON, idGenerator: IdGenerator | None = None) -> None:
        # The service flushes the sender as it stops, while the reactor
        # still runs; at exit it no longer does.
        super().__init__(sampler=sampler, resource=resource, shutdown_on_exit=False,
                         id_generator=idGenerator)
        self.sender = sender
        self.add_span_processor(sender)

    def flush(self) -> Deferred[None]:
        """
        Send every span that waits; fires when the collector has answered.
        """
        return self.sender.flush()
