"""
Translation between OpenAI chat completions and the Gemini API
(generativelanguage C{v1beta}: C{models/{model}:generateContent}, and
C{:streamGenerateContent?alt=sse} for streams).

Everything here is pure: documents and bytes in, documents out.  The model
goes in the request's path, never in its body.

The request (L{chatToGemini}):
  - C{system} and C{developer} messages become C{systemInstruction}, their
    text parts in order, wherever they stood in the conversation (Gemini has
    one system instruction);
  - C{user} is role C{user}, C{assistant} is role C{model}, and C{tool}
    results are C{functionResponse} parts of a C{user} turn; consecutive
    turns of one role are merged into one, as Gemini wants turns to
    alternate.  An assistant message with neither content nor tool calls
    says nothing and is left out; at least one turn must remain;
  - content parts: C{text}; C{image_url} with a C{data:} URL is
    C{inlineData}; with an C{http(s)} URL it is C{fileData} whose mime type
    is guessed from the path's extension (png, jpg/jpeg, webp, heic, heif,
    gif) and a URL without one of those is refused, since Gemini needs the
    type and the gateway fetches nothing; C{detail} has no per-part
    counterpart and is not sent; C{input_audio} (wav, mp3) and C{file} with
    C{file_data} are C{inlineData}; a C{file_id} is refused (an OpenAI file
    means nothing to Gemini); C{refusal} parts of assistant messages are
    their text;
  - assistant C{tool_calls} are C{functionCall} parts C{{name, args}}:
    C{arguments} must be a JSON object (an empty string counts as C{{}}),
    anything else is refused.  A C{thoughtSignature} given back on a tool
    call as C{extra_content.google.thought_signature} (where answers put it,
    as Gemini's own OpenAI endpoint does) goes back on its part, which
    Gemini 3 needs to go on with a tool loop.  Ids are not sent: Gemini
    pairs calls and responses by order and name;
  - a C{tool} message is a C{functionResponse} C{{name, response}}: the name
    is that of the latest assistant tool call with the message's
    C{tool_call_id} (an id no assistant message gave is refused); content
    that is a JSON object is the response as it is, anything else is
    C{{"content": text}};
  - C{max_completion_tokens} (else C{max_tokens}) is C{maxOutputTokens};
    C{temperature}, C{top_p} (C{topP}), C{stop} (C{stopSequences}), C{seed},
    C{presence_penalty} and C{frequency_penalty} go to C{generationConfig};
    C{n} other than 1 is refused (the gateway answers one choice);
  - C{response_format} C{json_object} is C{responseMimeType}
    C{application/json}; C{json_schema} adds its schema as
    C{responseJsonSchema}, not C{responseSchema}: OpenAI's schema is JSON
    Schema, which C{responseJsonSchema} takes as it is, while
    C{responseSchema} is an OpenAPI subset that rejects much of it
    (C{additionalProperties}, C{$defs}, ...).  For the same reason a tool's
    C{parameters} go in C{parametersJsonSchema}.  C{strict}, the schema's
    C{name} and C{description} have no counterpart; Gemini always keeps to a
    given schema;
  - C{tools} are one C{Tool} of C{functionDeclarations}; C{tool_choice}
    C{auto}/C{none}/C{required} is C{functionCallingConfig.mode}
    C{AUTO}/C{NONE}/C{ANY}, a named function is C{ANY} with
    C{allowedFunctionNames}; C{parallel_tool_calls: false} is refused
    (Gemini cannot be held to one call);
  - C{reasoning_effort} is C{thinkingConfig.thinkingBudget}, which every
    thinking model takes (Gemini 3 as well as 2.5): C{none} 0, C{minimal}
    512, C{low} 1024, C{medium} 8192, C{high} 24576.  Thoughts are not
    asked for (C{includeThoughts}), as an OpenAI client gets none; a model
    that cannot turn thinking off answers C{none} with its own 400;
  - C{stream}, C{stream_options}, C{user}, C{store} and C{metadata} do not
    change the answer and are not sent: the endpoint decides streaming,
    Gemini always reports usage, and it has no end-user, storage or
    metadata fields.  C{service_tier} C{auto}/C{default} likewise;
  - refused, naming the field: C{logprobs}, C{top_logprobs}, C{logit_bias},
    C{audio}, C{prediction}, C{modalities} other than text only,
    C{functions}/C{function_call}, C{web_search_options}, C{verbosity}, a
    participant C{name}, and any field this module does not know.  A
    field whose value asks for nothing (C{null}, C{false}, an empty
    C{logit_bias}) counts as absent.  No safety settings are sent: Gemini's
    defaults apply.

The answer (L{geminiToCompletion}, L{GeminiStream}):
  - text parts joined are the content; C{thought: true} parts are
    C{reasoning_content} (the field OpenAI-compatible servers use);
  - C{functionCall} parts are tool calls, with Gemini's C{id} when it gives
    one, else C{call_<response id>_<n>}, n counting calls from 0, the same
    in a stream as in a plain answer and distinct from one answer to the
    next; C{arguments} are the compact JSON of C{args}; a part's
    C{thoughtSignature} rides on the call as
    C{extra_content.google.thought_signature};
  - finish reasons: C{STOP} is C{stop} (C{tool_calls} when the answer has
    function calls), C{MAX_TOKENS} is C{length}; C{SAFETY}, C{RECITATION},
    C{LANGUAGE}, C{BLOCKLIST}, C{PROHIBITED_CONTENT}, C{SPII} and the
    C{IMAGE_*} safety reasons are C{content_filter}; any other (C{OTHER},
    C{MALFORMED_FUNCTION_CALL}, reasons added later) is C{stop}, as OpenAI
    has no word for them; a prompt blocked (C{promptFeedback.blockReason},
    no candidate) is C{content_filter} with empty content;
  - usage: C{prompt_tokens} is C{promptTokenCount} (which already counts
    the cached content) plus C{toolUsePromptTokenCount} (input Gemini's own
    tools added, which it counts apart); C{cached_tokens} is
    C{cachedContentTokenCount} when reported; C{completion_tokens} is
    C{candidatesTokenCount} plus C{thoughtsTokenCount}, and
    C{reasoning_tokens} is C{thoughtsTokenCount} when reported;
  - C{responseId} is the id and C{modelVersion} the model when present.

A stream's events are each a whole C{GenerateContentResponse}; Gemini sends
a function call whole, so its start delta and its arguments come as two
chunks, one after the other.  The finish chunk comes with the event that
carries C{finishReason}; the usage chunk, from the last event's
C{usageMetadata} (zero counts if no event had any), comes at the end.  An
C{error} object in an event, a frame that is not a JSON object, content
after the finish, or an end before any finish reason is a L{StreamError};
the chunks of the events before it in the same piece are returned first,
and the error is raised by the next call.

Errors (L{errorFromGemini}): Google's canonical status names the status
and type: C{INVALID_ARGUMENT}, C{FAILED_PRECONDITION}, C{OUT_OF_RANGE} and
C{UNIMPLEMENTED} are 400 C{invalid_request_error} (an invalid API key,
which Gemini answers as C{INVALID_ARGUMENT} with reason C{API_KEY_INVALID},
is 401 C{authentication_error}, as is C{UNAUTHENTICATED}); C{PERMISSION_DENIED}
403 C{permission_error}; C{NOT_FOUND} 404 C{not_found_error};
C{RESOURCE_EXHAUSTED} 429 C{rate_limit_error}; C{UNAVAILABLE} and C{ABORTED}
503, C{DEADLINE_EXCEEDED} 504, and C{INTERNAL}, C{UNKNOWN}, C{CANCELLED} 502
(the upstream failed, not the gateway), all C{server_error}.  Without a
status name the HTTP status decides the same way.  The code is the status
name in lower case.  A body wrapped in a list (C{streamGenerateContent}
without C{alt=sse}) is read the same.

Models (L{modelsToOpenAI}): C{models/x} is C{x}, owned by C{google}; the
page's C{nextPageToken} is not followed here.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.web.http_headers import Headers

from aigateway.llm.provider import AnswerReader, OpenAIWriter, TranslatingProvider, UpstreamCall
from aigateway.llm.sse import SSEParser
from aigateway.llm.translate import (
    StreamError,
    TranslationError,
    UpstreamError,
    chunk,
    completion,
    readJSON,
    textChunk,
    usage,
)

__all__ = [
    "GeminiProvider",
    "GeminiStream",
    "chatToGemini",
    "errorFromGemini",
    "geminiToCompletion",
    "modelsToOpenAI",
    "retryDelay",
]

# Fields that do not change the answer and are not sent.
_IGNORED = frozenset(["model", "stream", "stream_options", "user", "store", "metadata"])

# Fields that are refused unless their value asks for nothing.
_REFUSED = {
    "logprobs": "Gemini log probabilities are not translated",
    "top_logprobs": "Gemini log probabilities are not translated",
    "logit_bias": "Gemini has no logit bias",
    "audio": "audio output is not available through Gemini here",
    "prediction": "Gemini has no predicted outputs",
    "functions": "use tools instead of the deprecated functions",
    "function_call": "use tool_choice instead of the deprecated function_call",
    "web_search_options": "web search is not available through Gemini here",
    "verbosity": "Gemini has no verbosity setting",
}

_THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
}

_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S)

_FILTERED = frozenset([
    "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
])

# Google's canonical status: (HTTP status, OpenAI error type).
_STATUSES = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "UNIMPLEMENTED": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "server_error"),
    "ABORTED": (503, "server_error"),
    "DEADLINE_EXCEEDED": (504, "server_error"),
    "INTERNAL": (502, "server_error"),
    "UNKNOWN": (502, "server_error"),
    "CANCELLED": (502, "server_error"),
}
_HTTP_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _isInt(value: object) -> bool:
    # A JSON integer is an int itself, never a subclass; bool is not one.
    return type(value) is int


def _asksNothing(key: str, value: object) -> bool:
    return value is None or value is False or (key == "logit_bias" and value == {})


def _text(value: object, param: str) -> str:
    """
    The text of a content that may only hold text: a string, or a list of
    C{text} parts (and C{refusal} parts, for an assistant).
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise TranslationError(param, f"{param} must be a string or a list of text parts.")
    pieces = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise TranslationError(where, f"{where} must be an object with a type.")
        if part["type"] != "text" or not isinstance(part.get("text"), str):
            raise TranslationError(f"{where}.type", f"{where} can only be a text part here.")
        pieces.append(part["text"])
    return "".join(pieces)


