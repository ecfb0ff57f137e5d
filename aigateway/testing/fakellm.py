"""
An OpenAI-compatible fake LLM for the offline demo, the test suite and the
benchmarks: C{twistd -n fakellm --listen tcp:9000 [--key KEY]}.

It serves:

  - C{POST /v1/chat/completions}, plain and streamed (server-sent events,
    with a usage chunk when C{stream_options.include_usage} is true);
  - C{GET /v1/models} and C{GET /v1/models/<id>};
  - C{POST /v1/embeddings}, as floats or, as the OpenAI SDK asks by
    default, as base64 of little-endian float32;

and answers anything else with a 404 in the OpenAI error envelope
C{{"error": {"message", "type", "param", "code"}}}.  With a key, a request
whose C{Authorization} is not exactly C{Bearer <key>} gets a 401.

Answers are deterministic.  A chat answer is the first N words of L{POEM}
(starting over at its end), N being 8 unless C{x-fakellm-chunks} says
otherwise, for plain and streamed answers alike.  Tokens are
whitespace-separated words: the prompt counts the words of every message
whose C{content} is a string, the completion the words of the answer.  An
embedding is eight floats made from the SHA-256 of the input text.

Request headers steer it; a bad value is a 400 that names the header:

  - C{x-fakellm-delay: MS} (default 0): wait this many milliseconds before
    the response starts, status line included;
  - C{x-fakellm-chunks: N} (default 8, at most 100000): words in the answer,
    one stream chunk each;
  - C{x-fakellm-gap: MS} (default 0): milliseconds before each word of a
    stream.  The role chunk is written as the response starts; the finish
    chunk, the usage chunk and C{[DONE]} right after the last word, so a
    stream lasts N times the gap.  With no gap every chunk is written in the
    same reactor turn, still one C{write} each;
  - C{x-fakellm-status: CODE} (400 to 599): answer with this status and an
    error envelope, plus C{retry-after: 1} for 429;
  - C{x-fakellm-drop-after: N} (0 to 100000): close a stream's connection
    right after its N-th word, before the finish chunk and C{[DONE]}, so
    the client sees a broken stream; an N past the last word never comes.
    The connection is closed with C{loseConnection}, not aborted, so the
    words before the break do reach the client.

Milliseconds may be fractional.  The key is checked before anything else
and the delay header is read next; both answer at once when they refuse.
Every other answer, errors included, waits for the delay.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import struct
from functools import partial
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import unquote

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["FakeLLM", "MODELS", "Options", "POEM", "SeenRequest", "makeService"]

_log = Logger()

POEM: tuple[str, ...] = tuple(
    (
        "Shall I compare thee to a summer's day? Thou art more lovely and more "
        "temperate: Rough winds do shake the darling buds of May, And summer's "
        "lease hath all too short a date;"
    ).split()
)
"""
The words every chat answer is made of, in order.
"""

MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-3.5-turbo", "gpt-4o", "text-embedding-3-small")
"""
The model ids C{GET /v1/models} lists.
"""

DEFAULT_CHUNKS = 8
MAX_CHUNKS = 100_000
_MAX_MILLISECONDS = 3_600_000.0
_DIMENSIONS = 8
_KEEP = 100

# Each poem word as a JSON string, followed by a space and bare (for the
# last word of an answer), so a stream chunk is a concatenation.
_SPACED = tuple(json.dumps(word + " ").encode("utf-8") for word in POEM)
_BARE = tuple(json.dumps(word).encode("utf-8") for word in POEM)

_TYPES = {429: "rate_limit_error"}

# Twisted has no reason phrase for some statuses a test may force (429).
_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _errorBody(status: int, message: str, code: str | None) -> bytes:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _answerText(count: int) -> str:
    return " ".join(POEM[i % len(POEM)] for i in range(count))


def _promptTokens(messages: list[Any]) -> int:
    count = 0
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                count += len(content.split())
    return count


def _embedding(text: str) -> list[float]:
    # k/128 for a byte k - 128: exact in float32, so the base64 form decodes
    # to the very floats of the float form.
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [(b - 128) / 128.0 for b in digest[:_DIMENSIONS]]


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


class _Refusal(Exception):
    """
    An error answer decided while reading the request.
    """

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(status, message)
        self.status = status
        self.body = _errorBody(status, message, code)
        self.headers = headers


def _badHeader(name: bytes, what: str) -> _Refusal:
    return _Refusal(400, f"{name.decode('ascii')} must be {what}", "invalid_fakellm_header")


def _milliseconds(request: Request, name: bytes) -> float:
    """
    A header's milliseconds as seconds, 0 when absent.
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


