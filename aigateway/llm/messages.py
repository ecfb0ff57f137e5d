"""
Anthropic's Messages API (version C{2023-06-01}), translated both ways.

Two directions, all pure (documents and bytes in, documents and bytes out):

  - B{OpenAI client, Anthropic backend}: L{chatToMessages} turns a chat
    request into a Messages request, L{messageToCompletion} and
    L{MessagesStream} turn the answer back, L{errorFromAnthropic} the
    upstream's errors;
  - B{the C{/v1/messages} door}: L{messagesToChat} turns an Anthropic
    client's request into the common OpenAI chat form (for any backend),
    L{completionToMessage} and L{ChunksToMessages} turn the answer back into
    what an Anthropic client reads, L{errorToAnthropic} writes its errors.

A field the target cannot take as it is raises
L{aigateway.llm.translate.TranslationError} naming its path in the
client's request; nothing is dropped silently unless listed below as a hint
that does not change the answer.

Chat request -> Messages request (L{chatToMessages}):
  - C{system} and C{developer} messages, wherever they are, go to the
    top-level C{system} in their order: a string for one text, a list of
    text blocks for several;
  - C{user}, C{assistant} and C{tool} messages become turns; consecutive
    turns of one role are merged (Anthropic wants them to alternate), and
    C{tool} messages are C{tool_result} blocks (C{tool_use_id} =
    C{tool_call_id}) in a user turn;
  - content parts: C{text}; C{image_url} with an http(s) URL is an image
    with a C{url} source, a C{data:} URL a C{base64} source with its media
    type (C{detail} has no counterpart and is dropped); any other part
    (audio, files) is refused;
  - assistant C{tool_calls} become C{tool_use} blocks whose C{input} is the
    parsed C{arguments} (an empty string is C{{}}; anything that is not a
    JSON object is refused); C{refusal} and C{audio} on assistant
    messages are refused unless null; C{name} is refused on every message
    but C{tool} ones (Anthropic has no place for a speaker's name, and
    a tool message's name repeats what its C{tool_call_id} says);
  - C{max_completion_tokens}, else C{max_tokens}, else the backend's
    default, is C{max_tokens}; C{temperature} (Anthropic's range is 0 to
    1: a higher one is refused), C{top_p}, C{stream}; C{stop} (a string or
    a list) is C{stop_sequences};
  - C{tools} (functions only; C{strict: true} is refused, no schema
    guarantee is given) become tools with C{input_schema}; C{tool_choice}
    C{auto}/C{required}/C{none}/a named function is C{auto}/C{any}/C{none}/
    C{tool}; C{parallel_tool_calls: false} is C{disable_parallel_tool_use}
    (with C{auto} when no C{tool_choice} was given); without tools there is
    no tool choice to send, and none is;
  - C{user} is C{metadata.user_id};
  - C{reasoning_effort} turns extended thinking on with a budget:
    C{minimal} and C{low} 1024 tokens, C{medium} 4096, C{high} 16384
    (C{none} leaves it off); the budget counts against C{max_tokens}, so a
    C{max_tokens} not above the budget is refused.  Anthropic wants a
    thinking turn that called tools to be sent back with its thinking
    blocks, which an OpenAI client cannot do: such a conversation gets
    Anthropic's own 400, as do its other rules for thinking (no
    C{temperature} but 1, no forced tool choice);
  - a last C{assistant} message is sent as it is, and Anthropic continues
    it (a prefill) where OpenAI would answer after it;
  - hints that do not change the answer are dropped: C{stream_options}
    (the translated stream always ends with a usage chunk and the gateway
    decides whether the client sees it), C{metadata} (labels for stored
    completions), C{store} when false, C{service_tier} C{auto} or
    C{default};
  - refused: C{n} > 1, C{logprobs}, C{top_logprobs}, C{logit_bias},
    non-zero C{presence_penalty} and C{frequency_penalty}, C{seed},
    C{audio}, C{modalities} other than text, C{prediction}, C{store: true}
    (there is no stored completion to read back), other service tiers,
    C{response_format} other than C{text} (this API version has no JSON
    mode), the legacy C{functions} and C{function_call}, and any field this
    module does not know.

Messages answer -> chat completion (L{messageToCompletion},
L{MessagesStream}):
  - text blocks joined are C{content}; C{tool_use} blocks are
    C{tool_calls} (the block's id, the input as compact JSON); C{thinking}
    blocks joined are the extra field C{reasoning_content} (streamed as
    C{reasoning_content} deltas), their signatures and
    C{redacted_thinking} blocks are dropped; blocks of other kinds are
    skipped;
  - stop reasons: C{end_turn} and C{stop_sequence} are C{stop},
    C{max_tokens} and C{model_context_window_exceeded} are C{length},
    C{tool_use} is C{tool_calls}, C{refusal} is C{content_filter},
    C{pause_turn} (the answer is not finished and can be continued) is
    C{length}; a stop reason this module does not know is C{stop};
  - usage: C{prompt_tokens} = C{input_tokens} + C{cache_read_input_tokens}
    + C{cache_creation_input_tokens}, C{cached_tokens} =
    C{cache_read_input_tokens} (when reported), C{completion_tokens} =
    C{output_tokens} (thinking included; Anthropic does not count it
    apart).  In a stream, C{message_delta} counts are cumulative and
    replace the ones of C{message_start}.

Messages request -> chat request, at the door (L{messagesToChat}):
  - C{system} (a string or text blocks) is the first, C{system}, message;
  - user turns: text and image blocks (C{base64} sources become C{data:}
    URLs, C{url} sources stay URLs) are a user message; each
    C{tool_result} block is a C{tool} message, in block order;
    C{is_error: true} is said in the text, which starts with C{"Error: "};
    a tool result holds text only;
  - assistant turns: text blocks are C{content}, C{tool_use} blocks are
    C{tool_calls}; C{thinking} and C{redacted_thinking} blocks of earlier
    turns are dropped (OpenAI chat has no slot for past reasoning);
  - C{cache_control} on any block or tool is dropped: a caching hint;
  - C{max_tokens} (required), C{temperature}, C{top_p}, C{stream} (with
    C{stream_options.include_usage} so that the usage arrives),
    C{stop_sequences} is C{stop}, C{metadata.user_id} is C{user}, tools
    and C{tool_choice} (C{disable_parallel_tool_use} is
    C{parallel_tool_calls: false});
  - C{thinking} C{enabled} is C{reasoning_effort} by its budget: under
    4096 C{low}, under 16384 C{medium}, else C{high}; C{disabled} and
    C{adaptive} (the model decides) send no effort, leaving it to the
    backend's default;
  - a last C{assistant} turn (a prefill) is sent as history: an
    OpenAI-style backend answers after it instead of continuing it;
  - a C{tool_choice} without tools is not sent;
  - refused: C{top_k}, document and other block kinds, server tools
    (C{web_search} and the like, any tool with a C{type} other than
    C{custom}), C{container}, C{mcp_servers}, C{service_tier} other than
    C{auto}, and any field this module does not know.

Chat answer -> Messages answer, at the door (L{completionToMessage},
L{ChunksToMessages}): the id is C{msg_} and the completion's id without
its C{chatcmpl-}; C{reasoning_content} is a thinking block (with an empty
signature) before the text; C{stop} is C{end_turn} (which stop sequence
matched is not known), C{length} C{max_tokens}, C{tool_calls} C{tool_use},
C{content_filter} C{refusal} (as is an answer with OpenAI's C{refusal}
text, which becomes a text block); C{input_tokens} = C{prompt_tokens} - cached,
C{cache_read_input_tokens} = cached, C{output_tokens} =
C{completion_tokens}.  Tool call ids pass unchanged both ways, so an
Anthropic client's C{tool_use_id} is the id the OpenAI-style upstream
gave.

An upstream answer that cannot be translated (a stream's error event, a
frame that is not JSON, an end before C{message_stop}, tool arguments
that are not a JSON object) raises L{aigateway.llm.translate.StreamError}.
L{MessagesStream} first hands out the chunks that came before the error
in the same bytes and raises it on the next call, L{MessagesStream.end} at
the latest, so every cut of a broken stream gives the same chunks.

Upstream requests need the headers C{anthropic-version:}
L{ANTHROPIC_VERSION}, C{x-api-key} (the backend's key) and
C{content-type: application/json}; Anthropic answers errors with its own
statuses (529 when overloaded), which L{errorFromAnthropic} translates.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard

from aigateway.llm.sse import Event, SSEParser
from aigateway.llm.translate import (
    compactJSON,
    StreamError,
    TranslationError,
    UpstreamError,
    chunk,
    completion,
    encodeEvent,
    readJSON,
    textChunk,
    usage,
    writeJSON,
)

__all__ = [
    "ANTHROPIC_VERSION",
    "ChunksToMessages",
    "MessagesStream",
    "chatToMessages",
    "completionToMessage",
    "errorFromAnthropic",
    "errorToAnthropic",
    "messageToCompletion",
    "messagesToChat",
]

ANTHROPIC_VERSION = "2023-06-01"
"""The value of the C{anthropic-version} header these shapes are for."""

# Thinking budgets for OpenAI's reasoning efforts, and back.
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_MEDIUM_FROM = 4096
_HIGH_FROM = 16384

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "pause_turn": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}
# Anthropic's error types in OpenAI's terms.
_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "billing_error": "insufficient_quota",
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}
# An upstream's error type is repeated only when it looks like one.
_ERROR_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_MESSAGE_LIMIT = 1000
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)\Z", re.DOTALL)

# Chat request fields by what becomes of them.
_CHAT_FIELDS = frozenset([
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
    "user", "response_format", "n", "logprobs", "top_logprobs", "logit_bias",
    "presence_penalty", "frequency_penalty", "seed", "audio", "modalities", "prediction",
    "store", "metadata", "service_tier", "reasoning_effort",
])
_MESSAGES_FIELDS = frozenset([
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
])


# -- small checks ------------------------------------------------------------

def _isInt(value: object) -> TypeGuard[int]:
    # A JSON integer is an int itself, never a subclass; bool is not one.
    return type(value) is int


def _isNumber(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(param: str, why: str) -> TranslationError:
    return TranslationError(param, f"{param}: {why}")


def _object(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _refuse(param, "must be an object")
    return value


def _list(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _refuse(param, "must be an array")
    return value


def _string(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _refuse(param, "must be a string")
    return value


def _onlyKeys(doc: dict[str, Any], allowed: frozenset[str] | set[str], path: str) -> None:
    for key in doc:
        if key not in allowed:
            raise _refuse(f"{path}.{key}" if path else key,
                          "is not a field this gateway can translate")


def _count(value: object) -> int:
    return value if type(value) is int else 0


def _compact(value: object) -> str:
    return compactJSON(value)


def _parseArguments(text: object, param: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise _refuse(param, "must be a string of JSON")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise _refuse(param, "is not valid JSON") from None
    if not isinstance(value, dict):
        raise _refuse(param, "must be a JSON object")
    return value


# -- A. OpenAI chat request -> Anthropic Messages request ----------------------

def chatToMessages(chat: dict[str, Any], *, model: str, defaultMaxTokens: int) -> dict[str, Any]:
    """
    Translate an OpenAI chat completions request into a Messages request.

    @param chat: the client's request, already parsed strictly.
    @param model: the model to ask the upstream for.
    @param defaultMaxTokens: C{max_tokens} when the client sets none
        (Anthropic requires one).
    @return: the Messages request body.
    @raise TranslationError: for a field Anthropic cannot take as it is.
    """
    _onlyKeys(chat, _CHAT_FIELDS, "")
    _refuseChatFields(chat)
    out: dict[str, Any] = {"model": model}

    maxTokens = defaultMaxTokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = chat.get(name)
        if value is not None:
            if not _isInt(value) or value < 1:
                raise _refuse(name, "must be a positive integer")
            maxTokens = value
    out["max_tokens"] = maxTokens

    system, turns = _chatTurns(chat.get("messages"))
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = turns

    temperature = chat.get("temperature")
    if temperature is not None:
        if not _isNumber(temperature) or not 0 <= temperature <= 1:
            raise _refuse("temperature", "must be a number from 0 to 1 for this backend")
        out["temperature"] = temperature
    topP = chat.get("top_p")
    if topP is not None:
        if not _isNumber(topP):
            raise _refuse("top_p", "must be a number")
        out["top_p"] = topP
    stop = chat.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _refuse("stop", "must be a string or an array of strings")
        if stop:
            out["stop_sequences"] = stop
    stream = chat.get("stream")
    if stream is not None:
        out["stream"] = stream
    user = chat.get("user")
    if user is not None:
        out["metadata"] = {"user_id": _string(user, "user")}

    tools = chat.get("tools")
    if tools is not None:
        converted = [_chatTool(tool, f"tools[{i}]")
                     for i, tool in enumerate(_list(tools, "tools"))]
        if converted:
            out["tools"] = converted
    choice = _chatToolChoice(chat.get("tool_choice"))
    parallel = chat.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _refuse("parallel_tool_calls", "must be a boolean")
    if parallel is False and choice is None and "tools" in out:
        choice = {"type": "auto"}
    if parallel is False and choice is not None and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    if choice is not None and "tools" in out:
        out["tool_choice"] = choice

    effort = chat.get("reasoning_effort")
    if effort is not None and effort != "none":
        if effort not in _BUDGETS:
            raise _refuse("reasoning_effort",
                          "must be one of none, minimal, low, medium, high")
        budget = _BUDGETS[effort]
        if maxTokens <= budget:
            raise _refuse("reasoning_effort",
                          f"needs a max_tokens above its thinking budget of {budget}")
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return out


def _refuseChatFields(chat: dict[str, Any]) -> None:
    """
    Refuse the chat fields that ask for what Anthropic does not do.
    """
    n = chat.get("n")
    if n is not None and n != 1:
        raise _refuse("n", "only one choice is supported by this backend")
    if chat.get("logprobs") not in (None, False):
        raise _refuse("logprobs", "log probabilities are not supported by this backend")
    for name in ("top_logprobs", "seed", "audio", "prediction"):
        if chat.get(name) is not None:
            raise _refuse(name, "is not supported by this backend")
    if chat.get("logit_bias") not in (None, {}):
        raise _refuse("logit_bias", "is not supported by this backend")
    for name in ("presence_penalty", "frequency_penalty"):
        if chat.get(name) not in (None, 0):
            raise _refuse(name, "is not supported by this backend")
    if chat.get("modalities") not in (None, ["text"]):
        raise _refuse("modalities", "only text output is supported by this backend")
    if chat.get("store") not in (None, False):
        raise _refuse("store", "stored completions are not supported by this backend")
    if chat.get("service_tier") not in (None, "auto", "default"):
        raise _refuse("service_tier", "only auto and default are supported by this backend")
    responseFormat = chat.get("response_format")
    if responseFormat is not None:
        if not isinstance(responseFormat, dict) or responseFormat.get("type") != "text":
            raise _refuse("response_format",
                          "JSON output formats are not supported by this backend")
    streamOptions = chat.get("stream_options")
    if streamOptions is not None:
        _object(streamOptions, "stream_options")
    metadata = chat.get("metadata")
    if metadata is not None:
        _object(metadata, "metadata")


def _chatTurns(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The system text blocks and the alternating turns of a chat's messages.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(_list(messages, "messages")):
        path = f"messages[{i}]"
        message = _object(message, path)
        role = message.get("role")
        if role in ("system", "developer"):
            _onlyKeys(message, {"role", "content", "name"}, path)
            _noName(message, path)
            system.extend(_textBlocks(message.get("content"), f"{path}.content"))
            continue
        if role == "user":
            _onlyKeys(message, {"role", "content", "name"}, path)
            _noName(message, path)
            content = message.get("content")
            if isinstance(content, str):
                _addTurn(turns, "user", content)
            else:
                _addTurn(turns, "user", [
                    _userPart(part, f"{path}.content[{j}]")
                    for j, part in enumerate(_list(content, f"{path}.content"))])
        elif role == "assistant":
            _addTurn(turns, "assistant", _assistantBlocks(message, path))
        elif role == "tool":
            _onlyKeys(message, {"role", "content", "tool_call_id", "name"}, path)
            callId = _string(message.get("tool_call_id"), f"{path}.tool_call_id")
            content = message.get("content")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": callId}
            if isinstance(content, str):
                result["content"] = content
            else:
                result["content"] = _textBlocks(content, f"{path}.content")
            _addTurn(turns, "user", [result])
        else:
            raise _refuse(f"{path}.role",
                          "must be system, developer, user, assistant or tool")
    return system, turns


def _noName(message: dict[str, Any], path: str) -> None:
    if message.get("name") is not None:
        raise _refuse(f"{path}.name", "message names are not supported by this backend")


def _addTurn(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """
    Append a turn, merged into the last one when that has the same role.
    """
    if turns and turns[-1]["role"] == role:
        last = turns[-1]
        blocks = last["content"]
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        last["content"] = blocks + content
        return
    turns.append({"role": role, "content": content})


def _textBlocks(content: object, path: str) -> list[dict[str, Any]]:
    """
    Text content (a string or text parts) as Anthropic text blocks.
    """
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(_list(content, path)):
        part = _object(part, f"{path}[{j}]")
        if part.get("type") != "text":
            raise _refuse(f"{path}[{j}].type", "only text parts are supported here")
        _onlyKeys(part, {"type", "text"}, f"{path}[{j}]")
        blocks.append({"type": "text", "text": _string(part.get("text"), f"{path}[{j}].text")})
    return blocks


def _userPart(part: object, path: str) -> dict[str, Any]:
    part = _object(part, path)
    kind = part.get("type")
    if kind == "text":
        _onlyKeys(part, {"type", "text"}, path)
        return {"type": "text", "text": _string(part.get("text"), f"{path}.text")}
    if kind == "image_url":
        _onlyKeys(part, {"type", "image_url"}, path)
        image = _object(part.get("image_url"), f"{path}.image_url")
        _onlyKeys(image, {"url", "detail"}, f"{path}.image_url")
        url = _string(image.get("url"), f"{path}.image_url.url")
        return {"type": "image", "source": _imageSource(url, f"{path}.image_url.url")}
    raise _refuse(f"{path}.type", "only text and image_url parts are supported by this backend")


def _imageSource(url: str, path: str) -> dict[str, Any]:
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    match = _DATA_URL.match(url)
    if match is None:
        raise _refuse(path, "must be an http(s) URL or a base64 data URL")
    return {"type": "base64", "media_type": match.group(1), "data": match.group(2)}


def _assistantBlocks(message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    _onlyKeys(message, {"role", "content", "tool_calls", "name", "refusal", "audio"}, path)
    _noName(message, path)
    for name in ("refusal", "audio"):
        if message.get(name) is not None:
            raise _refuse(f"{path}.{name}", "is not supported by this backend")
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if content is not None:
        for block in _textBlocks(content, f"{path}.content"):
            if block["text"]:
                blocks.append(block)
    calls = message.get("tool_calls")
    if calls is not None:
        for j, call in enumerate(_list(calls, f"{path}.tool_calls")):
            callPath = f"{path}.tool_calls[{j}]"
            call = _object(call, callPath)
            _onlyKeys(call, {"id", "type", "function"}, callPath)
            if call.get("type", "function") != "function":
                raise _refuse(f"{callPath}.type", "only function tool calls are supported")
            function = _object(call.get("function"), f"{callPath}.function")
            _onlyKeys(function, {"name", "arguments"}, f"{callPath}.function")
            blocks.append({
                "type": "tool_use",
                "id": _string(call.get("id"), f"{callPath}.id"),
                "name": _string(function.get("name"), f"{callPath}.function.name"),
                "input": _parseArguments(function.get("arguments"),
                                         f"{callPath}.function.arguments"),
            })
    if not blocks:
        # Nothing to say but an empty answer: keep the turn as it was.
        blocks.append({"type": "text", "text": content if isinstance(content, str) else ""})
    return blocks


def _chatTool(tool: object, path: str) -> dict[str, Any]:
    tool = _object(tool, path)
    if tool.get("type") != "function":
        raise _refuse(f"{path}.type", "only function tools are supported by this backend")
    _onlyKeys(tool, {"type", "function"}, path)
    function = _object(tool.get("function"), f"{path}.function")
    _onlyKeys(function, {"name", "description", "parameters", "strict"}, f"{path}.function")
    if function.get("strict") not in (None, False):
        raise _refuse(f"{path}.function.strict",
                      "strict schema adherence is not supported by this backend")
    out: dict[str, Any] = {"name": _string(function.get("name"), f"{path}.function.name")}
    description = function.get("description")
    if description is not None:
        out["description"] = _string(description, f"{path}.function.description")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    out["input_schema"] = _object(parameters, f"{path}.function.parameters")
    return out


def _chatToolChoice(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        _onlyKeys(choice, {"type", "function"}, "tool_choice")
        function = _object(choice.get("function"), "tool_choice.function")
        _onlyKeys(function, {"name"}, "tool_choice.function")
        return {"type": "tool", "name": _string(function.get("name"), "tool_choice.function.name")}
    raise _refuse("tool_choice", "must be auto, required, none or a named function")


# -- A. Anthropic answers -> OpenAI chat answers ------------------------------

def _usageFromAnthropic(native: dict[str, Any]) -> dict[str, Any]:
    """
    OpenAI's usage for Anthropic's counts.
    """
    get = native.get
    cacheRead = get("cache_read_input_tokens")
    prompt = _count(get("input_tokens")) + _count(cacheRead) + _count(get("cache_creation_input_tokens"))
    return usage(prompt, _count(get("output_tokens")),
                 cached=cacheRead if _isInt(cacheRead) else None)


def _finishReason(stopReason: object) -> str | None:
    if stopReason is None:
        return None
    return _STOP_REASONS.get(str(stopReason), "stop")


def messageToCompletion(message: dict[str, Any], *, created: int) -> dict[str, Any]:
    """
    Translate an Anthropic Messages answer into a C{chat.completion}.

    @param message: the upstream's answer, a parsed C{message} document.
    @param created: the completion's C{created} time.
    @raise StreamError: when the document is not a message.
    """
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise StreamError("the upstream's answer is not an Anthropic message")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            raise StreamError("the upstream's answer has a content block that is not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": _compact(block.get("input", {}))}})
    out: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        out["tool_calls"] = calls
    if thinking:
        out["reasoning_content"] = "".join(thinking)
    native = message.get("usage")
    return completion(
        str(message.get("id") or ""),
        str(message.get("model") or ""),
        created,
        out,
        _finishReason(message.get("stop_reason")),
        _usageFromAnthropic(native) if isinstance(native, dict) else None,
    )


class MessagesStream:
    """
    Translates an Anthropic Messages stream (SSE bytes, cut anywhere) into
    OpenAI C{chat.completion.chunk} documents.

    @ivar model: the model named in chunks until the upstream names its own.
    @ivar created: every chunk's C{created} time.
    @ivar responseId: the message id from C{message_start}, or L{None}.
    @ivar responseModel: the model from C{message_start}, or L{None}.
    @ivar usage: OpenAI's usage for the counts read so far (final once the
        stream is complete), or L{None} before C{message_start}.
    @ivar complete: C{message_stop} was read.
    """

    def __init__(self, model: str, created: int) -> None:
        """
        @param model: the model to name in chunks until the upstream names
            its own.
        @param created: every chunk's C{created} time.
        """
        self.model = model
        self.created = created
        self.responseId: str | None = None
        self.responseModel: str | None = None
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self._parser = SSEParser()
        self._native: dict[str, Any] = {}
        self._blocks: dict[int, tuple[str, int]] = {}
        self._tools = 0
        self._started = False
        self._error: StreamError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        Read more of the upstream's body.

        @return: the chunks it completed.  When the same bytes also hold an
            error, the chunks before it are returned and the error is
            raised by the next call (L{end} at the latest), so that every
            cut of a stream gives the same chunks before its error.
        @raise StreamError: on an error event or a frame that is not what
            Anthropic sends.
        """
        return self._events(self._parser.feed(data))

    def end(self) -> list[dict[str, Any]]:
        """
        The upstream's body has ended.

        @return: the last chunks, if any.
        @raise StreamError: when the stream ended before C{message_stop}, or
            on an error still to be raised.
        """
        out = self._events(self._parser.end())
        if not self.complete:
            raise StreamError("the upstream's stream ended before its message was complete")
        return out

    def _events(self, events: list[Event]) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        out: list[dict[str, Any]] = []
        try:
            for event in events:
                self._event(event, out)
        except StreamError as error:
            # The stream is over; the chunks before the error go out
            # first, and the error is raised by the next call (end() at the
            # latest) and every one after it.
            self._error = error
            if not out:
                raise
        return out

    def _chunk(self, delta: dict[str, Any] | None, finishReason: str | None = None,
               withUsage: bool = False) -> dict[str, Any]:
        return chunk(self.responseId or "", self.responseModel or self.model, self.created,
                     delta, finishReason, self.usage if withUsage else None)

    def _event(self, event: Event, out: list[dict[str, Any]]) -> None:
        try:
            data = readJSON(event.data)
        except ValueError:
            raise StreamError("the upstream sent a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise StreamError("the upstream sent a stream event that is not an object")
        kind = data.get("type", event.event)
        if kind == "error":
            error = data.get("error")
            name = error.get("type") if isinstance(error, dict) else None
            if isinstance(name, str) and _ERROR_TYPE.match(name):
                raise StreamError(f"the upstream's stream failed: {name}")
            raise StreamError("the upstream's stream failed")
        if kind == "ping" or self.complete:
            return
        if kind == "message_start":
            self._messageStart(data, out)
            return
        if not self._started:
            raise StreamError("the upstream's stream did not start with message_start")
        if kind == "content_block_start":
            self._blockStart(data, out)
        elif kind == "content_block_delta":
            self._blockDelta(data, out)
        elif kind == "message_delta":
            native = data.get("usage")
            if isinstance(native, dict):
                self._countUsage(native)
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                out.append(self._chunk({}, _finishReason(delta["stop_reason"])))
        elif kind == "message_stop":
            self.complete = True
            if self.usage is None:
                self.usage = _usageFromAnthropic({})
            out.append(self._chunk(None, withUsage=True))
        # content_block_stop needs nothing; unknown events are skipped, as
        # Anthropic asks of clients.

    def _countUsage(self, native: dict[str, Any]) -> None:
        for key, value in native.items():
            if value is not None:
                self._native[key] = value
        self.usage = _usageFromAnthropic(self._native)

    def _messageStart(self, data: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self._started:
            raise StreamError("the upstream's stream started twice")
        message = data.get("message")
        if not isinstance(message, dict):
            raise StreamError("the upstream's message_start has no message")
        self._started = True
        if isinstance(message.get("id"), str):
            self.responseId = message["id"]
        if isinstance(message.get("model"), str):
            self.responseModel = message["model"]
        native = message.get("usage")
        if isinstance(native, dict):
            self._countUsage(native)
        out.append(self._chunk({"role": "assistant", "content": ""}))

    def _blockStart(self, data: dict[str, Any], out: list[dict[str, Any]]) -> None:
        index = data.get("index")
        block = data.get("content_block")
        if not _isInt(index) or not isinstance(block, dict):
            raise StreamError("the upstream sent a content_block_start without a block")
        kind = block.get("type")
        if kind == "tool_use":
            toolIndex = self._tools
            self._tools += 1
            self._blocks[index] = ("tool_use", toolIndex)
            out.append(self._chunk({"tool_calls": [{
                "index": toolIndex, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}]}))
            initial = block.get("input")
            if isinstance(initial, dict) and initial:
                self._arguments(toolIndex, _compact(initial), out)
        elif kind in ("text", "thinking"):
            self._blocks[index] = (kind, 0)
            text = block.get(kind)
            if isinstance(text, str) and text:
                field = "content" if kind == "text" else "reasoning_content"
                out.append(self._chunk({field: text}))
        else:
            self._blocks[index] = ("other", 0)

    def _arguments(self, toolIndex: int, piece: str, out: list[dict[str, Any]]) -> None:
        out.append(self._chunk({"tool_calls": [{"index": toolIndex,
                                                "function": {"arguments": piece}}]}))

    def _blockDelta(self, data: dict[str, Any], out: list[dict[str, Any]]) -> None:
        index = data.get("index")
        delta = data.get("delta")
        if not isinstance(delta, dict) or not _isInt(index) or index not in self._blocks:
            raise StreamError("the upstream sent a delta for a block it did not start")
        kind, toolIndex = self._blocks[index]
        deltaType = delta.get("type")
        if kind == "text" and deltaType == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                out.append(textChunk(self.responseId or "", self.responseModel or self.model,
                                     self.created, text))
        elif kind == "thinking" and deltaType == "thinking_delta":
            text = delta.get("thinking")
            if isinstance(text, str) and text:
                out.append(textChunk(self.responseId or "", self.responseModel or self.model,
                                     self.created, text, "reasoning_content"))
        elif kind == "tool_use" and deltaType == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str) and piece:
                self._arguments(toolIndex, piece, out)
        # signature_delta, citations_delta and blocks of other kinds have
        # no OpenAI counterpart.


def errorFromAnthropic(status: int, body: bytes) -> UpstreamError:
    """
    Translate an Anthropic error answer into OpenAI's terms.

    @param status: the upstream's status (529, overloaded, is a 503 here).
    @param body: the upstream's body.
    @return: the error to answer the client with.
    """
    outStatus = 503 if status == 529 else status
    error = None
    try:
        document = readJSON(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("type") == "error":
        error = document.get("error")
    if isinstance(error, dict) and isinstance(error.get("type"), str) \
            and isinstance(error.get("message"), str) and _ERROR_TYPE.match(error["type"]):
        name = error["type"]
        if name == "overloaded_error":
            outStatus = 503
        message = error["message"]
        if len(message) > _MESSAGE_LIMIT:
            message = message[:_MESSAGE_LIMIT] + "..."
        return UpstreamError(outStatus, message, _OPENAI_TYPES.get(name, _statusType(outStatus)),
                             name)
    return UpstreamError(outStatus, f"the upstream answered with status {status}",
                         _statusType(outStatus))


def _statusType(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


# -- B. The /v1/messages door: Anthropic request -> OpenAI chat request --------

def messagesToChat(body: dict[str, Any]) -> dict[str, Any]:
    """
    Translate an Anthropic Messages request into an OpenAI chat request.

    @param body: the client's request, already parsed strictly.
    @return: the chat request body.
    @raise TranslationError: for a wrong shape, or a field OpenAI chat
        cannot take.
    """
    for name in ("container", "mcp_servers"):
        if name in body:
            raise _refuse(name, "is not supported by this gateway")
    if "top_k" in body:
        raise _refuse("top_k", "has no OpenAI equivalent")
    _onlyKeys(body, _MESSAGES_FIELDS, "")
    maxTokens = body.get("max_tokens")
    if not _isInt(maxTokens) or maxTokens < 1:
        raise _refuse("max_tokens", "is required and must be a positive integer")
    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        if isinstance(system, str):
            messages.append({"role": "system", "content": system})
        else:
            parts = _doorText(system, "system")
            messages.append({"role": "system", "content": parts[0]["text"]
                             if len(parts) == 1 else parts})
    for i, message in enumerate(_list(body.get("messages"), "messages")):
        path = f"messages[{i}]"
        message = _object(message, path)
        _onlyKeys(message, {"role", "content"}, path)
        role = message.get("role")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise _refuse(f"{path}.content", "must be a string or an array of blocks")
        if role == "user":
            messages.extend(_doorUser(content, f"{path}.content"))
        elif role == "assistant":
            messages.append(_doorAssistant(content, f"{path}.content"))
        else:
            raise _refuse(f"{path}.role", "must be user or assistant")
    out["messages"] = messages
    out["max_tokens"] = maxTokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not _isNumber(value):
                raise _refuse(name, "must be a number")
            out[name] = value
    stop = body.get("stop_sequences")
    if stop is not None:
        stop = _list(stop, "stop_sequences")
        for j, sequence in enumerate(stop):
            _string(sequence, f"stop_sequences[{j}]")
        if stop:
            out["stop"] = stop
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _refuse("stream", "must be a boolean")
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        metadata = _object(metadata, "metadata")
        _onlyKeys(metadata, {"user_id"}, "metadata")
        if metadata.get("user_id") is not None:
            out["user"] = _string(metadata["user_id"], "metadata.user_id")
    if body.get("service_tier") not in (None, "auto"):
        raise _refuse("service_tier", "only auto is supported by this gateway")
    tools = body.get("tools")
    if tools is not None:
        converted = [_doorTool(tool, f"tools[{i}]")
                     for i, tool in enumerate(_list(tools, "tools"))]
        if converted:
            out["tools"] = converted
    choice = body.get("tool_choice")
    if choice is not None:
        _doorToolChoice(_object(choice, "tool_choice"), out)
        if "tools" not in out:
            out.pop("tool_choice")
    thinking = body.get("thinking")
    if thinking is not None:
        thinking = _object(thinking, "thinking")
        kind = thinking.get("type")
        if kind == "enabled":
            _onlyKeys(thinking, {"type", "budget_tokens"}, "thinking")
            budget = thinking.get("budget_tokens")
            if not _isInt(budget) or budget < 1:
                raise _refuse("thinking.budget_tokens", "must be a positive integer")
            out["reasoning_effort"] = ("low" if budget < _MEDIUM_FROM
                                       else "medium" if budget < _HIGH_FROM else "high")
        elif kind in ("disabled", "adaptive"):
            _onlyKeys(thinking, {"type"}, "thinking")
        else:
            raise _refuse("thinking.type", "must be enabled, adaptive or disabled")
    return out


def _dropCache(block: dict[str, Any], allowed: set[str], path: str) -> None:
    _onlyKeys(block, allowed | {"cache_control"}, path)


def _doorText(blocks: object, path: str) -> list[dict[str, Any]]:
    parts = []
    for j, block in enumerate(_list(blocks, path)):
        block = _object(block, f"{path}[{j}]")
        if block.get("type") != "text":
            raise _refuse(f"{path}[{j}].type", "only text blocks are supported here")
        _dropCache(block, {"type", "text"}, f"{path}[{j}]")
        parts.append({"type": "text", "text": _string(block.get("text"), f"{path}[{j}].text")})
    return parts


def _doorImage(block: dict[str, Any], path: str) -> dict[str, Any]:
    _dropCache(block, {"type", "source"}, path)
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        _onlyKeys(source, {"type", "media_type", "data"}, f"{path}.source")
        mediaType = _string(source.get("media_type"), f"{path}.source.media_type")
        data = _string(source.get("data"), f"{path}.source.data")
        url = f"data:{mediaType};base64,{data}"
    elif kind == "url":
        _onlyKeys(source, {"type", "url"}, f"{path}.source")
        url = _string(source.get("url"), f"{path}.source.url")
    else:
        raise _refuse(f"{path}.source.type", "only base64 and url images are supported")
    return {"type": "image_url", "image_url": {"url": url}}


def _doorUser(content: str | list[Any], path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        if parts:
            out.append({"role": "user", "content": list(parts)})
            parts.clear()

    for j, block in enumerate(content):
        blockPath = f"{path}[{j}]"
        block = _object(block, blockPath)
        kind = block.get("type")
        if kind == "text":
            _dropCache(block, {"type", "text"}, blockPath)
            parts.append({"type": "text", "text": _string(block.get("text"), f"{blockPath}.text")})
        elif kind == "image":
            parts.append(_doorImage(block, blockPath))
        elif kind == "tool_result":
            flush()
            out.append(_doorToolResult(block, blockPath))
        else:
            raise _refuse(f"{blockPath}.type", f"{kind!r} blocks are not supported by this gateway")
    flush()
    return out


def _doorToolResult(block: dict[str, Any], path: str) -> dict[str, Any]:
    _dropCache(block, {"type", "tool_use_id", "content", "is_error"}, path)
    callId = _string(block.get("tool_use_id"), f"{path}.tool_use_id")
    isError = block.get("is_error")
    if isError is not None and not isinstance(isError, bool):
        raise _refuse(f"{path}.is_error", "must be a boolean")
    content = block.get("content", "")
    if isinstance(content, str):
        text: str | list[dict[str, Any]] = content
    else:
        text = _doorText(content, f"{path}.content")
    if isError:
        if isinstance(text, str):
            text = "Error: " + text
        else:
            text = [{"type": "text", "text": "Error: "}] + text
    return {"role": "tool", "tool_call_id": callId, "content": text}


def _doorAssistant(content: str | list[Any], path: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        blockPath = f"{path}[{j}]"
        block = _object(block, blockPath)
        kind = block.get("type")
        if kind == "text":
            _dropCache(block, {"type", "text", "citations"}, blockPath)
            if block.get("citations") is not None:
                raise _refuse(f"{blockPath}.citations", "is not supported by this gateway")
            texts.append(_string(block.get("text"), f"{blockPath}.text"))
        elif kind == "tool_use":
            _dropCache(block, {"type", "id", "name", "input"}, blockPath)
            calls.append({
                "id": _string(block.get("id"), f"{blockPath}.id"),
                "type": "function",
                "function": {
                    "name": _string(block.get("name"), f"{blockPath}.name"),
                    "arguments": _compact(_object(block.get("input"), f"{blockPath}.input")),
                },
            })
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _refuse(f"{blockPath}.type", f"{kind!r} blocks are not supported by this gateway")
    out: dict[str, Any] = {"role": "assistant",
                           "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _doorTool(tool: object, path: str) -> dict[str, Any]:
    tool = _object(tool, path)
    if tool.get("type", "custom") != "custom":
        raise _refuse(f"{path}.type", "server tools are not supported by this gateway")
    _dropCache(tool, {"type", "name", "description", "input_schema"}, path)
    function: dict[str, Any] = {"name": _string(tool.get("name"), f"{path}.name")}
    if tool.get("description") is not None:
        function["description"] = _string(tool["description"], f"{path}.description")
    function["parameters"] = _object(tool.get("input_schema"), f"{path}.input_schema")
    return {"type": "function", "function": function}


def _doorToolChoice(choice: dict[str, Any], out: dict[str, Any]) -> None:
    kind = choice.get("type")
    if kind == "tool":
        _onlyKeys(choice, {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
        out["tool_choice"] = {"type": "function", "function": {
            "name": _string(choice.get("name"), "tool_choice.name")}}
    elif kind in ("auto", "any"):
        _onlyKeys(choice, {"type", "disable_parallel_tool_use"}, "tool_choice")
        out["tool_choice"] = "auto" if kind == "auto" else "required"
    elif kind == "none":
        _onlyKeys(choice, {"type"}, "tool_choice")
        out["tool_choice"] = "none"
    else:
        raise _refuse("tool_choice.type", "must be auto, any, tool or none")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _refuse("tool_choice.disable_parallel_tool_use", "must be a boolean")
    if disable and "tools" in out:
        out["parallel_tool_calls"] = False


# -- B. OpenAI answers -> Anthropic answers -----------------------------------

def _messageId(completionId: object) -> str:
    text = completionId if isinstance(completionId, str) else ""
    if text.startswith("msg_"):
        return text
    return "msg_" + text.removeprefix("chatcmpl-")


def _usageToAnthropic(openAI: object) -> dict[str, Any]:
    doc = openAI if isinstance(openAI, dict) else {}
    details = doc.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens") if isinstance(details, dict) else None)
    return {
        "input_tokens": max(_count(doc.get("prompt_tokens")) - cached, 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": _count(doc.get("completion_tokens")),
    }


def _stopReason(finishReason: object) -> str | None:
    if finishReason is None:
        return None
    return _FINISH_REASONS.get(str(finishReason), "end_turn")


def completionToMessage(completion: dict[str, Any]) -> dict[str, Any]:
    """
    Translate an OpenAI C{chat.completion} into an Anthropic message.

    @param completion: the answer in the gateway's common form.
    @return: the message an Anthropic client reads.
    @raise StreamError: when the answer has no choice, or tool arguments
        that are not a JSON object.
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise StreamError("the upstream's answer has no choice")
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    stopReason = _stopReason(choice.get("finish_reason")) or "end_turn"
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
        stopReason = "refusal"
    for call in message.get("tool_calls") or []:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        try:
            arguments = _parseArguments(function.get("arguments", ""), "arguments")
        except TranslationError:
            raise StreamError("the upstream's tool call arguments are not a JSON object") from None
        content.append({"type": "tool_use", "id": call.get("id"),
                        "name": function.get("name"), "input": arguments})
    return {
        "id": _messageId(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": stopReason,
        "stop_sequence": None,
        "usage": _usageToAnthropic(completion.get("usage")),
    }


class ChunksToMessages:
    """
    Translates OpenAI C{chat.completion.chunk} documents into an Anthropic
    Messages stream: C{message_start}, a C{content_block_start}, deltas and
    C{content_block_stop} for each thinking, text and tool call block,
    C{message_delta} and C{message_stop}.  The usage comes last in OpenAI
    streams, after the finish reason, so C{message_delta} waits for it (or
    for L{end}).

    @ivar model: the model named in C{message_start}.
    """

    def __init__(self, model: str) -> None:
        """
        @param model: the model to name in C{message_start}.
        """
        self.model = model
        self._started = False
        self._messageId = "msg_"
        self._index = -1
        self._open: str | None = None
        self._tools: dict[int, int] = {}
        self._stopReason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._refused = False
        self._done = False

    def chunk(self, doc: dict[str, Any]) -> bytes:
        """
        Translate one chunk.

        @return: the SSE bytes it makes (possibly none).
        @raise StreamError: for an error document, or a chunk that cannot
            be said in Anthropic's events.
        """
        if self._done:
            return b""
        if "error" in doc:
            raise StreamError("the upstream's stream failed")
        out: list[bytes] = []
        if not self._started:
            self._start(doc, out)
        if isinstance(doc.get("usage"), dict):
            self._usage = doc["usage"]
        for choice in doc.get("choices") or []:
            if not isinstance(choice, dict):
                raise StreamError("the upstream sent a choice that is not an object")
            if choice.get("index", 0) != 0:
                raise StreamError("the upstream sent more than one choice")
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            finish = choice.get("finish_reason")
            if finish is not None and self._stopReason is None:
                self._close(out)
                self._stopReason = _stopReason(finish)
        if self._stopReason is not None and self._usage is not None and not doc.get("choices"):
            self._finish(out)
        return b"".join(out)

    def end(self) -> bytes:
        """
        The upstream's stream has ended.

        @return: the last events, if any.
        @raise StreamError: when no finish reason ever came.
        """
        if self._done:
            return b""
        if self._stopReason is None:
            raise StreamError("the upstream's stream ended before its answer was complete")
        out: list[bytes] = []
        self._finish(out)
        return b"".join(out)

    def _start(self, doc: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        self._messageId = _messageId(doc.get("id"))
        counts = _usageToAnthropic(doc.get("usage"))
        counts["output_tokens"] = 0
        out.append(encodeEvent({"type": "message_start", "message": {
            "id": self._messageId, "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": counts}}, event="message_start"))

    def _startBlock(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._index += 1
        self._open = kind
        out.append(encodeEvent({"type": "content_block_start", "index": self._index,
                                "content_block": block}, event="content_block_start"))

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(encodeEvent({"type": "content_block_stop", "index": self._index},
                                   event="content_block_stop"))
            self._open = None

    def _blockDelta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(encodeEvent({"type": "content_block_delta", "index": self._index,
                                "delta": delta}, event="content_block_delta"))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        if self._stopReason is not None:
            return
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            if self._open != "thinking":
                self._startBlock("thinking",
                                 {"type": "thinking", "thinking": "", "signature": ""}, out)
            self._blockDelta({"type": "thinking_delta", "thinking": reasoning}, out)
        for field in ("content", "refusal"):
            text = delta.get(field)
            if isinstance(text, str) and text:
                if field == "refusal":
                    self._refused = True
                if self._open != "text":
                    self._startBlock("text", {"type": "text", "text": ""}, out)
                self._blockDelta({"type": "text_delta", "text": text}, out)
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                raise StreamError("the upstream sent a tool call that is not an object")
            self._toolCall(call, out)

    def _toolCall(self, call: dict[str, Any], out: list[bytes]) -> None:
        index = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if index not in self._tools:
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise StreamError("the upstream started a tool call without a name")
            callId = call.get("id")
            if not isinstance(callId, str) or not callId:
                callId = f"toolu_{self._messageId.removeprefix('msg_')}_{index}"
            self._startBlock("tool_use", {"type": "tool_use", "id": callId, "name": name,
                                     "input": {}}, out)
            self._tools[index] = self._index
        elif self._tools[index] != self._index or self._open != "tool_use":
            raise StreamError("the upstream went back to a tool call it had left")
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            self._blockDelta({"type": "input_json_delta", "partial_json": piece}, out)

    def _finish(self, out: list[bytes]) -> None:
        self._done = True
        counts: dict[str, Any] = {}
        if self._usage is not None:
            native = _usageToAnthropic(self._usage)
            counts = {"input_tokens": native["input_tokens"],
                      "cache_read_input_tokens": native["cache_read_input_tokens"],
                      "output_tokens": native["output_tokens"]}
        else:
            counts = {"output_tokens": 0}
        out.append(encodeEvent({"type": "message_delta",
                                "delta": {"stop_reason": "refusal" if self._refused
                                          else self._stopReason,
                                          "stop_sequence": None},
                                "usage": counts}, event="message_delta"))
        out.append(encodeEvent({"type": "message_stop"}, event="message_stop"))


def errorToAnthropic(status: int, message: str) -> bytes:
    """
    Anthropic's error body, for answers at the C{/v1/messages} door.

    @param status: the status the door answers with.
    @param message: a sentence for the caller.
    """
    kind = _ERROR_TYPES.get(status)
    if kind is None:
        kind = "api_error" if status >= 500 else "invalid_request_error"
    return writeJSON({"type": "error", "error": {"type": kind, "message": message}})
