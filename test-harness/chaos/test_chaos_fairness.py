"""Self-tests of the chaos report's fairness figure against a reference deficit round
robin (ORCH-6266, ORCH-6267; ORCH-6103's fairness bound, ORCH-1110's scheduler).

The fair histories below are dispatched by deficit round robin worked out by hand in
the comments, not by the reference they test.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # --import-mode=importlib: load the harness by its folder
    sys.path.insert(0, str(HERE))

import chaos_check  # noqa: E402
import chaos_fairness  # noqa: E402
from chaos_history import FAIRNESS_BOUND, FAIRNESS_MIN_SAMPLES  # noqa: E402
from chaos_synthetic import clean_history, task_record  # noqa: E402

Row = tuple[str, float, float | None]  # tenant, accepted, dispatched (None: canceled queued)


def _history(rows: list[Row], canceled_at: float = 0.0) -> dict[str, Any]:
    """One interactive task per row; a task without a dispatch ends canceled, while
    queued, at ``canceled_at``."""
    h = clean_history()
    h["tasks"], h["exchanges"], h["quotas"] = [], [], {}
    h.pop("daemon_task_ends")
    for k, (tenant, accepted, dispatched) in enumerate(rows):
        r = task_record(k, 1, tenant=tenant, t=accepted - 0.01)
        if dispatched is None:
            r["events"] = [[canceled_at, 0, "end", {"reason": "canceled", "tokens_out": 0}]]
            r["replay"] = [e[1:] for e in r["events"]]
            r["cancel"] = {"t_send": canceled_at - 0.01, "t_recv": canceled_at, "status": 204}
        else:
            r["events"][0][0] = dispatched + 0.05
            r["events"][0][3]["queue_wait_ms"] = round((dispatched - r["t_accepted"]) * 1000)
            for e in r["events"][1:]:
                e[0] = dispatched + 0.5
            h["exchanges"].append(
                {"arrival": k, "engine": 0, "opened": dispatched, "closed": dispatched + 0.6}
                | {"final": True}
            )
        h["tasks"].append(r)
    return h


def _served(order: str, backlog: dict[str, int]) -> dict[str, Any]:
    """Every task queued at 10 s (tenant by tenant, in ``backlog``'s order), then one
    dispatch a second from 20 s in ``order`` (a letter per tenant: a, b, g)."""
    names = {"a": "alpha", "b": "beta", "g": "gamma"}
    rows: list[Row] = []
    for i, (tenant, n) in enumerate(backlog.items()):
        rows += [(tenant, 10.0 + i * 0.1 + k * 0.001, None) for k in range(n)]
    left = {t: [j for j, r in enumerate(rows) if r[0] == t] for t in backlog}
    for k, c in enumerate(order):
        j = left[names[c]].pop(0)
        rows[j] = (rows[j][0], rows[j][1], 20.0 + k)
    assert not any(left.values()), "every queued task is dispatched"
    return _history(rows)


def _flagged(h: dict[str, Any]) -> bool:
    return any(v.check == "fairness" for v in chaos_check.check(h))


def test_the_reference_takes_turns_as_orch_1110_says() -> None:
    """Weights 3:1:1, every tenant backlogged: three of alpha, one of beta, one of gamma
    per round. A tenant whose queue empties within its turn loses the rest of its
    credit and joins at the end; a queued task's cancel does not move its tenant."""
    ref = chaos_fairness.ReferenceDRR({"alpha": 3, "beta": 1, "gamma": 1})
    for tenant, n in (("alpha", 4), ("beta", 3), ("gamma", 3)):
        for _ in range(n):
            ref.arrive(tenant)
    got = []
    for _ in range(6):
        got.append(ref.pick())
        ref.served(got[-1] or "")
    # alpha x3, beta, gamma, then alpha's last task: its queue empties within its turn
    assert got == ["alpha"] * 3 + ["beta", "gamma", "alpha"]
    ref.arrive("alpha")  # alpha is out of the turns: it joins at the end
    assert [ref.pick(), ref.turns[-1]] == ["beta", "alpha"]
    ref.served("beta")
    ref.leave("gamma")
    ref.leave("gamma")  # gamma's queue emptied by cancels, its place kept until its turn
    ref.arrive("gamma")
    assert ref.pick() == "gamma"
    ref.served("gamma")
    assert ref.pick() == "alpha"
    ref.leave("beta")  # beta's last task canceled: skipped when its turn comes
    ref.served("alpha")
    assert ref.pick() is None and ref.backlogged() == set()


def test_a_fair_history_whose_queue_empties_within_a_turn_reads_zero() -> None:
    """ORCH-6267. Weights alpha 3, beta 1, gamma 1; beta, gamma 12 tasks, alpha 2,
    queued at 10 s in that order: turns [beta, gamma, alpha]. Deficit round robin:
    beta, gamma, alpha twice (its queue empties with a credit left: it leaves),
    beta; alpha's 3 tasks at 24.5 s join behind gamma, beta: gamma, beta, alpha
    three times; a queued gamma task canceled at 29.5 s; then gamma and beta in
    turn. The earlier expectation (weights capped at the tasks queued) read 0.0198
    here, alpha above its share."""
    rows: list[Row] = [("beta", 10.0 + k * 0.001, None) for k in range(12)]
    rows += [("gamma", 10.1 + k * 0.001, None) for k in range(12)]
    rows += [("alpha", 10.2, None), ("alpha", 10.201, None)]
    rows += [("alpha", 24.5 + k * 0.001, None) for k in range(3)]
    order = "bgaab" + "gbaaa" + "gb" * 8 + "g" + "b"  # one dispatch a second from 20 s
    pos = {"a": [24, 25, 26, 27, 28], "b": list(range(12)), "g": list(range(12, 24))}
    del pos["g"][2]  # gamma's third task is the one canceled while queued
    for k, c in enumerate(order):
        j = pos[c].pop(0)
        rows[j] = (rows[j][0], rows[j][1], 20.0 + k)
    h = _history(rows, canceled_at=29.5)
    fair = chaos_fairness.fairness(h)
    assert fair["samples"] == len(order) - 1 >= FAIRNESS_MIN_SAMPLES  # the last: beta alone
    assert fair["deviation"] == 0.0, fair
    assert fair["observed"] == fair["expected"]
    assert chaos_check.check(h) == []


def test_two_to_one_against_equal_weights_is_flagged() -> None:
    """ORCH-6267. Beta and gamma (weight 1 each) both backlogged, served 2:1."""
    h = _served("bbg" * 12, {"beta": 24, "gamma": 12})
    fair = chaos_fairness.fairness(h)
    assert fair["samples"] >= FAIRNESS_MIN_SAMPLES and fair["deviation"] > FAIRNESS_BOUND, fair
    assert _flagged(h)
    assert chaos_fairness.fairness(_served("bg" * 18, {"beta": 18, "gamma": 18}))["deviation"] == 0


def test_first_come_first_served_is_flagged() -> None:
    """ORCH-6267. Alpha's 12 tasks, then beta's 12, then gamma's 12 queued, served in
    arrival order: gamma waits while alpha and beta empty their queues."""
    h = _served("a" * 12 + "b" * 12 + "g" * 12, {"alpha": 12, "beta": 12, "gamma": 12})
    fair = chaos_fairness.fairness(h)
    assert fair["samples"] >= FAIRNESS_MIN_SAMPLES and fair["deviation"] > FAIRNESS_BOUND, fair
    assert _flagged(h)
    # the same backlog by deficit round robin: alpha's 12 in four turns, then beta, gamma
    fair_order = "aaabg" * 4 + "bg" * 8
    fair = chaos_fairness.fairness(_served(fair_order, {"alpha": 12, "beta": 12, "gamma": 12}))
    assert fair["deviation"] == 0.0, fair


def test_turns_that_ignore_the_weights_are_flagged() -> None:
    """ORCH-6267. Alpha (weight 3), beta and gamma served one task each in turn."""
    h = _served("abg" * 10, {"alpha": 10, "beta": 10, "gamma": 10})
    fair = chaos_fairness.fairness(h)
    assert fair["samples"] >= FAIRNESS_MIN_SAMPLES and fair["deviation"] > FAIRNESS_BOUND, fair
    assert _flagged(h)
    fair = chaos_fairness.fairness(_served("aaabg" * 6, {"alpha": 18, "beta": 6, "gamma": 6}))
    assert fair["samples"] >= FAIRNESS_MIN_SAMPLES and fair["deviation"] == 0.0, fair


def test_the_fairness_module_does_not_import_the_product() -> None:
    """ORCH-6267: the reference is the checker's own; importing the product's scheduler
    would make it agree with any bug there."""
    tree = ast.parse((HERE / "chaos_fairness.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [m for m in names if m.split(".")[0] in ("llama_orch", "orchestratord")]
    assert "chaos_history" in names  # the walk sees the module's imports
