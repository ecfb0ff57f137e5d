"""
Google's Gemini API (C{/v1beta}): C{generateContent},
C{streamGenerateContent} (server-sent events with C{alt=sse}, else a JSON
array written piece by piece), C{countTokens} and the model list, with the
C{x-goog-api-key} (or C{?key=}) check and Google's error envelope.
"""

from __future__ import annotations

import hmac
from functools import partial
from typing import Any, Callable
from urllib.parse import unquote

from twisted.web.server import Request

from aigateway.testing.fakellm.core import (
    Answer,
    Exchange,
    Refusal,
    Steering,
    StreamPlan,
    answerText,
    document,
    encode,
    queryArgument,
    textWords,
    toolArguments,
)

__all__ = ["GEMINI_MODELS", "STATUSES", "Gemini", "geminiError"]

GEMINI_MODELS: tuple[str, ...] = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash")
"""
The model ids C{GET /v1beta/models} lists.
"""

STATUSES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""
The Google status names of HTTP statuses.
"""

_CODES = {name: code for code, name in STATUSES.items()}


def _status(status: int) -> str:
    return STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def geminiError(refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """
    A refusal in Google's error envelope.  A refusal's code is used as the
    status name only when it is one of Google's.
    """
    name = refusal.code if refusal.code in _CODES else _status(refusal.status)
    error: dict[str, Any] = {"code": refusal.status, "message": refusal.message, "status": name}
    if refusal.code == "API_KEY_INVALID":
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
    elif refusal.status == 429:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": "1s"}]
    return encode({"error": error}), refusal.headers


def _promptTokens(doc: dict[str, Any]) -> int:
    count = 0
    system = doc.get("systemInstruction", doc.get("system_instruction"))
    if isinstance(system, dict):
        count += textWords(system.get("parts"))
    contents = doc.get("contents")
    if isinstance(contents, list):
        for content in contents:
            if isinstance(content, dict):
                count += textWords(content.get("parts"))
    return count


def _tools(value: object) -> list[str]:
    names: list[str] = []
    if isinstance(value, list):
        for tool in value:
            declarations = tool.get("functionDeclarations",
                                    tool.get("function_declarations")) \
                if isinstance(tool, dict) else None
            if isinstance(declarations, list):
                names.extend(d["name"] for d in declarations
                             if isinstance(d, dict) and isinstance(d.get("name"), str))
    return names


class Gemini:
    """
    The Gemini API.
    """

    def __init__(self, key: str | None, nextNumber: Callable[[], int]) -> None:
        """
        @param key: when set, the key every request must carry.
        @param nextNumber: numbers answers, for their ids.
        """
        self._expected = None if key is None else key.encode("utf-8")
        self._nextNumber = nextNumber
        models = [
            {"name": f"models/{model}", "version": "001", "displayName": model,
             "description": "A fake Gemini model.", "inputTokenLimit": 1048576,
             "outputTokenLimit": 65536,
             "supportedGenerationMethods": ["generateContent", "countTokens"]}
            for model in GEMINI_MODELS
        ]
        self._models = {model: encode(m) for model, m in zip(GEMINI_MODELS, models)}
        self._modelList = encode({"models": models})

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request without the key in C{x-goog-api-key} or C{?key=}.
        """
        if self._expected is None:
            return
        presented = request.getHeader(b"x-goog-api-key")
        if presented is None:
            presented = queryArgument(request, b"key")
        if presented is None:
            raise Refusal(403, "Method doesn't allow unregistered callers (callers without "
                               "established identity). Please use API Key or other form of "
                               "API consumer identity to call this API.", "PERMISSION_DENIED")
        if not hmac.compare_digest(presented, self._expected):
            raise Refusal(400, "API key not valid. Please pass a valid API key.",
                          "API_KEY_INVALID")

    errorAnswer = staticmethod(geminiError)

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        Content generation, token counts and models; a 404 for the rest.
        """
        path, method = unquote(request.path.decode("latin-1")), request.method
        prefix = "/v1beta/models"
        if path == prefix and method == b"GET":
            return partial(Exchange.respond, status=200, body=self._modelList)
        if not path.startswith(prefix + "/"):
            raise Refusal(404, f"Method not found: {path}.", "NOT_FOUND")
        model, _, verb = path[len(prefix) + 1:].partition(":")
        if not verb and method == b"GET":
            found = self._models.get(model)
            if found is None:
                raise Refusal(404, f"models/{model} is not found for API version v1beta.",
                              "NOT_FOUND")
            return partial(Exchange.respond, status=200, body=found)
        if method == b"POST" and verb == "countTokens":
            answer = encode({"totalTokens": _promptTokens(document(body))})
            return partial(Exchange.respond, status=200, body=answer)
        if method == b"POST" and verb in ("generateContent", "streamGenerateContent"):
            return self._generate(request, body, model, verb == "streamGenerateContent")
        raise Refusal(404, f"Method not found: {path}.", "NOT_FOUND")

    def _generate(self, request: Request, body: bytes, model: str, stream: bool) -> Answer:
        doc = document(body)
        if not isinstance(doc.get("contents"), list):
            raise Refusal(400, "* GenerateContentRequest.contents: contents is not specified",
                          "INVALID_ARGUMENT")
        steering = Steering.fromRequest(request)
        tool = steering.checkTool(_tools(doc.get("tools")))
        config = doc.get("generationConfig", doc.get("generation_config"))
        limit = config.get("maxOutputTokens", config.get("max_output_tokens")) \
            if isinstance(config, dict) else None
        count, cut = steering.cut(limit)
        # Gemini ends a function call with STOP too: it has no reason of its own.
        finish = "MAX_TOKENS" if cut and tool is None else "STOP"
        promptTokens = _promptTokens(doc) + steering.cached
        usage: dict[str, Any] = {
            "promptTokenCount": promptTokens,
            "candidatesTokenCount": count,
            "totalTokenCount": promptTokens + count + steering.reasoning,
        }
        if steering.cached:
            usage["cachedContentTokenCount"] = steering.cached
        if steering.reasoning:
            usage["thoughtsTokenCount"] = steering.reasoning
        responseId = f"fake-{self._nextNumber()}"

        def response(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if last:
                candidate["finishReason"] = finish
            candidate["index"] = 0
            answer: dict[str, Any] = {"candidates": [candidate]}
            if last:
                answer["usageMetadata"] = usage
            answer["modelVersion"] = model
            answer["responseId"] = responseId
            return answer

        call = {"functionCall": {"name": tool, "args": toolArguments(count)}}
        if not stream:
            parts = [call] if tool is not None else [{"text": answerText(count)}]
            answer = encode(response(parts, True))
            return partial(Exchange.respond, status=200, body=answer)

        if tool is not None:
            pieces = [response([call], False)]
        else:
            words = answerText(count).split(" ") if count else []
            pieces = [response([{"text": word + (" " if i < count - 1 else "")}], False)
                      for i, word in enumerate(words)]
        last = response([{"text": ""}], True)
        error = None
        if steering.streamError is not None:
            name = steering.streamError
            error = {"error": {"code": _CODES.get(name, 500),
                               "message": "The fake LLM was asked to fail the stream.",
                               "status": name}}
        sse = queryArgument(request, b"alt") == b"sse"
        if sse:
            def frame(value: object) -> bytes:
                # Google ends its events with CRLF pairs.
                return b"data: " + encode(value) + b"\r\n\r\n"

            framed = tuple(frame(p) for p in pieces)
            plan = StreamPlan(
                head=(), piece=framed.__getitem__, count=len(framed), tail=(frame(last),),
                gap=steering.gap, dropAfter=steering.dropAfter,
                failure=None if error is None else frame(error),
            )
        else:
            framed = tuple((b"[" if i == 0 else b",\r\n") + encode(p)
                           for i, p in enumerate(pieces))
            opening = b"," if framed else b"["
            plan = StreamPlan(
                head=(), piece=framed.__getitem__, count=len(framed),
                tail=(opening + encode(last) + b"]",),
                gap=steering.gap, dropAfter=steering.dropAfter,
                failure=None if error is None else opening + encode(error) + b"]",
                contentType=b"application/json",
            )
        return partial(Exchange.stream, plan=plan)
