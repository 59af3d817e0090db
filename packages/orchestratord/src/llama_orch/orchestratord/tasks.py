"""Task records and their replayable SSE event logs (ORCH-1201, ORCH-1106).

Every accepted task owns a :class:`TaskRecord`. Its events are encoded once,
numbered from 0 (the SSE ``id:``), and kept until the record is evicted, so
a late client or one reconnecting with ``Last-Event-ID`` receives every
event exactly once. The log is bounded by the task's token budget.

Exactly one terminal event per task: :meth:`TaskRecord.finish` is the only
way to append ``end``/``error``; once it ran, every later append is dropped.
That is what makes cancel race-free (ORCH-2004): the cancel handler finishes
the record *before* answering 204, so no token can follow.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent, ErrorEvent, StreamEvent
from llama_orch.core.replica import ReplicaSetKey
from llama_orch.core.sse import encode_event

__all__ = ["TaskRecord", "TaskState", "TaskStore"]

TaskState = Literal["queued", "running", "completed", "failed", "canceled"]
_encoder = msgspec.json.Encoder()


@dataclass(eq=False)
class TaskRecord:
    task_id: str
    pool_id: str
    engine: str
    priority: str
    request: GenerateRequest
    prompt_tokens: int
    session_id: str | None = None
    tenant: str = "default"
    deadline: float | None = None  # monotonic seconds (ORCH-1006, ORCH-1111)
    set_key: ReplicaSetKey | None = None  # pinned replica set (ORCH-1302), else free
    state: TaskState = "queued"
    replica_id: str | None = None
    engine_version: str = ""
    queue_position: int = 0
    predicted_start_ms: int = 0
    created: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    dispatched: float | None = None
    first_token: float | None = None
    finished_at: float | None = None
    tokens_out: int = 0
    last_progress: float | None = None  # last engine event, for the watchdog (ORCH-1115)
    runner: asyncio.Task[None] | None = None
    _frames: list[bytes] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __hash__(self) -> int:
        return hash(self.task_id)

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "failed", "canceled")

    @property
    def event_count(self) -> int:
        return len(self._frames)

    def append(self, event: StreamEvent) -> bool:
        """Append a non-terminal event; returns False (dropped) after the end."""
        if self.terminal:
            return False
        self._push(event)
        return True

    def finish(self, event: EndEvent | ErrorEvent) -> bool:
        """Append the one terminal event. Returns False if the task already ended."""
        if self.terminal:
            return False
        if isinstance(event, ErrorEvent):
            self.state = "failed"
        elif event.reason == "canceled":
            self.state = "canceled"
        else:
            self.state = "completed"
        self.finished_at = time.monotonic()
        self._push(event)
        return True

    def _push(self, event: StreamEvent) -> None:
        tag = type(event).__struct_config__.tag
        assert isinstance(tag, str)
        self._frames.append(encode_event(tag, _encoder.encode(event), len(self._frames)))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def frames(self, start: int = 0) -> AsyncIterator[bytes]:
        """Yield frames from index ``start`` on, waiting for new ones, until the end.

        Frames already available are joined into one chunk so a late reader
        gets its replay in one write.
        """
        idx = max(0, start)
        while True:
            if idx < len(self._frames):
                chunk = b"".join(self._frames[idx:])
                idx = len(self._frames)
                yield chunk
                continue
            if self.terminal:
                return
            await self._changed.wait()


class TaskStore:
    """All known tasks; finished ones are evicted by age and count."""

    def __init__(self, *, retention_s: float, max_tasks: int) -> None:
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._retention_s = retention_s
        self._max = max_tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def add(self, record: TaskRecord) -> None:
        self._evict()
        self._tasks[record.task_id] = record

    def active(self) -> list[TaskRecord]:
        return [t for t in self._tasks.values() if not t.terminal]

    def _evict(self) -> None:
        now = time.monotonic()
        for tid, rec in list(self._tasks.items()):
            too_many = len(self._tasks) >= self._max
            expired = rec.finished_at is not None and now - rec.finished_at > self._retention_s
            if not rec.terminal:
                continue
            if too_many or expired:
                del self._tasks[tid]
            elif not too_many:
                break
