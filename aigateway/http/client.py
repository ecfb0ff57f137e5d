"""
The upstream HTTP/1.1 client: one pool of keep-alive connections per
origin, a request written in one piece, and a response parser that hands
the body on as it arrives.

L{UpstreamAgent} is an L{IAgent}, so whatever takes an agent takes it.  It
does per request only what a relay needs: no URI object, no per-request
endpoint, one split of the response head instead of a line at a time, and
the body given to the reader as it is read (a push producer, so a slow
reader pauses the upstream socket).  Twisted's own L{Agent} spent more CPU
per request than the rest of the gateway's relay together.

What it does not do: follow redirects, decompress, send C{Expect:
100-continue}, or speak HTTP/2.  A response with neither C{Content-Length}
nor chunked framing is read until the connection closes: a clean close ends
it with L{PotentialDataLoss}, as with L{Agent}, but a reset, an abort or a
TLS error ends it with L{ResponseFailed}, as the answer may be cut short.

One caller's answer must never reach another, so a connection goes back to
the pool only when its answer's end is certain: never after an answer to
C{HEAD}, a 204 or a 304 (a faulty upstream may send a body after them, at
any time, and nothing would tell it from the next request's answer), nor
after one framed with both C{Content-Length} and C{Transfer-Encoding}, or
with a transfer coding other than C{chunked} alone.  Bytes that arrive when
no request is waiting close the connection and take it out of the pool.

An idle connection is not used again once the upstream may be about to
close it: after the agent's C{idleTimeout} (per origin if need be), and
after the upstream's C{Keep-Alive: timeout=N} hint less a safety margin
(see L{keepAliveLimit}), counted from the end of the answer.  Some
upstreams close sooner than they say, or say nothing, and a request can
still meet a close on its way: one that was written on a reused connection
and lost before a byte of the answer came is written once more, on a new
connection, whatever its method, when its body can be written again (no
body, or a L{BytesBody}).  The upstream closed the connection while it was
idle, so the request was most likely never read; it is not resent after any
byte of an answer, nor when it failed on a new connection, nor twice.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint,
                                        wrapClientTLS)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from zope.interface import implementer


__all__ = ["BytesBody", "DEFAULT_IDLE_TIMEOUT", "UpstreamAgent", "UpstreamResponse", "keepAliveLimit"]

# The longest response head (status line and fields) taken.
MAX_HEAD = 64 * 1024
# Seconds an idle connection is kept unless set otherwise: under the 5 s
# after which Node and uvicorn close idle connections, so that a connection
# is not reused just as they close it.  Servers that close sooner are left
# to the resend of a request that met the close.
DEFAULT_IDLE_TIMEOUT = 4.0
# The safety margin taken off an upstream's Keep-Alive timeout (but never
# more than half of it).
_KEEP_ALIVE_MARGIN = 1.0
# The parameter of a Keep-Alive field that says how long the upstream keeps
# an idle connection: whole seconds, maybe quoted.
_KEEP_ALIVE_TIMEOUT = re.compile(rb'\s*timeout\s*=\s*"?([0-9]{1,9})"?\s*', re.IGNORECASE)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# A chunk's size line: hexadecimal digits, then maybe extensions, which are
# passed over but must hold no control character (RFC 9112 7.1.1).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")
# A trailer field line: a name, a colon, a value without control characters.
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")
# The longest size line taken, and the largest chunk: no real answer comes
# near them, and beyond them the framing is garbage or an attack.
MAX_CHUNK_LINE = 4096
MAX_CHUNK = 2**31 - 1
_DIGITS = re.compile(rb"[0-9]{1,18}")
# The control characters a response head must not hold, but CR and LF,
# which are counted instead (they may only come as the CRLF ending a line).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def keepAliveLimit(hint: float) -> float:
    """
    The seconds a connection is kept idle after an answer whose
    C{Keep-Alive} field says C{timeout=hint}: the hint less one second, or
    less half of it when it is under two seconds, so that the connection is
    not used as the upstream's own timer runs out (the upstream started it
    when it wrote the answer's end, a little before it was read here).

    @param hint: the seconds the upstream says it keeps an idle connection.
    """
    return hint - min(_KEEP_ALIVE_MARGIN, hint / 2)


def _keepAliveTimeout(values: list[bytes]) -> float | None:
    """
    The smallest C{timeout} among C{Keep-Alive} field values, or C{None}
    when none says one (a malformed one says none).
    """
    found: float | None = None
    for value in values:
        for parameter in value.split(b","):
            match = _KEEP_ALIVE_TIMEOUT.fullmatch(parameter)
            if match is not None:
                seconds = float(int(match.group(1)))
                if found is None or seconds < found:
                    found = seconds
    return found


class ProtocolError(Exception):
    """
    The upstream broke HTTP/1.1: the message says how.
    """


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body already in memory; L{UpstreamAgent} writes it with the
    request head in one go.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IResponse)
class UpstreamResponse:
    """
    An upstream answer whose body is still arriving.  Body bytes that come
    before L{deliverBody} is called are kept for the reader.
    """

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, phrase: bytes, headers: Headers, length: Any,
                 producer: IPushProducer) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._producer = producer
        self._reader: Protocol | None = None
        self._early: list[bytes] = []
        self._ended: Failure | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        if self._reader is not None:
            raise RuntimeError("the body of a response is delivered once")
        self._reader = protocol
        protocol.makeConnection(self._producer)
        early, self._early = self._early, []
        for data in early:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def _data(self, data: bytes) -> None:
        if self._reader is None:
            self._early.append(data)
        else:
            self._reader.dataReceived(data)

    def _end(self, reason: Failure) -> None:
        if self._reader is None:
            self._ended = reason
        else:
            self._reader.connectionLost(reason)


@implementer(IPushProducer)
class _BodyProducer:
    """
    What the reader of a body sees as its transport: it pauses and resumes
    the upstream socket, and stopping it drops the connection.
    """

    def __init__(self, exchange: "_Exchange") -> None:
        self.exchange = exchange

    def pauseProducing(self) -> None:
        self.exchange.pause(True)

    def resumeProducing(self) -> None:
        self.exchange.pause(False)

    def stopProducing(self) -> None:
        self.exchange.abandon()

    def abortConnection(self) -> None:
        """
        What treq's body readers call to give up on a body: the same as
        L{stopProducing}.
        """
        self.exchange.abandon()


# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class _Exchange:
    """
    One request and its response, on one connection (or, when a kept-alive
    connection was found closed, on a second one).
    """

    def __init__(self, agent: "UpstreamAgent", origin: "_Origin", method: bytes, head: bytes,
                 producer: IBodyProducer | None) -> None:
        self.agent = agent
        self.origin = origin
        self.method = method
        self.head = head
        self.producer = producer
        self.deferred: Deferred[IResponse] | None = Deferred(self._cancel)
        self.connection: _Connection | None = None
        self.connecting: Deferred | None = None
        self.state = _HEAD
        self.buffer = b""
        self.remaining = 0
        self.trailer = 0
        self.keepAlive = False
        self.produced = producer is None or isinstance(producer, BytesBody)
        # Only a request written whole with its head can be written again.
        self.resendable = self.produced
        self.resent = False
        self.paused = False
        self.received = False
        self.reused = False
        self.keepAliveTimeout: float | None = None
        self.response: UpstreamResponse | None = None

    # Sending.

    def start(self) -> None:
        connection = self.origin.idleConnection(self.agent.reactor.seconds())
        if connection is not None:
            self.send(connection, reused=True)
        else:
            self._connect()

    def _connect(self) -> None:
        self.connecting = self.origin.endpoint.connect(self.origin.factory)
        self.connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: "_Connection") -> None:
        self.connecting = None
        if self.deferred is None:
            self.origin.release(connection, self.agent.reactor.seconds(), None)
            return
        self.send(connection, reused=False)

    def _connectFailed(self, reason: Failure) -> None:
        self.connecting = None
        if self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.errback(reason)

    def send(self, connection: "_Connection", reused: bool) -> None:
        self.connection = connection
        self.reused = reused
        connection.exchange = self
        connection.transport.write(self.head)
        producer = self.producer
        if not self.produced and producer is not None:
            consumer: IConsumer = connection.transport
            if producer.length is UNKNOWN_LENGTH:
                consumer = _ChunkedConsumer(connection.transport)
            producer.startProducing(consumer).addCallbacks(
                lambda _: self._produced(consumer), self._productionFailed
            )

    def _produced(self, consumer: IConsumer) -> None:
        if isinstance(consumer, _ChunkedConsumer):
            consumer.finish()
        self.produced = True

    def _productionFailed(self, reason: Failure) -> None:
        self.keepAlive = False
        if self.connection is not None and self.connection.transport is not None:
            self.connection.abort()
        self._fail(reason)

    def _cancel(self, d: Deferred) -> None:
        self.deferred = None
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.connection is not None:
            self.abandon()

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        try:
            self._parse(data)
        except ProtocolError as e:
            self.keepAlive = False
            self._fail(Failure(e))
            if self.connection is not None:
                self.connection.abort()

    def _parse(self, data: bytes) -> None:
        state = self.state
        if state == _LENGTH:
            remaining = self.remaining
            if len(data) < remaining:
                self.remaining = remaining - len(data)
                self.response._data(data)  # type: ignore[union-attr]
                return
            self.remaining = 0
            if remaining:
                self.response._data(data[:remaining])  # type: ignore[union-attr]
            self._finish(data[remaining:])
            return
        if state == _UNTIL_CLOSE:
            self.response._data(data)  # type: ignore[union-attr]
            return
        if state == _HEAD:
            self._head(data)
            return
        if state == _DONE:
            raise ProtocolError("the upstream sent more than its answer")
        self._chunked(data)

    def _head(self, data: bytes) -> None:
        """
        Take the response head once it is all in, and go on with the body.

        A head that breaks HTTP/1.1 fails the whole response with
        L{ProtocolError}, among them one that holds a control character
        other than a tab (NUL, ESC, DEL, a CR or LF that does not end a
        line together) in a field or the reason phrase, or a field folded
        onto the next line (obs-fold).  The rule is the same for every
        field, framing or not: relayed, a CR or LF would split the client's
        head and other controls reach whatever logs or shows the value;
        dropping the field instead would hide an upstream that is broken or
        hostile, whose other fields can't be trusted either.  The message
        of the error never repeats what the upstream sent, as fields can
        hold secrets.
        """
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError("the upstream's response head is too long")
            self.buffer = buffer
            return
        self.buffer = b""
        block = buffer[:end]
        lines = block.split(b"\r\n")
        rest = buffer[end + 4:]
        breaks = len(lines) - 1
        if _CONTROL.search(block) or block.count(b"\r") != breaks or block.count(b"\n") != breaks:
            raise ProtocolError("the upstream's response head holds a control character")
        version, _, statusText = lines[0].partition(b" ")
        code, _, phrase = statusText.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ProtocolError("the upstream sent a bad status line")
        status = int(code)
        headers = Headers()
        lengths: list[bytes] = []
        codings: list[bytes] = []
        keepAliveFields: list[bytes] = []
        connection = b""
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                # A line folded onto the previous one (obs-fold) starts with
                # a space or a tab, which no field name holds.
                raise ProtocolError("the upstream sent a malformed header line")
            value = value.strip(b" \t")
            lower = name.lower()
            if lower == b"content-length":
                lengths.extend(v.strip() for v in value.split(b","))
                continue
            if lower == b"transfer-encoding":
                codings.extend(v.strip().lower() for v in value.split(b","))
                continue
            if lower == b"connection":
                connection += b"," + value.lower()
            elif lower == b"keep-alive":
                keepAliveFields.append(value)
            headers.addRawHeader(name, value)
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            # An interim answer (100 Continue, 103 Early Hints): the real
            # one follows.
            if rest:
                self._head(rest)
            return
        length: Any
        keepAlive = (
            version == b"HTTP/1.1" and b"close" not in [t.strip() for t in connection.split(b",")]
        )
        codings = [c for c in codings if c]
        if self.method == b"HEAD" or status in (204, 304):
            # The answer ends with its head (RFC 9112 6.3), but a faulty
            # upstream may send a body anyway, in this read or any later
            # one: the connection is not used again.
            if lengths:
                headers.setRawHeaders(b"content-length", [b"%d" % _length(lengths)])
            self.state, length = _DONE, 0
            keepAlive = False
        elif codings:
            # Transfer-Encoding overrides Content-Length (RFC 9112 6.3); a
            # message with both is the shape of request smuggling, and only
            # chunked alone is a framing sure enough to read another answer
            # after.
            if codings[-1] == b"chunked":
                self.state, length = _CHUNK_SIZE, UNKNOWN_LENGTH
            else:
                self.state, length = _UNTIL_CLOSE, UNKNOWN_LENGTH
            if lengths or codings != [b"chunked"]:
                keepAlive = False
        elif lengths:
            self.remaining = length = _length(lengths)
            self.state = _LENGTH if length else _DONE
        else:
            self.state, length = _UNTIL_CLOSE, UNKNOWN_LENGTH
        self.keepAlive = keepAlive and self.state != _UNTIL_CLOSE
        if keepAliveFields:
            self.keepAliveTimeout = _keepAliveTimeout(keepAliveFields)
        self.response = UpstreamResponse(status, phrase, headers, length, _BodyProducer(self))
        d, self.deferred = self.deferred, None
        if d is not None:
            d.callback(self.response)
        if self.state == _DONE:
            self._finish(rest)
        elif rest:
            self._parse(rest)

    def _chunked(self, data: bytes) -> None:
        """
        Undo chunked framing, strictly as RFC 9112 7.1 writes it: a size
        that is not plain hexadecimal (or is over L{MAX_CHUNK}), a line over
        L{MAX_CHUNK_LINE}, chunk data not followed by CRLF, a control
        character in an extension, or a malformed or endless trailer
        section fails the body with L{ProtocolError}.  Extensions and
        trailer fields are passed over.
        """
        buffer = self.buffer + data if self.buffer else data
        position = 0
        size = len(buffer)
        out: list[bytes] = []
        state = self.state
        while position < size:
            if state == _CHUNK_DATA:
                take = min(size - position, self.remaining)
                out.append(buffer[position:position + take])
                position += take
                self.remaining -= take
                if not self.remaining:
                    state = _CHUNK_END
                continue
            if state == _CHUNK_END:
                if size - position < 2:
                    break
                if buffer[position:position + 2] != b"\r\n":
                    raise ProtocolError("the upstream's chunked body has no CRLF after a chunk")
                position += 2
                state = _CHUNK_SIZE
                continue
            end = buffer.find(b"\r\n", position)
            if end == -1:
                if size - position > MAX_CHUNK_LINE:
                    raise ProtocolError("the upstream's chunked body has a line too long")
                break
            if end - position > MAX_CHUNK_LINE:
                raise ProtocolError("the upstream's chunked body has a line too long")
            line = buffer[position:end]
            position = end + 2
            if state == _TRAILER:
                if not line:
                    self.state = _DONE
                    if out:
                        self.response._data(b"".join(out))  # type: ignore[union-attr]
                    self.buffer = b""
                    self._finish(buffer[position:])
                    return
                self.trailer += len(line) + 2
                if self.trailer > MAX_HEAD or not _FIELD_LINE.fullmatch(line):
                    raise ProtocolError("the upstream's chunked body has a malformed trailer")
                continue
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise ProtocolError("the upstream's chunked body has a malformed chunk size")
            self.remaining = int(match.group(1), 16)
            if self.remaining > MAX_CHUNK:
                raise ProtocolError("the upstream's chunked body has a chunk too large")
            state = _CHUNK_DATA if self.remaining else _TRAILER
        self.state = state
        self.buffer = buffer[position:]
        if out:
            self.response._data(b"".join(out))  # type: ignore[union-attr]

    def _finish(self, extra: bytes) -> None:
        """
        The whole answer is in: the connection goes back to the pool (when
        it can be used again) before the reader hears of the end.
        """
        self.state = _DONE
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.exchange = None
            if self.paused:
                connection.transport.resumeProducing()
            if self.keepAlive and self.produced and not extra:
                self.origin.release(connection, self.agent.reactor.seconds(), self.keepAliveTimeout)
            else:
                connection.transport.loseConnection()
        self.response._end(Failure(ResponseDone()))  # type: ignore[union-attr]

    def _fail(self, reason: Failure) -> None:
        if self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.errback(Failure(ResponseNeverReceived([reason])))
        elif self.response is not None and self.state != _DONE:
            self.state = _DONE
            self.response._end(Failure(ResponseFailed([reason])))

    def connectionLost(self, reason: Failure) -> None:
        self.connection = None
        if self.state == _UNTIL_CLOSE:
            # Only a clean close is the end of such a body.
            self.state = _DONE
            if reason.check(ConnectionDone):
                self.response._end(Failure(PotentialDataLoss()))  # type: ignore[union-attr]
            else:
                self.response._end(Failure(ResponseFailed([reason])))  # type: ignore[union-attr]
            return
        if (
            self.state == _HEAD and not self.received and self.reused and self.deferred is not None
            and self.resendable and not self.resent
        ):
            # A kept-alive connection the upstream had closed (the close
            # crossed the request, or the request met a reset): once more,
            # on a new connection, never again after it.
            self.resent = True
            self.reused = False
            self._connect()
            return
        self._fail(reason)

    # The reader's controls.

    def pause(self, paused: bool) -> None:
        connection = self.connection
        if connection is None or self.paused == paused:
            return
        self.paused = paused
        if paused:
            connection.transport.pauseProducing()
        else:
            connection.transport.resumeProducing()

    def abandon(self) -> None:
        """
        Nobody wants the rest of the answer: drop the connection.
        """
        if self.connection is not None:
            self.keepAlive = False
            self.connection.abort()


def _length(values: list[bytes]) -> int:
    """
    The one length that the C{Content-Length} values given say.

    @raise ProtocolError: when they differ or one is not a plain decimal.
    """
    if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0]):
        raise ProtocolError("the upstream sent a bad Content-Length")
    return int(values[0])


@implementer(IConsumer)
class _ChunkedConsumer:
    """
    Writes a body of unknown length in chunked framing.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if data:
            self.transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])

    def finish(self) -> None:
        self.transport.write(b"0\r\n\r\n")


