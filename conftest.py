"""Workspace-wide pytest setup: real-engine fixtures come from llama-orch-testing-engines,
every log record of the run is scanned for API keys (ORCH-8008), and the suite runs on worker
processes (``llama_orch.testing_engines.workers``, ORCH-6240)."""

from __future__ import annotations

import logging
import re

import pytest

pytest_plugins = [
    "llama_orch.testing_engines.share",  # before workers, which imports it
    "llama_orch.testing_engines.workers",
    "llama_orch.testing_engines.llamacpp",
    "llama_orch.testing_engines.python_engines",
]

# Keys look like `llo_` + URL-safe base64 (orchestratord keygen); tests use the same prefix.
_KEY = re.compile(r"llo_[A-Za-z0-9_-]{16,}|Bearer\s+llo_")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _SecretScan(logging.Handler):
    """Collects every record that carries something shaped like an API key."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the logging call's problem, not a leak
            text = str(record.msg)
        text += repr(record.args) + (record.exc_text or "")
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                text += repr(value)  # extras
        if _KEY.search(text):
            self.hits.append(f"{record.name}: {text[:300]}")


_scan = _SecretScan()


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(_scan)
    # INFO so the daemons' task and auth logs are produced and scanned
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # imported here: the module is a plugin of this file, rewritten by pytest when it loads it
    from llama_orch.testing_engines.workers import fail_run

    for hit in _scan.hits[:20]:
        fail_run(session, f"ORCH-8008: a log record holds an API key: {hit}")
    if len(_scan.hits) > 20:
        fail_run(session, f"ORCH-8008: and {len(_scan.hits) - 20} more log records with a key")
