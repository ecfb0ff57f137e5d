"""
What the relay needs from a provider, whichever it is.

A provider's C{prepare} turns one client request into an L{UpstreamCall}:
the upstream path and body, what the gateway judged (operation, model,
stream), and how the answer reaches the client:

  - passed through as the upstream sends it, when the client speaks the
    provider's own API (OpenAI chat to an OpenAI-style server, Anthropic
    Messages at the C{/v1/messages} door to Anthropic); a L{Reader} may
    still read it for usage;
  - translated, when it does not: the provider's L{Reader} turns the answer
    into OpenAI chat documents (the common form) and the client's
    L{Writer} turns those into the client's API.

Readers and writers are pure: documents and bytes in, bytes out.
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.web.http_headers import Headers

from aigateway.config import Backend
from aigateway.llm.body import BodyError, readJSONObject
from aigateway.llm.messages import ChunksToMessages, completionToMessage, errorToAnthropic, messagesToChat
from aigateway.llm.sse import SSEParser
from aigateway.llm.translate import (
    ChunkEncoder,
    StreamError,
    TranslationError,
    UpstreamError,
    openAIError,
    readJSON,
    writeJSON,
)

__all__ = [
    "AnswerReader",
    "HubStream",
    "OpenAIReader",
    "OpenAIWriter",
    "Provider",
    "ProviderError",
    "Reader",
    "UpstreamCall",
    "Writer",
    "TranslatingProvider",
    "canonicalEndpoint",
    "chatParameters",
    "checkMethod",
    "readBody",
]


class ProviderError(Exception):
    """
    The request cannot be sent upstream as it is.

    @ivar status: the HTTP status to answer with.
    @ivar message: a sentence for the caller.
    @ivar headers: response fields that go with the answer (C{Allow}).
    """

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers


class AnswerReader:
    """
    The common part of a provider's L{Reader}: what every translated
    document of one answer says of itself until the answer says otherwise.

    @ivar model: the model the answer is for.
    @ivar created: its C{created} time.
    @ivar id: its id, unless the provider gives one.
    """

    def __init__(self, model: str, created: int, id: str) -> None:
        self.model = model
        self.created = created
        self.id = id


class HubStream(Protocol):
    """
    An upstream stream being read into OpenAI chunk documents.
    """

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        The chunks that C{data}, the next bytes of the body, completes.

        @raise StreamError: the stream cannot go on.
        """

    def end(self) -> list[dict[str, Any]]:
        """
        The body ended cleanly: the last chunks.

        @raise StreamError: the stream ended before the API's last event.
        """


class Reader(Protocol):
    """
    Reads one provider's answers into OpenAI chat documents.
    """

    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        """
        A whole answer as a C{chat.completion}.
        """

    def stream(self) -> HubStream:
        """
        A reader for one streamed answer.
        """

    def error(self, status: int, headers: Headers, body: bytes) -> UpstreamError:
        """
        An error answer in OpenAI terms.
        """


class ClientStream(Protocol):
    def chunk(self, document: dict[str, Any]) -> bytes:
        """
        The client's bytes for one OpenAI chunk (possibly none).
        """

    def end(self) -> bytes:
        """
        The client's last bytes of a complete stream.
        """


class Writer(Protocol):
    """
    Writes OpenAI chat documents in the client's API.
    """

    def plain(self, completion: dict[str, Any]) -> bytes:
        """
        A whole answer.
        """

    def stream(self) -> ClientStream:
        """
        A writer for one streamed answer.
        """

    def error(self, status: int, message: str, type: str, code: str | None) -> bytes:
        """
        An error body.
        """

    def streamError(self, message: str) -> bytes:
        """
        The event that ends a broken stream.
        """


