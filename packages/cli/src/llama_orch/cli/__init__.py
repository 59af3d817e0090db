"""llama-orch-cli: the ``llorch`` command and a typed async client for OrchQueue v1."""

from .client import DEFAULT_URL, OrchClient
from .errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    InvalidRequest,
    ProtocolError,
    StreamInterrupted,
)
from .models import Capabilities, PoolCapability, PoolHealth, TaskStatus

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "Capabilities",
    "ClientError",
    "ConnectionFailed",
    "InvalidRequest",
    "OrchClient",
    "PoolCapability",
    "PoolHealth",
    "ProtocolError",
    "StreamInterrupted",
    "TaskStatus",
]
