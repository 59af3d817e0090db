"""The llorch library's replies as the seam's types: admissions, dispatches, task
records, logged events, control messages, and the refusals its tags name."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from llama_orch.core.config import Priority
from llama_orch.core.errors import AdmissionRejected, ErrorCode
from llama_orch.core.state_store import (
    Admitted,
    Canceled,
    Control,
    Dispatched,
    DuplicateTask,
    Fenced,
    LoggedEvent,
    Orphaned,
    TaskEnded,
    TaskSpec,
    TaskView,
    displaced_terminal,
    draining_refusal,
    orphaned_terminal,
    queued_event,
)

from ._wire import _opt, _pairs, _s

__all__ = [
    "DISPLACED",
    "ORPHANED",
    "QUEUED_FMT",
    "admitted",
    "controls",
    "counts",
    "decode",
    "raise_for",
    "spec",
    "step",
    "task_view",
]

DISPLACED = json.dumps(
    {
        c.value: displaced_terminal(c).data.decode()
        for c in (ErrorCode.QUEUE_FULL_DROP_LRU, ErrorCode.ADMISSION_REJECT)
    }
)
ORPHANED = orphaned_terminal().data
# the `queued` event's JSON as msgspec writes it, with %d for position and ETA
_fmt = queued_event(1_234_567_891, 1_987_654_321).data.decode()
QUEUED_FMT = _fmt.replace("1234567891", "%d").replace("1987654321", "%d")
ViewState = Literal["queued", "running", "ended"]  # TaskView.state


def admitted(task: TaskSpec, r: Any) -> Admitted:
    """``llorch_submit``'s answer, or the refusal it names."""
    tag = _s(r[0])
    if tag == "OK":
        victim = _opt(r[2])
        displaced = [(victim, ErrorCode(_s(r[3])))] if victim else []
        return Admitted(queue_position=int(r[1]), displaced=displaced)
    if tag == "DUP":
        raise DuplicateTask(f"task {task.task_id!r} already exists")
    if tag == "QUOTA":
        wait = _opt(r[1])
        raise AdmissionRejected(
            _opt(r[2]) or "quota",
            policy_label="quota",
            retry_after_ms=int(wait) if wait else None,
        )
    if tag == "FULL":
        raise AdmissionRejected(_opt(r[2]) or "queue full", policy_label=_opt(r[1]))
    if tag == "DRAINING":  # ORCH-2586
        raise draining_refusal(task.pool)
    raise KeyError(f"unknown pool {task.pool!r}")


def step(pool: str, r: Any) -> tuple[Dispatched | Orphaned | None, str]:
    """``llorch_dispatch``'s answer: the dispatch, an orphan, or the doorbell's cursor."""
    tag = _s(r[0])
    if tag == "ORPHAN":
        return Orphaned(task_id=_s(r[1])), ""
    if tag != "OK":
        return None, _s(r[1])
    tid, replica, set_key, epoch = _s(r[1]), _s(r[2]), _s(r[3]), int(r[4])
    return (
        Dispatched(
            task=spec(tid, pool, r[5], r[6], r[7], r[8], r[9], r[10]),
            replica_id=replica,
            set_key=set_key,
            epoch=epoch,
            requeues=int(r[11]),
            next_seq=int(r[12]),
            candidates=_pairs(r[13]),
            affinity=_opt(r[14]) or None,
        ),
        "",
    )


def spec(
    tid: str, pool: str, prio: Any, tenant: Any, deadline: Any, pin: Any, session: Any, req: Any
) -> TaskSpec:
    return TaskSpec(
        task_id=tid,
        pool=pool,
        # the library stores the priority it was given (a TaskSpec's)
        priority=cast(Priority, _s(prio)),
        tenant=_opt(tenant) or "default",
        deadline_ms=int(deadline) if deadline else None,
        pin=_opt(pin) or None,
        session=_opt(session) or None,
        request=bytes(req or b""),
    )


def task_view(task_id: str, h: Mapping[Any, Any]) -> TaskView:
    """A task's record (``HGETALL t:<task>``)."""
    g = {_s(k): v for k, v in h.items()}
    state = _s(g["state"])
    return TaskView(
        task=spec(
            task_id,
            _s(g["pool"]),
            g["prio"],
            g["tenant"],
            _s(g["deadline"]),
            g["pin"],
            g["session"],
            g["req"],
        ),
        # the library's states are TaskView's plus "orphaned" (ended, ORCH-1302)
        state="ended" if state == "orphaned" else cast(ViewState, state),
        epoch=int(g["epoch"]),
        owner=_opt(g.get("owner")),
        next_seq=int(g["next_seq"]),
        requeues=int(g["requeues"]),
        replica_id=_opt(g.get("replica")),
        canceled=g["cancel"] == b"1",
    )


def raise_for(tag: str | None, task_id: str) -> None:
    """The refusal a write's tag names; nothing for ``OK``."""
    if tag == "FENCED":
        raise Fenced(f"task {task_id!r}: stale epoch")
    if tag == "CANCELED":
        raise Canceled(task_id)
    if tag == "ENDED":
        raise TaskEnded(task_id)
    if tag == "NOTASK":
        raise KeyError(task_id)
    if tag == "BADBATCH":
        raise ValueError("a terminal event must be the last of its batch")


def decode(entries: Sequence[Any]) -> list[LoggedEvent]:
    """Stream entries of ``log:<task>``: entry id ``0-(seq+1)``, fields ``k`` and ``d``."""
    out = []
    for eid, fields in entries:
        seq = int(_s(eid).split("-")[1]) - 1
        out.append(LoggedEvent(seq, _s(fields[b"k"]), bytes(fields[b"d"])))
    return out


def counts(flat: Sequence[Any]) -> dict[str, int]:
    """A flat ``{id, n, id, n, ...}`` reply as a dict."""
    return {_s(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def controls(got: Any, cursor: str) -> tuple[str, list[Control]]:
    """An ``XREAD`` of a control channel ``ctl:<instance>``: the new cursor and messages."""
    out: list[Control] = []
    for _, entries in got or []:
        for eid, fields in entries:
            cursor = _s(eid)
            op = _s(fields[b"op"])
            if op == "cancel":
                out.append(Control("cancel", _s(fields[b"t"])))
            elif op == "preempt":  # ORCH-2597
                out.append(Control("preempt", _s(fields[b"t"]), _s(fields[b"p"])))
            elif op in ("drain", "undrain"):  # ORCH-2585
                kind: Literal["drain", "undrain"] = "drain" if op == "drain" else "undrain"
                out.append(Control(kind, "", _s(fields[b"p"])))
    return cursor, out
