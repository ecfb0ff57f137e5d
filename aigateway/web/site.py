"""
The HTTP site the gateway serves its route table on, and the rules every
client connection lives by before any route sees it.

Nothing is read before it is allowed.  A request that announces a body is
rendered as soon as its head is in: the route table, the JWT guard and the
relay decide on the head (a 404, a 401 or a 413 for an announced length over
the route's limit are answered before a byte of the body is read), and the
relay then asks for the body with L{requestBody}.  The body is kept in
memory, and only up to the limit the relay gives: a chunked body is refused
the moment it passes it.  A request answered before its body was read ends
its connection: the answer is sent, the gateway stops sending, and what the
client still sends is read and dropped for a few seconds, so that the client
reads the answer rather than a reset.

Connections are held to three bounds: a request's head must arrive within
C{requestHeadTimeout} of its first byte (408), a head over the size limit
gets a 431 (a request line over it, a 414), and each listener takes at most
C{maxConnections} connections at once (503 beyond).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.web.http import HTTPChannel, Request as HTTPRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from aigateway.config import DEFAULT_MAX_REQUEST_BODY, DEFAULT_REQUEST_HEAD_TIMEOUT
from aigateway.web.errors import errorBody

__all__ = [
    "BodyTooLarge",
    "GatewayRequest",
    "GatewaySite",
    "ListenerFactory",
    "requestBody",
]

log = Logger()

# How long what a client sends after its request was answered early is read
# and dropped before the connection is cut.
LINGER = 2.0
_STATUS_TEXT = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class BodyTooLarge(Exception):
    """
    A request body is over the limit of the resource that reads it.

    @ivar size: the body's size as announced or as read so far, in bytes.
    @ivar limit: the most the resource takes.
    @ivar announced: whether C{size} is the announced C{Content-Length}.
    """

    def __init__(self, size: int, limit: int, announced: bool) -> None:
        super().__init__(size, limit)
        self.size = size
        self.limit = limit
        self.announced = announced

    @property
    def message(self) -> str:
        if self.announced:
            return f"the request body is {self.size} bytes; this route takes at most {self.limit}"
        return f"the request body is over {self.limit} bytes, the most this route takes"


def requestBody(request: HTTPRequest, limit: int) -> Deferred[bytes]:
    """
    The body of C{request}, once it is all in, if it is at most C{limit}
    bytes; else a failure with L{BodyTooLarge}.

    A L{GatewayRequest} reads its body only now, and stops at the limit;
    any other request (twisted.web's own, in memory tests) has read it all
    already.
    """
    if isinstance(request, GatewayRequest):
        return request.readBody(limit)
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    if size > limit:
        return fail(BodyTooLarge(size, limit, True))
    content.seek(0)
    return succeed(content.read())


def _rawAnswer(status: int, message: str, code: str, extra: bytes = b"") -> bytes:
    body = errorBody(status, message, code)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n" % (status, _STATUS_TEXT[status], len(body), extra)
    ) + body


class _QualifiedNames(dict):
    """
    The names under which twisted.python.components keeps an interface's
    component, each computed once.
    """

    def __missing__(self, interface: Any) -> str:
        name = self[interface] = qual(interface)
        return name


_QUALIFIED = _QualifiedNames()


class GatewayRequest(Request):
    """
    A request whose defaults suit a JSON API gateway: no made-up
    C{text/html} content type, a body kept in memory and read only when a
    resource asks for it (L{readBody}), and an unexpected exception answered
    with a 500 in the OpenAI error envelope and one line in the log, never a
    traceback page.

    @ivar bodyDone: the whole body has been received.
    """

    defaultContentType = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A proxy relays bodies as they are: no parsing of form posts (which
        # costs an email.message.EmailMessage per POST in twisted.web).
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)
        self.bodyDone = False
        self._announced: int | None = None
        self._received = 0
        site = getattr(self.channel, "site", None)
        self._limit = site.maxRequestBody if isinstance(site, GatewaySite) else 0
        self._overLimit = False
        self._rendered = False
        self._waiting: Deferred[bytes] | None = None

    def setComponent(self, interfaceClass: Any, component: object) -> None:
        # Each stage sets or gets a component or two: the same store as
        # Componentized's, without computing the interface's name each time.
        self._adapterCache[_QUALIFIED[interfaceClass]] = component

    def getComponent(self, interface: Any, default: object = None) -> Any:
        try:
            return self._adapterCache[_QUALIFIED[interface]]
        except KeyError:
            return super().getComponent(interface, default)

    def gotLength(self, length: int | None) -> None:
        self._announced = length
        # Kept in memory: the limit is the cap, nothing goes to disk.
        self.content = BytesIO()

    def headReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The head of a request with a body is in: render it now, so that what
        refuses it does so before the body is read.
        """
        self._rendered = True
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}
        self.process()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.bodyDone = True
        if not self._rendered:
            super().requestReceived(command, path, version)
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(self.content.getvalue())

    def handleContentChunk(self, data: bytes) -> None:
        if self.finished or self._overLimit or self._disconnected:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._overLimit = True
            self.content = BytesIO()
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                waiting.errback(BodyTooLarge(self._received, self._limit, False))
            return
        self.content.write(data)

    def readBody(self, limit: int) -> Deferred[bytes]:
        """
        The body, once it is all in, if it is at most C{limit} bytes; an
        announced length over the limit fails at once, and a body that grows
        past it fails as soon as it does.
        """
        announced = self._announced
        if announced is not None and announced > limit:
            return fail(BodyTooLarge(announced, limit, True))
        if self._overLimit or self._received > limit:
            return fail(BodyTooLarge(self._received, limit, False))
        if self.bodyDone:
            return succeed(self.content.getvalue())
        self._limit = limit
        self._waiting = Deferred()
        return self._waiting

    def write(self, data: bytes) -> None:
        if not self.startedWriting and not self.bodyDone:
            # Answered before the body was read: the rest of the body would
            # be taken for the next request, so this connection ends here.
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
            channel = self.channel
            if isinstance(channel, GatewayChannel):
                channel.closeAfterAnswer()
        super().write(data)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(reason)

    def processingFailed(self, reason: Failure) -> Any:
        frame = reason.frames[-1] if reason.frames else None
        where = f" at {frame[1].rsplit('/', 1)[-1]}:{frame[2]} ({frame[0]})" if frame else ""
        log.error("unexpected {error}{where} handling a {method} request",
                  error=reason.type.__name__, where=where,
                  method=self.method.decode("latin-1", "replace"))
        body = errorBody(500, "the gateway failed to handle this request", "internal_error")
        if self.finished or self._disconnected:
            return None
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return None


