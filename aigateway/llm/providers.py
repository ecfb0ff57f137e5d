"""
The provider each backend's configuration names.
"""

from __future__ import annotations

from typing import Mapping

from aigateway.config import Backend
from aigateway.llm.anthropic import AnthropicProvider
from aigateway.llm.bedrock import BedrockProvider
from aigateway.llm.gemini import GeminiProvider
from aigateway.llm.openai import AzureOpenAIProvider, OpenAIProvider
from aigateway.llm.provider import Provider

__all__ = ["providerFor"]

_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "azure-openai": AzureOpenAIProvider,
    "gemini": GeminiProvider,
    "bedrock": BedrockProvider,
}


def providerFor(backend: Backend, environ: Mapping[str, str]) -> Provider:
    """
    The provider that serves C{backend}.

    @param environ: the process environment, where a provider finds the
        credentials it looks up itself (AWS's).
    """
    return _CLASSES[backend.provider].fromConfig(backend, environ)