def _dataURL(url: str, param: str) -> dict[str, Any]:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise TranslationError(param, f"{param} must be a base64 data URL or an http(s) URL.")
    data = match.group(3)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError(param, f"{param} is not valid base64.") from None
    return {"inlineData": {"mimeType": match.group(1), "data": data}}


def _imagePart(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    if isinstance(image, str):
        url = image
    elif isinstance(image, dict) and isinstance(image.get("url"), str):
        url = image["url"]
    else:
        raise TranslationError(f"{param}.image_url", f"{param}.image_url must have a url.")
    where = f"{param}.image_url.url"
    if url.startswith("data:"):
        return _dataURL(url, where)
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise TranslationError(where, f"{where} must be a base64 data URL or an http(s) URL.")
    mimeType = _IMAGE_TYPES.get(posixpath.splitext(split.path)[1].lower())
    if mimeType is None:
        raise TranslationError(
            where,
            f"{where} must end in .png, .jpg, .jpeg, .webp, .heic, .heif or .gif "
            "(Gemini needs the image's type), or be a data URL.",
        )
    return {"fileData": {"mimeType": mimeType, "fileUri": url}}


def _audioPart(part: dict[str, Any], param: str) -> dict[str, Any]:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise TranslationError(f"{param}.input_audio", f"{param}.input_audio must have data.")
    mimeType = _AUDIO_TYPES.get(audio.get("format"))  # type: ignore[arg-type]
    if mimeType is None:
        raise TranslationError(f"{param}.input_audio.format",
                               f"{param}.input_audio.format must be wav or mp3.")
    return {"inlineData": {"mimeType": mimeType, "data": audio["data"]}}


def _filePart(part: dict[str, Any], param: str) -> dict[str, Any]:
    file = part.get("file")
    if not isinstance(file, dict):
        raise TranslationError(f"{param}.file", f"{param}.file must be an object.")
    if file.get("file_id") is not None:
        raise TranslationError(f"{param}.file.file_id",
                               "An OpenAI file id means nothing to Gemini; send file_data.")
    data = file.get("file_data")
    if not isinstance(data, str):
        raise TranslationError(f"{param}.file.file_data", f"{param}.file needs file_data.")
    return _dataURL(data, f"{param}.file.file_data")


def _userParts(content: object, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise TranslationError(param, f"{param} must be a string or a list of parts.")
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise TranslationError(where, f"{where} must be an object with a type.")
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise TranslationError(f"{where}.text", f"{where}.text must be a string.")
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_imagePart(part, where))
        elif kind == "input_audio":
            parts.append(_audioPart(part, where))
        elif kind == "file":
            parts.append(_filePart(part, where))
        else:
            raise TranslationError(f"{where}.type", f"Gemini cannot take a {kind!r} part here.")
    return parts


def _assistantText(content: object, param: str) -> str:
    if isinstance(content, list):
        content = [
            {"type": "text", "text": p.get("refusal")}
            if isinstance(p, dict) and p.get("type") == "refusal" else p
            for p in content
        ]
    return _text(content, param)


def _thoughtSignature(extra: object, param: str) -> str | None:
    """
    The thought signature an answer gave a tool call, as the client gives
    it back: C{extra_content.google.thought_signature}.  Other providers'
    entries in C{extra_content} are not Gemini's business.
    """
    if extra is None:
        return None
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    if not isinstance(extra, dict) or not isinstance(google, (dict, type(None))) or not isinstance(
            signature, (str, type(None))):
        raise TranslationError(f"{param}.google.thought_signature",
                               f"{param}.google.thought_signature must be a string.")
    return signature


def _functionCall(call: object, param: str) -> tuple[str, str, dict[str, Any]]:
    """
    The id, name and Gemini part of one assistant tool call.
    """
    if not isinstance(call, dict):
        raise TranslationError(param, f"{param} must be an object.")
    if call.get("type", "function") != "function":
        raise TranslationError(f"{param}.type", "Gemini takes function tool calls only.")
    if not isinstance(call.get("id"), str):
        raise TranslationError(f"{param}.id", f"{param}.id must be a string.")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise TranslationError(f"{param}.function", f"{param}.function must have a name.")
    arguments = function.get("arguments", "")
    where = f"{param}.function.arguments"
    if not isinstance(arguments, str):
        raise TranslationError(where, f"{where} must be a string of JSON.")
    if arguments.strip() == "":
        args: object = {}
    else:
        try:
            args = json.loads(arguments)
        except ValueError:
            raise TranslationError(where, f"{where} is not valid JSON.") from None
    if not isinstance(args, dict):
        raise TranslationError(where, f"{where} must be a JSON object for Gemini.")
    part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": args}}
    signature = _thoughtSignature(call.get("extra_content"), f"{param}.extra_content")
    if signature is not None:
        part["thoughtSignature"] = signature
    return call["id"], function["name"], part


def _functionResponse(content: object, name: str, param: str) -> dict[str, Any]:
    text = _text(content, param)
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


_MESSAGE_FIELDS = {
    "system": {"role", "content"},
    "developer": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "refusal", "reasoning_content"},
    "tool": {"role", "content", "tool_call_id"},
}