# Made for every request, and changed by nothing once made: a plain slotted
# class, since a frozen one sets each of its fourteen fields with a call.
@attrs.define(eq=False)
class UpstreamCall:
    """
    One request as it goes to the provider.

    @ivar path: the upstream path and query.
    @ivar operation: the GenAI operation (C{chat}, C{embeddings}, ...) or
        L{None} for endpoints without a model (C{/v1/models}).
    @ivar requestModel: the model the upstream is asked for.
    @ivar modelUnknown: the request has a body the gateway did not read, so
        it cannot say which model it asks for.
    @ivar stream: whether the client asked for a stream.
    @ivar document: the parsed JSON body, when there is one (in OpenAI chat
        terms when it was translated).
    @ivar parameters: span attributes for the request parameters it sets.
    @ivar reader: reads the provider's answers into OpenAI chat documents;
        L{None} when the usage of an OpenAI answer is read as it passes.
    @ivar writer: writes the answer in the client's API; L{None} when the
        answer is passed through as it comes.
    @ivar hideUsage: the gateway asked for a stream's usage that the client
        did not ask for, so the usage chunk is kept from the client.
    @ivar local: an answer the gateway gives itself, without an upstream
        request (a model list made from the backend's configuration).
    @ivar headers: request fields the provider's API needs.
    """

    method: bytes
    path: bytes
    body: bytes = attrs.field(repr=False)
    operation: str | None = None
    requestModel: str | None = None
    modelUnknown: bool = False
    stream: bool = False
    document: dict | None = attrs.field(default=None, repr=False)
    parameters: dict = attrs.Factory(dict)
    reader: Reader | None = None
    writer: Writer | None = None
    hideUsage: bool = False
    local: bytes | None = attrs.field(default=None, repr=False)
    headers: tuple[tuple[bytes, bytes], ...] = ()


# The methods each known endpoint takes (GET /v1/chat/completions lists
# stored completions).
_METHODS = {
    b"/v1/chat/completions": (b"POST", b"GET"),
    b"/v1/completions": (b"POST",),
    b"/v1/embeddings": (b"POST",),
    b"/v1/responses": (b"POST",),
    b"/v1/images/generations": (b"POST",),
    b"/v1/audio/speech": (b"POST",),
    b"/v1/moderations": (b"POST",),
    b"/v1/models": (b"GET", b"HEAD"),
    b"/v1/messages": (b"POST",),
    b"/v1/messages/count_tokens": (b"POST",),
}


def canonicalEndpoint(remainder: bytes) -> bytes:
    """
    The OpenAI-style path that what follows a route's prefix names, in the
    one spelling of the endpoints the gateway knows.
    """
    if remainder in (b"", b"/"):
        return b"/v1/chat/completions"
    if remainder[:4].lower() == b"/v1/" or remainder.lower() == b"/v1":
        rest = b"/v1" + remainder[3:]
    else:
        rest = b"/v1" + remainder
    endpoint = rest.lower()
    return endpoint if endpoint in _METHODS else rest


DOOR = b"/v1/messages"
COUNT_TOKENS = b"/v1/messages/count_tokens"


def clientAPI(remainder: bytes) -> str:
    """
    The API a client speaks, from the path after the route's prefix:
    C{anthropic} at the C{/v1/messages} door, C{openai} everywhere else.
    """
    if remainder[-9:].lower() == b"/messages" or remainder[-22:].lower() == b"/messages/count_tokens":
        if canonicalEndpoint(remainder).lower() in (DOOR, COUNT_TOKENS):
            return "anthropic"
    return "openai"


# The endpoints whose JSON body names the model asked for.
_MODEL_ENDPOINTS = frozenset([
    b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings", b"/v1/responses",
    b"/v1/images/generations", b"/v1/audio/speech", b"/v1/moderations", DOOR, COUNT_TOKENS,
])


def clientModel(method: bytes, remainder: bytes, body: bytes) -> str | None:
    """
    The model a client asks for, as its request names it (before any
    backend's override), or L{None} when it names none the gateway reads.
    A body that is not strict JSON names none here; preparing the call
    refuses it.
    """
    if method != b"POST" or canonicalEndpoint(remainder).lower() not in _MODEL_ENDPOINTS:
        return None
    try:
        model = readJSONObject(body).get("model")
    except BodyError:
        return None
    return model if isinstance(model, str) else None


