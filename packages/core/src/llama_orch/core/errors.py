"""The llama-orch error taxonomy (ORCH-2001..ORCH-2004).

Every failure a client can see carries one :class:`ErrorCode`, and every code
maps to exactly one HTTP status through :data:`HTTP_STATUS` (ORCH-2002)::

    OrchError                       code, status_code, retriable, message
    ├── AdmissionRejected           ADMISSION_REJECT        429
    ├── QueueFullDropLru            QUEUE_FULL_DROP_LRU     429
    ├── InvalidParams               INVALID_PARAMS          400
    ├── PoolUnready                 POOL_UNREADY            503
    ├── PoolUnavailable             POOL_UNAVAILABLE        503
    ├── ReplicaExhausted            REPLICA_EXHAUSTED       503
    ├── DecodeTimeout               DECODE_TIMEOUT          504
    ├── WorkerReset                 WORKER_RESET            502
    ├── InternalError               INTERNAL                500
    ├── DeadlineUnmet               DEADLINE_UNMET          400
    ├── ModelDeprecated             MODEL_DEPRECATED        410
    ├── UntrustedArtifact           UNTRUSTED_ARTIFACT      403
    ├── NotFound                    NOT_FOUND               404
    ├── Unauthenticated             UNAUTHENTICATED         401
    ├── Forbidden                   FORBIDDEN               403
    ├── RequestTooLarge             REQUEST_TOO_LARGE       413
    └── HeadersTooLarge             HEADERS_TOO_LARGE       431

Adapters raise these at their boundary (``raise WorkerReset(...) from exc``)
so no transport exception ever leaks into the orchestrator (STYLE rule 5).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

import msgspec

__all__ = [
    "HTTP_STATUS",
    "RETRIABLE",
    "AdmissionRejected",
    "DeadlineUnmet",
    "DecodeTimeout",
    "ErrorBody",
    "ErrorCode",
    "Forbidden",
    "HeadersTooLarge",
    "InternalError",
    "InvalidParams",
    "ModelDeprecated",
    "NotFound",
    "OrchError",
    "PoolUnavailable",
    "PoolUnready",
    "QueueFullDropLru",
    "ReplicaExhausted",
    "RequestTooLarge",
    "Unauthenticated",
    "UntrustedArtifact",
    "WorkerReset",
    "error_for_code",
]


class ErrorCode(StrEnum):
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    INVALID_PARAMS = "INVALID_PARAMS"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    REPLICA_EXHAUSTED = "REPLICA_EXHAUSTED"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    INTERNAL = "INTERNAL"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    MODEL_DEPRECATED = "MODEL_DEPRECATED"
    UNTRUSTED_ARTIFACT = "UNTRUSTED_ARTIFACT"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"


# ORCH-2002: one status per code. 429 only for "try again later because of
# load"; 503 for "the pool cannot serve right now"; 502/504 for engine faults.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.ADMISSION_REJECT: 429,
    ErrorCode.QUEUE_FULL_DROP_LRU: 429,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.POOL_UNREADY: 503,
    ErrorCode.POOL_UNAVAILABLE: 503,
    ErrorCode.REPLICA_EXHAUSTED: 503,
    ErrorCode.DECODE_TIMEOUT: 504,
    ErrorCode.WORKER_RESET: 502,
    ErrorCode.INTERNAL: 500,
    ErrorCode.DEADLINE_UNMET: 400,
    ErrorCode.MODEL_DEPRECATED: 410,
    ErrorCode.UNTRUSTED_ARTIFACT: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAUTHENTICATED: 401,  # ORCH-8003
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.REQUEST_TOO_LARGE: 413,  # ORCH-8010
    ErrorCode.HEADERS_TOO_LARGE: 431,  # ORCH-8012
}

RETRIABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.ADMISSION_REJECT,
        ErrorCode.QUEUE_FULL_DROP_LRU,
        ErrorCode.POOL_UNREADY,
        ErrorCode.POOL_UNAVAILABLE,
        ErrorCode.REPLICA_EXHAUSTED,
        ErrorCode.WORKER_RESET,
        ErrorCode.DECODE_TIMEOUT,
    }
)


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """The one error envelope (ORCH-2001), used in HTTP bodies and SSE ``error``."""

    code: ErrorCode
    message: str
    engine: str | None = None
    pool_id: str | None = None
    retriable: bool | None = None
    retry_after_ms: int | None = None
    policy_label: str | None = None


class OrchError(Exception):
    """Base of every error a client can see."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        engine: str | None = None,
        pool_id: str | None = None,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
        queue_position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.engine = engine
        self.pool_id = pool_id
        self.retry_after_ms = retry_after_ms
        self.policy_label = policy_label
        # Not part of the envelope: rendered as ``X-Queue-Position`` on a 429.
        self.queue_position = queue_position

    @property
    def status_code(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def retriable(self) -> bool:
        return self.code in RETRIABLE

    def body(self) -> ErrorBody:
        return ErrorBody(
            code=self.code,
            message=self.message,
            engine=self.engine,
            pool_id=self.pool_id,
            retriable=self.retriable,
            retry_after_ms=self.retry_after_ms,
            policy_label=self.policy_label,
        )


class AdmissionRejected(OrchError):
    code = ErrorCode.ADMISSION_REJECT


class QueueFullDropLru(OrchError):
    code = ErrorCode.QUEUE_FULL_DROP_LRU


class InvalidParams(OrchError):
    code = ErrorCode.INVALID_PARAMS


class PoolUnready(OrchError):
    code = ErrorCode.POOL_UNREADY


class PoolUnavailable(OrchError):
    code = ErrorCode.POOL_UNAVAILABLE


class ReplicaExhausted(OrchError):
    code = ErrorCode.REPLICA_EXHAUSTED


class DecodeTimeout(OrchError):
    code = ErrorCode.DECODE_TIMEOUT


class WorkerReset(OrchError):
    code = ErrorCode.WORKER_RESET


class InternalError(OrchError):
    code = ErrorCode.INTERNAL


class DeadlineUnmet(OrchError):
    code = ErrorCode.DEADLINE_UNMET


class ModelDeprecated(OrchError):
    code = ErrorCode.MODEL_DEPRECATED


class UntrustedArtifact(OrchError):
    code = ErrorCode.UNTRUSTED_ARTIFACT


class NotFound(OrchError):
    code = ErrorCode.NOT_FOUND


class Unauthenticated(OrchError):
    """No API key, or one that matches no configured key (ORCH-8003)."""

    code = ErrorCode.UNAUTHENTICATED


class Forbidden(OrchError):
    """A valid key whose role may not use the endpoint (ORCH-8003)."""

    code = ErrorCode.FORBIDDEN


class RequestTooLarge(OrchError):
    """A request body beyond ``limits.max_body_bytes`` (ORCH-8010)."""

    code = ErrorCode.REQUEST_TOO_LARGE


class HeadersTooLarge(OrchError):
    """A request line plus headers beyond ``limits.max_header_bytes`` (ORCH-8012)."""

    code = ErrorCode.HEADERS_TOO_LARGE


_BY_CODE: dict[ErrorCode, type[OrchError]] = {
    cls.code: cls
    for cls in (
        AdmissionRejected,
        QueueFullDropLru,
        InvalidParams,
        PoolUnready,
        PoolUnavailable,
        ReplicaExhausted,
        DecodeTimeout,
        WorkerReset,
        InternalError,
        DeadlineUnmet,
        ModelDeprecated,
        UntrustedArtifact,
        NotFound,
        Unauthenticated,
        Forbidden,
        RequestTooLarge,
        HeadersTooLarge,
    )
}


def error_for_code(code: ErrorCode) -> type[OrchError]:
    """The exception class for ``code`` (every code has exactly one)."""
    return _BY_CODE[code]
