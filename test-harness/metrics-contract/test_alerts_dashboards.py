"""Alert rules and dashboards (ORCH-7020..ORCH-7022): promtool checks and metric names.

``promtool`` comes from Debian's ``prometheus`` package, provisioned by
``tools/prometheus_tools.py`` (session fixture ``prometheus_tools``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "ci" / "alerts"
RULES = ALERTS / "llama-orch.rules.yml"
RULE_TESTS = ALERTS / "llama-orch.rules.test.yml"
DASHBOARDS = sorted((ROOT / "ci" / "dashboards").glob("*.json"))


def _promtool(tools, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        doc = json.loads(path.read_text(encoding="utf-8"))
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules(prometheus_tools):
    """ORCH-7021: the rules parse and pass promtool's checks."""
    got = _promtool(prometheus_tools, "check", "rules", RULES.name, cwd=ALERTS)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS: 6 rules found" in got.stdout


def test_promtool_test_rules(prometheus_tools):
    """ORCH-7021: every alert's unit tests pass (fires on a breach, exact labels/annotations)."""
    got = _promtool(prometheus_tools, "test", "rules", RULE_TESTS.name, cwd=ALERTS)
    assert got.returncode == 0, got.stdout + got.stderr


def test_rule_tests_fail_when_a_rule_breaks(prometheus_tools, tmp_path):
    """The unit tests can fail: a loosened SLO threshold makes ``promtool test rules`` fail."""
    for path in (RULES, RULE_TESTS):
        shutil.copy(path, tmp_path / path.name)
    broken = RULES.read_text(encoding="utf-8").replace(
        "expr: deadlines_met_ratio < 0.9", "expr: deadlines_met_ratio < 0.5"
    )
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / RULES.name).write_text(broken, encoding="utf-8")
    got = _promtool(prometheus_tools, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert got.returncode != 0
    assert "LlamaOrchDeadlineSLOBreach" in got.stdout + got.stderr


def test_dashboards_cover_the_operator_views():
    """ORCH-7022: queue depth, rejections by reason, latency percentiles, tokens/s,
    replica readiness and SLO attainment each have a panel."""
    assert DASHBOARDS
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needed in (
        "queue_depth",
        "tasks_rejected_total",
        "histogram_quantile(0.95, sum by (pool_id, priority, le) "
        "(rate(latency_first_token_ms_bucket",
        "rate(latency_decode_ms_bucket",
        "rate(tokens_out_total",
        'model_state{state="ready"}',
        "deadlines_met_ratio",
    ):
        assert needed in exprs, needed


@pytest.mark.parametrize(("where", "expr"), dashboard_exprs() + rule_exprs())
def test_promql_names_only_lint_metrics(where, expr, metrics_lint, lint_doc):
    """ORCH-7022: every dashboard panel and alert rule selects only metrics of the lint file."""
    names = metrics_lint.promql_metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = {n for n in names if metrics_lint.family_of(n, lint_doc) is None}
    assert not unknown, f"{where}: {sorted(unknown)} not in ci/metrics.lint.json"


def test_promql_name_extraction_catches_a_stray_metric(metrics_lint, lint_doc):
    """The name check can fail: a renamed metric in an expression is reported."""
    expr = 'sum by (pool_id) (rate(tasks_enqueued_count_total{pool_id="a"}[5m])) / on() queue_depth'
    names = metrics_lint.promql_metric_names(expr)
    assert names == {"tasks_enqueued_count_total", "queue_depth"}
    assert metrics_lint.family_of("tasks_enqueued_count_total", lint_doc) is None
    assert metrics_lint.family_of("latency_decode_ms_bucket", lint_doc) == "latency_decode_ms"
    assert metrics_lint.family_of("queue_depth_count", lint_doc) is None  # not a histogram