def checkMethod(method: bytes, endpoint: bytes) -> None:
    """
    Refuse a method the endpoint does not take, with a 405 and C{Allow}.
    """
    methods = _METHODS.get(endpoint.lower())
    if methods is not None and method not in methods:
        allowed = b", ".join(methods)
        raise ProviderError(
            405, f"{endpoint.lower().decode('ascii')} takes {allowed.decode('ascii')}, not "
            f"{method[:20].decode('latin-1')}", "method_not_allowed", ((b"allow", allowed),))


def readBody(body: bytes) -> dict[str, Any]:
    """
    The strict reading of a model endpoint's body.

    @raise ProviderError: a 400 naming what is wrong.
    """
    try:
        return readJSONObject(body)
    except BodyError as e:
        raise ProviderError(400, e.message, e.code) from None


# Request parameters recorded on the upstream call's span, by the name the
# GenAI semantic conventions give them.
_PARAMETERS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
}


def chatParameters(document: dict[str, Any]) -> dict[str, Any]:
    """
    The span attributes for the numeric parameters of an OpenAI request.
    """
    if _PARAMETERS.keys().isdisjoint(document):
        # Most requests set none of them: one look at the keys.
        return {}
    return {
        attribute: document[name]
        for name, attribute in _PARAMETERS.items()
        if isinstance(document.get(name), (int, float))
        and not isinstance(document.get(name), bool)
    }


class Provider:
    """
    What every provider shares: where its server is.

    @ivar name: the provider's name in spans and metrics
        (C{gen_ai.provider.name}).
    @ivar kind: the provider as the configuration names it (C{llm.provider}
        in rules).
    @ivar scheme: C{b"http"} or C{b"https"}.
    @ivar host: the upstream's host as it goes in C{Host}.
    @ivar origin: scheme and authority, the start of every upstream URL.
    @ivar basePath: the path of the backend's URL, without a trailing slash.
    @ivar credentialField: the request field the backend's key goes in.
    @ivar problem: why no request can be sent (a credential that the
        provider itself looks for is missing), or L{None}.
    """

    name = "openai"
    credentialField = b"authorization"
    problem: str | None = None

    @classmethod
    def fromConfig(cls, backend: Backend, environ: Mapping[str, str]) -> Provider:
        """
        The provider of C{backend}, once per configuration load.

        @param environ: the process environment, for providers that look up
            credentials of their own there (AWS's).
        """
        return cls(backend)

    def __init__(self, backend: Backend) -> None:
        parts = urlsplit(backend.url)
        self.backend = backend
        self.kind = backend.provider
        self.scheme = parts.scheme.encode("ascii")
        self.host = parts.netloc.encode("idna")
        self.origin = self.scheme + b"://" + self.host
        self.basePath = parts.path.rstrip("/").encode("utf-8")
        self.serverAddress = parts.hostname or ""
        self.serverPort = parts.port or (443 if parts.scheme == "https" else 80)

    def prepare(self, method: bytes, remainder: bytes, query: bytes, body: bytes,
                now: float = 0.0) -> UpstreamCall:
        """
        Build the upstream call for one client request.

        @param remainder: the request path after the route's prefix.
        @param query: the query string, without C{?}, possibly empty.
        @param now: the time, for the answer's C{created} where the gateway
            writes it.
        @raise ProviderError: when the request cannot be what the provider
            takes.
        """
        raise NotImplementedError()

    def chatCall(self, chat: dict[str, Any], writer: Writer, now: float) -> UpstreamCall:
        """
        The upstream call for an OpenAI chat request (perhaps translated
        from the door), its answer written by C{writer}.
        """
        raise NotImplementedError()

    def door(self, method: bytes, endpoint: bytes, body: bytes, now: float) -> UpstreamCall:
        """
        The call for the C{/v1/messages} door: an Anthropic client's
        request, translated to OpenAI chat and then to the provider.
        """
        if endpoint == COUNT_TOKENS:
            raise ProviderError(400, f"counting tokens is served by anthropic backends; backend "
                                f"'{self.backend.name}' is {self.kind}", "unsupported_endpoint")
        document = readBody(body)
        try:
            chat = messagesToChat(document)
        except TranslationError as e:
            raise ProviderError(400, f"{e.param}: {e.message}", e.code) from None
        return self.chatCall(chat, AnthropicWriter(), now)

    def sign(self, method: bytes, url: bytes, headers: Headers, body: bytes) -> None:
        """
        Add what proves the request comes from the backend's account, when
        that depends on the request itself (AWS signatures); most providers
        need nothing here.
        """


