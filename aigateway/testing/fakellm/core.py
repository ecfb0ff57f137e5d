"""
What every API the fake LLM speaks shares: the poem answers are made of, the
steering headers, the refusals, and the exchange that writes an answer (a
whole document or a stream, after a delay, one gap between pieces).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

__all__ = [
    "DEFAULT_CHUNKS",
    "MAX_CHUNKS",
    "POEM",
    "Answer",
    "Dialect",
    "Exchange",
    "Refusal",
    "SeenRequest",
    "Steering",
    "StreamPlan",
    "answerText",
    "document",
    "encode",
    "integerHeader",
    "millisecondsHeader",
    "queryArgument",
    "splitInTwo",
    "textWords",
    "toolArguments",
]

_log = Logger()

POEM: tuple[str, ...] = tuple(
    (
        "Shall I compare thee to a summer's day? Thou art more lovely and more "
        "temperate: Rough winds do shake the darling buds of May, And summer's "
        "lease hath all too short a date;"
    ).split()
)
"""
The words every answer is made of, in order.
"""

DEFAULT_CHUNKS = 8
MAX_CHUNKS = 100_000
_MAX_MILLISECONDS = 3_600_000.0
_MAX_TOKENS = 10_000_000

# Twisted has no reason phrase for some statuses a test may force (429, 529).
_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_PHRASES[529] = b"Site Overloaded"


def encode(value: object) -> bytes:
    """
    Compact JSON.
    """
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def answerText(count: int) -> str:
    """
    The first C{count} words of L{POEM}, starting over at its end.
    """
    return " ".join(POEM[i % len(POEM)] for i in range(count))


def textWords(content: object) -> int:
    """
    The words of a content value: a string, or a list of parts whose
    C{text} is a string (every API's shape of text parts).
    """
    if isinstance(content, str):
        return len(content.split())
    count = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                count += len(part["text"].split())
    return count


def toolArguments(count: int) -> dict[str, int]:
    """
    The arguments of every steered tool call.
    """
    return {"words": count}


def splitInTwo(text: str) -> tuple[str, str]:
    """
    A text cut in the middle, as streamed tool arguments arrive.
    """
    middle = len(text) // 2
    return text[:middle], text[middle:]


@attrs.frozen
class SeenRequest:
    """
    A request the fake LLM received, kept for tests to inspect.

    @ivar method: the HTTP method, e.g. C{"POST"}.
    @ivar path: the request target as sent: path and query string.
    @ivar headers: header names in lower case; for a repeated header, the
        last value.
    @ivar body: the request body.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = attrs.field(repr=False)


class Refusal(Exception):
    """
    An error answer decided while reading the request; the API it was
    addressed to writes it in its own error envelope.

    @ivar status: the HTTP status.
    @ivar message: the sentence for the client.
    @ivar code: the API's error type or code, or C{None} for the one the
        API gives this status.
    @ivar headers: extra response headers.
    """

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers


def _badHeader(name: bytes, what: str) -> Refusal:
    return Refusal(400, f"{name.decode('ascii')} must be {what}", "invalid_fakellm_header")


def millisecondsHeader(request: Request, name: bytes) -> float:
    """
    A header's milliseconds as seconds, 0 when absent.

    @raise Refusal: for a value that is not 0 to an hour.
    """
    raw = request.getHeader(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    # "not" so that NaN is refused too.
    if not 0.0 <= value <= _MAX_MILLISECONDS:
        raise _badHeader(name, f"a number of milliseconds from 0 to {_MAX_MILLISECONDS:.0f}")
    return value / 1000.0


def integerHeader(request: Request, name: bytes, low: int, high: int) -> int | None:
    """
    A header's integer, C{None} when absent.

    @raise Refusal: for a value that is not an integer from C{low} to
        C{high}.
    """
    raw = request.getHeader(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _badHeader(name, f"an integer from {low} to {high}")
    return value


def queryArgument(request: Request, name: bytes) -> bytes | None:
    """
    The last value of a query argument, C{None} when absent.
    """
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    return values[-1] if values else None


def _nameHeader(request: Request, name: bytes) -> str | None:
    raw = request.getHeader(name)
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if not text or len(text) > 200:
        raise _badHeader(name, "a name of 1 to 200 characters")
    return text


@attrs.frozen
class Steering:
    """
    What the C{x-fakellm-*} headers ask of one model answer.

    @ivar count: words in the answer.
    @ivar gap: seconds before each piece of a stream.
    @ivar dropAfter: close a stream's connection after this many pieces.
    @ivar toolCall: answer with a call to this tool instead of text.
    @ivar cached: cached input tokens to report.
    @ivar reasoning: reasoning output tokens to report.
    @ivar streamError: end a stream with an error of this type.
    """

    count: int = DEFAULT_CHUNKS
    gap: float = 0.0
    dropAfter: int | None = None
    toolCall: str | None = None
    cached: int = 0
    reasoning: int = 0
    streamError: str | None = None

    @classmethod
    def fromRequest(cls, request: Request) -> Steering:
        """
        Read the steering headers.

        @raise Refusal: naming the first header with a bad value.
        """
        chunks = integerHeader(request, b"x-fakellm-chunks", 0, MAX_CHUNKS)
        return cls(
            count=DEFAULT_CHUNKS if chunks is None else chunks,
            gap=millisecondsHeader(request, b"x-fakellm-gap"),
            dropAfter=integerHeader(request, b"x-fakellm-drop-after", 0, MAX_CHUNKS),
            toolCall=_nameHeader(request, b"x-fakellm-tool-call"),
            cached=integerHeader(request, b"x-fakellm-cached-tokens", 0, _MAX_TOKENS) or 0,
            reasoning=integerHeader(request, b"x-fakellm-reasoning-tokens", 0, _MAX_TOKENS) or 0,
            streamError=_nameHeader(request, b"x-fakellm-stream-error"),
        )

    def cut(self, maxTokens: object) -> tuple[int, bool]:
        """
        The words answered under a client's output token limit, and whether
        the limit cut the answer short.
        """
        if isinstance(maxTokens, int) and not isinstance(maxTokens, bool) \
                and 0 <= maxTokens < self.count:
            return maxTokens, True
        return self.count, False

    def checkTool(self, names: list[str]) -> str | None:
        """
        The steered tool's name, which must be among the request's tools.

        @raise Refusal: when it is not.
        """
        if self.toolCall is not None and self.toolCall not in names:
            raise Refusal(400, f"x-fakellm-tool-call names {self.toolCall!r}, "
                               "which is not among the request's tools.", "invalid_fakellm_header")
        return self.toolCall


def document(body: bytes) -> dict[str, Any]:
    """
    A request body's JSON object.

    @raise Refusal: when it is not one.
    """
    try:
        value = json.loads(body)
    except ValueError:
        raise Refusal(400, "The request body is not valid JSON.", "invalid_json") from None
    if not isinstance(value, dict):
        raise Refusal(400, "The request body must be a JSON object.", "invalid_json")
    return value


@attrs.frozen
class StreamPlan:
    """
    What one streamed answer writes: its head, then C{count} pieces one gap
    apart, then its tail (or, when it fails, its failure); each a separate
    C{write}.

    @ivar head: written as the response starts.
    @ivar piece: the bytes of the piece at an index.
    @ivar count: how many pieces.
    @ivar tail: written right after the last piece.
    @ivar gap: seconds before each piece.
    @ivar dropAfter: close the connection after this many pieces instead.
    @ivar failure: when set, written instead of the tail, and then the
        response ends.
    @ivar contentType: the response's content type.
    @ivar headers: extra response headers.
    """

    head: tuple[bytes, ...]
    piece: Callable[[int], bytes]
    count: int
    tail: tuple[bytes, ...]
    gap: float
    dropAfter: int | None
    failure: bytes | None = None
    contentType: bytes = b"text/event-stream"
    headers: tuple[tuple[bytes, bytes], ...] = ()


Answer = Callable[["Exchange"], None]


class Dialect(Protocol):
    """
    One API the fake LLM speaks.
    """

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request without the API's credentials.
        """

    def errorAnswer(self, refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
        """
        A refusal's body and headers in the API's error envelope.
        """

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        Decide the answer, to be written once the delay has passed.
        """


class Exchange:
    """
    One response in progress: its delayed start, its stream pieces, and what
    happens when the client leaves (the pending timer is cancelled and
    nothing more is written).
    """

    def __init__(self, clock: IReactorTime, request: Request) -> None:
        self._clock = clock
        self._request = request
        self._gone = False
        self._call: IDelayedCall | None = None
        request.notifyFinish().addErrback(self._lost).addErrback(
            lambda f: _log.failure("fakellm: handling a disconnect failed", f)
        )

    def _lost(self, reason: Failure) -> None:
        self._gone = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def later(self, seconds: float, f: Callable[..., None], *args: Any) -> None:
        """
        Call C{f(*args)} after C{seconds}, or now if that is not positive,
        unless the client has gone.
        """
        if seconds > 0:
            self._call = self._clock.callLater(seconds, self._run, f, *args)
        else:
            self._run(f, *args)

    def _run(self, f: Callable[..., None], *args: Any) -> None:
        self._call = None
        if self._gone:
            return
        try:
            f(*args)
        except Exception:
            self._failed(Failure())

    def _failed(self, failure: Failure) -> None:
        request = self._request
        _log.failure(
            "fakellm: answering {method} {uri} failed", failure,
            method=request.method, uri=request.uri,
        )
        if self._gone or request.finished:
            return
        if request.startedWriting:
            request.channel.transport.loseConnection()
        else:
            self.respond(500, encode({"error": {"message": "The fake LLM failed.",
                                                "type": "server_error", "param": None,
                                                "code": "fakellm_bug"}}))

    def respond(self, status: int, body: bytes,
                headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """
        Write a whole JSON answer and finish.
        """
        request = self._request
        request.setResponseCode(status, _PHRASES.get(status))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        for name, value in headers:
            request.setHeader(name, value)
        request.write(body)
        request.finish()

    def stream(self, plan: StreamPlan) -> None:
        """
        Start a stream: the head now, then the pieces.
        """
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", plan.contentType)
        request.setHeader(b"cache-control", b"no-cache")
        for name, value in plan.headers:
            request.setHeader(name, value)
        for event in plan.head:
            request.write(event)
        self._pieces(plan, 0, first=True)

    def _pieces(self, plan: StreamPlan, index: int, first: bool = False) -> None:
        """
        Write the pieces from C{index} on, one gap apart, then the tail.
        """
        request = self._request
        stop = plan.count if plan.dropAfter is None else min(plan.count, plan.dropAfter)
        if plan.gap > 0 and first and index < stop:
            self.later(plan.gap, self._pieces, plan, index)
            return
        piece = plan.piece
        while index < stop:
            request.write(piece(index))
            index += 1
            if plan.gap > 0 and index < stop:
                self.later(plan.gap, self._pieces, plan, index)
                return
        if plan.dropAfter is not None and plan.dropAfter <= plan.count:
            # loseConnection rather than abortConnection: the pieces already
            # written reach the client first, and then the chunked body ends
            # without its last chunk, which the client sees as a broken stream.
            request.channel.transport.loseConnection()
            return
        if plan.failure is not None:
            request.write(plan.failure)
        else:
            for event in plan.tail:
                request.write(event)
        request.finish()