class _Connection(Protocol):
    """
    One connection to an origin, idle in its pool or carrying one exchange.

    @ivar broken: the connection was dropped (bytes came that no request
        asked for, the answer broke HTTP/1.1, or nobody wants the rest of
        it): it never goes back to the pool, and nothing more it brings is
        read.
    """

    def __init__(self, origin: "_Origin") -> None:
        self.origin = origin
        self.exchange: _Exchange | None = None
        self.lost: list[Deferred[None]] = []
        self.broken = False

    def connectionMade(self) -> None:
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        if self.broken:
            return
        if self.exchange is not None:
            self.exchange.dataReceived(data)
        else:
            # Nothing was asked (the connection is idle, or between the end
            # of an answer and its return to the pool): these bytes are a
            # body the upstream framed wrongly, or an answer to no one.
            self.abort()

    def abort(self) -> None:
        """
        Drop the connection.  It leaves the pool now, not once the abort
        has closed it, so no request is sent on it in between.
        """
        self.broken = True
        self.origin.forget(self)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        exchange, self.exchange = self.exchange, None
        self.origin.forget(self)
        if exchange is not None:
            exchange.connectionLost(reason)
        lost, self.lost = self.lost, []
        for d in lost:
            d.callback(None)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, origin: "_Origin") -> None:
        self.origin = origin

    def buildProtocol(self, addr: object) -> _Connection:
        return _Connection(self.origin)