def _contents(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The system parts and the turns of a conversation.
    """
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages", "messages must be a non-empty list.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    calls: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": role, "parts": parts})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(where, f"{where} must be an object.")
        role = message.get("role")
        if role not in _MESSAGE_FIELDS:
            raise TranslationError(f"{where}.role", f"Gemini cannot take a message of role {role!r}.")
        for key, value in message.items():
            if key not in _MESSAGE_FIELDS[role] and value is not None:
                raise TranslationError(f"{where}.{key}", f"Gemini cannot take {where}.{key}.")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append({"text": _text(content, f"{where}.content")})
        elif role == "user":
            add("user", _userParts(content, f"{where}.content"))
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            if content is not None:
                text = _assistantText(content, f"{where}.content")
                if text:
                    parts.append({"text": text})
            toolCalls = message.get("tool_calls")
            if toolCalls is not None:
                if not isinstance(toolCalls, list):
                    raise TranslationError(f"{where}.tool_calls", f"{where}.tool_calls must be a list.")
                for j, call in enumerate(toolCalls):
                    callId, name, part = _functionCall(call, f"{where}.tool_calls[{j}]")
                    calls[callId] = name
                    parts.append(part)
            if parts:
                add("model", parts)
        else:
            resultId = message.get("tool_call_id")
            if not isinstance(resultId, str) or resultId not in calls:
                raise TranslationError(
                    f"{where}.tool_call_id",
                    f"{where}.tool_call_id names no tool call of an earlier assistant message.",
                )
            add("user", [_functionResponse(content, calls[resultId], f"{where}.content")])
    if not turns:
        raise TranslationError("messages", "Gemini needs at least one user or assistant message.")
    return system, turns


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("tools", "tools must be a list.")
    declarations = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(where, f"{where} must be an object.")
        if tool.get("type") != "function":
            raise TranslationError(f"{where}.type", "Gemini takes function tools only.")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError(f"{where}.function", f"{where}.function must have a name.")
        for key in function:
            if key not in ("name", "description", "parameters", "strict"):
                raise TranslationError(f"{where}.function.{key}",
                                       f"Gemini cannot take {where}.function.{key}.")
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description") is not None:
            declaration["description"] = function["description"]
        if function.get("parameters") is not None:
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}] if declarations else []


def _toolConfig(choice: object) -> dict[str, Any]:
    if isinstance(choice, str):
        if choice not in _TOOL_MODES:
            raise TranslationError("tool_choice", "tool_choice must be auto, none, required or a function.")
        return {"functionCallingConfig": {"mode": _TOOL_MODES[choice]}}
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        return {"functionCallingConfig": {"mode": "ANY",
                                          "allowedFunctionNames": [choice["function"]["name"]]}}
    raise TranslationError("tool_choice", "tool_choice must be auto, none, required or a function.")


def _responseFormat(value: object, config: dict[str, Any]) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise TranslationError("response_format", "response_format must be an object with a type.")
    kind = value["type"]
    if kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
        return
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict):
            raise TranslationError("response_format.json_schema",
                                   "response_format.json_schema must be an object.")
        config["responseMimeType"] = "application/json"
        if schema.get("schema") is not None:
            config["responseJsonSchema"] = schema["schema"]
        return
    raise TranslationError("response_format.type", f"Gemini cannot take a {kind!r} response format.")


def _generationConfig(chat: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = chat.get(key)
        if value is None:
            continue
        if not _isInt(value) or value < 1:
            raise TranslationError(key, f"{key} must be a positive integer.")
        config.setdefault("maxOutputTokens", value)
    for key, name in (("temperature", "temperature"), ("top_p", "topP"),
                      ("presence_penalty", "presencePenalty"),
                      ("frequency_penalty", "frequencyPenalty")):
        value = chat.get(key)
        if value is None:
            continue
        if not _isNumber(value):
            raise TranslationError(key, f"{key} must be a number.")
        config[name] = value
    seed = chat.get("seed")
    if seed is not None:
        if not _isInt(seed):
            raise TranslationError("seed", "seed must be an integer.")
        config["seed"] = seed
    stop = chat.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop", "stop must be a string or a list of strings.")
        if stop:
            config["stopSequences"] = stop
    n = chat.get("n")
    if n is not None and n != 1:
        raise TranslationError("n", "The gateway answers one choice: n must be 1.")
    if chat.get("response_format") is not None:
        _responseFormat(chat["response_format"], config)
    effort = chat.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINKING_BUDGETS:
            raise TranslationError("reasoning_effort",
                                   "reasoning_effort must be none, minimal, low, medium or high.")
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return config


_TRANSLATED = frozenset([
    "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "seed", "stop", "n", "response_format",
    "reasoning_effort", "tools", "tool_choice", "parallel_tool_calls", "modalities",
    "service_tier",
])


def chatToGemini(chat: dict[str, Any]) -> dict[str, Any]:
    """
    The C{GenerateContentRequest} body for an OpenAI chat request (the
    model goes in the path).

    @param chat: the client's request, a JSON object already read strictly.
    @raise TranslationError: for a field Gemini cannot take, naming it.
    """
    for key, value in chat.items():
        if key in _IGNORED or key in _TRANSLATED:
            continue
        if key in _REFUSED:
            if not _asksNothing(key, value):
                raise TranslationError(key, f"{_REFUSED[key]}: {key} cannot be sent.")
            continue
        if value is not None:
            raise TranslationError(key, f"Gemini cannot take {key}.")
    modalities = chat.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise TranslationError("modalities", "Gemini answers text only here: modalities must be [\"text\"].")
    tier = chat.get("service_tier")
    if tier not in (None, "auto", "default"):
        raise TranslationError("service_tier", "Gemini has no service tiers.")
    if chat.get("parallel_tool_calls") is False:
        raise TranslationError("parallel_tool_calls", "Gemini cannot be held to one tool call.")
    system, turns = _contents(chat.get("messages"))
    body: dict[str, Any] = {"contents": turns}
    if system:
        body["systemInstruction"] = {"parts": system}
    if chat.get("tools") is not None:
        tools = _tools(chat["tools"])
        if tools:
            body["tools"] = tools
    if chat.get("tool_choice") is not None:
        body["toolConfig"] = _toolConfig(chat["tool_choice"])
    config = _generationConfig(chat)
    if config:
        body["generationConfig"] = config
    return body


def _count(metadata: dict[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    return value if type(value) is int and value >= 0 else None


def _usage(metadata: object) -> dict[str, Any] | None:
    if not isinstance(metadata, dict):
        return None
    thoughts = _count(metadata, "thoughtsTokenCount")
    prompt = (_count(metadata, "promptTokenCount") or 0) + (
        _count(metadata, "toolUsePromptTokenCount") or 0)
    output = (_count(metadata, "candidatesTokenCount") or 0) + (thoughts or 0)
    return usage(prompt, output, _count(metadata, "cachedContentTokenCount"), thoughts)


def _finishReason(reason: str, toolCalls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if toolCalls else "stop"


def _toolCall(part: dict[str, Any], index: int, responseId: str) -> dict[str, Any]:
    call = part["functionCall"]
    callId = call.get("id")
    if not isinstance(callId, str) or not callId:
        callId = f"call_{responseId}_{index}"
    args = call.get("args")
    out: dict[str, Any] = {
        "id": callId,
        "type": "function",
        "function": {
            "name": call.get("name", ""),
            "arguments": json.dumps(args if args is not None else {}, separators=(",", ":"),
                                    ensure_ascii=False),
        },
    }
    if isinstance(part.get("thoughtSignature"), str):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def _parts(response: dict[str, Any]) -> tuple[list[dict[str, Any]], object]:
    """
    The first candidate's parts and finish reason.
    """
    candidates = response.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return [], None
    candidate = candidates[0]
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        parts = []
    return [p for p in parts if isinstance(p, dict)], candidate.get("finishReason")


def _blocked(response: dict[str, Any]) -> bool:
    feedback = response.get("promptFeedback")
    return isinstance(feedback, dict) and feedback.get("blockReason") is not None


def geminiToCompletion(response: dict[str, Any], *, model: str, created: int, id: str) -> dict[str, Any]:
    """
    The C{chat.completion} for a C{GenerateContentResponse}.

    @param response: the upstream's JSON answer.
    @param model: the model, when the answer names none.
    @param created: the time to report.
    @param id: the id, when the answer has no C{responseId}.
    """
    responseId = response.get("responseId")
    if not isinstance(responseId, str) or not responseId:
        responseId = id
    version = response.get("modelVersion")
    if isinstance(version, str) and version:
        model = version
    parts, reason = _parts(response)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part.get("functionCall"), dict):
            calls.append(_toolCall(part, len(calls), responseId))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    if isinstance(reason, str):
        finish = _finishReason(reason, bool(calls))
    elif _blocked(response):
        finish = "content_filter"
    else:
        finish = "tool_calls" if calls else "stop"
    return completion(responseId, model, created, message, finish,
                      _usage(response.get("usageMetadata")))


class GeminiStream:
    """
    Turns the bytes of a C{streamGenerateContent?alt=sse} answer, in chunks
    of any size, into C{chat.completion.chunk} documents.

    @ivar responseId: the answer's C{responseId}, once an event gave one.
    @ivar responseModel: the answer's C{modelVersion}, once an event gave
        one.
    @ivar usage: the OpenAI usage of the last event's C{usageMetadata}, or
        L{None}.
    """

    def __init__(self, model: str, created: int, id: str) -> None:
        """
        @param model: the model, until an event names one.
        @param created: the time every chunk reports.
        @param id: the id of every chunk, unless the first event has a
            C{responseId}.
        """
        self._model = model
        self._created = created
        self._id = id
        self._parser = SSEParser()
        self._started = False
        self._finished = False
        self._calls = 0
        self._error: StreamError | None = None
        self.responseId: str | None = None
        self.responseModel: str | None = None
        # The last usageMetadata, translated only when asked for: every
        # event carries one, and only the last one counts.
        self._metadata: dict[str, Any] | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        return _usage(self._metadata)

    def _chunk(self, delta: dict[str, Any], finishReason: str | None = None) -> dict[str, Any]:
        return chunk(self._id, self._model, self._created, delta, finishReason)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        Translate one more piece of the upstream body.

        @raise StreamError: for an error event or a frame Gemini does not
            send.  When the same piece held events before it, their chunks
            are returned first and the error is raised by the next call.
        """
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        try:
            for event in self._parser.feed(data):
                self._event(event.data, out)
        except StreamError as e:
            if not out:
                raise
            # What came before the error is the client's to see first.
            self._error = e
        return out

    def end(self) -> list[dict[str, Any]]:
        """
        The upstream body has ended: the usage chunk.

        @raise StreamError: when the stream ended before a finish reason.
        """
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        for event in self._parser.end():
            self._event(event.data, out)
        if not self._finished:
            raise StreamError("The Gemini stream ended before its answer was complete.")
        out.append(chunk(self._id, self._model, self._created, None,
                         usage=self.usage or usage(0, 0)))
        return out

    def _event(self, data: str, out: list[dict[str, Any]]) -> None:
        try:
            response = readJSON(data)
        except ValueError:
            raise StreamError("The Gemini stream sent an event that is not JSON.") from None
        if not isinstance(response, dict):
            raise StreamError("The Gemini stream sent an event that is not an object.")
        error = response.get("error")
        if error is not None:
            status = error.get("status") if isinstance(error, dict) else None
            named = f" ({status})" if isinstance(status, str) and status.isupper() else ""
            raise StreamError(f"The Gemini stream ended with an error{named}.")
        version = response.get("modelVersion")
        if isinstance(version, str) and version:
            self.responseModel = self._model = version
        if not self._started:
            self._started = True
            if isinstance(response.get("responseId"), str) and response["responseId"]:
                self.responseId = self._id = response["responseId"]
            out.append(self._chunk({"role": "assistant", "content": ""}))
        metadata = response.get("usageMetadata")
        if isinstance(metadata, dict):
            self._metadata = metadata
        parts, reason = _parts(response)
        if len(parts) == 1 and reason is None and not self._finished:
            # Most events: one piece of text, and the answer goes on.
            part = parts[0]
            text = part.get("text")
            if type(text) is str and "functionCall" not in part:
                if text:
                    out.append(textChunk(self._id, self._model, self._created, text,
                                         "reasoning_content" if part.get("thought") is True
                                         else "content"))
                return
        deltas: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part.get("functionCall"), dict):
                call = _toolCall(part, self._calls, self._id)
                arguments = call["function"]["arguments"]
                call["function"]["arguments"] = ""
                deltas.append({"tool_calls": [{"index": self._calls, **call}]})
                deltas.append({"tool_calls": [{"index": self._calls,
                                               "function": {"arguments": arguments}}]})
                self._calls += 1
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") is True else "content"
                deltas.append({key: part["text"]})
        if deltas and self._finished:
            raise StreamError("The Gemini stream sent content after its finish.")
        out.extend(self._chunk(delta) for delta in deltas)
        if self._finished:
            return
        if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
            finish = _finishReason(reason, self._calls > 0)
        elif _blocked(response) and not parts:
            finish = "content_filter"
        else:
            return
        self._finished = True
        out.append(self._chunk({}, finish))


