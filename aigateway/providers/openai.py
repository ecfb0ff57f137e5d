"""
The OpenAI provider (and every OpenAI-compatible server).

Path mapping, after the route's prefix has been taken off:
  - empty or C{/}: C{/v1/chat/completions}, as in C{POST /openai};
  - C{/v1/...}: forwarded as it is, so an SDK whose C{base_url} ends in
    C{/openai/v1} works for chat, models, embeddings and responses;
  - anything else: C{/v1} is put in front (C{base_url} ending in C{/openai}).

JSON bodies of the endpoints that take a C{model} are checked (bad JSON is a
400 here, not a confusing answer from upstream) and rewritten only where the
backend says so: its C{model} replaces the one asked for, and a stream that
did not ask for usage gets C{stream_options.include_usage} so that its token
counts are known.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import attrs

from aigateway.config import Backend

__all__ = ["OpenAIProvider", "ProviderError", "UpstreamCall"]

_JSON_ENDPOINTS = {
    b"/v1/chat/completions": "chat",
    b"/v1/completions": "text_completion",
    b"/v1/embeddings": "embeddings",
    b"/v1/responses": "responses",
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
    @ivar stream: whether the client asked for a stream.
    @ivar document: the parsed JSON body, when there is one.
    @ivar parameters: span attributes for the request parameters it sets.
    """

    method: bytes
    path: bytes
    body: bytes = attrs.field(repr=False)
    operation: str | None = None
    requestModel: str | None = None
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

    def upstreamPath(self, remainder: bytes) -> bytes:
        """
        Map what follows the route's prefix to the provider's path.
        """
        if remainder in (b"", b"/"):
            return self.basePath + b"/v1/chat/completions"
        if remainder == b"/v1" or remainder.startswith(b"/v1/"):
            return self.basePath + remainder
        return self.basePath + b"/v1" + remainder

    def prepare(
        self, method: bytes, remainder: bytes, query: bytes, body: bytes
    ) -> UpstreamCall:
        """
        Build the upstream call for one client request.

        @param remainder: the request path after the route's prefix.
        @param query: the query string, without C{?}, possibly empty.
        @raise ProviderError: when the body cannot be what the endpoint takes.
        """
        path = self.upstreamPath(remainder)
        operation = _JSON_ENDPOINTS.get(path[len(self.basePath):]) if method == b"POST" else None
        fullPath = path + b"?" + query if query else path
        if operation is None:
            return UpstreamCall(method, fullPath, body)
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ProviderError(400, "the request body is not valid JSON", "invalid_json") from None
        if not isinstance(document, dict):
            raise ProviderError(400, "the request body must be a JSON object", "invalid_json")
        rewrite = False
        if self.backend.model is not None:
            document["model"] = self.backend.model
            rewrite = True
        stream = document.get("stream") is True
        if stream and self.backend.streamUsage and operation in _STREAM_USAGE:
            options = document.get("stream_options")
            if not isinstance(options, dict):
                document["stream_options"] = {"include_usage": True}
                rewrite = True
            elif options.get("include_usage") is not True:
                options["include_usage"] = True
                rewrite = True
        if rewrite:
            body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        model = document.get("model")
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
            requestModel=model if isinstance(model, str) else None,
            stream=stream,
            document=document,
            parameters=parameters,
        )