class _Origin:
    """
    One C{scheme://host:port}: its endpoint (made once: building one runs
    IDNA on the host name), its C{Host} value, and its idle connections,
    the most recently used last, each with the time after which it is not
    used again.

    @ivar address: the scheme, host and port, as settings name the origin.
    @ivar idleTimeout: the seconds a connection is kept idle at most.
    """

    def __init__(self, endpoint: Any, host: bytes, address: tuple[bytes, bytes, int], maxIdle: int,
                 idleTimeout: float) -> None:
        self.endpoint = endpoint
        self.host = host
        self.address = address
        self.maxIdle = maxIdle
        self.idleTimeout = idleTimeout
        self.factory = _ConnectionFactory(self)
        self.idle: list[tuple[_Connection, float]] = []

    def idleConnection(self, now: float) -> _Connection | None:
        idle = self.idle
        while idle:
            connection, until = idle.pop()
            if now < until:
                return connection
            connection.transport.loseConnection()
        return None

    def release(self, connection: _Connection, now: float, keepAliveTimeout: float | None) -> None:
        """
        Keep C{connection} for the next request, until C{idleTimeout} has
        passed, or the upstream's C{keepAliveTimeout} less its margin.
        """
        if connection.broken:
            return
        idle = self.idle
        keep = self.idleTimeout
        if keepAliveTimeout is not None:
            keep = min(keep, keepAliveLimit(keepAliveTimeout))
        if len(idle) >= self.maxIdle or keep <= 0:
            connection.transport.loseConnection()
            return
        idle.append((connection, now + keep))
        # Connections idle for too long are closed as traffic passes.
        while now >= idle[0][1]:
            idle.pop(0)[0].transport.loseConnection()

    def forget(self, connection: _Connection) -> None:
        for i, (c, _) in enumerate(self.idle):
            if c is connection:
                del self.idle[i]
                return


