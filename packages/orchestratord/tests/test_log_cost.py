"""ORCH-2781: the daemon's log records skip the fields its JSON lines never print."""

from __future__ import annotations

import io
import json
import logging

from llama_orch.orchestratord.telemetry import TASK_LOG_FIELDS


def test_records_carry_no_caller_thread_or_process(daemon_logging: io.StringIO) -> None:
    """ORCH-2781: no thread/process lookups per record, same line."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

    log = logging.getLogger("llama_orch.orchestratord")
    keep = Keep()
    log.addFilter(keep)
    try:
        fields = {k: f"v-{k}" for k in TASK_LOG_FIELDS}
        log.info("task ended", extra=fields)
    finally:
        log.removeFilter(keep)
    (rec,) = seen
    assert rec.thread is None and rec.threadName is None
    assert rec.process is None and rec.processName is None
    (line,) = daemon_logging.getvalue().splitlines()
    doc = json.loads(line)
    assert doc.pop("ts") > 0
    assert doc == {
        "level": "info",
        "logger": "llama_orch.orchestratord",
        "msg": "task ended",
        **fields,
    }