def _drop(data: bytes) -> None:
    pass


def _dropNothing() -> None:
    pass


class GatewayChannel(HTTPChannel):
    """
    A client connection: its head must come within the site's
    C{requestHeadTimeout} of its first byte and within the size limits;
    a request with a body is rendered on its head; the site keeps track of
    it, so a drain can close the idle ones cleanly.

    The head is read by twisted.web's L{HTTPChannel}; this class reads the
    request line's parts from the attributes it keeps them in
    (C{_command}, C{_path}, C{_version}) once the head is in: every request
    with a body in the suite goes that way.
    """

    listener: "ListenerFactory | None" = None
    _inHead = False
    _inRequest = False
    _lingering = False
    _headBytes = 0
    _countingLines = False
    _headTimer: IDelayedCall | None = None
    _closing = False
    _lingerTimer: IDelayedCall | None = None
    _secure: bool | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)

    def isSecure(self) -> bool:
        # Whether the transport is TLS is asked of every request relayed
        # (X-Forwarded-Proto), and an interface adaptation answers it: a
        # connection's answer is kept, as it cannot change.
        secure = self._secure
        if secure is None:
            secure = self._secure = super().isSecure()
        return secure

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._inHead and not self._inRequest and data:
            self._inHead = True
        if self._inHead and not self._countingLines:
            # While all the head's bytes so far are within the limit, none
            # of its lines can take it past: lines are counted one by one
            # only from the read that could.
            seen = self._headBytes + len(data)
            if seen > self.totalHeadersSize:
                # What came before this read is complete lines and the
                # incomplete one still buffered.
                self._headBytes -= len(self._buffer)
                self._countingLines = True
                self.lineReceived = self._countedLineReceived  # type: ignore[method-assign]
            else:
                self._headBytes = seen
        super().dataReceived(data)
        if self._inHead and self._headTimer is None and not self._closing:
            # A head that did not come whole in one read: its time runs
            # from its first byte, which came just now.
            self._headTimer = self.callLater(self.factory.requestHeadTimeout, self._headTooSlow)

    def _countedLineReceived(self, line: bytes) -> Any:
        """
        L{lineReceived}, for a head that may grow past the size limit.
        """
        if self._closing:
            return None
        self._headBytes += len(line) + 2
        if self._headBytes > self.totalHeadersSize:
            self.answerAndClose(431, "the request head is too large", "head_too_large")
            return None
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # C{line} runs from the long line's start to the end of what came.
        before = self._headBytes if self._countingLines else self._headBytes - len(line)
        if before <= 0:
            self.answerAndClose(414, "the request line is too long", "uri_too_long")
        else:
            self.answerAndClose(431, "a request header line is too long", "head_too_large")

    def allHeadersReceived(self) -> None:
        self._endHead()
        self._inRequest = True
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        if self.length != 0 and isinstance(request, GatewayRequest):
            request.headReceived(self._command, self._path, self._version)
            if request.finished or self._closing:
                return
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def requestDone(self, request: HTTPRequest) -> None:
        self._endHead()
        self._inRequest = False
        super().requestDone(request)

    def _endHead(self) -> None:
        self._inHead = False
        self._headBytes = 0
        if self._countingLines and not self._closing:
            self._countingLines = False
            del self.lineReceived
        timer, self._headTimer = self._headTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _headTooSlow(self) -> None:
        self._headTimer = None
        self.answerAndClose(408, "the request head did not arrive in time", "head_timeout")

    def answerAndClose(self, status: int, message: str, code: str) -> None:
        """
        Answer what cannot become a request (a head too slow or too large)
        and close the connection.
        """
        if self._closing or self.transport is None:
            return
        self._endHead()
        self.transport.write(_rawAnswer(status, message, code))
        self.closeAfterAnswer()
        self.loseConnection()

    def closeAfterAnswer(self) -> None:
        """
        This connection ends once the answer being written is sent; what the
        client goes on sending is dropped.
        """
        self.persistent = False
        self._lingering = True

    def loseConnection(self) -> None:
        if not self._lingering or self._closing:
            super().loseConnection()
            return
        # Stop sending once the answer is out, read and drop what the client
        # still sends, and cut the connection after a while: closing with
        # unread bytes would reset it, and a reset can destroy the answer
        # before the client has read it.
        self._closing = True
        # What came in the same read is dropped too.
        self.lineReceived = self.rawDataReceived = _drop  # type: ignore[method-assign]
        self.allContentReceived = _dropNothing  # type: ignore[method-assign]
        self._endHead()
        transport = self.transport
        halfClose = getattr(transport, "loseWriteConnection", None)
        if halfClose is None:
            super().loseConnection()
            return
        transport.unregisterProducer()
        halfClose()
        self._lingerTimer = self.callLater(LINGER, transport.abortConnection)

    def connectionLost(self, reason: Failure) -> None:
        self._endHead()
        timer, self._lingerTimer = self._lingerTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)
        self.factory.channelClosed(self)
        if self.listener is not None:
            self.listener.channelClosed()


