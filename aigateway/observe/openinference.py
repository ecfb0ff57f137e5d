"""
OpenInference's span attributes, which Arize Phoenix and Arize read: the
upstream call's CLIENT span is an C{LLM} span, the request's SERVER span a
C{CHAIN} span.

The names are those of OpenInference's semantic conventions
(C{openinference.semconv.trace}): C{openinference.span.kind},
C{llm.model_name}, C{llm.provider}, C{llm.system}, C{llm.token_count.*},
C{llm.invocation_parameters}, and with content capture C{input.value},
C{output.value} and the flattened message lists
C{llm.input_messages.{i}.message.role} / C{.message.content}.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CHAIN", "LLM", "llmAttributes", "messageAttributes", "provider", "system"]

LLM = "LLM"
CHAIN = "CHAIN"

# gen_ai.provider.name -> (llm.provider, llm.system): who serves the
# model, and the AI product it is (OpenInference's own value lists).
_PROVIDERS = {
    "openai": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
    "gcp.gemini": ("google", "vertexai"),
    "azure.ai.openai": ("azure", "openai"),
    "aws.bedrock": ("aws", None),
}

# Bedrock model ids start with their maker: the product, where
# OpenInference names it.
_BEDROCK_SYSTEMS = {"anthropic": "anthropic", "cohere": "cohere", "mistral": "mistralai"}


def provider(name: str | None) -> str | None:
    """
    The C{llm.provider} value for a gateway provider's
    C{gen_ai.provider.name}, or L{None} when OpenInference has none.
    """
    found = _PROVIDERS.get(name or "")
    return found[0] if found is not None else None


def system(name: str | None, model: str | None) -> str | None:
    """
    The C{llm.system} value: the AI product behind a provider, for
    Bedrock read from the model id's maker (C{anthropic.claude-...}, or
    C{us.anthropic.claude-...} for an inference profile).
    """
    found = _PROVIDERS.get(name or "")
    if found is None:
        return None
    if found[1] is None and model:
        for part in model.split(".")[:2]:
            if part in _BEDROCK_SYSTEMS:
                return _BEDROCK_SYSTEMS[part]
    return found[1]


def _text(content: Any) -> str | None:
    """
    The text of a message's content: a string, or the text parts of a
    list of parts (OpenAI's C{text} and Anthropic's C{text} blocks, the
    Responses API's C{input_text} / C{output_text}).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part["text"] for part in content
                 if isinstance(part, dict) and isinstance(part.get("text"), str)]
        return "".join(texts) if texts else None
    return None


def messageAttributes(prefix: str, messages: Any, attributes: dict[str, Any]) -> None:
    """
    Add a list of chat messages to C{attributes} as OpenInference's
    flattened list: C{{prefix}.{i}.message.role}, C{.message.content}
    (the text of its parts for a message in parts), C{.message.name},
    C{.message.tool_call_id} and each tool call's
    C{.message.tool_calls.{j}.tool_call.id} / C{.function.name} /
    C{.function.arguments}.  A Responses API C{input} that is a string is
    one user message.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        at = f"{prefix}.{i}.message."
        role = message.get("role")
        if isinstance(role, str):
            attributes[at + "role"] = role
        text = _text(message.get("content"))
        if text is not None:
            attributes[at + "content"] = text
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                attributes[at + key] = message[key]
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                if not isinstance(call, dict):
                    continue
                callAt = f"{at}tool_calls.{j}.tool_call."
                if isinstance(call.get("id"), str):
                    attributes[callAt + "id"] = call["id"]
                function = call.get("function")
                if isinstance(function, dict):
                    if isinstance(function.get("name"), str):
                        attributes[callAt + "function.name"] = function["name"]
                    if isinstance(function.get("arguments"), str):
                        attributes[callAt + "function.arguments"] = function["arguments"]


def llmAttributes(exchange: Any, answer: Any, capture: bool) -> dict[str, Any]:
    """
    The OpenInference attributes of an upstream call's span.

    @param exchange: the request's L{aigateway.observe.report.Exchange}.
    @param answer: what the answer said (an
        L{aigateway.llm.usage.AnswerObserver}), or L{None}.
    @param capture: whether prompts and answers go on spans; without it
        no C{input.*}, C{output.*} or message attribute is written.
    """
    attributes: dict[str, Any] = {"openinference.span.kind": LLM}
    model = (answer.responseModel if answer is not None else None) or exchange.requestModel
    if model:
        attributes["llm.model_name"] = model
    name = provider(exchange.provider)
    if name is not None:
        attributes["llm.provider"] = name
    product = system(exchange.provider, exchange.requestModel)
    if product is not None:
        attributes["llm.system"] = product
    if exchange.parameters:
        parameters = {key.rsplit(".", 1)[-1] if key != "gen_ai.request.choice.count" else "n": value
                      for key, value in exchange.parameters.items()}
        attributes["llm.invocation_parameters"] = json.dumps(parameters, separators=(",", ":"))
    if capture:
        if exchange.inputDocument is not None:
            attributes["input.value"] = json.dumps(exchange.inputDocument, separators=(",", ":"))
            attributes["input.mime_type"] = "application/json"
        messageAttributes("llm.input_messages", exchange.inputMessages, attributes)
    if answer is not None:
        prompt, completion = answer.inputTokens, answer.outputTokens
        if prompt is not None:
            attributes["llm.token_count.prompt"] = prompt
        if completion is not None:
            attributes["llm.token_count.completion"] = completion
        if prompt is not None and completion is not None:
            attributes["llm.token_count.total"] = prompt + completion
        if capture and answer.text:
            text = "".join(answer.text)
            attributes["output.value"] = text
            attributes["output.mime_type"] = "text/plain"
            attributes["llm.output_messages.0.message.role"] = "assistant"
            attributes["llm.output_messages.0.message.content"] = text
    return attributes
