"""
An OpenAI-compatible fake LLM for demos, tests and benchmarks:
C{twistd -n fakellm --listen tcp:9000 [--key KEY]}.

It serves C{POST /v1/chat/completions} (plain and streaming, with a final
usage chunk when C{stream_options.include_usage} is set), C{GET /v1/models},
C{GET /v1/models/<id>} and C{POST /v1/embeddings}.  Answers are
deterministic: the answer is the first words of a fixed poem, eight unless
the request asks for another number.

Request headers steer it (milliseconds may be fractional):
  - C{x-fakellm-delay: MS}: wait before the response starts;
  - C{x-fakellm-chunks: N}: words in the answer, one stream chunk each;
  - C{x-fakellm-gap: MS}: time between stream chunks (default 0);
  - C{x-fakellm-status: CODE}: answer with this status and an error envelope;
  - C{x-fakellm-drop-after: N}: abort a stream after N content chunks.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import struct
from typing import Any, Callable

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python import usage
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["FakeLLM", "Options", "SeenRequest", "makeService"]

POEM = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more "
    "temperate: Rough winds do shake the darling buds of May, And summer's "
    "lease hath all too short a date;"
).split()
MODELS = ("gpt-4o-mini", "gpt-3.5-turbo", "gpt-4o", "text-embedding-3-small")
MAX_CHUNKS = 100_000
_DIMENSIONS = 8


def _json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _error(status: int, message: str, code: str | None = None) -> bytes:
    kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error")
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _words(n: int) -> list[str]:
    return [POEM[i % len(POEM)] for i in range(n)]


def _countWords(messages: object) -> int:
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                count += len(message["content"].split())
    return count


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round((b - 128) / 128.0, 6) for b in digest[:_DIMENSIONS]]


@attrs.frozen
class SeenRequest:
    """
    A request the fake LLM received, for tests to inspect.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = attrs.field(repr=False)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        self.status = status
        self.message = message
        self.code = code


def _number(request: Request, name: bytes, default: float, maximum: float) -> float:
    raw = request.getHeader(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= maximum:
        raise _BadRequest(400, f"{name.decode()} must be a number from 0 to {maximum:g}")
    return value


class _Exchange:
    """
    One response in progress: delayed start, stream chunks, cancellation.
    """

    def __init__(self, clock: IReactorTime, request: Request) -> None:
        self.clock = clock
        self.request = request
        self.gone = False
        self.call: IDelayedCall | None = None
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, reason: object) -> None:
        self.gone = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    def later(self, seconds: float, f: Callable[[], None]) -> None:
        if self.gone:
            return
        if seconds <= 0:
            f()
        else:
            self.call = self.clock.callLater(seconds, self._run, f)

    def _run(self, f: Callable[[], None]) -> None:
        self.call = None
        if not self.gone:
            f()

    def respond(self, status: int, body: bytes, headers: dict[bytes, bytes] | None = None) -> None:
        request = self.request
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def stream(self, chunks: list[bytes], gap: float, dropAfter: int | None) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        # chunks[0] is the role chunk; content chunks follow it.
        limit = None if dropAfter is None else dropAfter + 1
        self._next(iter(enumerate(chunks)), gap, limit)

    def _next(self, items: Any, gap: float, limit: int | None) -> None:
        request = self.request
        while not self.gone:
            try:
                index, chunk = next(items)
            except StopIteration:
                request.finish()
                return
            if limit is not None and index >= limit:
                # Close after what was written is sent: the stream ends
                # without its final chunk, as a broken upstream would.
                request.channel.transport.loseConnection()
                return
            request.write(b"data: " + chunk + b"\n\n")
            if gap > 0 and index > 0:
                self.later(gap, lambda: self._next(items, gap, limit))
                return