def _errorObject(body: bytes) -> dict[str, Any] | None:
    try:
        document = readJSON(body)
    except ValueError:
        return None
    if isinstance(document, list) and document:
        document = document[0]
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return document["error"]
    return None


def _reasons(error: dict[str, Any]) -> set[str]:
    details = error.get("details")
    if not isinstance(details, list):
        return set()
    return {d["reason"] for d in details if isinstance(d, dict) and isinstance(d.get("reason"), str)}


def errorFromGemini(status: int, body: bytes) -> UpstreamError:
    """
    The OpenAI-style error for a Gemini error answer.

    @param status: the upstream's HTTP status.
    @param body: the upstream's body: C{{"error": {code, message, status}}},
        perhaps wrapped in a list, or anything else.
    """
    error = _errorObject(body)
    name = error.get("status") if error is not None else None
    if name not in _STATUSES:
        name = _HTTP_STATUSES.get(status)
        if name is None:
            name = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
    httpStatus, kind = _STATUSES[name]
    if error is not None and "API_KEY_INVALID" in _reasons(error):
        httpStatus, kind = 401, "authentication_error"
    message = error.get("message") if error is not None else None
    if not isinstance(message, str) or not message:
        message = f"The Gemini API answered {status}."
    return UpstreamError(httpStatus, message, kind, name.lower())


