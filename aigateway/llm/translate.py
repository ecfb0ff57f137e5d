"""
What every translating provider shares: the OpenAI chat shapes that are the
gateway's common form, and the errors translation raises.

A client speaks OpenAI chat completions (or Anthropic Messages at the
C{/v1/messages} door).  A provider module turns an OpenAI chat request into
its own API's request and its answers back into OpenAI chat answers:

  - a plain answer: one C{chat.completion} document;
  - a stream: the upstream body's bytes, in chunks of any size, become
    C{chat.completion.chunk} documents, the last of which carries the usage.

The door translates between Anthropic Messages and OpenAI chat on the
client's side, so each provider knows one translation only.  Everything
here is pure: documents and bytes in, documents and bytes out, the time
passed in as C{created}.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = [
    "compactJSON",
    "ChunkEncoder",
    "StreamError",
    "TextChunk",
    "TranslationError",
    "UpstreamError",
    "chunk",
    "completion",
    "encodeEvent",
    "openAIError",
    "readJSON",
    "textChunk",
    "usage",
    "writeJSON",
]


compactJSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""
A document as compact JSON text, non-ASCII characters as they are.  One
encoder made once: C{json.dumps} with arguments makes a new one per call,
which costs more than the encoding of a stream's chunk.
"""

_compactASCII = json.JSONEncoder(separators=(",", ":")).encode

# orjson reads an integer of more than 64 bits as a float, where json keeps
# it whole: a text with a run of 19 digits or more (in a number or in a
# string) is left to json.  Digits are found by mapping every byte to one of
# two, then looking for the run: a few instructions a byte, where a regular
# expression for the run costs ten times as many.
_DIGITS = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_RUN = b"9" * 19


def readJSON(text: str | bytes) -> Any:
    """
    An upstream's JSON, read as C{json.loads} reads it: the same values,
    and the same errors for what it refuses.

    orjson reads most texts at a fraction of json's cost; what it reads
    differently (integers of more than 64 bits) or refuses while json
    takes it (C{NaN}, C{1e400}, an escaped lone surrogate, a byte order
    mark) goes to json, which also raises json's own errors.
    """
    raw = text if type(text) is bytes else text.encode("utf-8", "surrogatepass")
    if _RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def writeJSON(value: Any) -> bytes:
    """
    A document as compact UTF-8 JSON, as L{compactJSON} writes it but for
    the spelling of some floats (C{1e-7} for C{1e-07}) and for numbers JSON
    cannot hold (C{NaN}, infinities), which are C{null}: orjson writes it,
    and json what orjson cannot (an integer of more than 64 bits, a lone
    surrogate), with non-ASCII characters escaped so that a lone surrogate
    is written as the escape it was read from.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return _compactASCII(value).encode("ascii")


class TranslationError(ValueError):
    """
    A request the target API cannot take as it is: a 400 for the caller,
    naming the field (never a silent drop that changes the answer).

    @ivar param: the field's path in the client's request (C{n},
        C{messages[2].content[0].type}).
    @ivar message: a sentence for the caller.
    """

    status = 400
    code = "unsupported_parameter"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class StreamError(Exception):
    """
    An upstream stream that cannot be translated further: an error event
    in it, a frame that is not what the API sends, or an end before the
    API's last event.  The relay ends the client's stream with an error
    event and a non-clean end, so it never looks complete.

    @ivar message: a sentence for the caller, that never repeats what the
        upstream sent beyond an error type it named.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamError(Exception):
    """
    An upstream error answer, translated to the client's terms.

    @ivar status: the status to answer with (Anthropic's 529 is a 503).
    @ivar message: the upstream's message.
    @ivar type: the OpenAI error type (C{invalid_request_error},
        C{rate_limit_error}, ...).
    @ivar code: a short code, or L{None}.
    @ivar retryAfter: seconds the upstream asks to wait, when its body (not
        its C{Retry-After} field) says so.
    """

    def __init__(self, status: int, message: str, type: str, code: str | None = None,
                 retryAfter: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.retryAfter = retryAfter


def openAIError(error: UpstreamError) -> bytes:
    """
    The OpenAI error envelope for an upstream error.
    """
    return writeJSON({"error": {"message": error.message, "type": error.type, "param": None,
                                "code": error.code}})


def usage(
    prompt: int,
    completion: int,
    cached: int | None = None,
    reasoning: int | None = None,
) -> dict[str, Any]:
    """
    OpenAI's usage object.

    @param prompt: every input token, cached ones included.
    @param completion: every output token, reasoning ones included.
    @param cached: how many of C{prompt} were read from a cache.
    @param reasoning: how many of C{completion} were reasoning.
    """
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def completion(
    id: str,
    model: str,
    created: int,
    message: dict[str, Any],
    finishReason: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """
    A C{chat.completion} document with one choice.
    """
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finishReason}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def chunk(
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None = None,
    finishReason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    A C{chat.completion.chunk} document: one choice with C{delta} (and a
    finish reason), or, with C{delta} L{None}, the usage chunk that has no
    choices.
    """
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
    }
    if delta is not None:
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                           "finish_reason": finishReason}]
    if usage is not None:
        out["usage"] = usage
    return out


class TextChunk(dict):  # type: ignore[type-arg]
    """
    A C{chat.completion.chunk} whose delta is one piece of text, as
    L{textChunk} makes it: the document L{chunk} would make, its keys in
    the same order, so that L{ChunkEncoder} can write it from a template.
    It is a plain dict in every other way (it compares equal to one).
    """

    __slots__ = ()


def textChunk(id: str, model: str, created: int, text: str, field: str = "content") -> TextChunk:
    """
    The chunk L{chunk} makes for a delta of C{{field: text}} (C{content} or
    C{reasoning_content}), no finish reason and no usage: most of a
    stream's chunks.
    """
    return TextChunk(id=id, object="chat.completion.chunk", created=created, model=model,
                     choices=[{"index": 0, "delta": {field: text}, "logprobs": None,
                               "finish_reason": None}])


_TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'


class ChunkEncoder:
    """
    Writes one stream's chunks as server-sent events, the bytes
    L{encodeEvent} writes.  A L{TextChunk} is written from a template: the
    part before its text, which only changes when the chunk's id, model or
    time does, is encoded once, and only the text is encoded per chunk.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, Any, Any] | None = None
        self._heads: dict[str, bytes] = {}

    def encode(self, document: dict[str, Any]) -> bytes:
        """
        One chunk as an event.
        """
        if type(document) is not TextChunk:
            return encodeEvent(document)
        key = (document["id"], document["model"], document["created"])
        if key != self._key:
            self._key = key
            self._heads = {}
        [(field, text)] = document["choices"][0]["delta"].items()
        head = self._heads.get(field)
        if head is None:
            head = self._heads[field] = (
                'data: {"id":' + compactJSON(key[0]) + ',"object":"chat.completion.chunk","created":'
                + compactJSON(key[2]) + ',"model":' + compactJSON(key[1])
                + ',"choices":[{"index":0,"delta":{' + compactJSON(field) + ":"
            ).encode("utf-8")
        return head + writeJSON(text) + _TEXT_TAIL


def encodeEvent(data: dict[str, Any], event: str | None = None) -> bytes:
    """
    One server-sent event whose data is C{data} as compact JSON.
    """
    text = writeJSON(data)
    if event is None:
        return b"data: " + text + b"\n\n"
    return b"event: " + event.encode("ascii") + b"\ndata: " + text + b"\n\n"
