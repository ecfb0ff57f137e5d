"""
The OpenAI provider (and every OpenAI-compatible server), and Azure OpenAI.

Path mapping, after the route's prefix has been taken off (the path is in
the normal form of L{aigateway.web.target} by then):
  - empty or C{/}: C{/v1/chat/completions}, as in C{POST /openai};
  - C{/v1/...}: forwarded as it is, so an SDK whose C{base_url} ends in
    C{/openai/v1} works for chat, models, embeddings and responses;
  - anything else: C{/v1} is put in front (C{base_url} ending in C{/openai}).
A backend URL may end in C{/v1} or not (C{http://localhost:11434/v1}, as
Ollama, vLLM and LM Studio write it, is the server root plus C{/v1}).
The endpoints the gateway knows are recognised in any letter case and
forwarded in their one spelling, and a method they do not take is a 405
here: what the gateway judged is what the provider gets.

JSON bodies of the endpoints that take a C{model} are read strictly
(L{aigateway.llm.body}: a duplicate key, a non-string model or bad UTF-8 is a
400 here) and rewritten only where the backend says so: its C{model}
replaces the one asked for, and a stream that did not ask for usage gets
C{stream_options.include_usage} so that its token counts are known (the
usage chunk is then kept from the client, who did not ask for it).  A body
sent anywhere else is not read, and its model counts as unknown.

Azure OpenAI serves the same API under a deployment:
C{/openai/deployments/{deployment}/chat/completions?api-version=...}, its
key in C{api-key}.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aigateway.config import Backend
from aigateway.llm.provider import (
    COUNT_TOKENS,
    DOOR,
    OpenAIReader,
    Provider,
    ProviderError,
    UpstreamCall,
    Writer,
    canonicalEndpoint,
    chatParameters,
    checkMethod,
    readBody,
)
from aigateway.llm.translate import writeJSON

__all__ = ["AzureOpenAIProvider", "OpenAIProvider", "ProviderError", "UpstreamCall", "UsageChunkFilter"]

# The GenAI operation of each model endpoint.
_OPERATIONS = {
    b"/v1/chat/completions": "chat",
    b"/v1/completions": "text_completion",
    b"/v1/embeddings": "embeddings",
    b"/v1/responses": "responses",
}
# Endpoints whose JSON body names a model, though not one of the above.
_MODEL_BODIES = frozenset([b"/v1/images/generations", b"/v1/audio/speech", b"/v1/moderations"])
_STREAM_USAGE = ("chat", "text_completion")


def askForUsage(document: dict[str, Any]) -> bool:
    """
    Make a stream request ask for its usage chunk.

    @return: whether the client had not asked for it.
    """
    options = document.get("stream_options")
    if options is None:
        document["stream_options"] = {"include_usage": True}
        return True
    if options.get("include_usage") is not True:
        options["include_usage"] = True
        return True
    return False


class OpenAIProvider(Provider):
    """
    Rewrites requests for an OpenAI-style API.
    """

    name = "openai"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        if self.basePath.lower().endswith(b"/v1"):
            self.basePath = self.basePath[:-3]

    def upstreamPath(self, remainder: bytes) -> tuple[bytes, bytes]:
        """
        Map what follows the route's prefix to the provider's path.

        @return: the path, and the endpoint it names in lower case.
        """
        rest = canonicalEndpoint(remainder)
        return self.basePath + rest, rest.lower()

    def prepare(
        self, method: bytes, remainder: bytes, query: bytes, body: bytes, now: float = 0.0
    ) -> UpstreamCall:
        path, endpoint = self.upstreamPath(remainder)
        checkMethod(method, endpoint)
        if endpoint in (DOOR, COUNT_TOKENS):
            return self.door(method, endpoint, body, now)
        fullPath = path + b"?" + query if query else path
        if method != b"POST":
            return UpstreamCall(method, fullPath, body, modelUnknown=bool(body))
        operation = _OPERATIONS.get(endpoint)
        if operation is None and endpoint not in _MODEL_BODIES:
            return UpstreamCall(method, fullPath, body, modelUnknown=bool(body))
        document = readBody(body)
        if operation is None:
            return UpstreamCall(method, fullPath, body, requestModel=document.get("model"))
        return self.modelCall(method, fullPath, body, document, operation)

    def chatPath(self) -> bytes:
        """
        Where chat completions translated from the door go.
        """
        return self.basePath + b"/v1/chat/completions"

    def chatCall(self, chat: dict[str, Any], writer: Writer, now: float) -> UpstreamCall:
        if self.backend.model is not None:
            chat["model"] = self.backend.model
        stream = chat.get("stream") is True
        if stream:
            askForUsage(chat)
        return UpstreamCall(
            b"POST",
            self.chatPath(),
            writeJSON(chat),
            operation="chat",
            requestModel=chat.get("model"),
            stream=stream,
            document=chat,
            parameters=chatParameters(chat),
            reader=OpenAIReader(),
            writer=writer,
        )

    def modelCall(self, method: bytes, path: bytes, body: bytes, document: dict[str, Any],
                  operation: str) -> UpstreamCall:
        """
        The call for a model endpoint's body, rewritten as the backend says.
        """
        rewrite = False
        if self.backend.model is not None:
            document["model"] = self.backend.model
            rewrite = True
        stream = document.get("stream") is True
        hideUsage = False
        if stream and self.backend.streamUsage and operation in _STREAM_USAGE:
            hideUsage = askForUsage(document)
            rewrite = rewrite or hideUsage
        if rewrite:
            body = writeJSON(document)
        return UpstreamCall(
            method,
            path,
            body,
            operation=operation,
            requestModel=document.get("model"),
            stream=stream,
            document=document,
            parameters=chatParameters(document),
            hideUsage=hideUsage,
        )


# The Azure OpenAI endpoints under a deployment.
_AZURE_DEPLOYMENT = frozenset([
    b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings",
    b"/v1/images/generations", b"/v1/audio/speech",
])


class AzureOpenAIProvider(OpenAIProvider):
    """
    Azure OpenAI: the OpenAI API under the backend's deployment.
    """

    name = "azure.ai.openai"
    credentialField = b"api-key"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        assert backend.deployment is not None and backend.apiVersion is not None
        self.deploymentPath = self.basePath + b"/openai/deployments/" + backend.deployment.encode("ascii")
        self.apiVersion = b"api-version=" + backend.apiVersion.encode("ascii")

    def prepare(
        self, method: bytes, remainder: bytes, query: bytes, body: bytes, now: float = 0.0
    ) -> UpstreamCall:
        endpoint = canonicalEndpoint(remainder).lower()
        checkMethod(method, endpoint)
        if endpoint == b"/v1/models":
            return UpstreamCall(method, b"", b"", local=self._models())
        if endpoint in (DOOR, COUNT_TOKENS):
            return self.door(method, endpoint, body, now)
        if endpoint not in _AZURE_DEPLOYMENT:
            raise ProviderError(
                400, f"the azure-openai backend '{self.backend.name}' serves chat completions, "
                f"completions, embeddings, images and speech, not {endpoint[:100].decode('latin-1')}",
                "unsupported_endpoint")
        path = self.deploymentPath + endpoint[3:] + b"?" + self.apiVersion
        document = readBody(body)
        operation = _OPERATIONS.get(endpoint)
        if operation is None:
            return UpstreamCall(method, path, body, requestModel=document.get("model"))
        return self.modelCall(method, path, body, document, operation)

    def chatPath(self) -> bytes:
        return self.deploymentPath + b"/chat/completions?" + self.apiVersion

    def _models(self) -> bytes:
        model = self.backend.model or self.backend.deployment
        return writeJSON({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "azure"}]})




_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _usageOnly(event: bytes) -> bool:
    """
    Whether an SSE event is a chat stream's usage chunk (no choices).
    """
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))
    try:
        document = json.loads(data)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("choices") == [] and "usage" in document


class UsageChunkFilter:
    """
    Passes an OpenAI chat stream on, event by event, without the usage
    chunk that the gateway asked for and the client did not.

    Bytes are held back only until the event they belong to is complete.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """
        The bytes of the complete events that C{data} ends, less the usage
        chunk.
        """
        buffer = self._pending + data
        last = None
        for last in _BOUNDARY.finditer(buffer):
            pass
        if last is None:
            self._pending = buffer
            return b""
        complete, self._pending = buffer[:last.end()], buffer[last.end():]
        if b"[]" not in complete:
            return complete
        out = []
        start = 0
        for boundary in _BOUNDARY.finditer(complete):
            event = complete[start:boundary.end()]
            start = boundary.end()
            if b"[]" in event and _usageOnly(event):
                continue
            out.append(event)
        return b"".join(out)

    def end(self) -> bytes:
        """
        What was left of a stream that ended without a last blank line.
        """
        rest, self._pending = self._pending, b""
        return b"" if _usageOnly(rest) else rest