def retryDelay(body: bytes) -> float | None:
    """
    How many seconds a Gemini error answer asks to wait before a retry
    (its C{google.rpc.RetryInfo} detail, as in C{"retryDelay": "32s"}), for
    a C{Retry-After}; L{None} when it says nothing.
    """
    error = _errorObject(body)
    details = error.get("details") if error is not None else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith("RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", delay)
            if match:
                return float(match.group(1))
    return None


def modelsToOpenAI(body: dict[str, Any]) -> dict[str, Any]:
    """
    The OpenAI model list for a Gemini C{models.list} answer.
    """
    data = []
    models = body.get("models")
    for model in models if isinstance(models, list) else []:
        name = model.get("name") if isinstance(model, dict) else None
        if not isinstance(name, str) or not name:
            continue
        data.append({"id": name.removeprefix("models/"), "object": "model", "created": 0,
                     "owned_by": "google"})
    return {"object": "list", "data": data}


class _GeminiReader(AnswerReader):
    """
    Reads one Gemini answer into OpenAI chat documents.
    """

    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return geminiToCompletion(document, model=self.model, created=self.created, id=self.id)

    def stream(self) -> GeminiStream:
        return GeminiStream(self.model, self.created, self.id)

    def error(self, status: int, headers: Headers, body: bytes) -> UpstreamError:
        error = errorFromGemini(status, body)
        error.retryAfter = retryDelay(body)
        return error


class _ModelListReader(_GeminiReader):
    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return modelsToOpenAI(document)


class GeminiProvider(TranslatingProvider):
    """
    The Gemini API: C{/v1beta/models/{model}:generateContent}, and
    C{:streamGenerateContent?alt=sse} for streams; the key in
    C{x-goog-api-key}.
    """

    name = "gcp.gemini"
    credentialField = b"x-goog-api-key"

    def translate(self, chat: dict[str, Any], model: str, stream: bool) -> tuple[bytes, dict[str, Any]]:
        body = chatToGemini(chat)
        name = quote(model.removeprefix("models/"), safe="").encode("ascii")
        method = b":streamGenerateContent?alt=sse" if stream else b":generateContent"
        return self.basePath + b"/v1beta/models/" + name + method, body

    def reader(self, model: str, stream: bool, created: int, id: str) -> _GeminiReader:
        return _GeminiReader(model, created, id)

    def models(self, method: bytes) -> UpstreamCall:
        return UpstreamCall(b"GET", self.basePath + b"/v1beta/models?pageSize=1000", b"",
                            reader=_ModelListReader("", 0, ""), writer=OpenAIWriter(False))