class FakeLLM(Resource):
    """
    The fake LLM's only resource.

    @ivar requests: the last hundred requests received.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, key: str | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.expected = b"Bearer " + key.encode("utf-8") if key else None
        self.requests: collections.deque[SeenRequest] = collections.deque(maxlen=100)
        self._counter = 0
        self._models = {
            m: {"id": m, "object": "model", "created": 0, "owned_by": "fakellm"} for m in MODELS
        }
        self._modelList = _json({"object": "list", "data": list(self._models.values())})

    def render(self, request: Request) -> bytes | int:
        body = request.content.read()
        self.requests.append(
            SeenRequest(
                request.method.decode("latin-1"),
                request.uri.decode("latin-1"),
                {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                 for k, v in request.requestHeaders.getAllRawHeaders()},
                body,
            )
        )
        exchange = _Exchange(self.clock, request)
        try:
            delay = _number(request, b"x-fakellm-delay", 0, 3_600_000) / 1000.0
            action = self._action(request, body)
        except _BadRequest as e:
            exchange.respond(e.status, _error(e.status, e.message, e.code))
            return NOT_DONE_YET
        exchange.later(delay, lambda: action(exchange))
        return NOT_DONE_YET

    def _action(self, request: Request, body: bytes) -> Callable[[_Exchange], None]:
        if self.expected is not None and request.getHeader(b"authorization") != self.expected:
            raise _BadRequest(401, "Incorrect API key provided.", "invalid_api_key")
        forced = request.getHeader(b"x-fakellm-status")
        if forced is not None:
            try:
                status = int(forced)
            except ValueError:
                status = 0
            if not 200 <= status <= 599:
                raise _BadRequest(400, "x-fakellm-status must be an HTTP status code")
            headers = {b"retry-after": b"1"} if status == 429 else {}
            payload = _error(status, f"forced status {status}", "forced")
            return lambda exchange: exchange.respond(status, payload, headers)
        path = request.path
        method = request.method
        if path == b"/v1/chat/completions" and method == b"POST":
            return self._chat(request, body)
        if path == b"/v1/embeddings" and method == b"POST":
            return self._embeddings(body)
        if path == b"/v1/models" and method == b"GET":
            return lambda exchange: exchange.respond(200, self._modelList)
        if path.startswith(b"/v1/models/") and method == b"GET":
            model = self._models.get(path[len(b"/v1/models/"):].decode("utf-8", "replace"))
            if model is None:
                raise _BadRequest(404, "The model does not exist.", "model_not_found")
            return lambda exchange: exchange.respond(200, _json(model))
        raise _BadRequest(404, f"Unknown request URL: {method.decode()} {path.decode('latin-1')}",
                          "unknown_url")

    def _document(self, body: bytes) -> dict:
        try:
            document = json.loads(body)
        except ValueError:
            raise _BadRequest(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(document, dict):
            raise _BadRequest(400, "The request body must be a JSON object.")
        return document

    def _chat(self, request: Request, body: bytes) -> Callable[[_Exchange], None]:
        document = self._document(body)
        model = document.get("model")
        if not isinstance(model, str) or not isinstance(document.get("messages"), list):
            raise _BadRequest(400, "A chat request needs a string 'model' and a list of 'messages'.")
        count = int(_number(request, b"x-fakellm-chunks", 8, MAX_CHUNKS))
        gap = _number(request, b"x-fakellm-gap", 0, 3_600_000) / 1000.0
        drop = request.getHeader(b"x-fakellm-drop-after")
        dropAfter = int(_number(request, b"x-fakellm-drop-after", 0, MAX_CHUNKS)) if drop else None
        self._counter += 1
        ident = f"chatcmpl-fake-{self._counter}"
        created = int(self.clock.seconds())
        words = _words(count)
        usage = {
            "prompt_tokens": _countWords(document["messages"]),
            "completion_tokens": len(words),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if document.get("stream") is not True:
            answer = _json(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
            return lambda exchange: exchange.respond(200, answer)
        options = document.get("stream_options")
        includeUsage = isinstance(options, dict) and options.get("include_usage") is True
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}

        def chunk(delta: dict, finish: str | None) -> bytes:
            return _json(dict(head, choices=[{"index": 0, "delta": delta, "finish_reason": finish}]))

        chunks = [chunk({"role": "assistant", "content": ""}, None)]
        for i, word in enumerate(words):
            chunks.append(chunk({"content": word if i == len(words) - 1 else word + " "}, None))
        chunks.append(chunk({}, "stop"))
        if includeUsage:
            chunks.append(_json(dict(head, choices=[], usage=usage)))
        chunks.append(b"[DONE]")
        return lambda exchange: exchange.stream(chunks, gap, dropAfter)

    def _embeddings(self, body: bytes) -> Callable[[_Exchange], None]:
        document = self._document(body)
        inputs = document.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise _BadRequest(400, "'input' must be a string or a list of strings.")
        encoding = document.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _BadRequest(400, "'encoding_format' must be 'float' or 'base64'.")
        data = []
        for index, text in enumerate(inputs):
            vector = _embedding(text)
            value: object = vector
            if encoding == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(len(text.split()) for text in inputs)
        answer = _json(
            {
                "object": "list",
                "data": data,
                "model": document.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        return lambda exchange: exchange.respond(200, answer)


class _Channel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)


class _Site(Site):
    protocol = _Channel
    noisy = False
    displayTracebacks = False

    def log(self, request: Request) -> None:
        pass


class Options(usage.Options):
    """
    Options for C{twistd fakellm}.
    """

    optParameters = [
        ["listen", "l", "tcp:9000", "A Twisted server endpoint to listen on."],
        ["key", "k", None, "Require this bearer key."],
    ]


def makeService(options: Options) -> IService:
    """
    The fake LLM on its listener.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    site = _Site(FakeLLM(reactor, key=options["key"]))
    return StreamServerEndpointService(serverFromString(reactor, options["listen"]), site)