def _openAIErrorType(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


class _OpenAIStream:
    """
    An OpenAI-style chat stream read into its chunk documents.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._finished = False
        self._done = False
        self._error: StreamError | None = None

    def _events(self, events: list) -> list[dict[str, Any]]:
        """
        The chunks of C{events}.  When an event cannot go on, the chunks
        before it are returned and the error is kept for the next call, so
        that the client gets what came before it however the bytes were cut.
        """
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        try:
            for event in events:
                document = self._event(event)
                if document is not None:
                    out.append(document)
        except StreamError as e:
            if not out:
                raise
            self._error = e
        return out

    def _event(self, event: Any) -> dict[str, Any] | None:
        if event.data == "[DONE]":
            self._done = True
            return None
        try:
            document = readJSON(event.data)
        except ValueError:
            raise StreamError("the upstream sent an event that is not JSON") from None
        if not isinstance(document, dict):
            raise StreamError("the upstream sent an event that is not a chunk")
        if event.event == "error" or "error" in document and "choices" not in document:
            raise StreamError(_streamErrorMessage(document))
        for choice in document.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finished = True
        return document

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return self._events(self._parser.feed(data))

    def end(self) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        out = [d for d in map(self._event, self._parser.end()) if d is not None]
        if not (self._finished or self._done):
            raise StreamError("the upstream's stream ended before its last event")
        return out


def _streamErrorMessage(document: dict[str, Any]) -> str:
    """
    What an OpenAI-style error event says, as the reason a stream ended.
    """
    error = document.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message.strip():
        return f"the upstream's stream ended with an error: {message.strip()[:500]}"
    return "the upstream's stream ended with an error"


class OpenAIReader:
    """
    Reads OpenAI chat answers: already in the common form.
    """

    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return document

    def stream(self) -> HubStream:
        return _OpenAIStream()

    def error(self, status: int, headers: Headers, body: bytes) -> UpstreamError:
        message = f"the upstream answered {status}"
        type = _openAIErrorType(status)
        code = None
        try:
            error = readJSON(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            if isinstance(error.get("message"), str):
                message = error["message"][:2000]
            if isinstance(error.get("type"), str):
                type = error["type"]
            if isinstance(error.get("code"), str):
                code = error["code"]
        return UpstreamError(status, message, type, code)


class _OpenAIClientStream:
    def __init__(self, hideUsage: bool) -> None:
        self.hideUsage = hideUsage
        self._encode = ChunkEncoder().encode

    def chunk(self, document: dict[str, Any]) -> bytes:
        if self.hideUsage and not document.get("choices"):
            return b""
        return self._encode(document)

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"


class OpenAIWriter:
    """
    Writes answers for an OpenAI chat client.

    @ivar hideUsage: leave out a stream's usage chunk (the client did not
        ask for it).
    """

    def __init__(self, hideUsage: bool) -> None:
        self.hideUsage = hideUsage

    def plain(self, completion: dict[str, Any]) -> bytes:
        return writeJSON(completion)

    def stream(self) -> ClientStream:
        return _OpenAIClientStream(self.hideUsage)

    def error(self, status: int, message: str, type: str, code: str | None) -> bytes:
        return openAIError(UpstreamError(status, message, type, code))

    def streamError(self, message: str) -> bytes:
        return b"event: error\ndata: " + openAIError(
            UpstreamError(502, message, "upstream_error", "upstream_stream_error")) + b"\n\n"


class AnthropicWriter:
    """
    Writes answers for a client at the C{/v1/messages} door, in the
    Messages API.
    """

    def plain(self, completion: dict[str, Any]) -> bytes:
        return writeJSON(completionToMessage(completion))

    def stream(self) -> ClientStream:
        return _MessagesClientStream()

    def error(self, status: int, message: str, type: str, code: str | None) -> bytes:
        return errorToAnthropic(status, message)

    def streamError(self, message: str) -> bytes:
        return b"event: error\ndata: " + errorToAnthropic(502, message) + b"\n\n"


class _MessagesClientStream:
    """
    The Messages stream for chunks, its model the one the first chunk
    names.
    """

    def __init__(self) -> None:
        self._stream: ChunksToMessages | None = None

    def chunk(self, document: dict[str, Any]) -> bytes:
        if self._stream is None:
            model = document.get("model")
            self._stream = ChunksToMessages(model if isinstance(model, str) else "")
        return self._stream.chunk(document)

    def end(self) -> bytes:
        if self._stream is None:
            raise StreamError("the upstream's stream ended before its first event")
        return self._stream.end()


class TranslatingProvider(Provider):
    """
    A provider whose API is not OpenAI's: chat completions are translated
    to it and back, its model list is given in OpenAI's shape, and other
    OpenAI endpoints are refused with a 400 that names the provider.

    Subclasses say how: L{translate} a chat request, the L{Reader} of its
    answers, and the model list.
    """

    def prepare(self, method: bytes, remainder: bytes, query: bytes, body: bytes,
                now: float = 0.0) -> UpstreamCall:
        endpoint = canonicalEndpoint(remainder).lower()
        checkMethod(method, endpoint)
        if endpoint == b"/v1/models":
            return self.models(method)
        if endpoint in (DOOR, COUNT_TOKENS):
            return self.door(method, endpoint, body, now)
        if endpoint != b"/v1/chat/completions" or method != b"POST":
            raise ProviderError(
                400, f"the {self.kind} backend '{self.backend.name}' serves chat completions "
                f"and the model list, not {method[:20].decode('latin-1')} "
                f"{endpoint[:100].decode('latin-1')}", "unsupported_endpoint")
        chat = readBody(body)
        options = chat.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        return self.chatCall(chat, OpenAIWriter(hideUsage=not asked), now)

    def chatCall(self, chat: dict[str, Any], writer: Writer, now: float) -> UpstreamCall:
        """
        The upstream call for an OpenAI chat request, its answer written by
        C{writer}.
        """
        if self.backend.model is not None:
            chat["model"] = self.backend.model
        model = chat.get("model")
        if not isinstance(model, str):
            raise ProviderError(400, "the request names no model", "invalid_field")
        stream = chat.get("stream") is True
        try:
            path, native = self.translate(chat, model, stream)
        except TranslationError as e:
            raise ProviderError(400, f"{self.kind} cannot take {e.param}: {e.message}",
                                e.code) from None
        return UpstreamCall(
            b"POST",
            path,
            writeJSON(native),
            operation="chat",
            requestModel=model,
            stream=stream,
            document=chat,
            parameters=chatParameters(chat),
            reader=self.reader(model, stream, int(now), "chatcmpl-" + secrets.token_hex(12)),
            writer=writer,
            headers=self.headers,
        )

    headers: tuple[tuple[bytes, bytes], ...] = ()

    def translate(self, chat: dict[str, Any], model: str, stream: bool) -> tuple[bytes, dict[str, Any]]:
        """
        The upstream path and body for an OpenAI chat request.

        @raise TranslationError: a field the provider cannot take.
        """
        raise NotImplementedError()

    def reader(self, model: str, stream: bool, created: int, id: str) -> Reader:
        """
        The reader of one answer.
        """
        raise NotImplementedError()

    def models(self, method: bytes) -> UpstreamCall:
        """
        The call (or the gateway's own answer) for C{GET /v1/models}.
        """
        model = self.backend.model
        return UpstreamCall(method, b"", b"", local=writeJSON({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": self.kind}
        ] if model else []}))
