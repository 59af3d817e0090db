"""Errors raised by the llama-orch client and the ``llorch`` commands.

The client translates every transport failure at its boundary, so callers
never see an aiohttp exception (STYLE rule 5)::

    ClientError                       base of everything raised here
    ├── InvalidRequest                the task fields fail TaskRequest validation locally
    ├── ConnectionFailed              the server could not be reached or the connection broke
    │   └── StreamInterrupted         an SSE stream ended before ``end``/``error`` (resume off
    │                                 or reconnect attempts exhausted)
    ├── ProtocolError                 the server answered something that is not OrchQueue v1
    ├── ApiError                      a non-2xx answer: status, ErrorBody, Retry-After, X-Backoff-Ms
    └── DemoError                     ``llorch demo`` could not bring the stack up
        ├── OrchestratordNotFound     no ``orchestratord`` executable next to Python or on PATH
        ├── OrchestratordExited       the daemon exited before the pool became ready
        ├── PoolFailed                the pool reports failed replicas with ``last_error``
        └── ReadinessTimeout          the pool did not become ready in time

:func:`exit_code_for` maps an exception to the documented exit codes
(2 for a 4xx answer, 3 for 429, 1 otherwise).
"""

from __future__ import annotations

from llama_orch.core.errors import HTTP_STATUS, ErrorBody, ErrorCode

__all__ = [
    "EXIT_BACKPRESSURE",
    "EXIT_CLIENT_ERROR",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "ApiError",
    "ClientError",
    "ConnectionFailed",
    "DemoError",
    "InvalidRequest",
    "OrchestratordExited",
    "OrchestratordNotFound",
    "PoolFailed",
    "ProtocolError",
    "ReadinessTimeout",
    "StreamInterrupted",
    "exit_code_for",
    "exit_code_for_error_code",
    "exit_code_for_status",
]

EXIT_FAILURE = 1
EXIT_CLIENT_ERROR = 2
EXIT_BACKPRESSURE = 3
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """Base of every error raised by :mod:`llama_orch.cli`."""


class InvalidRequest(ClientError):
    """The task fields do not form a valid ``TaskRequest``; nothing was sent."""


class ConnectionFailed(ClientError):
    """The orchestrator could not be reached, or the connection broke."""


class StreamInterrupted(ConnectionFailed):
    """The event stream closed before its terminal event."""

    def __init__(self, message: str, *, last_event_id: int | None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


class ProtocolError(ClientError):
    """The server's answer does not match the OrchQueue v1 contract."""


class ApiError(ClientError):
    """A non-2xx answer, carrying the decoded error envelope.

    ``body`` is ``None`` only when the server sent something that is not an
    ErrorBody (for example a proxy's HTML page); ``code`` and ``message``
    are always set.
    """

    def __init__(
        self,
        status: int,
        *,
        code: str,
        message: str,
        body: ErrorBody | None = None,
        retry_after_s: float | None = None,
        backoff_ms: int | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after_s = retry_after_s
        self.backoff_ms = backoff_ms
        self.correlation_id = correlation_id

    @property
    def retriable(self) -> bool:
        return bool(self.body and self.body.retriable) or self.status == 429


class DemoError(ClientError):
    """``llorch demo`` could not start, reach or use the local stack."""


class OrchestratordNotFound(DemoError):
    pass


class OrchestratordExited(DemoError):
    def __init__(self, returncode: int, output_tail: str) -> None:
        super().__init__(f"orchestratord exited with code {returncode} before the pool was ready")
        self.returncode = returncode
        self.output_tail = output_tail


class PoolFailed(DemoError):
    def __init__(self, pool_id: str, last_error: str) -> None:
        super().__init__(f"pool {pool_id!r} failed: {last_error}")
        self.pool_id = pool_id
        self.last_error = last_error


class ReadinessTimeout(DemoError):
    pass


def exit_code_for_status(status: int) -> int:
    if status == 429:
        return EXIT_BACKPRESSURE
    if 400 <= status < 500:
        return EXIT_CLIENT_ERROR
    return EXIT_FAILURE


def exit_code_for_error_code(code: str) -> int:
    """Exit code for an ``error`` event, through the one code → status table."""
    try:
        return exit_code_for_status(HTTP_STATUS[ErrorCode(code)])
    except ValueError:
        return EXIT_FAILURE


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        return exit_code_for_status(exc.status)
    if isinstance(exc, InvalidRequest | OrchestratordNotFound):
        return EXIT_CLIENT_ERROR
    return EXIT_FAILURE