def _integer(request: Request, name: bytes, low: int, high: int) -> int | None:
    """
    A header's integer, C{None} when absent.
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


@attrs.frozen
class _StreamPlan:
    """
    What one streamed answer writes, as ready-made SSE events.
    """

    role: bytes
    prefix: bytes
    tail: tuple[bytes, ...]
    count: int
    gap: float
    dropAfter: int | None

    def word(self, index: int) -> bytes:
        spelled = _BARE if index == self.count - 1 else _SPACED
        return self.prefix + spelled[index % len(POEM)] + b'},"finish_reason":null}]}\n\n'


class _Exchange:
    """
    One response in progress: its delayed start, its stream chunks, and what
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
            self.respond(500, _errorBody(500, "The fake LLM failed.", "fakellm_bug"))

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

    def refuse(self, refusal: _Refusal) -> None:
        """
        Write an error answer and finish.
        """
        self.respond(refusal.status, refusal.body, refusal.headers)

    def stream(self, plan: _StreamPlan) -> None:
        """
        Start a server-sent event stream: the role chunk now, then the words.
        """
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(plan.role)
        self._words(plan, 0, first=True)

    def _words(self, plan: _StreamPlan, index: int, first: bool = False) -> None:
        """
        Write the words from C{index} on, one gap apart, then the tail.
        """
        request = self._request
        stop = plan.count if plan.dropAfter is None else min(plan.count, plan.dropAfter)
        if plan.gap > 0 and first and index < stop:
            self.later(plan.gap, self._words, plan, index)
            return
        while index < stop:
            request.write(plan.word(index))
            index += 1
            if plan.gap > 0 and index < stop:
                self.later(plan.gap, self._words, plan, index)
                return
        if plan.dropAfter is not None and plan.dropAfter <= plan.count:
            # loseConnection rather than abortConnection: the words already
            # written reach the client first, and then the chunked body ends
            # without its last chunk, which the client sees as a broken stream.
            request.channel.transport.loseConnection()
            return
        for event in plan.tail:
            request.write(event)
        request.finish()


