"""
The OpenAI provider (and every OpenAI-compatible server).

Path mapping, after the route's prefix has been taken off (the path is in
the normal form of L{aigateway.web.target} by then):
  - empty or C{/}: C{/v1/chat/completions}, as in C{POST /openai};
  - C{/v1/...}: forwarded as it is, so an SDK whose C{base_url} ends in
    C{/openai/v1} works for chat, models, embeddings and responses;
  - anything else: C{/v1} is put in front (C{base_url} ending in C{/openai}).
The endpoints the gateway knows are recognised in any letter case and
forwarded in their one spelling, and a method they do not take is a 405
here: what the gateway judged is what the provider gets.

JSON bodies of the endpoints that take a C{model} are read strictly
(L{aigateway.llm.body}: a duplicate key, a non-string model or bad UTF-8 is a
400 here) and rewritten only where the backend says so: its C{model}
replaces the one asked for, and a stream that did not ask for usage gets
C{stream_options.include_usage} so that its token counts are known.  A body
sent anywhere else is not read, and its model counts as unknown.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import attrs

from aigateway.llm.body import BodyError, readJSONObject
from aigateway.config import Backend

__all__ = ["OpenAIProvider", "ProviderError", "UpstreamCall"]

# The GenAI operation of each model endpoint.
_OPERATIONS = {
    b"/v1/chat/completions": "chat",
    b"/v1/completions": "text_completion",
    b"/v1/embeddings": "embeddings",
    b"/v1/responses": "responses",
}
# Endpoints whose JSON body names a model, though not one of the above.
_MODEL_BODIES = frozenset([b"/v1/images/generations", b"/v1/audio/speech", b"/v1/moderations"])
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
}


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
_STREAM_USAGE = ("chat", "text_completion")


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


@attrs.frozen
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
    @ivar document: the parsed JSON body, when there is one.
    @ivar parameters: span attributes for the request parameters it sets.
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


class OpenAIProvider:
    """
    Rewrites requests for an OpenAI-style API.

    @ivar scheme: C{b"http"} or C{b"https"}.
    @ivar host: the upstream's host as it goes in C{Host}.
    @ivar origin: scheme and authority, the start of every upstream URL.
    """

    name = "openai"

    def __init__(self, backend: Backend) -> None:
        parts = urlsplit(backend.url)
        self.backend = backend
        self.scheme = parts.scheme.encode("ascii")
        self.host = parts.netloc.encode("idna")
        self.origin = self.scheme + b"://" + self.host
        self.basePath = parts.path.rstrip("/").encode("utf-8")
        self.serverAddress = parts.hostname or ""
        self.serverPort = parts.port or (443 if parts.scheme == "https" else 80)

    def upstreamPath(self, remainder: bytes) -> tuple[bytes, bytes]:
        """
        Map what follows the route's prefix to the provider's path.

        @return: the path, and the endpoint it names in lower case.
        """
        if remainder in (b"", b"/"):
            rest = b"/v1/chat/completions"
        elif remainder[:4].lower() == b"/v1/" or remainder.lower() == b"/v1":
            rest = b"/v1" + remainder[3:]
        else:
            rest = b"/v1" + remainder
        endpoint = rest.lower()
        if endpoint in _METHODS:
            rest = endpoint
        return self.basePath + rest, endpoint

    def prepare(
        self, method: bytes, remainder: bytes, query: bytes, body: bytes
    ) -> UpstreamCall:
        """
        Build the upstream call for one client request.

        @param remainder: the request path after the route's prefix.
        @param query: the query string, without C{?}, possibly empty.
        @raise ProviderError: when the method or the body cannot be what the
            endpoint takes.
        """
        path, endpoint = self.upstreamPath(remainder)
        methods = _METHODS.get(endpoint)
        if methods is not None and method not in methods:
            allowed = b", ".join(methods)
            raise ProviderError(
                405, f"{endpoint.decode('ascii')} takes {allowed.decode('ascii')}, not "
                f"{method[:20].decode('latin-1')}", "method_not_allowed", ((b"allow", allowed),))
        fullPath = path + b"?" + query if query else path
        if method != b"POST":
            return UpstreamCall(method, fullPath, body, modelUnknown=bool(body))
        operation = _OPERATIONS.get(endpoint)
        if operation is None and endpoint not in _MODEL_BODIES:
            return UpstreamCall(method, fullPath, body, modelUnknown=bool(body))
        try:
            document = readJSONObject(body)
        except BodyError as e:
            raise ProviderError(400, e.message, e.code) from None
        if operation is None:
            return UpstreamCall(method, fullPath, body, requestModel=document.get("model"))
        rewrite = False
        if self.backend.model is not None:
            document["model"] = self.backend.model
            rewrite = True
        stream = document.get("stream") is True
        if stream and self.backend.streamUsage and operation in _STREAM_USAGE:
            options = document.get("stream_options")
            if options is None:
                document["stream_options"] = {"include_usage": True}
                rewrite = True
            elif options.get("include_usage") is not True:
                options["include_usage"] = True
                rewrite = True
        if rewrite:
            body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        parameters = {
            attribute: document[name]
            for name, attribute in _PARAMETERS.items()
            if isinstance(document.get(name), (int, float))
            and not isinstance(document.get(name), bool)
        }
        return UpstreamCall(
            method,
            fullPath,
            body,
            operation=operation,
            requestModel=document.get("model"),
            stream=stream,
            document=document,
            parameters=parameters,
        )
