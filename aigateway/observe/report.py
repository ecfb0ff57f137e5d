"""
What every request did, told three ways: OpenTelemetry spans (one SERVER
span per request, one CLIENT span per upstream call, with the GenAI
semantic conventions), Prometheus metrics, and one access log event.

An L{Exchange} is the request's record.  The route table opens it, each
resource of the chain adds what it learns (the route, who the caller is,
why the gateway refused, what the provider answered), and L{Telemetry}
reports it once the request is over.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, globalLogPublisher
from twisted.web.iweb import IRequest

from aigateway.config import TracingConfig
from aigateway.observe.logformat import Preformatter
from aigateway.observe.openinference import llmAttributes

__all__ = ["Exchange", "InFlight", "Metrics", "Telemetry", "buildTracerProvider"]

# The access log's events carry their text: one line per request is
# formatted once, in C, whatever observes it.
accessLog = Logger(namespace="aigateway.access", observer=Preformatter(globalLogPublisher))
log = Logger()

# Bucket boundaries from the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
FIRST_CHUNK_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                       2.5, 5.0, 7.5, 10.0)

_ERROR_TYPES = {
    400: "invalid_request",
    401: "authentication_failed",
    403: "authorization_failed",
    404: "route_not_found",
    413: "request_too_large",
    429: "rate_limited",
    502: "upstream_error",
    503: "backend_unavailable",
    504: "timeout",
}

@attrs.define
class Exchange:
    """
    The record of one request, filled in as it passes the chain.

    @ivar reason: why the gateway refused or failed the request, in words.
    @ivar errorCode: the short code of that reason.
    @ivar api: the API the client speaks (C{openai}, or C{anthropic} at the
        C{/v1/messages} door), which its error answers are written in.
    """

    started: float
    method: str
    path: str
    route: str | None = None
    api: str = "openai"
    status: int = 0
    reason: str | None = None
    errorCode: str | None = None
    authFailure: str | None = None
    subject: str | None = None
    provider: str | None = None
    operation: str | None = None
    requestModel: str | None = None
    stream: bool = False
    parameters: dict[str, Any] = attrs.Factory(dict)
    inputMessages: Any = None
    inputDocument: Any = None
    upstreamStarted: float | None = None
    upstreamStatus: int | None = None
    upstreamError: str | None = None
    firstChunk: float | None = None
    serverAddress: str | None = None
    serverPort: int | None = None
    answer: Any = None
    target: str | None = None
    attempts: list[tuple[str, str]] = attrs.Factory(list)
    bytesIn: int = 0
    bytesOut: int = 0
    serverSpan: Any = None
    clientSpan: Any = None
    clientTarget: Any = None
    ended: float = 0.0
    endedNs: int | None = None
    serverAttributes: dict[str, Any] | None = None
    completed: bool = True


class Metrics:
    """
    The gateway's Prometheus metrics, in a registry of their own that
    outlives configuration reloads.

    Model names come from callers, so at most C{maxModels} distinct ones
    become label values; the rest are counted as C{other}.

    @ivar multiprocess: whether the values are written where a supervisor
        sums those of its workers (prometheus-client's multiprocess mode,
        on in a process started with C{PROMETHEUS_MULTIPROC_DIR} set).
    """

    def __init__(self, registry: CollectorRegistry | None = None, maxModels: int = 100,
                 multiprocess: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess
        self.maxModels = maxModels
        self._models: set[str] = set()
        self._children: dict[tuple, Any] = {}
        self._calls: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}
        r = self.registry
        genai = ["gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model", "route"]
        self.tokens = Histogram(
            "gen_ai_client_token_usage", "Tokens used per operation, by token type.",
            ["gen_ai_token_type"] + genai, buckets=TOKEN_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "Duration of GenAI operations.",
            genai + ["error_type"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.firstChunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the upstream request to the first chunk of its answer.",
            genai, buckets=FIRST_CHUNK_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "aigateway_requests", "Requests by route and status.", ["route", "status"], registry=r
        )
        self.authFailures = Counter(
            "aigateway_auth_failures", "Authentication and authorization failures by reason.",
            ["route", "reason"], registry=r,
        )
        self.upstreamErrors = Counter(
            "aigateway_upstream_errors", "Upstream failures by kind.", ["route", "kind"], registry=r
        )
        self.attempts = Counter(
            "aigateway_upstream_attempts", "Upstream attempts by route, backend and outcome.",
            ["route", "backend", "outcome"], registry=r,
        )
        self.ejections = Counter(
            "aigateway_upstream_ejections", "Targets ejected for failing, by route and backend.",
            ["route", "backend"], registry=r,
        )
        self.inFlight = Gauge(
            "aigateway_requests_in_flight", "Requests being served.", registry=r,
            multiprocess_mode="livesum",
        )
        self.reloads = Counter(
            "aigateway_config_reloads", "Configuration reloads by result.", ["result"], registry=r
        )
        self.stateFallbacks = Counter(
            "aigateway_state_fallbacks",
            "Rate-limit decisions and charges the shared state (Redis) could not make, by reason "
            "(timeout, error, unavailable); decisions then follow state.onError.",
            ["reason"], registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """
        The child of C{metric} for these label values, looked up once:
        prometheus-client's own C{labels()} costs several microseconds.
        """
        key = (id(metric),) + labels
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def callChildren(self, labels: tuple[str, ...]) -> tuple[Any, Any, Any]:
        """
        The children for these labels (provider, request model, response
        model, route) of the metrics every upstream call reports: time to
        first chunk, input tokens and output tokens, looked up at once.
        """
        found = self._calls.get(labels)
        if found is None:
            found = self._calls[labels] = (
                self.child(self.firstChunk, *labels),
                self.child(self.tokens, "input", *labels),
                self.child(self.tokens, "output", *labels),
            )
        return found

    def model(self, name: str | None) -> str:
        """
        A bounded label value for a model name.
        """
        if not name:
            return ""
        if name in self._models:
            return name
        if len(self._models) < self.maxModels:
            self._models.add(name)
            return name
        return "other"


class InFlight:
    """
    How many requests are being served, across configuration reloads, and
    a way to wait until none is.  The metrics' in-flight gauge reads the
    count when it is scraped.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.count = 0
        self._waiting: list[Deferred[None]] = []
        # Read when scraped; a worker's value is written where its
        # supervisor reads it, at each change.
        self._gauge = metrics.inFlight if metrics.multiprocess else None
        if self._gauge is None:
            metrics.inFlight.set_function(lambda: self.count)

    def started(self) -> None:
        self.count += 1
        if self._gauge is not None:
            self._gauge.inc()

    def finished(self) -> None:
        self.count -= 1
        if self._gauge is not None:
            self._gauge.dec()
        if not self.count:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no request is in flight.
        """
        if not self.count:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d


def tracesEndpoint(config: TracingConfig, environ: Mapping[str, str]) -> str | None:
    """
    Where spans go: the configuration's C{tracing.otlp.endpoint}, else
    C{OTEL_EXPORTER_OTLP_TRACES_ENDPOINT}, else C{/v1/traces} under
    C{OTEL_EXPORTER_OTLP_ENDPOINT}; L{None}: nowhere, no span is made.
    """
    endpoint = config.otlpEndpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return endpoint


def buildTracerProvider(config: TracingConfig, reactor: Any, agent: Any,
                        environ: Mapping[str, str] = os.environ) -> Any:
    """
    The OpenTelemetry SDK's tracer provider, its spans posted over
    OTLP/HTTP in batches through C{agent}, from the reactor
    (L{aigateway.observe.otlp.SpanSender}), or L{None} when no endpoint is
    configured, in which case no span is ever made.  Without headers in
    the configuration, those of C{OTEL_EXPORTER_OTLP_TRACES_HEADERS} or
    C{OTEL_EXPORTER_OTLP_HEADERS} are sent.  Span attributes are bounded
    as L{aigateway.observe.tracing.spanLimits} says.
    """
    endpoint = tracesEndpoint(config, environ)
    if endpoint is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
    from opentelemetry.util.re import parse_env_headers

    from aigateway.observe.otlp import SpanSender
    from aigateway.observe.tracing import SendingTracerProvider, spanLimits

    headers = dict(config.otlpHeaders) or parse_env_headers(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
        liberal=True,
    )
    return SendingTracerProvider(
        SpanSender(reactor, agent, endpoint, headers),
        resource=Resource.create({"service.name": config.serviceName}),
        # A ratio of 1 samples every trace, as ALWAYS_ON does for less.
        sampler=ParentBased(ALWAYS_ON if config.sampleRatio >= 1 else TraceIdRatioBased(config.sampleRatio)),
        limits=spanLimits(environ),
    )


class Telemetry:
    """
    Opens an L{Exchange} for each request and reports it when it is over.

    @ivar tracer: the OpenTelemetry tracer, or L{None} when tracing is off.
    @ivar reportDelay: when set, requests are reported this many seconds
        after they end, or at the next L{flushReports} (which the proxy
        calls once a request has gone upstream), all those due at once,
        rather than as each ends: the report then runs while the gateway
        waits on the network instead of delaying the next request on the
        connection.  The times reported are those of the end.
    """

    def __init__(
        self,
        config: TracingConfig,
        metrics: Metrics,
        clock: IReactorTime,
        tracerProvider: Any = None,
        inFlight: InFlight | None = None,
        accessLog: bool = True,
        reportDelay: float | None = None,
    ) -> None:
        self.config = config
        self.accessLog = accessLog
        self.reportDelay = reportDelay
        self._reports: list[Exchange] = []
        self._reportTimer: Any = None
        self.metrics = metrics
        self.clock = clock
        self._genai = "genai" in config.conventions
        self._openinference = "openinference" in config.conventions
        self.inFlight = inFlight if inFlight is not None else InFlight(metrics)
        self.tracer = tracerProvider.get_tracer("aigateway") if tracerProvider is not None else None
        if self.tracer is not None:
            from opentelemetry.trace import SpanKind, set_span_in_context
            from opentelemetry.trace.status import Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            self._propagator = TraceContextTextMapPropagator()
            self._kinds = SpanKind
            self._inContext = set_span_in_context
            self._status = Status
            self._error = StatusCode.ERROR

    def begin(self, request: IRequest) -> Exchange:
        """
        Open the record of a request that has just arrived.
        """
        exchange = Exchange(
            started=self.clock.seconds(),
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
        )
        self.inFlight.started()
        if self.tracer is not None:
            carrier = {}
            for name in (b"traceparent", b"tracestate"):
                value = request.getHeader(name)
                if value is not None:
                    carrier[name.decode()] = value.decode("latin-1")
            parent = self._propagator.extract(carrier) if carrier else None
            address = request.getClientAddress()
            attributes: dict[str, Any] = {
                "http.request.method": exchange.method,
                "url.path": exchange.path,
                "client.address": getattr(address, "host", ""),
            }
            agent = request.getHeader(b"user-agent")
            if agent is not None:
                attributes["user_agent.original"] = agent.decode("latin-1")
            # Attributes are set in the report, off the request's path.
            exchange.serverAttributes = attributes
            exchange.serverSpan = self.tracer.start_span(exchange.method, context=parent, kind=self._kinds.SERVER)
        return exchange

    def upstreamHeaders(self, exchange: Exchange) -> list[tuple[bytes, bytes]]:
        """
        Open the CLIENT span of the upstream call and return the trace
        context headers the upstream request carries.
        """
        exchange.upstreamStarted = self.clock.seconds()
        if self.tracer is None or exchange.serverSpan is None:
            return []
        previous = exchange.clientSpan
        if previous is not None:
            # An earlier attempt of this request failed: its span ends
            # with where it went and why (the attributes are written only
            # now, as an attempt that answers gets them all at the end).
            provider, address, port = exchange.clientTarget
            attributes: dict[str, Any] = {
                "server.address": address or "",
                "error.type": exchange.attempts[-1][1] if exchange.attempts else "failed"}
            if self._genai:
                attributes["gen_ai.provider.name"] = provider or ""
            if port is not None:
                attributes["server.port"] = port
            previous.set_attributes(attributes)
            previous.set_status(self._status(self._error))
            previous.end()
        name = f"{exchange.operation} {exchange.requestModel}" if exchange.operation else exchange.method
        exchange.clientTarget = (exchange.provider, exchange.serverAddress, exchange.serverPort)
        exchange.clientSpan = span = self.tracer.start_span(
            name, context=self._inContext(exchange.serverSpan), kind=self._kinds.CLIENT
        )
        context = span.get_span_context()
        headers = [(b"traceparent", b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags))]
        if context.trace_state:
            headers.append((b"tracestate", context.trace_state.to_header().encode("latin-1")))
        return headers

    def _clientAttributes(self, exchange: Exchange, answer: Any) -> dict[str, Any]:
        """
        The CLIENT span's attributes: the call, then what the answer said,
        in each convention the configuration asks for.
        """
        config = self.config
        legacy = config.legacyAttributes
        attributes: dict[str, Any] = {"server.address": exchange.serverAddress or ""}
        if exchange.serverPort is not None:
            attributes["server.port"] = exchange.serverPort
        # The prompt is one JSON text, in each convention that records it.
        prompt = (json.dumps(exchange.inputMessages, separators=(",", ":"))
                  if config.captureContent and exchange.inputMessages is not None
                  and (self._genai or legacy) else None)
        if self._genai:
            attributes.update(self._genaiAttributes(exchange, answer, prompt))
        if legacy:
            if exchange.requestModel:
                attributes["llm.request.model"] = exchange.requestModel
            if prompt is not None:
                attributes["gen_ai.prompt"] = prompt
            if answer is not None:
                if answer.responseModel:
                    attributes["llm.response.model"] = answer.responseModel
                if answer.inputTokens is not None:
                    attributes["llm.request.tokens"] = answer.inputTokens
                if answer.outputTokens is not None:
                    attributes["llm.response.tokens"] = answer.outputTokens
                if config.captureContent and answer.text:
                    attributes["gen_ai.completion"] = "".join(answer.text)
        if self._openinference:
            attributes.update(llmAttributes(exchange, answer, config.captureContent))
        if exchange.upstreamStatus is not None:
            attributes["http.response.status_code"] = exchange.upstreamStatus
        if exchange.upstreamError is not None or (exchange.upstreamStatus or 0) >= 400:
            attributes["error.type"] = exchange.upstreamError or str(exchange.upstreamStatus)
        return attributes

    def _genaiAttributes(self, exchange: Exchange, answer: Any, prompt: str | None) -> dict[str, Any]:
        """
        The OpenTelemetry GenAI convention's attributes of a CLIENT span.

        @param prompt: the input messages as JSON, when they are captured.
        """
        attributes: dict[str, Any] = {"gen_ai.provider.name": exchange.provider or ""}
        if exchange.operation:
            attributes["gen_ai.operation.name"] = exchange.operation
        if exchange.requestModel:
            attributes["gen_ai.request.model"] = exchange.requestModel
        attributes.update(exchange.parameters)
        if prompt is not None:
            attributes["gen_ai.input.messages"] = prompt
        if answer is not None:
            if answer.responseModel:
                attributes["gen_ai.response.model"] = answer.responseModel
            if answer.responseId:
                attributes["gen_ai.response.id"] = answer.responseId
            if answer.finishReasons:
                attributes["gen_ai.response.finish_reasons"] = answer.finishReasons
            if answer.inputTokens is not None:
                attributes["gen_ai.usage.input_tokens"] = answer.inputTokens
            if answer.outputTokens is not None:
                attributes["gen_ai.usage.output_tokens"] = answer.outputTokens
            if self.config.captureContent and answer.text:
                attributes["gen_ai.output.messages"] = json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "".join(answer.text)}]}],
                    separators=(",", ":"),
                )
        if exchange.firstChunk is not None and exchange.upstreamStarted is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = exchange.firstChunk - exchange.upstreamStarted
        return attributes

    def finish(self, exchange: Exchange, status: int, completed: bool) -> None:
        """
        Note that a request is over, and report it (now, or after
        C{reportDelay}).

        @param status: the status the client was sent.
        @param completed: whether the response was delivered whole.
        """
        self.inFlight.finished()
        exchange.status = status
        exchange.completed = completed
        exchange.ended = self.clock.seconds()
        if self.tracer is not None:
            exchange.endedNs = time.time_ns()
        if self.reportDelay is None:
            self._report(exchange)
            return
        self._reports.append(exchange)
        if self._reportTimer is None:
            self._reportTimer = self.clock.callLater(self.reportDelay, self.flushReports)

    def flushReports(self) -> None:
        """
        Report every request that is over and not reported yet.
        """
        if self._reportTimer is not None and self._reportTimer.active():
            self._reportTimer.cancel()
        self._reportTimer = None
        reports, self._reports = self._reports, []
        for exchange in reports:
            try:
                self._report(exchange)
            except Exception:
                log.failure("reporting {path}", path=exchange.path)

    def _report(self, exchange: Exchange) -> None:
        now = exchange.ended
        status = exchange.status
        completed = exchange.completed
        answer = exchange.answer
        errorType = exchange.errorCode or _ERROR_TYPES.get(status) if status >= 400 else None
        if not completed and errorType is None:
            errorType = exchange.upstreamError or "client_disconnected"
        route = exchange.route or ""
        metrics = self.metrics
        metrics.child(metrics.requests, route, str(status)).inc()
        if exchange.authFailure is not None:
            metrics.child(metrics.authFailures, route, exchange.authFailure).inc()
        if exchange.upstreamError is not None:
            metrics.child(metrics.upstreamErrors, route, exchange.upstreamError).inc()
        for backend, outcome in exchange.attempts:
            metrics.child(metrics.attempts, route, backend, outcome).inc()
        responseModel = answer.responseModel if answer is not None else None
        inputTokens = answer.inputTokens if answer is not None else None
        outputTokens = answer.outputTokens if answer is not None else None
        if exchange.upstreamStarted is not None:
            labels = (exchange.provider or "", metrics.model(exchange.requestModel),
                      metrics.model(responseModel), route)
            metrics.child(metrics.duration, *labels, errorType or "").observe(
                now - exchange.upstreamStarted
            )
            firstChunk, inputCount, outputCount = metrics.callChildren(labels)
            if exchange.firstChunk is not None:
                firstChunk.observe(exchange.firstChunk - exchange.upstreamStarted)
            if inputTokens is not None:
                inputCount.observe(inputTokens)
            if outputTokens is not None:
                outputCount.observe(outputTokens)
        traceId = None
        if exchange.serverSpan is not None:
            traceId = self._endSpans(exchange, status, errorType, answer)
        if self.accessLog:
            self._logAccess(exchange, status, now, responseModel, inputTokens, outputTokens, traceId)

    def _logAccess(self, exchange: Exchange, status: int, now: float, responseModel: str | None,
                   inputTokens: int | None, outputTokens: int | None, traceId: str | None) -> None:
        """
        One access log event: the text for a log file, every field for a
        JSON one.
        """
        accessLog.info(
            "{method} {path} {route} -> {status} in {durationMs:.1f} ms"
            " model={requestModel} tokens={inputTokens}/{outputTokens} sub={sub}"
            " backend={backend} attempts={attempts}",
            time=exchange.started,
            route=exchange.route or "-",
            backend=exchange.target or "-",
            attempts=len(exchange.attempts),
            method=exchange.method,
            path=exchange.path,
            status=status,
            durationMs=(now - exchange.started) * 1000.0,
            ttfbMs=(exchange.firstChunk - exchange.started) * 1000.0
            if exchange.firstChunk is not None else None,
            upstreamStatus=exchange.upstreamStatus,
            requestModel=exchange.requestModel or "-",
            responseModel=responseModel,
            inputTokens=inputTokens if inputTokens is not None else "-",
            outputTokens=outputTokens if outputTokens is not None else "-",
            sub=exchange.subject or "-",
            bytesIn=exchange.bytesIn,
            bytesOut=exchange.bytesOut,
            traceId=traceId,
            error=exchange.reason,
        )

    def _endSpans(self, exchange: Exchange, status: int, errorType: str | None, answer: Any) -> str:
        client = exchange.clientSpan
        attributes: dict[str, Any] = {}
        if client is not None:
            attributes = self._clientAttributes(exchange, answer)
            client.set_attributes(attributes)
            if "error.type" in attributes:
                client.set_status(self._status(self._error))
            client.end(exchange.endedNs)
        server = exchange.serverSpan
        server.update_name(f"{exchange.method} {exchange.route}" if exchange.route else exchange.method)
        called = attributes
        attributes = exchange.serverAttributes or {}
        attributes["http.response.status_code"] = status
        if self.config.legacyAttributes:
            attributes["http.status"] = status
        if exchange.route:
            attributes["http.route"] = exchange.route
        if exchange.subject:
            attributes["enduser.id"] = exchange.subject
        if errorType is not None:
            attributes["error.type"] = errorType
        if exchange.reason is not None:
            reason = exchange.reason
            if self.config.legacyAttributes and status == 403 and not reason.startswith("authorization failed"):
                # The older gateways' traces say "authorization failed"
                # of every 403 (a JWT refusal with failureStatus 403).
                reason = f"authorization failed: {reason}"
            attributes["error"] = reason
        if self._openinference:
            attributes["openinference.span.kind"] = "CHAIN"
            # Phoenix lists a trace by its root's input and output: the
            # chain's are those of the call it made.
            for name in ("input.value", "input.mime_type", "output.value", "output.mime_type"):
                if name in called:
                    attributes[name] = called[name]
        server.set_attributes(attributes)
        if status >= 500 or errorType is not None and status >= 400:
            server.set_status(self._status(self._error, exchange.reason))
        server.end(exchange.endedNs)
        return format(server.get_span_context().trace_id, "032x")
