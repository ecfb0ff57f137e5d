"""
Amazon Bedrock's Converse API: request and answer translation, and the
SigV4 signature every request carries.

Bedrock runtime is C{https://bedrock-runtime.{region}.amazonaws.com}; a chat
is C{POST /model/{modelId}/converse}, a stream C{POST /model/{modelId}/
converse-stream} whose body is an AWS event stream
(C{application/vnd.amazon.eventstream}).  Requests are signed with SigV4 for
the service C{bedrock}.

botocore is optional (the C{aigateway[bedrock]} extra): it is imported only
by what needs it (L{Signer}, L{ConverseStream}), which raise
L{BedrockUnavailable} when it is missing.  The request and answer
translations need nothing but the standard library.

Request (L{chatToConverse}), OpenAI chat -> Converse:
  - C{model} goes in the path (L{modelPath}), not in the body; C{stream}
    chooses the path; C{stream_options.include_usage} is taken and not sent
    (Converse always reports usage).
  - C{system} and C{developer} messages, wherever they are, become the
    top-level C{system} blocks in order (Converse has no system turn).
  - C{user} and C{assistant} messages become turns of content blocks: text
    parts C{{"text"}}, C{data:image/(png|jpeg|gif|webp);base64,...} URLs
    C{{"image": {"format", "source": {"bytes": <the base64 text>}}}} (JSON
    carries a blob as base64).  An http(s) image URL is refused: Converse
    takes image bytes or S3 locations only, and the gateway fetches nothing
    for a caller.  The C{detail} hint has no equivalent and is ignored.
  - Assistant C{tool_calls} become C{toolUse {toolUseId, name, input}}
    blocks (C{arguments} must be a JSON object; an empty string is C{{}}).
    C{tool} messages become C{toolResult {toolUseId, content: [{text}]}}
    blocks in a user turn (the result stays text: OpenAI gives a string,
    and guessing JSON out of it would change what the model reads).
  - Consecutive turns of one role are merged into one, as Converse wants
    user and assistant to alternate; empty assistant text (the C{""} next
    to tool calls) is left out.  An assistant C{reasoning_content} echoed
    back by a client is dropped, as OpenAI-style APIs drop it.
  - C{max_completion_tokens} (or C{max_tokens}), C{temperature}, C{top_p},
    C{stop} -> C{inferenceConfig {maxTokens, temperature, topP,
    stopSequences}}.
  - C{tools} (functions) -> C{toolConfig.tools[].toolSpec {name, description,
    inputSchema: {json: parameters}, strict}}; C{tool_choice} C{auto} ->
    C{{auto: {}}}, C{required} -> C{{any: {}}}, a named function ->
    C{{tool: {name}}}.  C{none}: Converse cannot forbid tools it was given,
    so C{toolConfig} is left out; but Bedrock refuses a conversation holding
    tool blocks without C{toolConfig}, so C{none} with tool calls in the
    history is refused (on C{tool_choice}).
  - C{response_format} C{json_schema} -> C{outputConfig.textFormat {type:
    json_schema, structure: {jsonSchema: {schema: <the schema as JSON
    text>, name, description}}}} (Bedrock always holds the model to the
    schema; a model without structured output answers a 400 of its own).
    C{json_object} is refused: Converse has no JSON mode without a schema.
  - A field whose value is C{null}, or the value that does nothing (C{n} 1,
    C{logprobs} false, penalties 0, an empty C{logit_bias},
    C{parallel_tool_calls} true, C{store} false, C{modalities} C{["text"]},
    C{response_format} C{text}), counts as absent; C{user} is taken and not
    sent (it does not change the answer).
  - Refused with a L{TranslationError} naming the field, since Converse
    cannot honour them: C{n} > 1, C{logprobs}, C{top_logprobs},
    C{logit_bias}, C{seed}, C{presence_penalty}, C{frequency_penalty},
    C{parallel_tool_calls} false, C{audio}, C{modalities} with audio,
    C{reasoning_effort} (Converse has no model-independent reasoning
    setting: each model family takes its own C{additionalModelRequestFields},
    which the gateway does not guess), C{prediction}, C{metadata},
    C{store}, C{service_tier}, C{web_search_options}, C{functions},
    C{function_call}, message C{name}s, audio and file parts, non-function
    tools, and any field this module does not know.

Answer (L{converseToCompletion}), Converse -> OpenAI chat:
  - text blocks (and the text of citation blocks) joined into C{content};
    C{toolUse} blocks -> C{tool_calls} (C{arguments} the input as compact
    JSON); C{reasoningContent.reasoningText.text} -> C{reasoning_content}
    (redacted reasoning and signatures have no OpenAI place and are left).
  - C{stopReason}: C{end_turn}, C{stop_sequence} -> C{stop}; C{tool_use} ->
    C{tool_calls}; C{max_tokens}, C{model_context_window_exceeded} ->
    C{length}; C{guardrail_intervened}, C{content_filtered} ->
    C{content_filter}; anything else (C{malformed_model_output},
    C{malformed_tool_use}, a future reason) -> C{stop}.
  - usage: Bedrock counts cache reads and writes apart from C{inputTokens}
    (C{totalTokens} = input + output + cache read + cache write), so
    C{prompt_tokens} = C{inputTokens} + C{cacheReadInputTokens} +
    C{cacheWriteInputTokens}; should a C{totalTokens} show that
    C{inputTokens} already holds them, they are not added twice.
    C{cached_tokens} = C{cacheReadInputTokens} when reported;
    C{completion_tokens} = C{outputTokens} (reasoning included; Bedrock
    does not break reasoning tokens out).
  - Bedrock's answer names neither an id nor the model: the C{id} and
    C{model} passed in are used.

Stream (L{ConverseStream}): C{messageStart} -> the role chunk;
C{contentBlockStart} of a C{toolUse} -> the tool call's first delta (id,
name, C{""} arguments), its index counting tool calls from 0;
C{contentBlockDelta} C{text} / C{toolUse.input} / C{reasoningContent.text}
-> C{content} / C{arguments} / C{reasoning_content} deltas;
C{messageStop} -> the finish chunk; C{metadata} -> the usage chunk, always
last.  Event types this module does not know are skipped (Bedrock adds
them over time); an C{exception} or C{error} message, a damaged frame
(CRC, lengths), a payload that is not a JSON object, or an end before both
C{messageStop} and C{metadata} is a L{StreamError}.

Errors (L{errorFromBedrock}): the error type of C{x-amzn-ErrorType} (or
the body's C{__type}) picks the status; the body's C{message} or
C{Message} is the message.

Signing (L{Signer}): credentials come from the sources that need no
network, read once at configuration load: the environment given
(C{AWS_ACCESS_KEY_ID}, C{AWS_SECRET_ACCESS_KEY}, C{AWS_SESSION_TOKEN},
C{AWS_CREDENTIAL_EXPIRATION}), then the profile (C{AWS_PROFILE}, else
C{default}) of the shared credentials file (C{AWS_SHARED_CREDENTIALS_FILE},
else C{~/.aws/credentials}) and of the config file (C{AWS_CONFIG_FILE},
else C{~/.aws/config}).  The sources that reach the network (container
credentials, web identity, assumed roles, SSO, instance metadata) or run
programs (C{credential_process}) are not used: botocore reads them with
blocking calls that would stall the reactor, and a gateway that starts
must not wait on instance metadata.  No credentials is not an error at
load: L{Signer.problem} says what is missing, never a secret.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import re
import struct
import sys
import time
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlsplit
from zlib import crc32

from twisted.web.http_headers import Headers

from aigateway.config import Backend
from aigateway.llm.provider import AnswerReader, TranslatingProvider

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
    "EventStreamReader",
    "BedrockProvider",
    "BedrockUnavailable",
    "ConverseStream",
    "Signer",
    "chatToConverse",
    "converseToCompletion",
    "errorFromBedrock",
    "modelPath",
    "runtimeHost",
]

SERVICE = "bedrock"
_MISSING = "the bedrock provider needs botocore: pip install 'aigateway[bedrock]'"


class BedrockUnavailable(Exception):
    """
    Bedrock cannot be used in this process: botocore is not installed, or
    there are no credentials to sign with.

    @ivar message: a sentence for the operator (never a secret).
    """

    def __init__(self, message: str = _MISSING) -> None:
        super().__init__(message)
        self.message = message


_modules: Any = None


def _botocore() -> Any:
    """
    botocore's modules this provider uses, imported on first need (and
    then kept: an import statement costs microseconds even when the
    module is loaded, and a request would pay for it twice).

    @raise BedrockUnavailable: botocore is not installed.
    """
    global _modules
    if _modules is not None and sys.modules.get("botocore") is _modules:
        return _modules
    try:
        import botocore.credentials  # type: ignore[import-untyped]
        import botocore.eventstream  # type: ignore[import-untyped]
        import botocore.exceptions  # type: ignore[import-untyped]
        import botocore.utils  # type: ignore[import-untyped]
    except ImportError:
        raise BedrockUnavailable(_MISSING) from None
    _modules = botocore
    return botocore


# --- paths ---------------------------------------------------------------

_REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*\Z")


def runtimeHost(region: str) -> bytes:
    """
    The Bedrock runtime host of C{region}
    (C{bedrock-runtime.us-east-1.amazonaws.com}).

    @raise ValueError: C{region} is not a region name.
    """
    if not _REGION.match(region):
        raise ValueError(f"{region!r} is not an AWS region name")
    return f"bedrock-runtime.{region}.amazonaws.com".encode("ascii")


@functools.lru_cache(maxsize=256)
def modelPath(modelId: str, stream: bool) -> bytes:
    """
    The path of the Converse call for C{modelId}: every character but
    letters, digits and C{-._~} is percent-encoded, so the C{:} of
    versioned ids and the C{/} of inference profile ARNs stay in one path
    segment (C{/model/arn%3Aaws%3A...%2Fprofile/converse}).  SigV4 then
    signs that segment encoded once more, as botocore does.

    A backend's requests name a few models, so each path is made once.

    @param stream: C{converse-stream} rather than C{converse}.
    @raise TranslationError: C{modelId} is empty or a dot segment.
    """
    if modelId in ("", ".", ".."):
        raise TranslationError("model", f"{modelId!r} is not a Bedrock model id")
    operation = b"/converse-stream" if stream else b"/converse"
    return b"/model/" + quote(modelId, safe="").encode("ascii") + operation


# --- request -------------------------------------------------------------

_IMAGE = re.compile(r"data:image/(png|jpeg|jpg|gif|webp);base64,(.*)\Z", re.DOTALL | re.IGNORECASE)

# Fields that are fine at the value that does nothing, and refused otherwise.
_NEUTRAL: dict[str, Callable[[object], bool]] = {
    "n": lambda v: v == 1 and not isinstance(v, bool),
    "logprobs": lambda v: v is False,
    "presence_penalty": lambda v: _isNumber(v) and v == 0,
    "frequency_penalty": lambda v: _isNumber(v) and v == 0,
    "parallel_tool_calls": lambda v: v is True,
    "store": lambda v: v is False,
    "logit_bias": lambda v: v == {},
    "modalities": lambda v: v == ["text"],
}
_REFUSED = {
    "n": "Bedrock Converse gives one choice only",
    "logprobs": "Bedrock Converse gives no log probabilities",
    "top_logprobs": "Bedrock Converse gives no log probabilities",
    "logit_bias": "Bedrock Converse has no logit bias",
    "seed": "Bedrock Converse has no seed",
    "presence_penalty": "Bedrock Converse has no presence penalty",
    "frequency_penalty": "Bedrock Converse has no frequency penalty",
    "parallel_tool_calls": "Bedrock Converse cannot forbid parallel tool calls",
    "audio": "Bedrock Converse does not answer with audio",
    "modalities": "Bedrock Converse answers with text only",
    "reasoning_effort": "Bedrock Converse has no model-independent reasoning setting",
    "store": "Bedrock does not store completions",
}
# Fields a message of each role may carry (others are refused).
_MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal", "reasoning_content",
                  "audio", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
}


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _textParts(content: object, where: str) -> list[str]:
    """
    The texts of a content that may hold text only (system, developer,
    tool, assistant messages).
    """
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise TranslationError(where, "must be a string or a list of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise TranslationError(f"{where}[{j}]", "must be an object")
        kind = part.get("type")
        if kind != "text":
            raise TranslationError(
                f"{where}[{j}].type", f"Bedrock Converse cannot take a {kind!r} part here")
        text = part.get("text")
        if not isinstance(text, str):
            raise TranslationError(f"{where}[{j}].text", "must be a string")
        texts.append(text)
    return texts


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError(f"{where}.image_url.url", "must be a string")
    match = _IMAGE.match(url)
    if match is None:
        if url[:8].lower().startswith(("http://", "https://")):
            raise TranslationError(
                f"{where}.image_url.url",
                "Bedrock Converse takes images as data only: send a data: URL, not a link")
        raise TranslationError(
            f"{where}.image_url.url",
            "must be a base64 data: URL of a PNG, JPEG, GIF or WebP image")
    fmt, data = match.group(1).lower(), match.group(2)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise TranslationError(f"{where}.image_url.url", "holds data that is not base64") from None
    return {"image": {"format": "jpeg" if fmt == "jpg" else fmt, "source": {"bytes": data}}}


def _userContent(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise TranslationError(where, "must be a string or a list of parts")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise TranslationError(at, "must be an object")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise TranslationError(f"{at}.text", "must be a string")
            blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part, at))
        else:
            raise TranslationError(f"{at}.type", f"Bedrock Converse cannot take a {kind!r} part")
    return blocks


def _toolUse(call: object, where: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise TranslationError(where, "must be an object")
    if call.get("type", "function") != "function":
        raise TranslationError(f"{where}.type", "Bedrock Converse takes function calls only")
    callId, function = call.get("id"), call.get("function")
    if not isinstance(callId, str) or not callId:
        raise TranslationError(f"{where}.id", "must be a non-empty string")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise TranslationError(f"{where}.function.name", "must be a string")
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        raise TranslationError(f"{where}.function.arguments", "must be a string")
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise TranslationError(f"{where}.function.arguments", "is not JSON") from None
    if not isinstance(value, dict):
        raise TranslationError(f"{where}.function.arguments", "must be a JSON object")
    return {"toolUse": {"toolUseId": callId, "name": function["name"], "input": value}}


def _messages(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """
    The system blocks, the turns, and whether the turns hold tool blocks.
    """
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages", "must be a non-empty list")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    hasTools = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(where, "must be an object")
        role = message.get("role")
        if role not in _MESSAGE_FIELDS:
            raise TranslationError(f"{where}.role", f"Bedrock Converse has no {role!r} role")
        for field in message:
            if field not in _MESSAGE_FIELDS[role]:
                raise TranslationError(f"{where}.{field}", "Bedrock Converse has no such field")
        for field in ("name", "refusal", "audio", "function_call"):
            if message.get(field) is not None:
                raise TranslationError(
                    f"{where}.{field}", f"Bedrock Converse has no message {field}")
        if role in ("system", "developer"):
            texts = _textParts(message.get("content"), f"{where}.content")
            system.extend({"text": t} for t in texts if t)
            continue
        if role == "user":
            blocks = _userContent(message.get("content"), f"{where}.content")
        elif role == "assistant":
            content = message.get("content")
            texts = [] if content is None else _textParts(content, f"{where}.content")
            blocks = [{"text": t} for t in texts if t]
            calls = message.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise TranslationError(f"{where}.tool_calls", "must be a list")
                blocks.extend(_toolUse(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls))
                hasTools = hasTools or bool(calls)
        else:
            callId = message.get("tool_call_id")
            if not isinstance(callId, str) or not callId:
                raise TranslationError(f"{where}.tool_call_id", "must be a non-empty string")
            texts = _textParts(message.get("content"), f"{where}.content")
            role, hasTools = "user", True
            blocks = [{"toolResult": {"toolUseId": callId,
                                      "content": [{"text": t} for t in texts] or [{"text": ""}]}}]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns, hasTools


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("tools", "must be a list")
    out = []
    for j, tool in enumerate(tools):
        where = f"tools[{j}]"
        if not isinstance(tool, dict):
            raise TranslationError(where, "must be an object")
        if tool.get("type") != "function":
            raise TranslationError(f"{where}.type", "Bedrock Converse takes function tools only")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise TranslationError(f"{where}.function", "must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"{where}.function.name", "must be a non-empty string")
        spec: dict[str, Any] = {"name": name}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise TranslationError(f"{where}.function.description", "must be a string")
            if description:
                spec["description"] = description
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise TranslationError(f"{where}.function.parameters", "must be an object")
        spec["inputSchema"] = {"json": parameters}
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise TranslationError(f"{where}.function.strict", "must be a boolean")
        if strict:
            spec["strict"] = True
        for field in function:
            if field not in ("name", "description", "parameters", "strict"):
                raise TranslationError(f"{where}.function.{field}",
                                       "Bedrock Converse has no such tool field")
        out.append({"toolSpec": spec})
    return out


def _toolChoice(choice: object) -> dict[str, Any] | None:
    """
    Converse's C{toolChoice}, or L{None} for C{none}.
    """
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"tool": {"name": function["name"]}}
        raise TranslationError("tool_choice.function.name", "must be a string")
    raise TranslationError("tool_choice",
                           "Bedrock Converse takes auto, required, none or a function")


def _responseFormat(value: object) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        raise TranslationError("response_format", "must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        raise TranslationError(
            "response_format", "Bedrock Converse has no JSON mode without a schema: "
                               "use json_schema")
    if kind != "json_schema":
        raise TranslationError("response_format.type", f"Bedrock Converse cannot take {kind!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise TranslationError("response_format.json_schema.schema", "must be an object")
    definition: dict[str, Any] = {"schema": json.dumps(spec["schema"], separators=(",", ":"))}
    for field in ("name", "description"):
        if isinstance(spec.get(field), str) and spec[field]:
            definition[field] = spec[field]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def chatToConverse(chat: dict[str, Any]) -> dict[str, Any]:
    """
    The Converse request body for an OpenAI chat request (the model id goes
    in the path: L{modelPath}).

    @param chat: the client's request, already read strictly (C{model} a
        non-empty string, C{stream} a bool or absent).
    @raise TranslationError: a field Converse cannot take, named.
    """
    present = {k: v for k, v in chat.items() if v is not None}
    for field, value in present.items():
        if field in _NEUTRAL and _NEUTRAL[field](value):
            continue
        if field in _REFUSED:
            raise TranslationError(field, _REFUSED[field])
        if field not in _HANDLED:
            raise TranslationError(field, f"Bedrock Converse has no equivalent of {field}")

    system, turns, hasTools = _messages(chat.get("messages"))
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system

    inference: dict[str, Any] = {}
    maxTokens = present.get("max_completion_tokens", present.get("max_tokens"))
    if maxTokens is not None:
        field = "max_completion_tokens" if "max_completion_tokens" in present else "max_tokens"
        if not isinstance(maxTokens, int) or isinstance(maxTokens, bool) or maxTokens < 1:
            raise TranslationError(field, "must be a positive integer")
        inference["maxTokens"] = maxTokens
    for field, name in (("temperature", "temperature"), ("top_p", "topP")):
        if field in present:
            if not _isNumber(present[field]):
                raise TranslationError(field, "must be a number")
            inference[name] = present[field]
    if "stop" in present:
        stop = present["stop"]
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise TranslationError("stop", "must be a string or a list of strings")
        if stops:
            inference["stopSequences"] = stops
    if inference:
        body["inferenceConfig"] = inference

    choice = present.get("tool_choice")
    tools = _tools(present["tools"]) if "tools" in present else []
    if choice is not None:
        toolChoice = _toolChoice(choice)
        if toolChoice is not None and not tools:
            raise TranslationError("tool_choice", "names tools, but the request gives none")
        if toolChoice is None and tools:
            if hasTools:
                raise TranslationError(
                    "tool_choice",
                    "Bedrock Converse cannot forbid tools in a conversation that holds tool calls")
            tools = []
    else:
        toolChoice = None
    if tools:
        body["toolConfig"] = {"tools": tools}
        if toolChoice is not None:
            body["toolConfig"]["toolChoice"] = toolChoice

    if "response_format" in present:
        output = _responseFormat(present["response_format"])
        if output is not None:
            body["outputConfig"] = output

    if "stream_options" in present:
        options = present["stream_options"]
        if not isinstance(options, dict):
            raise TranslationError("stream_options", "must be an object")
        for field in options:
            if field != "include_usage":
                raise TranslationError(f"stream_options.{field}",
                                       "Bedrock Converse has no such stream option")
    return body


# The fields chatToConverse reads.
_HANDLED = frozenset([
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "tools", "tool_choice", "response_format", "user",
])


# --- answers -------------------------------------------------------------

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def _finishReason(stopReason: object) -> str:
    return _FINISH.get(stopReason, "stop") if isinstance(stopReason, str) else "stop"


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def _usage(tokens: object) -> dict[str, Any]:
    """
    OpenAI's usage for a Converse C{TokenUsage}.
    """
    if not isinstance(tokens, dict):
        tokens = {}
    inputTokens = _count(tokens.get("inputTokens"))
    outputTokens = _count(tokens.get("outputTokens"))
    read = tokens.get("cacheReadInputTokens")
    cached = _count(read) if read is not None else None
    cacheTokens = (cached or 0) + _count(tokens.get("cacheWriteInputTokens"))
    prompt = inputTokens + cacheTokens
    if cacheTokens and tokens.get("totalTokens") == inputTokens + outputTokens:
        prompt = inputTokens
    return usage(prompt, outputTokens, cached=cached)


def _badAnswer() -> UpstreamError:
    return UpstreamError(502, "Bedrock's answer is not a Converse response", "api_error")


def converseToCompletion(response: dict[str, Any], *, model: str, created: int,
                         id: str) -> dict[str, Any]:
    """
    The OpenAI C{chat.completion} for a Converse answer.

    @param model: the model to name (Bedrock's answer names none).
    @param id: the completion's id (Bedrock's answer has none).
    @raise UpstreamError: the answer has no C{output.message.content} list
        (a 502).
    """
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    if not isinstance(blocks, list):
        raise _badAnswer()
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise _badAnswer()
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append({
                "id": use.get("toolUseId"),
                "type": "function",
                "function": {"name": use.get("name"),
                             "arguments": json.dumps(use.get("input", {}), separators=(",", ":"),
                                                     ensure_ascii=False)},
            })
        elif isinstance(block.get("reasoningContent"), dict):
            text = block["reasoningContent"].get("reasoningText")
            if isinstance(text, dict) and isinstance(text.get("text"), str):
                reasoning.append(text["text"])
        elif isinstance(block.get("citationsContent"), dict):
            for part in block["citationsContent"].get("content") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    out: dict[str, Any] = {"role": "assistant",
                           "content": "".join(texts) if texts or not calls else None}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return completion(id, model, created, out, _finishReason(response.get("stopReason")),
                      _usage(response.get("usage")))


# --- errors --------------------------------------------------------------

_ERRORS = {
    "ThrottlingException": (429, "rate_limit_error"),
    "ServiceQuotaExceededException": (429, "rate_limit_error"),
    "ValidationException": (400, "invalid_request_error"),
    "AccessDeniedException": (403, "permission_error"),
    "ResourceNotFoundException": (404, "not_found_error"),
    "ModelTimeoutException": (504, "api_error"),
    "ServiceUnavailableException": (503, "api_error"),
    "ModelNotReadyException": (503, "api_error"),
    "InternalServerException": (502, "api_error"),
    "ModelErrorException": (502, "api_error"),
    "UnrecognizedClientException": (401, "authentication_error"),
    "ExpiredToken": (401, "authentication_error"),
    "ExpiredTokenException": (401, "authentication_error"),
    "InvalidSignatureException": (401, "authentication_error"),
    "IncompleteSignature": (401, "authentication_error"),
    "MissingAuthenticationTokenException": (401, "authentication_error"),
}
_BY_STATUS = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    408: (504, "api_error"),
    413: (413, "invalid_request_error"),
    429: (429, "rate_limit_error"),
    503: (503, "api_error"),
    504: (504, "api_error"),
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def errorFromBedrock(status: int, errorType: str | None, body: bytes) -> UpstreamError:
    """
    The client's error for a Bedrock error answer.

    @param status: Bedrock's status.
    @param errorType: Bedrock's C{x-amzn-ErrorType} field
        (C{ThrottlingException:http://internal.amazon.com/...}), or L{None}.
    @param body: Bedrock's body (C{{"message": ...}}).
    """
    try:
        document = readJSON(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    raw = errorType or document.get("__type") or document.get("code") or ""
    name = raw.split(":", 1)[0].rsplit("#", 1)[-1].strip() if isinstance(raw, str) else ""
    name = name if _NAME.fullmatch(name) else ""
    if name in _ERRORS:
        answer, kind = _ERRORS[name]
    elif status in _BY_STATUS:
        answer, kind = _BY_STATUS[status]
    elif 400 <= status < 500:
        answer, kind = 400, "invalid_request_error"
    else:
        answer, kind = 502, "api_error"
    message = document.get("message", document.get("Message"))
    if not isinstance(message, str) or not message:
        message = f"Bedrock answered {status}" + (f" ({name})" if name else "")
    return UpstreamError(answer, message, kind, name or None)


# --- streams -------------------------------------------------------------


def _named(value: object) -> str:
    """
    An exception type from a stream header, safe to repeat to the caller.
    """
    if isinstance(value, str) and _NAME.fullmatch(value) and len(value) <= 80:
        return value
    return "an unnamed exception"


_PRELUDE = struct.Struct(">III")
_UINT32 = struct.Struct(">I")
# botocore's limits (botocore.eventstream), so a frame fails as it fails there.
_MAX_HEADERS_LENGTH = 128 * 1024
_MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
# Header value types other than strings: (struct format or length, kind).
_HEADER_VALUES: dict[int, Any] = {
    2: struct.Struct(">b"), 3: struct.Struct(">h"), 4: struct.Struct(">i"),
    5: struct.Struct(">q"), 8: struct.Struct(">q"),
}


class EventStreamReader:
    """
    Reads AWS event stream messages (C{application/vnd.amazon.eventstream})
    out of bytes cut anywhere, as botocore's C{EventStreamBuffer} reads
    them: the same checks in the same order, failing with botocore's own
    exceptions (C{ChecksumMismatch}, C{InvalidHeadersLength},
    C{InvalidPayloadLength}, C{DuplicateHeader}), and with its
    C{ParserError} where botocore would fail otherwise (a header cut short
    or of an unknown type inside a frame whose checksums hold).

    It does less per message than botocore's buffer: no objects per
    prelude and message, and the buffer is cut once per feed, not once
    per message.
    """

    def __init__(self, errors: Any) -> None:
        """
        @param errors: C{botocore.eventstream}, whose exceptions are raised.
        """
        self._errors = errors
        self._buffer = b""
        self._offset = 0

    def add(self, data: bytes) -> None:
        """
        Take more bytes.
        """
        if self._offset:
            self._buffer = self._buffer[self._offset:] + data
            self._offset = 0
        elif self._buffer:
            self._buffer += data
        else:
            self._buffer = data

    def __iter__(self) -> Any:
        """
        The complete messages taken so far, each as (headers, payload),
        read one at a time as they are asked for.
        """
        buffer = self._buffer
        size = len(buffer)
        errors = self._errors
        while size - self._offset >= 12:
            offset = self._offset
            total, headersLength, preludeCRC = _PRELUDE.unpack_from(buffer, offset)
            computed = crc32(buffer[offset:offset + 8])
            if computed != preludeCRC:
                raise errors.ChecksumMismatch(preludeCRC, computed)
            if headersLength > _MAX_HEADERS_LENGTH:
                raise errors.InvalidHeadersLength(headersLength)
            payloadLength = total - headersLength - 16
            if payloadLength > _MAX_PAYLOAD_LENGTH:
                raise errors.InvalidPayloadLength(payloadLength)
            if size - offset < total:
                return
            if payloadLength < 0:
                raise errors.ParserError("an event stream message shorter than its headers")
            end = offset + total
            (messageCRC,) = _UINT32.unpack_from(buffer, end - 4)
            computed = crc32(buffer[offset + 8:end - 4], preludeCRC)
            if computed != messageCRC:
                raise errors.ChecksumMismatch(messageCRC, computed)
            headersEnd = offset + 12 + headersLength
            headers = self._headers(buffer, offset + 12, headersEnd)
            self._offset = end
            yield headers, buffer[headersEnd:end - 4]

    def _headers(self, buffer: bytes, at: int, end: int) -> dict[str, Any]:
        headers: dict[str, Any] = {}
        try:
            while at < end:
                nameEnd = at + 1 + buffer[at]
                name = buffer[at + 1:nameEnd].decode("utf-8")
                kind = buffer[nameEnd]
                at = nameEnd + 1
                value: Any
                if kind == 7 or kind == 6:
                    valueEnd = at + 2 + (buffer[at] << 8 | buffer[at + 1])
                    value = buffer[at + 2:valueEnd]
                    if kind == 7:
                        value = value.decode("utf-8")
                    at = valueEnd
                elif kind == 0 or kind == 1:
                    value = kind == 0
                elif kind == 9:
                    value = buffer[at:at + 16]
                    at += 16
                else:
                    unpacker = _HEADER_VALUES[kind]
                    (value,) = unpacker.unpack_from(buffer, at)
                    at += unpacker.size
                if at > end:
                    raise ValueError("a header runs past the headers")
                if name in headers:
                    raise self._errors.DuplicateHeader(name)
                headers[name] = value
        except (IndexError, KeyError, ValueError, struct.error):
            raise self._errors.ParserError("an event stream header that cannot be read") from None
        return headers


class ConverseStream:
    """
    The translation of one C{ConverseStream} answer: the AWS event stream's
    bytes, in chunks of any size, in; OpenAI C{chat.completion.chunk}
    documents out.

    When a feed both finishes chunks and meets a failure, it returns the
    chunks and the failure is raised by the next L{feed} or L{end}, so what
    comes out does not depend on how the bytes were cut.

    @ivar responseModel: the model the chunks name (the one passed in:
        Bedrock's stream names none).
    @ivar usage: the OpenAI usage once the C{metadata} event came, else
        L{None}.
    """

    def __init__(self, model: str, created: int, id: str) -> None:
        """
        @raise BedrockUnavailable: botocore is not installed.
        """
        botocore = _botocore()
        self._buffer = EventStreamReader(botocore.eventstream)
        self._parserError = botocore.eventstream.ParserError
        self.responseModel = model
        self.usage: dict[str, Any] | None = None
        self._created = created
        self._id = id
        self._started = False
        self._stopped = False
        self._done = False
        self._failure: str | None = None
        self._tools: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any] | None, finishReason: str | None = None,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return chunk(self._id, self.responseModel, self._created, delta, finishReason, usage)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        Take more of the body.

        @return: the chunks that are complete now.
        @raise StreamError: the stream failed (an exception message, a
            damaged frame, an event Converse does not send so).
        """
        if self._failure is not None:
            raise StreamError(self._failure)
        self._buffer.add(data)
        out: list[dict[str, Any]] = []
        try:
            for headers, payload in self._buffer:
                out.extend(self._message(headers, payload))
        except self._parserError as e:
            self._failure = f"Bedrock's event stream has a damaged frame ({type(e).__name__})"
        except StreamError as e:
            self._failure = e.message
        if self._failure is not None and not out:
            raise StreamError(self._failure)
        return out

    def end(self) -> list[dict[str, Any]]:
        """
        The body ended.

        @raise StreamError: the stream failed, or ended before Converse's
            last events (C{messageStop} and C{metadata}).
        """
        if self._failure is not None:
            raise StreamError(self._failure)
        if not self._done:
            self._failure = "Bedrock's stream ended before its last event"
            raise StreamError(self._failure)
        return []

    def _message(self, headers: Mapping[str, Any], payload: bytes) -> list[dict[str, Any]]:
        kind = headers.get(":message-type")
        if kind == "exception":
            raise StreamError(f"Bedrock's stream failed: {_named(headers.get(':exception-type'))}")
        if kind == "error":
            raise StreamError(f"Bedrock's stream failed: {_named(headers.get(':error-code'))}")
        if kind != "event":
            raise StreamError("Bedrock's stream holds a message that is not an event")
        if self._done:
            raise StreamError("Bedrock's stream goes on after its last event")
        try:
            event = readJSON(payload) if payload else {}
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise StreamError("Bedrock's stream holds an event that is not a JSON object")
        handler = self._HANDLERS.get(str(headers.get(":event-type")))
        return [] if handler is None else handler(self, event)

    def _open(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _messageStart(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return self._open()

    def _contentBlockStart(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._open()
        start = event.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if isinstance(use, dict):
            block = event.get("contentBlockIndex")
            if not isinstance(block, int) or block in self._tools:
                raise StreamError("Bedrock's stream starts a tool call it cannot place")
            index = self._tools[block] = len(self._tools)
            out.append(self._chunk({"tool_calls": [{
                "index": index, "id": use.get("toolUseId"), "type": "function",
                "function": {"name": use.get("name"), "arguments": ""}}]}))
        return out

    def _contentBlockDelta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._open()
        delta = event.get("delta")
        if not isinstance(delta, dict):
            raise StreamError("Bedrock's stream holds a delta without content")
        if isinstance(delta.get("text"), str):
            if delta["text"]:
                out.append(textChunk(self._id, self.responseModel, self._created, delta["text"]))
        elif isinstance(delta.get("toolUse"), dict):
            index = self._tools.get(event.get("contentBlockIndex"))  # type: ignore[arg-type]
            piece = delta["toolUse"].get("input")
            if index is None or not isinstance(piece, str):
                raise StreamError("Bedrock's stream holds tool input outside a tool call")
            if piece:
                out.append(self._chunk({"tool_calls": [
                    {"index": index, "function": {"arguments": piece}}]}))
        elif isinstance(delta.get("reasoningContent"), dict):
            text = delta["reasoningContent"].get("text")
            if isinstance(text, str) and text:
                out.append(textChunk(self._id, self.responseModel, self._created, text,
                                     "reasoning_content"))
        return out

    def _messageStop(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if self._stopped:
            raise StreamError("Bedrock's stream stops twice")
        out = self._open()
        self._stopped = True
        out.append(self._chunk({}, _finishReason(event.get("stopReason"))))
        return out + self._last()

    def _metadata(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if self.usage is not None:
            raise StreamError("Bedrock's stream reports usage twice")
        self.usage = _usage(event.get("usage"))
        return self._last()

    def _last(self) -> list[dict[str, Any]]:
        if not (self._stopped and self.usage is not None):
            return []
        self._done = True
        return [self._chunk(None, usage=self.usage)]

    _HANDLERS = {
        "messageStart": _messageStart,
        "contentBlockStart": _contentBlockStart,
        "contentBlockDelta": _contentBlockDelta,
        "messageStop": _messageStop,
        "metadata": _metadata,
    }


# --- signing -------------------------------------------------------------

# x-amz-date's value, YYYYMMDDTHHMMSSZ, from a time's first six fields (as
# strftime("%Y%m%dT%H%M%SZ") writes it, at half the cost).
_STAMP = "%04d%02d%02dT%02d%02d%02dZ"
# The request fields signed besides the x-amz- ones: the HTTP client may
# add or rewrite others (Content-Length, traceparent) after signing.
_SIGNED = (b"host", b"content-type")
_OURS = (b"authorization", b"x-amz-date", b"x-amz-security-token")
_fieldName = itemgetter(0)


def _path(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(name) or default
    if value.startswith("~"):
        home = environ.get("HOME")
        value = (home + value[1:]) if home else os.path.expanduser(value)
    return value


class Signer:
    """
    Signs Bedrock requests with SigV4, with credentials found once at
    configuration load and read again at every signature (refreshable
    credentials stay fresh).

    @ivar region: the AWS region signed for.
    @ivar problem: why there is nothing to sign with (a sentence that names
        what is missing, never a secret), or L{None}.
    """

    def __init__(self, region: str, credentials: Any | None, problem: str | None = None,
                 service: str = SERVICE) -> None:
        """
        @param credentials: botocore credentials (anything with
            C{get_frozen_credentials()}), or L{None} with a C{problem}.
        @param service: the SigV4 service name.
        """
        self.region = region
        self._credentials = credentials
        self._service = service
        self._key: tuple[str, str, Any] | None = None
        self._moment = _NO_MOMENT
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self.problem = problem if credentials is None else None
        if credentials is None and problem is None:
            self.problem = "no AWS credentials"

    @classmethod
    def fromEnvironment(cls, region: str, environ: Mapping[str, str]) -> Signer:
        """
        Find credentials in C{environ} and the profile files it points at,
        without network calls (see the module's docstring).

        @param environ: the process environment (or a test's stand-in).
        @raise BedrockUnavailable: botocore is not installed.
        """
        botocore = _botocore()
        credentials = botocore.credentials
        profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
        credentialsFile = _path(environ, "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        configFile = _path(environ, "AWS_CONFIG_FILE", "~/.aws/config")
        resolver = credentials.CredentialResolver([
            credentials.EnvProvider(environ=dict(environ)),
            credentials.SharedCredentialProvider(credentialsFile, profile),
            credentials.ConfigProvider(configFile, profile),
        ])
        try:
            found = resolver.load_credentials()
        except botocore.exceptions.PartialCredentialsError as e:
            return cls(region, None, f"the AWS credentials are incomplete: "
                                     f"{e.kwargs.get('cred_var', 'a key')} is missing")
        except botocore.exceptions.BotoCoreError as e:
            return cls(region, None, f"the AWS credentials cannot be read ({type(e).__name__})")
        if found is None:
            problem = (f"no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                       f"or give profile {profile} keys in {credentialsFile}")
            networked = [name for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                           "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                                           "AWS_WEB_IDENTITY_TOKEN_FILE") if environ.get(name)]
            if networked:
                problem += f" ({', '.join(networked)} is set, but is not read)"
            return cls(region, None, problem)
        return cls(region, found)

    def sign(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
             now: datetime | float) -> list[tuple[bytes, bytes]]:
        """
        The fields that sign a request: C{authorization}, C{x-amz-date}, and
        C{x-amz-security-token} with temporary credentials.  Of C{headers},
        C{host}, C{content-type} and the C{x-amz-*} ones are signed; the
        body's hash is part of the signature, so no
        C{x-amz-content-sha256} is needed.

        @param method: C{POST}.
        @param url: the whole URL, its path percent-encoded as sent.
        @param headers: the request's fields, before these are added.
        @param now: the time to sign at: a L{datetime} (naive means UTC), or
            POSIX seconds.
        @raise BedrockUnavailable: there are no credentials (L{problem}),
            they could not be refreshed, or botocore is not installed.
        """
        if self._credentials is None:
            raise BedrockUnavailable(self.problem or "no AWS credentials")
        botocore = _botocore()
        try:
            frozen = self._credentials.get_frozen_credentials()
        except (botocore.exceptions.BotoCoreError, RuntimeError) as e:
            raise BedrockUnavailable(
                f"the AWS credentials cannot be refreshed ({type(e).__name__})") from None
        moment = self._moment
        if isinstance(now, datetime):
            if now.tzinfo is not None:
                now = now.astimezone(timezone.utc)
            stamp = _STAMP % now.timetuple()[:6]
            if moment.key != stamp:
                moment = self._moment = _Moment(stamp, stamp, self.region, self._service)
        else:
            second = now // 1
            if moment.key != second:
                stamp = _STAMP % time.gmtime(second)[:6]
                moment = self._moment = _Moment(second, stamp, self.region, self._service)
        fields = tuple(headers)
        token = frozen.token
        key = (method, url, fields, token)
        try:
            shape = self._shapes.get(key)
        except TypeError:
            # Fields that cannot be a key (lists): signed as they are.
            shape = _shape(method, url, fields, token)
        else:
            if shape is None:
                shape = _shape(method, url, fields, token)
                if len(self._shapes) >= _SHAPES:
                    self._shapes.clear()
                self._shapes[key] = shape
        payloadHash = shape.payloadHash
        if payloadHash is None:
            payloadHash = hashlib.sha256(body).hexdigest().encode("ascii")
        canonical = shape.beforeDate + moment.stamp + shape.afterDate + payloadHash
        toSign = moment.toSign + hashlib.sha256(canonical).hexdigest().encode("ascii")
        secret = frozen.secret_key
        kept = self._key
        if kept is None or kept[1] != moment.date or kept[0] != secret:
            kept = self._signingKey(secret, moment.date)
        mac = kept[2].copy()
        mac.update(toSign)
        authorization = (f"AWS4-HMAC-SHA256 Credential={frozen.access_key}{moment.credential}"
                         f"{shape.signedHeaders}{mac.hexdigest()}").encode("ascii")
        if shape.token is None:
            return [(b"authorization", authorization), (b"x-amz-date", moment.stamp)]
        return [(b"authorization", authorization), (b"x-amz-date", moment.stamp),
                (b"x-amz-security-token", shape.token)]

    def _signingKey(self, secret: str, date: str) -> tuple[str, str, Any]:
        """
        Make and keep an HMAC keyed with the SigV4 signing key of C{secret}
        for C{date} (C{YYYYMMDD}), this region and service, to copy for each
        signature; returned with the secret and date it was made of.  The
        key takes four HMACs to derive from these alone, so it is the same
        all day: it is made once a day (or when the secret changes) and
        kept.
        """
        key = ("AWS4" + secret).encode("utf-8")
        for part in (date, self.region, self._service, "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        kept = (secret, date, hmac.new(key, digestmod=hashlib.sha256))
        self._key = kept
        return kept


# How many request shapes a signer keeps: a backend's calls go to a few
# URLs with the same fields, so this bounds only what odd traffic costs.
_SHAPES = 64


class _Moment:
    """
    What a signature at one second shares with every other at that second.

    @ivar key: what the second was known by (the POSIX second, or the
        timestamp of a L{datetime}).
    @ivar stamp: C{x-amz-date}'s value, C{YYYYMMDDTHHMMSSZ}.
    @ivar date: its day, C{YYYYMMDD}.
    @ivar credential: what follows the access key in C{Credential=}: the
        scope.
    @ivar toSign: the string to sign up to the canonical request's hash.
    """

    __slots__ = ("key", "stamp", "date", "credential", "toSign")

    def __init__(self, key: object, stamp: str, region: str, service: str) -> None:
        self.key = key
        self.stamp = stamp.encode("ascii")
        self.date = stamp[:8]
        scope = f"{self.date}/{region}/{service}/aws4_request"
        self.credential = "/" + scope
        self.toSign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n".encode("utf-8")


_NO_MOMENT = _Moment(None, "00000000T000000Z", "", "")


class _Shape:
    """
    The canonical request of one kind of request (method, URL, fields,
    session token) around what changes at every call: the timestamp and
    the body's hash.

    @ivar beforeDate: the canonical request up to C{x-amz-date}'s value.
    @ivar afterDate: the rest of it up to the payload hash.
    @ivar signedHeaders: what follows C{Credential=...} in the
        authorization field, up to the signature.
    @ivar payloadHash: the payload hash the caller gave in
        C{x-amz-content-sha256}, signed as given; or L{None}.
    @ivar token: C{x-amz-security-token}'s value, or L{None}.
    """

    __slots__ = ("beforeDate", "afterDate", "signedHeaders", "payloadHash", "token")

    def __init__(self, beforeDate: bytes, afterDate: bytes, signedHeaders: str,
                 payloadHash: bytes | None, token: bytes | None) -> None:
        self.beforeDate = beforeDate
        self.afterDate = afterDate
        self.signedHeaders = signedHeaders
        self.payloadHash = payloadHash
        self.token = token


# The stand-in for the timestamp while a shape's canonical request is
# written: every other character of it is ASCII or a Latin-1 field value,
# so none can be this one.
_DATE_MARK = "\uffff"


def _shape(method: bytes, url: bytes, headers: tuple[tuple[bytes, bytes], ...],
           token: str | None) -> _Shape:
    """
    The canonical request of C{method} to C{url} with C{headers} (and
    C{token} for temporary credentials), split around the timestamp.
    """
    tokenValue = token.encode("ascii") if token else None
    text = url.decode("ascii")
    path, query, host = _target(text)
    # The fields signed, each name's values in their order (SigV4 joins
    # a repeated field's values with commas).
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        lower = name.lower()
        if (lower in _SIGNED or lower.startswith(b"x-amz-")) and lower not in _OURS:
            fields.setdefault(lower.decode("ascii"), []).append(value.decode("latin-1"))
    fields["x-amz-date"] = [_DATE_MARK]
    if token:
        fields["x-amz-security-token"] = [token]
    if "host" not in fields:
        fields["host"] = [host()]
    names = sorted(fields)
    signed = ";".join(sorted(name.strip() for name in names))
    # A payload hash the caller gave is signed as given, as botocore does.
    given = fields.get("x-amz-content-sha256")
    canonical = "\n".join([
        method.decode("ascii").upper(),
        path,
        query,
        "\n".join(f"{name}:{','.join(' '.join(v.split()) for v in fields[name])}"
                  for name in names) + "\n",
        signed,
        "",
    ])
    beforeDate, afterDate = canonical.split(_DATE_MARK)
    return _Shape(beforeDate.encode("utf-8"), afterDate.encode("utf-8"),
                  f", SignedHeaders={signed}, Signature=",
                  given[0].encode("utf-8") if given else None, tokenValue)


def _target(url: str) -> tuple[str, str, Callable[[], str]]:
    """
    What SigV4 signs of C{url}, as botocore's C{SigV4Auth} reads it: the
    canonical path (dot segments and empty segments removed, then
    percent-encoded once more), the canonical query, and the host it
    signs when the request names none.  Read once per request shape
    (L{_shape}), which the signer keeps.
    """
    parts = urlsplit(url)
    path = parts.path
    if path:
        segments = [x for x in path.split("/") if x and x != "."]
        kept: list[str] = []
        for segment in segments:
            if segment == "..":
                if kept:
                    kept.pop()
            else:
                kept.append(segment)
        path = ("/" if path[0] == "/" else "") + "/".join(kept) + (
            "/" if path[-1] == "/" and kept else "")
    else:
        path = "/"
    query = ""
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            pairs.append((key, value))
        query = "&".join(f"{key}={value}" for key, value in sorted(pairs))

    def host() -> str:
        name = parts.hostname
        if _botocore().utils.is_valid_ipv6_endpoint_url(url):
            name = f"[{name}]"
        port = parts.port
        if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme):
            name = f"{name}:{port}"
        return str(name)

    return quote(path, safe="/~"), query, host


class _BedrockReader(AnswerReader):
    """
    Reads one Converse answer into OpenAI chat documents.
    """

    def plain(self, document: dict[str, Any]) -> dict[str, Any]:
        return converseToCompletion(document, model=self.model, created=self.created, id=self.id)

    def stream(self) -> ConverseStream:
        return ConverseStream(self.model, self.created, self.id)

    def error(self, status: int, headers: Headers, body: bytes) -> UpstreamError:
        errorType = headers.getRawHeaders(b"x-amzn-errortype", [None])[0]
        return errorFromBedrock(status, errorType.decode("latin-1") if errorType else None, body)


class BedrockProvider(TranslatingProvider):
    """
    Amazon Bedrock's Converse API, each request signed with SigV4 (or, with
    an C{authToken}, a Bedrock API key sent as a bearer token).
    """

    name = "aws.bedrock"

    @classmethod
    def fromConfig(cls, backend: Backend, environ: Mapping[str, str]) -> BedrockProvider:
        return cls(backend, environ)

    def __init__(self, backend: Backend, environ: Mapping[str, str]) -> None:
        super().__init__(backend)
        assert backend.region is not None
        self.signer: Signer | None = None
        if backend.authToken is None:
            try:
                self.signer = Signer.fromEnvironment(backend.region, environ)
            except BedrockUnavailable as e:
                self.problem = str(e)
            else:
                self.problem = self.signer.problem

    def translate(self, chat: dict[str, Any], model: str, stream: bool) -> tuple[bytes, dict[str, Any]]:
        body = chatToConverse(chat)
        return self.basePath + modelPath(model, stream), body

    def reader(self, model: str, stream: bool, created: int, id: str) -> _BedrockReader:
        return _BedrockReader(model, created, id)

    def sign(self, method: bytes, url: bytes, headers: Headers, body: bytes,
             now: float | None = None) -> None:
        """
        Sign with the backend's credentials (SigV4), the caller's own
        C{x-amz-*} fields dropped first.

        @param now: the time to sign at, POSIX seconds; L{None} for the
            clock's.
        """
        # Only the gateway's own signature fields go to AWS.  A field name
        # holds no newline, so one search of all the names tells whether
        # any is to go, without a look at each.
        names = b"\n" + b"\n".join(map(_fieldName, headers.getAllRawHeaders())).lower()
        if b"\nx-amz-" in names:
            for name, _ in list(headers.getAllRawHeaders()):
                if name.lower().startswith(b"x-amz-"):
                    headers.removeHeader(name)
        if self.signer is None:
            return
        contentType = headers.getRawHeaders(b"content-type")
        fields = [(b"host", self.host), (b"content-type", contentType[-1])] if contentType else [
            (b"host", self.host)]
        for name, value in self.signer.sign(method, url, fields, body,
                                            time.time() if now is None else now):
            headers.setRawHeaders(name, [value])
