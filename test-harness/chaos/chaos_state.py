"""What the parts of a chaos run share while it runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    t0: float = 0.0  # monotonic start of the load phase
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # arrival -> record
    live: dict[int, list[Any]] = field(default_factory=dict)  # arrival -> [replica_id, tokens]
    faults_done: list[dict[str, Any]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