class FakeLLM(Resource):
    """
    The fake LLM: one leaf resource that answers every path.

    @ivar requests: the last hundred requests received, oldest first.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, key: str | None = None) -> None:
        """
        @param clock: schedules delays and stream gaps; C{created} times
            come from it too.
        @param key: when set, the bearer key every request must carry.
        """
        super().__init__()
        self._clock = clock
        self._expected = None if key is None else b"Bearer " + key.encode("utf-8")
        self.requests: collections.deque[SeenRequest] = collections.deque(maxlen=_KEEP)
        self._counter = 0
        models = [
            {"id": model, "object": "model", "created": 0, "owned_by": "fakellm"}
            for model in MODELS
        ]
        self._models = {str(m["id"]): _json(m) for m in models}
        self._modelList = _json({"object": "list", "data": models})
        self._defaultText = _answerText(DEFAULT_CHUNKS)

    def render(self, request: Request) -> int:
        """
        Record the request and answer it, after the delay it asks for.
        """
        body = request.content.read() if request.content is not None else b""
        self.requests.append(
            SeenRequest(
                method=request.method.decode("latin-1"),
                path=request.uri.decode("latin-1"),
                headers={
                    name.decode("latin-1").lower(): values[-1].decode("latin-1")
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=body,
            )
        )
        exchange = _Exchange(self._clock, request)
        try:
            self._checkKey(request)
            delay = _milliseconds(request, b"x-fakellm-delay")
        except _Refusal as refusal:
            exchange.later(0, exchange.refuse, refusal)
            return NOT_DONE_YET
        try:
            answer = self._answer(request, body)
        except _Refusal as refusal:
            answer = partial(_Exchange.refuse, refusal=refusal)
        exchange.later(delay, answer, exchange)
        return NOT_DONE_YET

    def _checkKey(self, request: Request) -> None:
        if self._expected is None:
            return
        presented = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(presented, self._expected):
            raise _Refusal(401, "Incorrect API key provided.", "invalid_api_key")

    def _answer(self, request: Request, body: bytes) -> Callable[[_Exchange], None]:
        """
        Decide the answer, to be written once the delay has passed.
        """
        status = _integer(request, b"x-fakellm-status", 400, 599)
        if status is not None:
            headers = ((b"retry-after", b"1"),) if status == 429 else ()
            raise _Refusal(status, f"The fake LLM was asked to answer {status}.",
                           "fakellm_forced_status", headers)
        path, method = request.path, request.method
        if path == b"/v1/chat/completions" and method == b"POST":
            return self._chat(request, body)
        if path == b"/v1/embeddings" and method == b"POST":
            return self._embeddings(body)
        if path == b"/v1/models" and method == b"GET":
            return partial(_Exchange.respond, status=200, body=self._modelList)
        if path.startswith(b"/v1/models/") and method == b"GET":
            model = self._models.get(unquote(path[len(b"/v1/models/"):].decode("latin-1")))
            if model is None:
                raise _Refusal(404, "The model does not exist.", "model_not_found")
            return partial(_Exchange.respond, status=200, body=model)
        raise _Refusal(404, f"Unknown request URL: {method.decode('latin-1')} "
                            f"{path.decode('latin-1')}.", "unknown_url")

    def _document(self, body: bytes) -> dict[str, Any]:
        try:
            document = json.loads(body)
        except ValueError:
            raise _Refusal(400, "The request body is not valid JSON.", "invalid_json") from None
        if not isinstance(document, dict):
            raise _Refusal(400, "The request body must be a JSON object.", "invalid_json")
        return document

    def _chat(self, request: Request, body: bytes) -> Callable[[_Exchange], None]:
        document = self._document(body)
        model = document.get("model")
        messages = document.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list):
            raise _Refusal(400, "A chat completion needs a string 'model' and a list of 'messages'.")
        chunks = _integer(request, b"x-fakellm-chunks", 0, MAX_CHUNKS)
        count = DEFAULT_CHUNKS if chunks is None else chunks
        gap = _milliseconds(request, b"x-fakellm-gap")
        dropAfter = _integer(request, b"x-fakellm-drop-after", 0, MAX_CHUNKS)
        stream = document.get("stream") is True
        self._counter += 1
        ident = f"chatcmpl-fake-{self._counter}"
        created = int(self._clock.seconds())
        promptTokens = _promptTokens(messages)
        usage = {
            "prompt_tokens": promptTokens,
            "completion_tokens": count,
            "total_tokens": promptTokens + count,
        }
        if not stream:
            text = self._defaultText if count == DEFAULT_CHUNKS else _answerText(count)
            answer = _json({
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            })
            return partial(_Exchange.respond, status=200, body=answer)

        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}

        def event(**fields: object) -> bytes:
            return b"data: " + _json(dict(head, **fields)) + b"\n\n"

        options = document.get("stream_options")
        tail = [event(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])]
        if isinstance(options, dict) and options.get("include_usage") is True:
            tail.append(event(choices=[], usage=usage))
        tail.append(b"data: [DONE]\n\n")
        plan = _StreamPlan(
            role=event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]),
            prefix=b"data: " + _json(head)[:-1] + b',"choices":[{"index":0,"delta":{"content":',
            tail=tuple(tail),
            count=count,
            gap=gap,
            dropAfter=dropAfter,
        )
        return partial(_Exchange.stream, plan=plan)

    def _embeddings(self, body: bytes) -> Callable[[_Exchange], None]:
        document = self._document(body)
        inputs = document.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (not isinstance(inputs, list) or not inputs
                or not all(isinstance(text, str) for text in inputs)):
            raise _Refusal(400, "'input' must be a string or a non-empty list of strings.")
        encoding = document.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _Refusal(400, "'encoding_format' must be 'float' or 'base64'.")
        data = []
        for index, text in enumerate(inputs):
            vector = _embedding(text)
            value: object = vector
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{_DIMENSIONS}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(len(text.split()) for text in inputs)
        answer = _json({
            "object": "list",
            "data": data,
            "model": document.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })
        return partial(_Exchange.respond, status=200, body=answer)


class _Channel(HTTPChannel):
    """
    An HTTP/1.1 channel with Nagle's algorithm off, so stream chunks leave
    as they are written.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)


class _Site(Site):
    """
    A site without an access log: the benchmarks drive it hard.
    """

    protocol = _Channel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        pass


class Options(usage.Options):
    """
    Options for C{twistd fakellm}.
    """

    optParameters = [
        ["listen", "l", "tcp:9000", "A Twisted server endpoint to listen on."],
        ["key", "k", None, "Require 'Authorization: Bearer KEY' on every request."],
    ]


def makeService(options: Options) -> IService:
    """
    The fake LLM listening where C{options} says.

    @param options: parsed L{Options}.
    @return: a service that listens while it runs.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    site = _Site(FakeLLM(reactor, key=options["key"]), logPath=None)
    return StreamServerEndpointService(serverFromString(reactor, options["listen"]), site)
