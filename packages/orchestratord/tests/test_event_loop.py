"""ORCH-2750: orchestratord runs on uvloop unless started with ``--event-loop asyncio``;
``--workers`` hands the choice to every worker. The runner is replaced by one that
records the loop factory and runs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from llama_orch.orchestratord import main as main_mod


class _Runner:
    factories: list[Callable[[], asyncio.AbstractEventLoop] | None] = []

    def __init__(self, *, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
        self.factories.append(loop_factory)

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "c.yaml"
    assert main_mod.main(["init", "--path", str(path)]) == 0
    _Runner.factories = []
    monkeypatch.setattr(main_mod.asyncio, "Runner", _Runner)
    # main() would set the daemon's logging up in this process (the root handler, the
    # stdlib's three record switches off), and later tests in it would see that
    monkeypatch.setattr(main_mod, "configure_logging", lambda level: None)
    return str(path)


def test_the_default_loop_is_uvloops(config: str) -> None:
    assert main_mod.main(["--config", config]) == 0
    (factory,) = _Runner.factories
    assert factory is uvloop.new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_event_loop_asyncio_is_the_standard_loop(config: str) -> None:
    assert main_mod.main(["--config", config, "--event-loop", "asyncio"]) == 0
    assert _Runner.factories == [None]  # asyncio.Runner's own: the standard loop


def test_workers_get_the_loop_chosen(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(main_mod, "refusal", lambda cfg, n: None)
    monkeypatch.setattr(main_mod, "run_workers", lambda n, args: seen.append(args) or 0)
    assert main_mod.main(["--config", config, "--workers", "2"]) == 0
    assert main_mod.main(["--config", config, "--workers", "2", "--event-loop", "asyncio"]) == 0
    assert [a[a.index("--event-loop") + 1] for a in seen] == ["uvloop", "asyncio"]