class _TooManyConnections(Protocol):
    """
    What a connection over a listener's limit gets: a 503, and the end.
    """

    def connectionMade(self) -> None:
        self.transport.write(_rawAnswer(
            503, "the gateway has too many connections open on this listener; try again",
            "too_many_connections", b"retry-after: 1\r\n",
        ))
        self.transport.loseConnection()


class ListenerFactory(ServerFactory):
    """
    One listener's way into the site: at most C{maxConnections} open at once.

    @ivar open: the connections open through this listener.
    """

    noisy = False

    def __init__(self, site: "GatewaySite", maxConnections: int) -> None:
        self.site = site
        self.maxConnections = maxConnections
        self.open = 0

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.open >= self.maxConnections:
            return _TooManyConnections()
        channel = self.site.buildProtocol(addr)
        if isinstance(channel, GatewayChannel):
            channel.listener = self
            self.open += 1
        return channel

    def channelClosed(self) -> None:
        self.open -= 1


class GatewaySite(Site):
    """
    The site that serves the route table.  Per-request logging is the
    telemetry's job, so the Site's own access log is off.

    @ivar channels: the open client connections.
    @ivar maxRequestBody: what a request body may be before a resource
        says how much it takes.
    @ivar requestHeadTimeout: seconds from a head's first byte to its end.
    """

    protocol = GatewayChannel
    requestFactory = GatewayRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, reactor: IReactorTime | None = None,
                 maxRequestBody: int = DEFAULT_MAX_REQUEST_BODY,
                 requestHeadTimeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT) -> None:
        super().__init__(resource, reactor=reactor)
        self.maxRequestBody = maxRequestBody
        self.requestHeadTimeout = requestHeadTimeout
        self.channels: set[HTTPChannel] = set()
        self._whenClosed: list[Deferred[None]] = []

    def log(self, request: Request) -> None:
        pass

    def channelClosed(self, channel: HTTPChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._whenClosed = self._whenClosed, []
            for d in waiting:
                d.callback(None)

    def closeChannels(self) -> Deferred[None]:
        """
        Close every client connection once what was written to it is sent;
        fires when all are closed.
        """
        if not self.channels:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._whenClosed.remove(d))
        self._whenClosed.append(d)
        for channel in list(self.channels):
            channel.transport.loseConnection()
        return d
