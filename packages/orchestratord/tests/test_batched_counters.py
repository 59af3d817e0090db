"""ORCH-2765: counters summed in the process, handed to the SDK when the metrics are read;
a read shows every add made before it."""

from __future__ import annotations

from typing import Any

from llama_orch.orchestratord.metrics import BatchedCounter, Metrics


class _Sdk:
    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []

    def add(self, amount: float, attributes: Any = None) -> None:
        self.calls.append((amount, attributes))


def test_adds_are_summed_per_attribute_set_until_the_flush() -> None:
    sdk = _Sdk()
    c = BatchedCounter(sdk)  # type: ignore[arg-type]
    for _ in range(3):
        c.add(2, {"pool_id": "p", "engine": "e"})
    c.add(1, {"pool_id": "q", "engine": "e"})
    c.add(5)
    assert sdk.calls == []  # nothing reached the SDK per event
    c.flush()
    assert sorted(sdk.calls, key=repr) == sorted(
        [(6, {"pool_id": "p", "engine": "e"}), (1, {"pool_id": "q", "engine": "e"}), (5, {})],
        key=repr,
    )
    c.flush()
    assert len(sdk.calls) == 3  # flushed once, not again


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start!r} not in the scrape")


def test_a_scrape_shows_every_add_made_before_it() -> None:
    m = Metrics(queue_depths=list)
    attrs = {"engine": "mock", "engine_version": "1", "pool_id": "p", "replica_id": "r0"}
    m.tokens_out.add(3, attrs)
    m.tokens_out.add(4, attrs)
    first = m.render().decode()
    assert _value(first, 'tokens_out_total{engine="mock"') == 7
    m.tokens_out.add(1, attrs)
    assert _value(m.render().decode(), 'tokens_out_total{engine="mock"') == 8
    m.shutdown()
