"""The reasoning capability's provider layer: adapters for OpenAI-compatible and
Anthropic APIs, circuit breakers, routing, hedging, and ``ModelGateway``, the one entry
point the reasoning worker calls for each step."""

from .breakers import STATE_VALUES as STATE_VALUES
from .breakers import BreakerSettings as BreakerSettings
from .breakers import BreakerState as BreakerState
from .breakers import CircuitState as CircuitState
from .gateway import ModelGateway as ModelGateway
from .providers import ARGUMENTS_ERROR_KEY as ARGUMENTS_ERROR_KEY
from .providers import RAW_ARGUMENTS_KEY as RAW_ARGUMENTS_KEY
from .providers import AnthropicProvider as AnthropicProvider
from .providers import HttpSettings as HttpSettings
from .providers import OpenAIProvider as OpenAIProvider
from .providers import Provider as Provider
from .providers import invalid_arguments as invalid_arguments
from .records import Attempt as Attempt
from .records import GatewayResult as GatewayResult
from .records import RoutingDecision as RoutingDecision
from .records import attempts_of as attempts_of
from .records import decisions_of as decisions_of

__all__ = [
    "ARGUMENTS_ERROR_KEY",
    "RAW_ARGUMENTS_KEY",
    "STATE_VALUES",
    "AnthropicProvider",
    "Attempt",
    "BreakerSettings",
    "BreakerState",
    "CircuitState",
    "GatewayResult",
    "HttpSettings",
    "ModelGateway",
    "OpenAIProvider",
    "Provider",
    "RoutingDecision",
    "attempts_of",
    "decisions_of",
    "invalid_arguments",
]
