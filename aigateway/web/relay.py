"""
The streaming relay: the last resource of a route's chain.

A client request becomes one upstream request through a shared
L{twisted.web.iweb.IAgent}; the upstream body is handed to the client chunk
by chunk as it arrives, with the upstream connection registered as the
client's push producer, so a slow client pauses the upstream read and a
client that goes away stops it.  Nothing is buffered on the way back.

Failures before the response starts are answered in the OpenAI error
envelope (502 unreachable or broken, 504 timeout), and so is an upstream
answer that breaks before a byte of it reached the client; after that, a
stream is ended with an SSE C{error} event and a closed connection
without the final chunk, never
with a clean end that would look like success.
"""

from __future__ import annotations

import math
import random as _random
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TCPTimedOutError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from aigateway.config import Backend, Route
from aigateway.http.client import BytesBody, ProtocolError
from aigateway.llm.credentials import Credential
from aigateway.llm.openai import UsageChunkFilter
from aigateway.llm.provider import (
    AnthropicWriter,
    ClientStream,
    HubStream,
    Provider,
    ProviderError,
    UpstreamCall,
)
from aigateway.llm.translate import StreamError, readJSON
from aigateway.llm.usage import AnswerObserver
from aigateway.observe.record import IExchange
from aigateway.observe.report import Exchange, Telemetry
from aigateway.web.balance import Health, Planner
from aigateway.web.errors import errorBody, finishWith, refuse, setStatus
from aigateway.web.guard import Identity
from aigateway.web.policy import IAdmission

__all__ = ["RelayResource", "Upstream", "describeUpstreamFailure", "downstreamHeaders", "upstreamHeaders",
           "upstreamHost"]

log = Logger()

# RFC 9110 7.6.1 hop-by-hop fields, and the older ones proxies still see.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)
# Request fields the gateway sets itself rather than forwarding: the
# caller's credentials in any provider's field among them.
_REPLACED_UPSTREAM = frozenset(
    [b"host", b"content-length", b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key",
     b"accept-encoding", b"x-forwarded-proto", b"x-forwarded-host", b"x-aigateway-retries"]
)
# A translated answer that is not a stream is read whole, up to this size.
MAX_TRANSLATED_BODY = 16 * 1024 * 1024
# Upstream fields a translated answer does not pass on: it has its own
# type and length.
_TRANSLATED_DROP = frozenset([b"content-type", b"content-length", b"content-encoding"])


_DROP_UPSTREAM = HOP_BY_HOP | _REPLACED_UPSTREAM


_NONE: frozenset[bytes] = frozenset()


def _named(headers: Headers) -> frozenset[bytes]:
    """
    The fields that C{Connection} names: hop-by-hop for this message only.
    """
    values = headers.getRawHeaders(b"connection")
    if not values:
        return _NONE
    named = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                named.add(token)
    return frozenset(named)


def upstreamHeaders(
    incoming: Headers,
    credential: Credential,
    clientAddress: str,
    secure: bool,
    withheld: frozenset[bytes] = frozenset(),
) -> Headers:
    """
    The headers to send upstream for a client request.

    Hop-by-hop fields (and those named in C{Connection}) are dropped, the
    caller's C{Authorization} is replaced by the backend's credential (unless
    the backend passes the caller's through), C{Accept-Encoding} is dropped
    so the gateway can read usage from the answer, and the C{X-Forwarded-*}
    fields record where the request came from.

    @param withheld: more request fields the provider must not see (where
        the caller's token was, and the fields claims are written to).
    """
    named = _named(incoming)
    # Most requests add nothing to the fixed set: no new set for them.
    drop = _DROP_UPSTREAM | named | withheld if named or withheld else _DROP_UPSTREAM
    out = Headers()
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == b"x-forwarded-for":
            continue
        out.setRawHeaders(name, values)
    if credential.passthrough:
        for name in {b"authorization", credential.name}:
            callers = incoming.getRawHeaders(name) if name not in withheld else None
            if callers:
                out.setRawHeaders(name, callers[-1:])
    elif credential.header is not None:
        out.setRawHeaders(credential.name, [credential.header])
    forwarded = b", ".join(incoming.getRawHeaders(b"x-forwarded-for", ()))
    client = clientAddress.encode("ascii", "replace")
    out.setRawHeaders(b"x-forwarded-for", [forwarded + b", " + client if forwarded else client])
    out.setRawHeaders(b"x-forwarded-proto", [b"https" if secure else b"http"])
    host = incoming.getRawHeaders(b"host")
    if host:
        out.setRawHeaders(b"x-forwarded-host", host[:1])
    return out


