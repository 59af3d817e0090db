"""One request per task: the SSE response of ``POST /v1/tasks`` and of the stream route.

``POST /v1/tasks`` with ``Accept: text/event-stream`` admits the task exactly as
the 202 path does and answers with its event stream in the same response
(ORCH-2710), saving the client a second request and the server a second trip
through the ASGI stack per task. Both SSE responses go through
:func:`open_stream`, so the per-tenant stream bound (ORCH-8013, ORCH-2711) and
the stall watchdog (ORCH-8015) are the same on both routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from llama_orch.core.config import LimitsConfig
from llama_orch.core.errors import AdmissionRejected

from .limits import StreamCounter, TaskStream
from .tasks import TaskRecord

__all__ = ["check_stream_quota", "open_stream", "wants_event_stream"]

_SSE = "text/event-stream"
_JSON = "application/json"


def wants_event_stream(accept: str | None) -> bool:
    """True when ``Accept`` lists ``text/event-stream`` (q > 0) and not
    ``application/json`` before it: the client asked for the stream (ORCH-2710)."""
    if not accept or _SSE not in accept:
        return False
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media in (_SSE, _JSON):
            if media == _JSON:
                return False
            return _q(params) > 0
    return False


def _q(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def check_stream_quota(streams: StreamCounter, tenant: str, limits: LimitsConfig) -> None:
    """ORCH-8013: one stream beyond ``limits.max_streams_per_tenant`` → 429 quota."""
    if streams[tenant] >= limits.max_streams_per_tenant:
        streams.refused(tenant)  # ORCH-8019: not in tasks_rejected_total (no admission ran)
        raise AdmissionRejected(
            f"tenant {tenant!r} has {streams[tenant]} streams open"
            f" (limits.max_streams_per_tenant={limits.max_streams_per_tenant})",
            policy_label="quota",
            retry_after_ms=1000,
        )


def open_stream(
    rec: TaskRecord,
    streams: StreamCounter,
    limits: LimitsConfig,
    *,
    start: int = 0,
    headers: dict[str, str] | None = None,
    frames: AsyncIterator[bytes] | None = None,
) -> TaskStream:
    """The SSE response of ``rec`` from event ``start``; counted as the tenant's stream
    from here (the caller checked the quota with no await since). ``frames``: the
    event log to read when it is not the record's own (a state store's, ORCH-2526)."""
    return TaskStream(
        frames
        if frames is not None
        else rec.frames(start, limits.stream_chunk_bytes, limits.sse_keepalive_s),
        task_id=rec.task_id,
        tenant=rec.tenant,
        counter=streams,
        stall_timeout_s=limits.stream_stall_timeout_s,
        headers=headers,
    )
