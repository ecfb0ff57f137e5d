"""
OpenAI's API: chat completions, the Responses API, embeddings and models,
with the bearer key check and the OpenAI error envelope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from functools import partial
from typing import Any, Callable
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from aigateway.testing.fakellm.core import (
    DEFAULT_CHUNKS,
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

__all__ = ["MODELS", "OpenAI", "chatAnswer", "embeddingsAnswer", "openAIError"]

MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-3.5-turbo", "gpt-4o", "text-embedding-3-small")
"""
The model ids C{GET /v1/models} lists.
"""

_DIMENSIONS = 8

# Each poem word as a JSON string, followed by a space and bare (for the
# last word of an answer), so a stream chunk is a concatenation.
_SPACED = tuple(json.dumps(word + " ").encode("utf-8") for word in POEM)
_BARE = tuple(json.dumps(word).encode("utf-8") for word in POEM)
_DEFAULT_TEXT = answerText(DEFAULT_CHUNKS)

_TYPES = {429: "rate_limit_error"}


def openAIError(refusal: Refusal) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """
    A refusal in the OpenAI error envelope.
    """
    status = refusal.status
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = encode({"error": {"message": refusal.message, "type": kind, "param": None,
                             "code": refusal.code}})
    return body, refusal.headers


def _word(index: int, count: int) -> bytes:
    spelled = _BARE if index == count - 1 else _SPACED
    return spelled[index % len(POEM)]


def _chatPromptTokens(messages: list[Any]) -> int:
    return sum(textWords(m.get("content")) for m in messages if isinstance(m, dict))


def _chatTools(value: object) -> list[str]:
    names = []
    if isinstance(value, list):
        for tool in value:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
    return names


def chatAnswer(request: Request, body: bytes, number: int, created: int,
               model: str | None = None) -> Answer:
    """
    A chat completion, plain or streamed.

    @param number: the answer's number, for its ids.
    @param created: its C{created} time.
    @param model: the model to answer with, else the request's.
    """
    doc = document(body)
    messages = doc.get("messages")
    if (model is None and not isinstance(doc.get("model"), str)) or not isinstance(messages, list):
        raise Refusal(400, "A chat completion needs a string 'model' and a list of 'messages'.")
    answered = model if model is not None else doc["model"]
    steering = Steering.fromRequest(request)
    tool = steering.checkTool(_chatTools(doc.get("tools")))
    limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
    count, cut = steering.cut(limit)
    finish = "tool_calls" if tool is not None else "length" if cut else "stop"
    promptTokens = _chatPromptTokens(messages) + steering.cached
    completionTokens = count + steering.reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": promptTokens,
        "completion_tokens": completionTokens,
        "total_tokens": promptTokens + completionTokens,
    }
    if steering.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": steering.cached}
    if steering.reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": steering.reasoning}
    ident = f"chatcmpl-fake-{number}"
    callId = f"call_fake_{number}"
    arguments = json.dumps(toolArguments(count))
    stream = doc.get("stream") is True
    if not stream:
        message: dict[str, Any]
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": callId, "type": "function",
                "function": {"name": tool, "arguments": arguments},
            }]}
        else:
            text = _DEFAULT_TEXT if count == DEFAULT_CHUNKS else answerText(count)
            message = {"role": "assistant", "content": text}
        answer = encode({
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": answered,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        })
        return partial(Exchange.respond, status=200, body=answer)

    head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": answered}

    def event(**fields: object) -> bytes:
        return b"data: " + encode(dict(head, **fields)) + b"\n\n"

    options = doc.get("stream_options")
    tail = [event(choices=[{"index": 0, "delta": {}, "finish_reason": finish}])]
    if isinstance(options, dict) and options.get("include_usage") is True:
        tail.append(event(choices=[], usage=usage))
    tail.append(b"data: [DONE]\n\n")
    failure = None
    if steering.streamError is not None:
        failure = b"data: " + encode({"error": {
            "message": "The fake LLM was asked to fail the stream.",
            "type": steering.streamError, "param": None, "code": None,
        }}) + b"\n\n"
    piece: Callable[[int], bytes]
    if tool is not None:
        first = event(choices=[{"index": 0, "delta": {"role": "assistant", "content": None,
                                                      "tool_calls": [{
                                                          "index": 0, "id": callId,
                                                          "type": "function",
                                                          "function": {"name": tool,
                                                                       "arguments": ""},
                                                      }]},
                                "finish_reason": None}])
        pieces = [
            event(choices=[{"index": 0, "delta": {"tool_calls": [{
                "index": 0, "function": {"arguments": part}}]}, "finish_reason": None}])
            for part in splitInTwo(arguments)
        ]
        piece, pieceCount = pieces.__getitem__, len(pieces)
    else:
        first = event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None}])
        prefix = b"data: " + encode(head)[:-1] + b',"choices":[{"index":0,"delta":{"content":'
        suffix = b'},"finish_reason":null}]}\n\n'

        def piece(index: int) -> bytes:
            return prefix + _word(index, count) + suffix

        pieceCount = count
    plan = StreamPlan(
        head=(first,), piece=piece, count=pieceCount, tail=tuple(tail),
        gap=steering.gap, dropAfter=steering.dropAfter, failure=failure,
    )
    return partial(Exchange.stream, plan=plan)


def _embedding(text: str) -> list[float]:
    # k/128 for a byte k - 128: exact in float32, so the base64 form decodes
    # to the very floats of the float form.
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [(b - 128) / 128.0 for b in digest[:_DIMENSIONS]]


def embeddingsAnswer(body: bytes, model: str | None = None) -> Answer:
    """
    Embeddings of every input, as floats or base64.

    @param model: the model to answer with, else the request's.
    """
    doc = document(body)
    inputs = doc.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if (not isinstance(inputs, list) or not inputs
            or not all(isinstance(text, str) for text in inputs)):
        raise Refusal(400, "'input' must be a string or a non-empty list of strings.")
    encoding = doc.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise Refusal(400, "'encoding_format' must be 'float' or 'base64'.")
    data = []
    for index, text in enumerate(inputs):
        vector = _embedding(text)
        value: object = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{_DIMENSIONS}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(len(text.split()) for text in inputs)
    answer = encode({
        "object": "list",
        "data": data,
        "model": doc.get("model") if model is None else model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
    return partial(Exchange.respond, status=200, body=answer)


def _responsesPromptTokens(doc: dict[str, Any]) -> int:
    count = textWords(doc.get("instructions"))
    items = doc.get("input")
    if isinstance(items, str):
        return count + textWords(items)
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                count += textWords(item.get("content"))
    return count


def _responsesTools(value: object) -> list[str]:
    names = []
    if isinstance(value, list):
        for tool in value:
            if isinstance(tool, dict) and tool.get("type") == "function" \
                    and isinstance(tool.get("name"), str):
                names.append(tool["name"])
    return names


def _sse(kind: str, fields: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode("ascii") + b"\ndata: " + encode(
        dict({"type": kind}, **fields)) + b"\n\n"


def responsesAnswer(request: Request, body: bytes, number: int, created: int) -> Answer:
    """
    A Responses API answer, plain or streamed.

    @param number: the answer's number, for its ids.
    @param created: its C{created_at} time.
    """
    doc = document(body)
    model = doc.get("model")
    if not isinstance(model, str):
        raise Refusal(400, "A response needs a string 'model'.")
    if not isinstance(doc.get("input", ""), (str, list)):
        raise Refusal(400, "'input' must be a string or a list of items.")
    steering = Steering.fromRequest(request)
    tool = steering.checkTool(_responsesTools(doc.get("tools")))
    count, cut = steering.cut(doc.get("max_output_tokens"))
    if tool is not None:
        cut = False
    inputTokens = _responsesPromptTokens(doc) + steering.cached
    outputTokens = count + steering.reasoning
    usage = {
        "input_tokens": inputTokens,
        "input_tokens_details": {"cached_tokens": steering.cached},
        "output_tokens": outputTokens,
        "output_tokens_details": {"reasoning_tokens": steering.reasoning},
        "total_tokens": inputTokens + outputTokens,
    }
    ident = f"resp_fake_{number}"
    itemId = f"fc_fake_{number}" if tool is not None else f"msg_fake_{number}"
    arguments = json.dumps(toolArguments(count))
    text = answerText(count)

    def item(done: bool) -> dict[str, Any]:
        status = "completed" if done else "in_progress"
        if tool is not None:
            return {"type": "function_call", "id": itemId, "call_id": f"call_fake_{number}",
                    "name": tool, "arguments": arguments if done else "", "status": status}
        content = [{"type": "output_text", "text": text, "annotations": []}] if done else []
        return {"type": "message", "id": itemId, "status": status, "role": "assistant",
                "content": content}

    def response(done: bool) -> dict[str, Any]:
        status = ("incomplete" if cut else "completed") if done else "in_progress"
        return {
            "id": ident, "object": "response", "created_at": created, "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut and done else None,
            "instructions": doc.get("instructions"),
            "max_output_tokens": doc.get("max_output_tokens"),
            "model": model,
            "output": [item(True)] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": doc.get("tool_choice", "auto"),
            "tools": doc.get("tools", []),
            "usage": usage if done else None,
        }

    if doc.get("stream") is not True:
        return partial(Exchange.respond, status=200, body=encode(response(True)))

    where = {"item_id": itemId, "output_index": 0}
    head: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": response(False)}),
        ("response.in_progress", {"response": response(False)}),
        ("response.output_item.added", {"output_index": 0, "item": item(False)}),
    ]
    if tool is not None:
        deltas: list[tuple[str, dict[str, Any]]] = [("response.function_call_arguments.delta", dict(where, delta=part))
                  for part in splitInTwo(arguments)]
        tail: list[tuple[str, dict[str, Any]]] = [
            ("response.function_call_arguments.done", dict(where, arguments=arguments)),
        ]
    else:
        part = {"type": "output_text", "text": "", "annotations": []}
        head.append(("response.content_part.added", dict(where, content_index=0, part=part)))
        deltas = [
            ("response.output_text.delta",
             dict(where, content_index=0, delta=json.loads(_word(i, count)), logprobs=[]))
            for i in range(count)
        ]
        tail = [
            ("response.output_text.done", dict(where, content_index=0, text=text, logprobs=[])),
            ("response.content_part.done",
             dict(where, content_index=0, part=dict(part, text=text))),
        ]
    tail.append(("response.output_item.done", {"output_index": 0, "item": item(True)}))
    tail.append(("response.incomplete" if cut else "response.completed",
                 {"response": response(True)}))
    sequence = 0

    def numbered(events: list[tuple[str, dict[str, Any]]]) -> tuple[bytes, ...]:
        nonlocal sequence
        written = []
        for kind, fields in events:
            written.append(_sse(kind, dict(fields, sequence_number=sequence)))
            sequence += 1
        return tuple(written)

    headBytes = numbered(head)
    pieces = numbered(deltas)
    failure = None
    if steering.streamError is not None:
        failure = _sse("error", {"code": steering.streamError,
                                 "message": "The fake LLM was asked to fail the stream.",
                                 "param": None, "sequence_number": sequence})
    plan = StreamPlan(
        head=headBytes, piece=pieces.__getitem__, count=len(pieces), tail=numbered(tail),
        gap=steering.gap, dropAfter=steering.dropAfter, failure=failure,
    )
    return partial(Exchange.stream, plan=plan)


class OpenAI:
    """
    OpenAI's own API.
    """

    def __init__(self, clock: IReactorTime, key: str | None, nextNumber: Callable[[], int]
                 ) -> None:
        """
        @param clock: gives C{created} times.
        @param key: when set, the bearer key every request must carry.
        @param nextNumber: numbers answers, for their ids.
        """
        self._clock = clock
        self._expected = None if key is None else b"Bearer " + key.encode("utf-8")
        self._nextNumber = nextNumber
        models = [
            {"id": model, "object": "model", "created": 0, "owned_by": "fakellm"}
            for model in MODELS
        ]
        self._models = {str(m["id"]): encode(m) for m in models}
        self._modelList = encode({"object": "list", "data": models})

    def checkKey(self, request: Request, body: bytes) -> None:
        """
        Refuse a request whose C{Authorization} is not C{Bearer <key>}.
        """
        if self._expected is None:
            return
        presented = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(presented, self._expected):
            raise Refusal(401, "Incorrect API key provided.", "invalid_api_key")

    errorAnswer = staticmethod(openAIError)

    def answer(self, request: Request, body: bytes) -> Answer:
        """
        Chat completions, responses, embeddings, models; a 404 for the rest.
        """
        path, method = request.path, request.method
        if path == b"/v1/chat/completions" and method == b"POST":
            return chatAnswer(request, body, self._nextNumber(), int(self._clock.seconds()))
        if path == b"/v1/responses" and method == b"POST":
            return responsesAnswer(request, body, self._nextNumber(), int(self._clock.seconds()))
        if path == b"/v1/embeddings" and method == b"POST":
            return embeddingsAnswer(body)
        if path == b"/v1/models" and method == b"GET":
            return partial(Exchange.respond, status=200, body=self._modelList)
        if path.startswith(b"/v1/models/") and method == b"GET":
            model = self._models.get(unquote(path[len(b"/v1/models/"):].decode("latin-1")))
            if model is None:
                raise Refusal(404, "The model does not exist.", "model_not_found")
            return partial(Exchange.respond, status=200, body=model)
        raise Refusal(404, f"Unknown request URL: {method.decode('latin-1')} "
                           f"{path.decode('latin-1')}.", "unknown_url")
