"""The command CI runs is the README's, in one process for now (ORCH-6002, ORCH-6259), and the
timing-bound gates keep their ``alone`` mark (ORCH-6258)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python3 -m pip install -q uv && uv run --frozen pytest"

# ORCH-6258's list: file -> the tests in it that must carry ``@pytest.mark.alone``
ALONE = {
    "test-harness/chaos/test_chaos.py": [
        "test_ci_chaos_profile_on_real_engines",
        "test_pool_managerd_chaos_profile_on_real_engines",
        "test_store_chaos_profile_on_real_engines",
    ],
    "packages/frontend-openai/tests/test_real_llamacpp.py": [
        "test_disconnect_mid_stream_frees_the_slot",
    ],
    "packages/orchestratord/tests/test_service_real_llamacpp.py": [
        "test_cancel_mid_stream_frees_engine_slot",
    ],
    "test-harness/ha/test_ha.py": ["test_ha_three_instances_on_valkey"],
    "packages/orchestratord/tests/test_pools_supervision_real.py": [
        "test_kill_9_mid_stream_worker_reset_restart_and_recovery",
        "test_drain_under_load_with_a_deadline",
    ],
    "packages/orchestratord/tests/test_remote_real.py": [
        "test_queued_tasks_end_when_the_pool_has_no_ready_replica",
    ],
    "packages/adapter-llamacpp-http/tests/test_llamacpp_real_engine.py": [
        "test_cancel_during_prefill_frees_the_slot_before_the_prompt_is_evaluated",
    ],
    "packages/orchestratord/tests/test_waiting_real.py": [
        "test_no_lockout_after_short_and_canceled_bursts",
    ],
    "packages/frontend-openai/tests/test_retry_contract.py": [
        "test_burst_of_sdk_calls_completes_and_sleeps_match_retry_after",
    ],
    "packages/frontend-openai/tests/test_real_tools.py": [
        "test_sdk_retries_obey_retry_after_on_real_llama_server",
    ],
    "packages/orchestratord/tests/test_streaming_stalled_memory.py": [
        "test_stalled_readers_keep_memory_bounded",
    ],
    "packages/orchestratord/tests/test_limits.py": ["test_stalled_reader_is_cut_and_can_resume"],
    "tools/tests/test_standalone_install.py": [
        "test_distribution_installs_alone_and_passes_its_tests",
    ],
}


def _suite_command(markdown: str, heading: str) -> str:
    """The first ``sh`` block after ``heading`` in a Markdown file."""
    rest = markdown[markdown.index(heading) :]
    block = re.search(r"```sh\n(.*?)\n```", rest, re.S)
    assert block, f"no sh block after {heading!r}"
    return block.group(1).strip()


def test_ci_runs_exactly_the_readme_command_on_two_workers() -> None:
    """ORCH-6002, ORCH-6259: the README's command, the quickstart's and the last line of
    ``.ci/run`` are one, and it runs the suite on two workers with the group scheduler."""
    readme = _suite_command((ROOT / "README.md").read_text(), "Run the whole test suite")
    quick = _suite_command((ROOT / "docs/quickstart.md").read_text(), "## Run the tests")
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()
    assert readme == COMMAND, readme
    assert quick == COMMAND, quick
    assert ci[-1] == COMMAND, ci[-1]
    assert "export REQUIRE_REAL_LLAMA=1" in ci  # ORCH-4001: a missing engine fails CI


def _alone_tests(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            marks = {ast.unparse(d) for d in node.decorator_list}
            if "pytest.mark.alone" in marks:
                found.add(node.name)
    return found


def test_the_timing_bound_gates_keep_their_alone_mark() -> None:
    """ORCH-6258: every test on the list carries ``@pytest.mark.alone``."""
    missing = {
        f"{file}::{name}"
        for file, names in ALONE.items()
        for name in names
        if name not in _alone_tests(ROOT / file)
    }
    assert not missing, sorted(missing)
