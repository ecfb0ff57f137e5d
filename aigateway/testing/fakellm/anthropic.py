"""
Anthropic's Messages API: C{/v1/messages} (plain and streamed),
C{/v1/messages/count_tokens} and the model list, with the C{x-api-key}
check, the required C{anthropic-version} and Anthropic's error envelope.
"""

from __future__ import annotations

import hmac
import json
from functools import partial
from typing import Any, Callable
from urllib.parse import unquote

from twisted.web.server import Request

from aigateway.testing.fakellm.core import (
    POEM,
    Answer,
    Exchange,
    Refusal,
    Steering,
    StreamPlan,
    answerText,
    document,
    encode,
    splitInTwo,
    textWords,
    toolArguments,
)

__all__ = ["ANTHROPIC_MODELS", "Anthropic", "anthropicError"]

ANTHROPIC_MODELS: tuple[tuple[str, str], ...] = (
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
)
"""
The model ids and display names C{GET /v1/models} lists to Anthropic clients.
"""

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_SPACED = tuple(json.dumps(word + " ").encode("utf-8") for word in POEM)
_BARE = tuple(json.dumps(word).encode("utf-8") for word in POEM)


def anthropicError(refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """
    A refusal in Anthropic's error envelope.  A refusal's code is used as
    the error type only when it is one of Anthropic's.
    """
    status = refusal.status
    kind = refusal.code if refusal.code in _TYPES.values() else _TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error")
    body = encode({"type": "error", "error": {"type": kind, "message": refusal.message}})
    return body, refusal.headers


def _event(kind: str, fields: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode("ascii") + b"\ndata: " + encode(
        dict({"type": kind}, **fields)) + b"\n\n"


def _promptTokens(doc: dict[str, Any]) -> int:
    count = textWords(doc.get("system"))
    messages = doc.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                count += textWords(message.get("content"))
    return count


def _tools(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [tool["name"] for tool in value
            if isinstance(tool, dict) and isinstance(tool.get("name"), str)]


class Anthropic:
    """
    Anthropic's Messages API.
    """

    def __init__(self, key: str | None, nextNumber: Callable[[], int]) -> None:
        """
        @param key: when set, the key every request must carry, as
            C{x-api-key} or, as the Anthropic SDK sends it, as a bearer token.
        @param nextNumber: numbers answers, for their ids.
        """
        self._expected = None if key is None else key.encode("utf-8")
        self._bearer = None if key is None else b"Bearer " + key.encode("utf-8")
        self._nextNumber = nextNumber
        models = [
            {"type": "model", "id": ident, "display_name": name,
             "created_at": "2025-01-01T00:00:00Z"}
            for ident, name in ANTHROPIC_MODELS
        ]
        self._models = {str(m["id"]): encode(m) for m in models}
        self._modelList = encode({"data": models, "has_more": False,
                                  "first_id": models[0]["id"], "last_id": models[-1]["id"]})

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request without the right C{x-api-key} (or bearer token),
        or without C{anthropic-version}.
        """
        if self._expected is not None and self._bearer is not None:
            presented = request.getHeader(b"x-api-key")
            if presented is not None:
                right = hmac.compare_digest(presented, self._expected)
            else:
                right = hmac.compare_digest(request.getHeader(b"authorization") or b"",
                                            self._bearer)
            if not right:
                raise Refusal(401, "invalid x-api-key", "authentication_error")
        if not request.getHeader(b"anthropic-version"):
            raise Refusal(400, "anthropic-version: header is required", "invalid_request_error")

    errorAnswer = staticmethod(anthropicError)

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        Messages, token counts and models; a 404 for the rest.
        """
        path, method = request.path, request.method
        if path == b"/v1/messages" and method == b"POST":
            return self._messages(request, body)
        if path == b"/v1/messages/count_tokens" and method == b"POST":
            doc = self._checked(body)
            answer = encode({"input_tokens": _promptTokens(doc)})
            return partial(Exchange.respond, status=200, body=answer)
        if path == b"/v1/models" and method == b"GET":
            return partial(Exchange.respond, status=200, body=self._modelList)
        if path.startswith(b"/v1/models/") and method == b"GET":
            model = self._models.get(unquote(path[len(b"/v1/models/"):].decode("latin-1")))
            if model is not None:
                return partial(Exchange.respond, status=200, body=model)
            raise Refusal(404, "model: not found", "not_found_error")
        raise Refusal(404, "Not Found", "not_found_error")

    def _checked(self, body: bytes) -> dict[str, Any]:
        doc = document(body)
        if not isinstance(doc.get("model"), str):
            raise Refusal(400, "model: Field required", "invalid_request_error")
        if not isinstance(doc.get("messages"), list):
            raise Refusal(400, "messages: Field required", "invalid_request_error")
        return doc

    def _messages(self, request: Request, body: bytes) -> Answer:
        doc = self._checked(body)
        maxTokens = doc.get("max_tokens")
        if maxTokens is None:
            raise Refusal(400, "max_tokens: Field required", "invalid_request_error")
        if not isinstance(maxTokens, int) or isinstance(maxTokens, bool) or maxTokens < 1:
            raise Refusal(400, "max_tokens: must be an integer of at least 1",
                          "invalid_request_error")
        steering = Steering.fromRequest(request)
        tool = steering.checkTool(_tools(doc.get("tools")))
        count, cut = steering.cut(maxTokens)
        stop = "tool_use" if tool is not None else "max_tokens" if cut else "end_turn"
        number = self._nextNumber()
        ident = f"msg_fake_{number}"
        toolId = f"toolu_fake_{number}"
        model = doc["model"]
        inputTokens = _promptTokens(doc)
        outputTokens = count + steering.reasoning
        usage = {
            "input_tokens": inputTokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": steering.cached,
            "output_tokens": outputTokens,
        }
        headers = ((b"request-id", f"req_fake_{number}".encode("ascii")),)
        arguments = toolArguments(count)
        if doc.get("stream") is not True:
            content: dict[str, Any]
            if tool is not None:
                content = {"type": "tool_use", "id": toolId, "name": tool, "input": arguments}
            else:
                content = {"type": "text", "text": answerText(count)}
            answer = encode({
                "id": ident, "type": "message", "role": "assistant", "model": model,
                "content": [content], "stop_reason": stop, "stop_sequence": None,
                "usage": usage,
            })
            return partial(Exchange.respond, status=200, body=answer, headers=headers)

        start = {
            "id": ident, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": dict(usage, output_tokens=1),
        }
        block: dict[str, Any]
        piece: Callable[[int], bytes]
        if tool is not None:
            block = {"type": "tool_use", "id": toolId, "name": tool, "input": {}}
            pieces = tuple(
                _event("content_block_delta", {"index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": part}})
                for part in splitInTwo(json.dumps(arguments))
            )
            piece, pieceCount = pieces.__getitem__, len(pieces)
        else:
            block = {"type": "text", "text": ""}
            prefix = b'event: content_block_delta\ndata: {"type":"content_block_delta",' \
                     b'"index":0,"delta":{"type":"text_delta","text":'
            suffix = b"}}\n\n"

            def piece(index: int) -> bytes:
                spelled = _BARE if index == count - 1 else _SPACED
                return prefix + spelled[index % len(POEM)] + suffix

            pieceCount = count
        failure = None
        if steering.streamError is not None:
            failure = _event("error", {"error": {
                "type": steering.streamError,
                "message": "The fake LLM was asked to fail the stream.",
            }})
        plan = StreamPlan(
            head=(
                _event("message_start", {"message": start}),
                _event("content_block_start", {"index": 0, "content_block": block}),
                _event("ping", {}),
            ),
            piece=piece,
            count=pieceCount,
            tail=(
                _event("content_block_stop", {"index": 0}),
                _event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": outputTokens}}),
                _event("message_stop", {}),
            ),
            gap=steering.gap,
            dropAfter=steering.dropAfter,
            failure=failure,
            headers=headers,
        )
        return partial(Exchange.stream, plan=plan)