def _address(url: bytes) -> tuple[bytes, bytes, int]:
    """
    The scheme, host (in lower case) and port of an absolute URL's origin.

    @raise ValueError: when C{url} is not an absolute C{http} or C{https}
        URL.
    """
    if b"://" not in url:
        raise ValueError("not an absolute URL")
    parsed = URI.fromBytes(url)
    if parsed.scheme not in (b"http", b"https") or not parsed.host:
        raise ValueError("not an http or https URL")
    return parsed.scheme, parsed.host.lower(), parsed.port


@implementer(IAgent, IAgentEndpointFactory)
def _byOrigin(seconds: Mapping[str | bytes, float]) -> dict[tuple[bytes, bytes, int], float]:
    """
    Times keyed by URL, keyed by origin instead: the shortest of the URLs
    on one origin.
    """
    out: dict[tuple[bytes, bytes, int], float] = {}
    for url, value in seconds.items():
        address = _address(url.encode("ascii") if isinstance(url, str) else url)
        out[address] = min(value, out.get(address, value))
    return out


class UpstreamAgent:
    """
    An HTTP/1.1 agent with a pool of kept-alive connections per origin.

    @param connectTimeout: seconds a connection attempt may take.
    @param maxIdle: idle connections kept per origin.
    @param idleTimeout: seconds an idle connection is kept at most, for
        every origin that C{idleTimeouts} does not name; an upstream's
        shorter C{Keep-Alive: timeout} hint shortens it.
    @param idleTimeouts: the same per origin, keyed by a URL on it (a
        backend's URL, path and all, as text or bytes); see
        L{setIdleTimeouts}.
    @param endpointFactory: makes the endpoint of each origin, once; by
        default a TCP endpoint (a C{HostnameEndpoint} for a host name),
        wrapped in TLS for C{https} with the server's certificate verified
        as browsers do.
    """

    def __init__(self, reactor: Any, connectTimeout: float = 10.0, maxIdle: int = 256,
                 idleTimeout: float = DEFAULT_IDLE_TIMEOUT, endpointFactory: IAgentEndpointFactory | None = None,
                 idleTimeouts: Mapping[str | bytes, float] | None = None) -> None:
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.maxIdle = maxIdle
        self.idleTimeout = idleTimeout
        self._endpointFactory = endpointFactory if endpointFactory is not None else self
        self._tls = BrowserLikePolicyForHTTPS()
        self._origins: dict[bytes, _Origin] = {}
        self._connectTimeouts: dict[tuple[bytes, bytes, int], float] = {}
        self._idleTimeouts: dict[tuple[bytes, bytes, int], float] = {}
        if idleTimeouts:
            self.setIdleTimeouts(idleTimeouts)

    def setIdleTimeouts(self, idleTimeouts: Mapping[str | bytes, float]) -> None:
        """
        Replace the idle times set per origin (a configuration load calls it
        with every backend's): an origin named by no URL of C{idleTimeouts}
        gets the agent's C{idleTimeout} again.  URLs on the same origin
        (C{http://h} and C{http://h:80/v1}) are one origin, which keeps the
        shortest of their times.  Connections already idle keep the time
        they were given when they went idle.

        @param idleTimeouts: seconds, keyed by a URL on each origin.
        @raise ValueError: for a key that is not an absolute URL.
        """
        timeouts = _byOrigin(idleTimeouts)
        self._idleTimeouts = timeouts
        for origin in self._origins.values():
            origin.idleTimeout = timeouts.get(origin.address, self.idleTimeout)

    def setConnectTimeouts(self, connectTimeouts: Mapping[str | bytes, float]) -> None:
        """
        Replace the connection timeouts set per origin, as
        L{setIdleTimeouts} does the idle times: an origin named by no URL
        gets the agent's C{connectTimeout}; several URLs on one origin keep
        the shortest.  Connections made from now on use them.

        @param connectTimeouts: seconds, keyed by a URL on each origin.
        @raise ValueError: for a key that is not an absolute URL.
        """
        timeouts = _byOrigin(connectTimeouts)
        changed = {a for a in set(timeouts) | set(self._connectTimeouts)
                   if timeouts.get(a) != self._connectTimeouts.get(a)}
        self._connectTimeouts = timeouts
        for key, origin in self._origins.items():
            if origin.address in changed:
                origin.endpoint = self._endpointFactory.endpointForURI(URI.fromBytes(key + b"/"))

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        try:
            origin, target = self._split(uri)
            if not _TOKEN.fullmatch(method):
                raise ValueError("the method is not a token")
            head = [method, b" ", target, b" HTTP/1.1\r\n"]
            if headers is None or not headers.hasHeader(b"host"):
                head += [b"Host: ", origin.host, b"\r\n"]
            if headers is not None:
                for name, values in headers.getAllRawHeaders():
                    lower = name.lower()
                    if lower == b"content-length" or lower == b"transfer-encoding":
                        continue
                    for value in values:
                        head += [name, b": ", value, b"\r\n"]
            if bodyProducer is None:
                if method in (b"POST", b"PUT", b"PATCH"):
                    head.append(b"Content-Length: 0\r\n")
                head.append(b"\r\n")
            elif bodyProducer.length is UNKNOWN_LENGTH:
                head.append(b"Transfer-Encoding: chunked\r\n\r\n")
            else:
                head.append(b"Content-Length: %d\r\n\r\n" % bodyProducer.length)
                if isinstance(bodyProducer, BytesBody):
                    head.append(bodyProducer.body)
        except Exception:
            return fail()
        exchange = _Exchange(self, origin, method, b"".join(head), bodyProducer)
        d = exchange.deferred
        assert d is not None
        exchange.start()
        return d

    def _split(self, uri: bytes) -> tuple[_Origin, bytes]:
        """
        The origin of C{uri} and the request target for its request line.
        """
        scheme, separator, rest = uri.partition(b"://")
        if not separator:
            raise ValueError("not an absolute URL")
        end = len(rest)
        for mark in (b"/", b"?", b"#"):
            found = rest.find(mark, 0, end)
            if found != -1:
                end = found
        authority = rest[:end]
        target = rest[end:].partition(b"#")[0]
        if not target.startswith(b"/"):
            target = b"/" + target
        if _UNSAFE_TARGET.search(target):
            raise ValueError("the request target holds spaces or control characters")
        key = scheme + b"://" + authority
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = self._origin(key)
        return origin, target

    def endpointForURI(self, uri: URI) -> Any:
        """
        The endpoint of an origin.  A host name is looked up again for every
        new connection (C{HostnameEndpoint}); an IP address is connected to
        directly, as there is nothing to look up, and the lookup, done in a
        thread, would cost more CPU than the connection itself.
        """
        host = uri.host.decode("ascii")
        timeout = self._connectTimeouts.get((uri.scheme, uri.host.lower(), uri.port), self.connectTimeout)
        endpoint: Any
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port, timeout=timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint

    def _origin(self, key: bytes) -> _Origin:
        parsed = URI.fromBytes(key + b"/")
        if parsed.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme {parsed.scheme!r}")
        endpoint = self._endpointFactory.endpointForURI(parsed)
        hostValue = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
        if parsed.port != (443 if parsed.scheme == b"https" else 80):
            hostValue += b":%d" % parsed.port
        address = (parsed.scheme, parsed.host.lower(), parsed.port)
        return _Origin(endpoint, hostValue, address, self.maxIdle,
                       self._idleTimeouts.get(address, self.idleTimeout))

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every idle connection; fires when they are closed.
        """
        waiting = []
        for origin in self._origins.values():
            idle, origin.idle = origin.idle, []
            for connection, _ in idle:
                d: Deferred[None] = Deferred()
                connection.lost.append(d)
                waiting.append(d)
                connection.transport.loseConnection()
        return gatherResults(waiting).addCallback(lambda _: None)
