"""LLM provider adapters: one pooled HTTP client per API, every failure mapped to
jetagent's errors, API keys read at call time and never shown."""

from ._contract import ARGUMENTS_ERROR_KEY as ARGUMENTS_ERROR_KEY
from ._contract import RAW_ARGUMENTS_KEY as RAW_ARGUMENTS_KEY
from ._contract import Provider as Provider
from ._contract import invalid_arguments as invalid_arguments
from ._http import HttpSettings as HttpSettings
from ._secrets import REDACTED as REDACTED
from .anthropic import AnthropicProvider as AnthropicProvider
from .openai import OpenAIProvider as OpenAIProvider

__all__ = [
    "ARGUMENTS_ERROR_KEY",
    "RAW_ARGUMENTS_KEY",
    "REDACTED",
    "AnthropicProvider",
    "HttpSettings",
    "OpenAIProvider",
    "Provider",
    "invalid_arguments",
]