def downstreamHeaders(upstream: Headers) -> list[tuple[bytes, list[bytes]]]:
    """
    The upstream response's headers that may be passed to the client.
    """
    named = _named(upstream)
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [
        (name, values)
        for name, values in upstream.getAllRawHeaders()
        if name.lower() not in drop
    ]


def _streamError(message: str) -> bytes:
    return b"event: error\ndata: " + errorBody(502, message, "upstream_stream_error") + b"\n\n"


def _malformed(failure: Failure) -> str | None:
    """
    How the upstream broke HTTP/1.1, when that is why C{failure} came
    (in words that never repeat what the upstream sent).
    """
    if isinstance(failure.value, ResponseFailed):
        for reason in failure.value.reasons:
            if isinstance(reason.value, ProtocolError):
                return str(reason.value)
    return None


_DOOR = AnthropicWriter()
_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])


def _retryAfter(headers: Headers) -> float | None:
    """
    The seconds an answer's C{Retry-After} asks to wait (its date form is
    not read), or L{None}.
    """
    values = headers.getRawHeaders(b"retry-after")
    if not values:
        return None
    try:
        seconds = float(values[0])
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


class _Discard(Protocol):
    """
    Reads and drops the body of an answer that is not relayed (one a retry
    replaces), so its connection can serve again.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


def upstreamHost(url: bytes) -> str:
    """
    The host (and port, when the URL gives one) of an upstream URL: what
    an error may name, never a user, password, path or query.
    """
    try:
        parts = urlsplit(url.decode("ascii", "replace"))
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def _tlsProblem(error: BaseException) -> str | None:
    """
    What went wrong in TLS, when C{error} is a TLS error: OpenSSL's own
    reasons (C{certificate verify failed}), or a certificate for another
    host.
    """
    kind = type(error)
    if kind.__module__.startswith("service_identity"):
        return "the certificate does not match the host name"
    if kind.__module__.startswith("OpenSSL"):
        reasons = [str(item[-1]) for item in (error.args[0] if error.args else ())
                   if isinstance(item, tuple) and item and item[-1]]
        return ", ".join(reasons) or "handshake failed"
    return None


def describeUpstreamFailure(failure: Failure, host: str) -> tuple[str, str, str]:
    """
    Why an upstream request failed before an answer came, in words a user
    can act on, naming the upstream's host and nothing else of the URL.

    @return: the kind counted in the metrics (C{unreachable}, C{reset},
        C{failed}), the error code, and the message.
    """
    cannot = f"cannot connect to the upstream {host}"
    if failure.check(DNSLookupError):
        return "unreachable", "upstream_unreachable", f"{cannot}: name not resolved"
    if failure.check(ConnectionRefusedError):
        return "unreachable", "upstream_unreachable", f"{cannot}: connection refused"
    if failure.check(ConnectTimeoutError, TCPTimedOutError):
        return "unreachable", "upstream_unreachable", f"{cannot}: timed out connecting"
    if failure.check(ConnectError):
        words = (type(failure.value).__doc__ or "").strip().splitlines()[0].rstrip(".")
        return "unreachable", "upstream_unreachable", f"{cannot}: {words[:1].lower() + words[1:]}"
    reasons = failure.value.reasons if isinstance(failure.value, ResponseFailed) else [failure]
    for reason in reasons:
        tls = _tlsProblem(reason.value)
        if tls is not None:
            return "unreachable", "upstream_unreachable", f"{cannot}: TLS failure ({tls})"
    for reason in reasons:
        if reason.check(ConnectionDone):
            return "reset", "upstream_reset", f"the upstream {host} closed the connection before answering"
        if reason.check(ConnectionLost):
            return "reset", "upstream_reset", f"the upstream {host} reset the connection before answering"
    if failure.check(ResponseFailed, CancelledError):
        return "reset", "upstream_reset", f"the upstream {host} closed the connection before answering"
    return "failed", "upstream_error", f"the request to the upstream {host} failed"


class _BodyRelay(Protocol):
    """
    Receives the upstream body and writes it to the client as it comes.
    """

    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.bodyStarted(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay.bodyData(data)

    def connectionLost(self, reason: Failure) -> None:
        self.relay.bodyEnded(reason)


class _Relay:
    """
    One upstream exchange on behalf of one client request.

    The answer reaches the client in one of three ways: passed through as it
    comes (the client speaks the provider's API), translated event by event
    (a stream in another API), or read whole and translated (a plain answer
    or an error in another API).

    @ivar done: the client's side is over (finished, closed or gone); once
        set, nothing more is written to the client.
    """

    def __init__(
        self,
        resource: "RelayResource",
        request: Request,
        exchange: Exchange,
        admission: Any,
    ) -> None:
        self.resource = resource
        self.admission = admission
        self.charge = admission.charge
        self.request = request
        self.exchange = exchange
        self.agent = resource.agent
        self.clock = resource.clock
        route = resource.route
        self.timeout = route.timeout
        self.timeouts = route.timeouts
        self.retries = route.retries
        self.plan = admission.plan
        self.observer: AnswerObserver | None = None
        self.call: UpstreamCall = admission.call
        self.upstream: Upstream = self.plan[0][0]
        self.health: Health = self.plan[0][1]
        self.tries = 0
        self.done = False
        self.stream = False
        self._pending: Optional[Deferred[IResponse]] = None
        self._bodyTransport: Optional[IPushProducer] = None
        # One timer watches the request: it fires at the nearest of the
        # whole request's end and the end of the phase it is in ("head":
        # waiting for the answer's head, "body": between pieces of the
        # body, "wait": before the next attempt).
        self._watch: Optional[IDelayedCall] = None
        self._phase = "head"
        self._deadlineAt = float("inf")
        # When the body last moved: the watch, when it fires, looks here
        # before it calls the upstream idle, rather than being moved on
        # every piece.
        self._lastRead = 0.0
        self._attemptTimedOut = False
        self._relayedFields: list[bytes] = []
        # Set by the head of the answer, for the ways other than passing on.
        self._filter: UsageChunkFilter | None = None
        self._hub: HubStream | None = None
        self._out: ClientStream | None = None
        self._whole: list[bytes] | None = None
        self._wholeSize = 0
        self._response: IResponse | None = None
        self._url = b""

    def start(self) -> None:
        self.request.notifyFinish().addBoth(self._clientDone)
        if self.timeout is not None:
            self._deadlineAt = self.clock.seconds() + self.timeout
        self._attempt()

    def _arm(self, phase: str, seconds: float) -> None:
        """
        Watch the request for the end of C{phase}, C{seconds} from now (or
        for the whole request's end, when that comes first).
        """
        self._phase = phase
        now = self.clock.seconds()
        delay = min(now + seconds, self._deadlineAt) - now
        watch = self._watch
        if watch is not None and watch.active():
            watch.reset(delay)
        else:
            self._watch = self.clock.callLater(delay, self._watchFired)

    def _bodyWatch(self) -> None:
        """
        The head came: from now on the watch is for the body's idle time.
        It is moved only when it would fire too late for that.
        """
        self._phase = "body"
        now = self._lastRead = self.clock.seconds()
        watch = self._watch
        if watch is None or not watch.active() or watch.getTime() > now + self.timeouts.idle:
            self._arm("body", self.timeouts.idle)

    def _disarm(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and watch.active():
            watch.cancel()

    def _attempt(self) -> None:
        """
        Send the request to the next target of the plan.
        """
        if self.done:
            return
        upstream, self.health = self.plan[self.tries]
        self.tries += 1
        if self.tries > 1:
            try:
                self.call = upstream.provider.prepare(*self.admission.reading)
            except ProviderError as e:
                self._record(upstream, "refused")
                if self.tries < len(self.plan):
                    self._attempt()
                else:
                    self._fail(e.status, e.message, e.code or "upstream_error")
                return
        self.upstream = upstream
        call = self.call
        url, headers, self.observer = self.resource.prepareAttempt(
            upstream, call, self.request, self.admission.identity, self.exchange)
        self._url = url
        body = BytesBody(call.body) if call.body or call.method in (b"POST", b"PUT", b"PATCH") else None
        self._attemptTimedOut = False
        self._arm("head", self.timeouts.firstByte)
        self._pending = pending = self.agent.request(call.method, url, headers, body)
        pending.addCallbacks(self._gotResponse, self._failed)
        pending.addErrback(self._bug)

    def _record(self, upstream: "Upstream", outcome: str) -> None:
        self.exchange.attempts.append((upstream.backend.name, outcome))

    def _watchFired(self) -> None:
        """
        The whole request's time is up; or no head came within
        C{timeouts.firstByte}; or, once the head came, no more of the body
        within C{timeouts.idle}; or the wait before the next attempt is
        over.
        """
        self._watch = None
        if self.clock.seconds() >= self._deadlineAt:
            self._timedOut()
        elif self._phase == "wait":
            self._attempt()
        elif self._pending is not None:
            self._attemptTimedOut = True
            self._pending.cancel()
        else:
            quiet = self.clock.seconds() - self._lastRead
            if quiet < self.timeouts.idle:
                self._arm("body", self.timeouts.idle - quiet)
                return
            self.exchange.upstreamError = "timeout"
            self._timeOut(f"the upstream sent nothing for {self.timeouts.idle:g}s")

    def _retry(self, condition: str, retryAfter: float | None = None) -> bool:
        """
        Try the next target of the plan, if the route's retries allow it
        for C{condition} and this request.

        @return: whether another attempt is on its way.
        """
        if self.health.failed(self.resource.route.outlier, self.clock.seconds()):
            metrics = self.resource.telemetry.metrics
            metrics.child(metrics.ejections, self.resource.route.name, self.upstream.backend.name).inc()
        if self.done or self.tries >= len(self.plan) or condition not in self.retries.on:
            return False
        idempotent = self.call.method in _IDEMPOTENT
        if not idempotent and condition in ("5xx", "timeout") and not (
                condition == "5xx" and retryAfter is not None):
            # The upstream may have acted on it: a second try could do it
            # twice.
            return False
        delay = self.retries.backoff * 2 ** (self.tries - 1) * (0.5 + self.resource.random())
        nextUpstream = self.plan[self.tries][0]
        if retryAfter is not None and nextUpstream is self.upstream:
            delay = max(delay, retryAfter)
        if self._deadlineAt - self.clock.seconds() <= delay:
            return False
        self._arm("wait", delay)
        return True

    def _bug(self, failure: Failure) -> None:
        log.error("unexpected {error} on route {route} while relaying the answer",
                  error=failure.type.__name__, route=self.exchange.route)
        if not self.done:
            self._fail(502, "the gateway failed while relaying the answer", "gateway_error")

    def _clientDone(self, result: object) -> None:
        """
        The client's request is over: normally, or because it went away.
        """
        self.done = True
        if self._watch is not None:
            self._disarm()
        if isinstance(result, Failure):
            self._stopUpstream()

    def _stopUpstream(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        elif self._bodyTransport is not None:
            transport, self._bodyTransport = self._bodyTransport, None
            transport.stopProducing()

    def _timedOut(self) -> None:
        self.exchange.upstreamError = "timeout"
        message = f"the upstream did not answer within the route's timeout of {self.timeout:g}s"
        self._timeOut(message)

    def _timeOut(self, message: str) -> None:
        if self.done:
            return
        if self._pending is not None or self._whole is not None or self._phase == "wait":
            self._disarm()
            self._fail(504, message, "upstream_timeout")
            self._stopUpstream()
        else:
            self._breakStream(message)


    def _fail(self, status: int, message: str, code: str) -> None:
        if not self.done:
            finishWith(self.request, refuse(self.request, status, message, code))

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self.done:
            return
        problem = _malformed(failure)
        upstream = self.upstream
        if self._attemptTimedOut:
            self._record(upstream, "timeout")
            if self._retry("timeout"):
                return
            self.exchange.upstreamError = "timeout"
            self._fail(504, f"the upstream {upstreamHost(self._url)} did not answer within "
                       f"{self.timeouts.firstByte:g}s", "upstream_timeout")
            return
        if problem is not None:
            self._record(upstream, "malformed")
            log.warn("the upstream of route {route} sent a malformed answer: {problem}",
                     route=self.exchange.route, problem=problem)
            if self._retry("5xx"):
                return
            self.exchange.upstreamError = "malformed"
            self._fail(502, "the upstream's answer was malformed", "upstream_error")
            return
        # One line, naming the upstream's host but no URI and no traceback:
        # a URI's query can hold a key.
        kind, code, message = describeUpstreamFailure(failure, upstreamHost(self._url))
        if kind == "unreachable":
            self._record(upstream, "connect-failure")
            if self._retry("connect-failure"):
                return
        elif kind == "reset":
            self._record(upstream, "reset")
            if self._retry("5xx"):
                return
        else:
            self._record(upstream, "failed")
        if kind == "failed":
            log.error("route {route}: {problem} ({error})", route=self.exchange.route, problem=message,
                      error=failure.type.__name__)
        else:
            log.warn("route {route}: {problem}", route=self.exchange.route, problem=message)
        self.exchange.upstreamError = kind
        self._fail(502, message, code)

    def _gotResponse(self, response: IResponse) -> None:
        self._pending = None
        if self.done:
            response.deliverBody(_BodyRelay(self))
            return
        code = response.code
        if code == 429 or code >= 500:
            condition = "429" if code == 429 else "5xx"
            self._record(self.upstream, condition)
            if self._retry(condition, _retryAfter(response.headers)):
                response.deliverBody(_Discard())
                return
        else:
            self._record(self.upstream, "success")
            health = self.health
            if health.failures or health.ejections:
                health.succeeded()
        self._bodyWatch()
        self.exchange.target = self.upstream.backend.name
        self.exchange.upstreamStatus = response.code
        call = self.call
        if call.writer is None:
            self._passHead(response)
        elif response.code < 300 and call.stream:
            self._streamHead(response)
        else:
            # Read whole, and translated once complete.
            self._whole = []
            self._response = response
        if self.observer is not None and (
            response.code >= 300 or (call.writer is None and self.stream != self.observer.stream)
        ):
            # Only successful answers of the expected shape say anything
            # about usage.
            self.observer = None
        if self.observer is not None and call.reader is not None and call.writer is None:
            # Passed on as it comes, and read in the common form for usage.
            if self.stream:
                self._hub = call.reader.stream()
            else:
                self.observer.translate = call.reader.plain
        response.deliverBody(_BodyRelay(self))

    def _passHead(self, response: IResponse) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        headers = request.responseHeaders
        relayed = self._relayedFields = [b"content-length", b"x-accel-buffering"]
        for name, values in downstreamHeaders(response.headers):
            headers.setRawHeaders(name, values)
            relayed.append(name)
        if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
            # The client parser takes Content-Length out of the headers;
            # give it back so the caller knows the size too.
            headers.setRawHeaders(b"content-length", [b"%d" % response.length])
        contentType = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if contentType.startswith(b"text/event-stream"):
            self.stream = True
            headers.setRawHeaders(b"x-accel-buffering", [b"no"])
            if self.call.hideUsage and response.code < 300:
                self._filter = UsageChunkFilter()

    def _translatedFields(self, response: IResponse) -> None:
        headers = self.request.responseHeaders
        relayed = self._relayedFields = [b"content-type", b"x-accel-buffering"]
        for name, values in downstreamHeaders(response.headers):
            if name.lower() not in _TRANSLATED_DROP:
                headers.setRawHeaders(name, values)
                relayed.append(name)

    def _streamHead(self, response: IResponse) -> None:
        call = self.call
        assert call.reader is not None and call.writer is not None
        self.stream = True
        self.request.setResponseCode(response.code, response.phrase)
        self._translatedFields(response)
        headers = self.request.responseHeaders
        headers.setRawHeaders(b"content-type", [b"text/event-stream; charset=utf-8"])
        headers.setRawHeaders(b"x-accel-buffering", [b"no"])
        self._hub = call.reader.stream()
        self._out = call.writer.stream()

    def bodyStarted(self, transport: IPushProducer) -> None:
        if self.done:
            transport.stopProducing()
            return
        self._bodyTransport = transport
        self.request.registerProducer(transport, True)

    def bodyData(self, data: bytes) -> None:
        if self.done:
            return
        exchange = self.exchange
        self._lastRead = now = self.clock.seconds()
        if exchange.firstChunk is None:
            exchange.firstChunk = now
        if self._whole is not None:
            self._wholeSize += len(data)
            if self._wholeSize > MAX_TRANSLATED_BODY:
                self.exchange.upstreamError = "too_large"
                self._fail(502, "the upstream's answer is too large to translate", "upstream_error")
                self._stopUpstream()
            else:
                self._whole.append(data)
            return
        if self._out is not None:
            self._translate(data)
            return
        out = self._filter.feed(data) if self._filter is not None else data
        if out:
            exchange.bytesOut += len(out)
            self.request.write(out)
        if self.observer is not None:
            self._observe(data)

    def _observe(self, data: bytes) -> None:
        """
        Show the observer what was passed on.
        """
        observer = self.observer
        assert observer is not None
        if self._hub is None:
            observer.data(data)
            return
        try:
            for document in self._hub.feed(data):
                observer.document(document)
        except StreamError:
            # The client has the stream as it came; only its reading ends.
            self.observer = self._hub = None

    def _translate(self, data: bytes) -> None:
        assert self._hub is not None and self._out is not None
        try:
            documents = self._hub.feed(data)
        except StreamError as e:
            self._translationBroke(e.message)
            return
        self._writeDocuments(documents)

    def _writeDocuments(self, documents: list, last: bool = False) -> bool:
        """
        Write chunk documents in the client's API (and, with C{last}, the
        stream's end).

        @return: whether the stream can go on.
        """
        out = self._out
        assert out is not None
        observer = self.observer
        pieces = []
        try:
            for document in documents:
                if observer is not None:
                    observer.document(document)
                pieces.append(out.chunk(document))
            if last:
                pieces.append(out.end())
        except StreamError as e:
            self._writeOut(b"".join(pieces))
            self._translationBroke(e.message)
            return False
        self._writeOut(b"".join(pieces))
        return True

    def _writeOut(self, written: bytes) -> None:
        if written:
            self.exchange.bytesOut += len(written)
            self.request.write(written)

    def _translationBroke(self, message: str) -> None:
        self.exchange.upstreamError = "stream_broken"
        log.warn("the upstream stream of route {route} could not be translated: {problem}",
                 route=self.exchange.route, problem=message)
        if not self.request.startedWriting:
            for name in self._relayedFields:
                self.request.responseHeaders.removeHeader(name)
            self._fail(502, message, "upstream_stream_error")
            self._stopUpstream()
        else:
            self._breakStream(message)

    def bodyEnded(self, reason: Failure) -> None:
        self._bodyTransport = None
        self._disarm()
        if self.done:
            return
        self.request.unregisterProducer()
        # isinstance rather than Failure.check, which names every class of
        # the failure's type to compare: the common end costs least.
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            if self._whole is not None:
                self._wholeEnded()
                return
            if self._out is not None:
                assert self._hub is not None
                try:
                    documents = self._hub.end()
                except StreamError as e:
                    self._translationBroke(e.message)
                    return
                if not self._writeDocuments(documents, last=True):
                    return
            elif self._filter is not None:
                rest = self._filter.end()
                if rest:
                    self.request.write(rest)
            self._finish()
            return
        self.exchange.upstreamError = "stream_broken"
        if _malformed(reason) is not None:
            message = "the upstream's answer was malformed"
        else:
            message = "the upstream connection broke before the answer was complete"
        request = self.request
        if not request.startedWriting:
            # Nothing of the answer has left: the client can still be told
            # plainly, without the upstream's status and fields.
            for name in self._relayedFields:
                request.responseHeaders.removeHeader(name)
            self._fail(502, message, "upstream_stream_error")
        else:
            self._breakStream(message)

    def _finish(self) -> None:
        observer = self.observer
        if observer is not None:
            if self._hub is None:
                observer.end()
            elif self._out is None:
                try:
                    for document in self._hub.end():
                        observer.document(document)
                except StreamError:
                    pass
            if self.charge is not None:
                used = (observer.inputTokens or 0) + (observer.outputTokens or 0)
                self.charge(used, self.clock.seconds())
        self.request.finish()

    def _wholeEnded(self) -> None:
        """
        A whole answer to translate has come: an error, or a plain answer.
        """
        call = self.call
        response = self._response
        assert call.reader is not None and call.writer is not None and response is not None
        body = b"".join(self._whole or ())
        self._whole = None
        request = self.request
        if response.code >= 300:
            error = call.reader.error(response.code, response.headers, body)
            written = call.writer.error(error.status, error.message, error.type, error.code)
            self.exchange.reason = error.message
            setStatus(request, error.status)
            retryAfter = response.headers.getRawHeaders(b"retry-after")
            if retryAfter:
                request.responseHeaders.setRawHeaders(b"retry-after", retryAfter[:1])
            elif error.retryAfter is not None:
                request.responseHeaders.setRawHeaders(
                    b"retry-after", [b"%d" % math.ceil(error.retryAfter)])
        else:
            try:
                document = readJSON(body)
                if not isinstance(document, dict):
                    raise ValueError("not an object")
                completion = call.reader.plain(document)
            except (ValueError, StreamError) as e:
                log.warn("the upstream of route {route} sent an answer that cannot be translated: "
                         "{problem}", route=self.exchange.route,
                         problem=getattr(e, "message", "not a JSON object"))
                self.exchange.upstreamError = "malformed"
                self._fail(502, "the upstream's answer was malformed", "upstream_error")
                return
            if self.observer is not None:
                self.observer.document(completion)
            written = call.writer.plain(completion)
            request.setResponseCode(response.code, response.phrase)
            self._translatedFields(response)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(written)])
        self.exchange.bytesOut += len(written)
        request.write(written)
        if response.code >= 300:
            request.finish()
        else:
            self._finish()

    def _breakStream(self, message: str) -> None:
        """
        End a response that has started in a way no client takes for success.
        """
        request = self.request
        self.exchange.reason = message
        if self._bodyTransport is not None:
            request.unregisterProducer()
            self._stopUpstream()
        if self.stream:
            writer = self.call.writer
            if writer is None and self.exchange.api == "anthropic":
                # A stream passed through to a door client: its error event
                # in the Messages API too.
                writer = _DOOR
            request.write(writer.streamError(message) if writer is not None else _streamError(message))
        self.done = True
        self._disarm()
        # Close the connection once what was relayed (and the error event)
        # is sent: without the last chunk, no client takes it for a
        # complete answer.
        transport = request.channel.transport if request.channel is not None else None
        if transport is not None:
            transport.loseConnection()


class Upstream:
    """
    One target of a route, built once per configuration load: the backend,
    its provider and credential.

    @ivar problem: why this backend cannot be called at all, or L{None}.
    """

    def __init__(self, backend: Backend, provider: Provider, credential: Credential) -> None:
        self.backend = backend
        self.provider = provider
        self.credential = credential
        problem = credential.problem or provider.problem
        self.problem = None if problem is None else (
            f"backend '{backend.name}' has no credential: {problem}")


class RelayResource(Resource):
    """
    The last stage of a route: sends the request the policy admitted (the
    request's L{IAdmission}) to the route's targets, one after another as
    its plan says until one answers, and relays the answer.

    Everything that does not depend on the request (the providers, the
    credentials, the targets' health) is fixed when the route table is
    built.
    """

    isLeaf = True

    def __init__(
        self,
        route: Route,
        upstreams: Sequence[Upstream],
        health: Sequence[Health],
        agent: IAgent,
        clock: IReactorTime,
        telemetry: Telemetry,
        random: Callable[[], float] = _random.random,
    ) -> None:
        super().__init__()
        self.route = route
        self.upstreams = tuple(upstreams)
        self.planner = Planner(route.targets, self.upstreams, health)
        self.provider = self.upstreams[0].provider
        self.agent = agent
        self.clock = clock
        self.telemetry = telemetry
        self.random = random
        self.capture = telemetry.config.captureContent
        problems = [u.problem for u in self.upstreams]
        self._unavailable = problems[0] if all(problems) else None
        self._someUnavailable = any(problems)

    def unavailable(self) -> str | None:
        """
        Why no target of this route can be called at all, or L{None}.
        """
        return self._unavailable

    def plan(self, model: str | None, narrowed: int | None) -> list[tuple[Upstream, Health]]:
        """
        The attempts for a request for C{model}: the route's retries, or
        fewer when the client narrowed them.
        """
        attempts = self.route.retries.attempts
        if narrowed is not None:
            attempts = min(attempts, narrowed + 1)
        plan = self.planner.plan(model, self.clock.seconds(), self.random, attempts)
        if not self._someUnavailable:
            return plan
        return [(u, h) for u, h in plan if u.problem is None] or plan[:1]

    def prepareAttempt(
        self, upstream: Upstream, call: UpstreamCall, request: Request, identity: Identity | None,
        exchange: Exchange,
    ) -> tuple[bytes, Headers, AnswerObserver | None]:
        """
        The URL and headers of one attempt, and the observer of its answer.
        """
        provider = upstream.provider
        headers = upstreamHeaders(
            request.requestHeaders,
            upstream.credential,
            getattr(request.getClientAddress(), "host", ""),
            request.isSecure(),
            identity.location.dropHeaders if identity is not None else frozenset(),
        )
        if identity is not None:
            _applyIdentity(headers, identity)
        for name, value in call.headers:
            if not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])
        if call.document is not None and not headers.hasHeader(b"content-type"):
            headers.setRawHeaders(b"content-type", [b"application/json"])
        observer = None
        exchange.provider = provider.name
        if call.operation is not None:
            exchange.operation = call.operation
            exchange.requestModel = call.requestModel
            exchange.stream = call.stream
            exchange.parameters = call.parameters
            if self.capture and call.document is not None:
                exchange.inputMessages = call.document.get("messages", call.document.get("input"))
                exchange.inputDocument = call.document
            observer = AnswerObserver(call.stream, self.capture)
            exchange.answer = observer
        exchange.serverAddress = provider.serverAddress
        exchange.serverPort = provider.serverPort
        for name, value in self.telemetry.upstreamHeaders(exchange):
            headers.setRawHeaders(name, [value])
        url = provider.origin + call.path
        provider.sign(call.method, url, headers, call.body)
        return url, headers, observer

    def render(self, request: Request) -> bytes | int:
        exchange = request.getComponent(IExchange)
        admission = request.getComponent(IAdmission)
        call = admission.call
        if call.local is not None:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % len(call.local))
            exchange.bytesOut = len(call.local)
            return call.local if request.method != b"HEAD" else b""
        _Relay(self, request, exchange, admission).start()
        return NOT_DONE_YET


def _applyIdentity(headers: Headers, identity: Identity) -> None:
    """
    Keep the caller's token from the provider and add the claim headers.
    """
    location = identity.location
    cookies = headers.getRawHeaders(b"cookie")
    if cookies is not None and location.source.cookie is not None:
        kept = location.upstreamCookie(b"; ".join(cookies))
        if kept is None:
            headers.removeHeader(b"cookie")
        else:
            headers.setRawHeaders(b"cookie", [kept])
    for name, value in identity.addHeaders:
        headers.setRawHeaders(name, [value])
