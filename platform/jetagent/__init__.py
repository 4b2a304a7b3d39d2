"""jetagent: AI agents as event-sourced microservices on NATS JetStream.

The public names, for services that submit work and for capabilities that do it::

    from jetagent import Client, WorkflowRequest           # submit and follow workflows
    from jetagent import capability, tool, StepContext     # write capabilities and tools

Everything else is importable from its module but is not promised to stay put.
"""

from jetagent._sync_client import SyncClient as SyncClient
from jetagent.client import Client as Client
from jetagent.client import SessionView as SessionView
from jetagent.client import WorkflowResult as WorkflowResult
from jetagent.config import Settings as Settings
from jetagent.contract import CapabilityLimits as CapabilityLimits
from jetagent.contract import ModelPreferences as ModelPreferences
from jetagent.contract import OutputFormat as OutputFormat
from jetagent.contract import SessionContext as SessionContext
from jetagent.contract import Status as Status
from jetagent.contract import WorkflowRequest as WorkflowRequest
from jetagent.errors import CapabilityError as CapabilityError
from jetagent.errors import ConfigError as ConfigError
from jetagent.errors import JetagentError as JetagentError
from jetagent.errors import PermanentError as PermanentError
from jetagent.errors import RateLimitedError as RateLimitedError
from jetagent.errors import RequestRejectedError as RequestRejectedError
from jetagent.errors import TransientError as TransientError
from jetagent.errors import WorkflowFailedError as WorkflowFailedError
from jetagent.worker import CapabilitySpec as CapabilitySpec
from jetagent.worker import StepContext as StepContext
from jetagent.worker import StepOutput as StepOutput
from jetagent.worker import capability as capability
from jetagent.worker.tools import Tool as Tool
from jetagent.worker.tools import tool as tool

__all__ = [
    "CapabilityError",
    "CapabilityLimits",
    "CapabilitySpec",
    "Client",
    "ConfigError",
    "JetagentError",
    "ModelPreferences",
    "OutputFormat",
    "PermanentError",
    "RateLimitedError",
    "RequestRejectedError",
    "SessionContext",
    "SessionView",
    "Settings",
    "Status",
    "StepContext",
    "StepOutput",
    "SyncClient",
    "Tool",
    "TransientError",
    "WorkflowFailedError",
    "WorkflowRequest",
    "WorkflowResult",
    "capability",
    "tool",
]
