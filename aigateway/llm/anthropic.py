"""
The Anthropic provider: the Messages API at C{/v1/messages}, the key in
C{x-api-key}, C{anthropic-version: 2023-06-01} unless the client sends its
own.

An OpenAI chat request is translated to a Messages request and its answer
back (L{aigateway.llm.messages}); at the C{/v1/messages} door an Anthropic
client's request is passed through as it is, its model rewritten when the
backend names one, and its usage read from the answer.  C{count_tokens} is
passed through as well.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from aigateway.llm.messages import (
    ANTHROPIC_VERSION,
    MessagesStream,
    errorFromAnthropic,
    messageToCompletion,
    chatToMessages,
)
from aigateway.llm.provider import (
    AnswerReader,
    COUNT_TOKENS,
    OpenAIWriter,
    TranslatingProvider,
    UpstreamCall,
    chatParameters,
    readBody,
)
from aigateway.llm.translate import UpstreamError, writeJSON

__all__ = ["AnthropicProvider", "modelsToOpenAI"]


def modelsToOpenAI(body: dict[str, Any]) -> dict[str, Any]:
    """
    The OpenAI model list for an Anthropic C{GET /v1/models} answer.
    """
    data = []
    models = body.get("data")
    for model in models if isinstance(models, list) else []:
        if isinstance(model, dict) and isinstance(model.get("id"), str) and model["id"]:
            data.append({"id": model["id"], "object": "model", "created": 0,
                         "owned_by": "anthropic"})
    return {"object": "list", "data": data}


class _AnthropicReader(AnswerReader):
    """
    Reads one Messages answer into OpenAI chat documents.
    """

    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return messageToCompletion(document, created=self.created)

    def stream(self) -> MessagesStream:
        return MessagesStream(self.model, self.created)

    def error(self, status: int, headers: Headers, body: bytes) -> UpstreamError:
        return errorFromAnthropic(status, body)


class _ModelListReader(_AnthropicReader):
    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return modelsToOpenAI(document)


class AnthropicProvider(TranslatingProvider):
    """
    Anthropic's Messages API.
    """

    name = "anthropic"
    credentialField = b"x-api-key"
    headers = ((b"anthropic-version", ANTHROPIC_VERSION.encode("ascii")),)

    def translate(self, chat: dict[str, Any], model: str, stream: bool) -> tuple[bytes, dict[str, Any]]:
        return self.basePath + b"/v1/messages", chatToMessages(
            chat, model=model, defaultMaxTokens=self.backend.maxTokens)

    def reader(self, model: str, stream: bool, created: int, id: str) -> _AnthropicReader:
        return _AnthropicReader(model, created, id)

    def models(self, method: bytes) -> UpstreamCall:
        return UpstreamCall(b"GET", self.basePath + b"/v1/models?limit=1000", b"",
                            reader=_ModelListReader("", 0, ""), writer=OpenAIWriter(False),
                            headers=self.headers)

    def door(self, method: bytes, endpoint: bytes, body: bytes, now: float) -> UpstreamCall:
        """
        The door's requests are the Messages API's own: passed through.
        """
        document = readBody(body)
        rewrite = False
        if self.backend.model is not None:
            document["model"] = self.backend.model
            rewrite = True
        model = document.get("model")
        if endpoint == COUNT_TOKENS:
            return UpstreamCall(b"POST", self.basePath + COUNT_TOKENS,
                                writeJSON(document) if rewrite else body,
                                requestModel=model, headers=self.headers)
        stream = document.get("stream") is True
        return UpstreamCall(
            b"POST",
            self.basePath + b"/v1/messages",
            writeJSON(document) if rewrite else body,
            operation="chat",
            requestModel=model,
            stream=stream,
            document=document,
            parameters=chatParameters(document),
            reader=_AnthropicReader(model or "", int(now), ""),
            headers=self.headers,
        )
