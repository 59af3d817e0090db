"""The host around the sandbox: native policies, placement choice, reload, mediated
fetch and the CLI that shares this code (ORCH-8517, ORCH-8523, ORCH-8531, ORCH-8532,
ORCH-8541, ORCH-8560, ORCH-8570)."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_orch.core.policy_config import FetchGrant, HookConfig, PoliciesConfig, PolicyModule
from llama_orch.policy_host import ImportRefused, PolicyHost, PolicyLoadError, available_policies
from llama_orch.policy_host.examples import TenantClampPolicy
from llama_orch.policy_host.native import load_native
from llama_orch.policy_host.wasm import WasmPolicy, fetch_allowed
from llama_orch.policy_sdk.abi import Admit, Reject, Rewrite
from llama_orch.policy_sdk.cli import main

from .conftest import FIXTURES, admission, module, placement


def _host(mods: list[PolicyModule], cache_dir: Path, **hooks: HookConfig) -> PolicyHost:
    return PolicyHost(
        PoliciesConfig(modules=mods, cache_dir=str(cache_dir), **hooks), base_dir=FIXTURES
    )


def test_native_policy_loads_by_entry_point_name() -> None:
    """ORCH-0006, ORCH-8517: the shipped example is registered and is a NativePolicy."""
    assert available_policies()["tenant-clamp-py"].endswith(":TenantClampPolicy")
    assert load_native("x", "tenant-clamp-py") is TenantClampPolicy
    with pytest.raises(PolicyLoadError, match=r"no native policy 'nope'"):
        load_native("x", "nope")


def test_native_policy_runs_through_the_same_hook_code(cache_dir: Path) -> None:
    mod = PolicyModule(name="clamp", entry_point="tenant-clamp-py", config={"share_pct": 50})
    h = _host([mod], cache_dir, admission=HookConfig(policy="clamp"))
    try:
        calm = h.admission(admission())
        assert calm is not None and calm.decision == Admit()
        crowded = admission()
        crowded.tenant.pool_in_flight = 2  # 2 of the pool's 2: 100 % > 50 %
        res = h.admission(crowded)
        assert res is not None and isinstance(res.decision, Rewrite)
        assert h.calls["clamp", "admission", "rewrite"] == 1
    finally:
        h.close()


def test_placement_picks_the_best_offered_replica_only(cache_dir: Path, tmp_path: Path) -> None:
    """ORCH-8523: a score for a replica the host did not offer is ignored; no score at
    all means the host's own choice (None)."""
    wat = tmp_path / "scores.wat"
    out = '{"scores":{"ghost":99,"r1":5,"r0":1}}'
    wat.write_text(
        (FIXTURES / "admit.wat")
        .read_text()
        .replace(
            '(data (i32.const 16) "{\\"action\\":\\"admit\\"}")',
            f'(data (i32.const 16) "{out.replace(chr(34), chr(92) + chr(34))}")',
        )
        .replace("(i64.const 18)))\n)", f"(i64.const {len(out)})))\n)")
    )
    h = _host([module("scores", wat)], cache_dir, placement=HookConfig(policy="scores"))
    try:
        res = h.placement(placement(["r0", "r1"]))
        assert res is not None and res.replica_id == "r1" and not res.refused
        res = h.placement(placement(["r0", "r2"]))
        assert res is not None and res.replica_id == "r0"
        res = h.placement(placement(["r2"]))
        assert res is not None and res.replica_id is None
    finally:
        h.close()


def test_rewrite_that_raises_max_tokens_or_names_an_unknown_pool_fails(cache_dir: Path) -> None:
    """ORCH-8522: the host refuses a rewrite outside its limits (a typed failure)."""

    class Greedy:
        kind = "native"
        name = "greedy"

        def decide(self, hook, snapshot, budget_ms):
            return Rewrite(max_tokens=snapshot.task.max_tokens + 1)

        def discard(self) -> None: ...
        def close(self) -> None: ...

    h = _host([], cache_dir)
    h._runners = {"greedy": Greedy()}  # type: ignore[dict-item]
    h.cfg = PoliciesConfig(admission=HookConfig(policy="greedy", on_error="closed"))
    res = h.admission(admission())
    assert res is not None and res.failed and isinstance(res.decision, Reject)
    assert h.traps["greedy", "output"] == 1


def test_non_admit_decisions_are_audited(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ORCH-8541: one audit line per non-admit decision, none for admit."""
    mod = PolicyModule(name="clamp", entry_point="tenant-clamp-py", config={"share_pct": 0})
    h = _host([mod], cache_dir, admission=HookConfig(policy="clamp"))
    caplog.set_level(logging.INFO, logger="llama_orch.policy_host.audit")
    try:
        calm = admission()
        calm.tenant.pool_in_flight = 0
        res = h.admission(calm)  # 0 in flight: admit
        assert res is not None and res.decision == Admit() and not caplog.records
        crowded = admission()
        crowded.tenant.pool_in_flight = 1
        h.admission(crowded)
        (line,) = [r.getMessage() for r in caplog.records]
        assert "policy=clamp" in line and "hook=admission" in line and '"rewrite"' in line
    finally:
        h.close()


# -- reload (ORCH-8570) -------------------------------------------------------------


def test_reload_swaps_atomically_and_keeps_the_running_set_on_failure(
    cache_dir: Path, tmp_path: Path
) -> None:
    h = _host([module("admit")], cache_dir, admission=HookConfig(policy="admit"))
    try:
        bad_digest = PolicyModule(name="admit", path=str(FIXTURES / "admit.wat"), sha256="0" * 64)
        with pytest.raises(PolicyLoadError, match="sha256"):
            h.reload(PoliciesConfig(modules=[bad_digest], admission=HookConfig(policy="admit")))
        refused = module("fs_import")
        with pytest.raises(ImportRefused):
            h.reload(PoliciesConfig(modules=[refused], admission=HookConfig(policy="fs_import")))
        # vectors that the new module fails: it never replaces the running one
        vdir = tmp_path / "vectors"
        vdir.mkdir()
        snap = json.loads(_snapshot_json())
        (vdir / "must_reject.json").write_text(
            json.dumps(
                {
                    "hook": "admission",
                    "snapshot": snap,
                    "expect": {"action": "reject", "reason": "x"},
                }
            )
        )
        failing = module("malformed", vectors=str(vdir))
        with pytest.raises(PolicyLoadError, match=r"must_reject\.json"):
            h.reload(PoliciesConfig(modules=[failing], admission=HookConfig(policy="malformed")))
        res = h.admission(admission(marked=True))
        assert res is not None and res.policy == "admit" and res.decision == Admit()
        # a good reload swaps in the new policy
        h.reload(
            PoliciesConfig(
                modules=[module("malformed")],
                admission=HookConfig(policy="malformed", on_error="closed"),
                cache_dir=str(cache_dir),
            )
        )
        res = h.admission(admission(marked=True))
        assert res is not None and res.policy == "malformed" and res.failed
    finally:
        h.close()


def _snapshot_json() -> str:
    from llama_orch.policy_sdk.abi import encode

    return encode(admission()).decode()


# -- mediated fetch (ORCH-8560) -----------------------------------------------------


@pytest.fixture
def server() -> Iterator[str]:
    bodies = {"/ok": b'{"action":"admit","reason":"remote"}', "/big": b"x" * 5000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def _fetch_wat(tmp_path: Path, url: str) -> Path:
    """A policy whose decision is the body it fetches; denied -> a reject."""
    esc = url.replace('"', '\\"')
    deny = '{\\"action\\":\\"reject\\",\\"reason\\":\\"denied\\"}'
    text = f"""(module
  (import "llorch" "fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{esc}")
  (data (i32.const 512) "{deny}")
  (func (export "llorch_abi_version") (result i32) i32.const 1)
  (func (export "llorch_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "llorch_decide") (param i32 i32 i32) (result i64)
    (local $n i32)
    (local.set $n
      (call $fetch (i32.const 256) (i32.const {len(url)}) (i32.const 1024) (i32.const 4096)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (return (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 37)))))
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
)
"""
    path = tmp_path / "fetch.wat"
    path.write_text(text)
    return path


def test_fetch_is_not_linked_without_a_grant(server: str, tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ImportRefused, match=r"llorch\.fetch"):
        WasmPolicy(
            module("fetch", _fetch_wat(tmp_path, server + "/ok")),
            cache_dir=cache_dir,
            base_dir=tmp_path,
        )


def test_fetch_allowed_url_denied_url_and_size_bound(
    server: str, tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llama_orch.policy_host.audit")
    grant = FetchGrant(allow=[server + "/ok"], max_bytes=4096, timeout_ms=2000)
    assert fetch_allowed(grant, server + "/ok") and not fetch_allowed(grant, server + "/big")
    assert not fetch_allowed(None, server + "/ok")  # denied by default
    ok = WasmPolicy(
        module("fetch", _fetch_wat(tmp_path, server + "/ok"), fetch=grant),
        cache_dir=cache_dir,
        base_dir=tmp_path,
    )
    try:
        assert ok.decide("admission", admission(), 1000.0) == Admit(reason="remote")
    finally:
        ok.close()
    denied = WasmPolicy(
        module("fetch", _fetch_wat(tmp_path, server + "/big"), fetch=grant),
        cache_dir=cache_dir,
        base_dir=tmp_path,
    )
    try:
        assert denied.decide("admission", admission(), 1000.0) == Reject(reason="denied")
    finally:
        denied.close()
    small = FetchGrant(allow=[server], max_bytes=100, timeout_ms=2000)
    big = WasmPolicy(
        module("fetch", _fetch_wat(tmp_path, server + "/big"), fetch=small),
        cache_dir=cache_dir,
        base_dir=tmp_path,
    )
    try:
        with pytest.raises(Exception, match="output"):
            big.decide("admission", admission(), 1000.0)  # 100 bytes of x: not a decision
    finally:
        big.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("outcome=ok bytes=36" in x for x in lines), lines
    assert any("/big outcome=denied" in x for x in lines), lines
    assert any("outcome=ok bytes=100" in x for x in lines), lines


# -- the CLI runs this host code (ORCH-8531, ORCH-8532) ------------------------------


def test_cli_run_prints_the_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "s.json"
    snap.write_text(_snapshot_json())
    assert main(["run", str(FIXTURES / "admit.wat"), str(snap)]) == 0
    assert json.loads(capsys.readouterr().out) == {"action": "admit", "reason": None}
    spin = tmp_path / "spin.json"
    spin.write_text(_snapshot_json().replace('"t-1"', '"t-~"'))
    assert main(["run", str(FIXTURES / "spin.wat"), str(spin)]) == 1
    assert "out_of_fuel" in capsys.readouterr().err
    assert main(["run", str(FIXTURES / "fs_import.wat"), str(snap)]) == 2
    assert "wasi_snapshot_preview1.path_open" in capsys.readouterr().err


def test_cli_test_names_the_failing_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = json.loads(_snapshot_json())
    marked = json.loads(_snapshot_json().replace('"t-1"', '"t-~"'))
    (tmp_path / "01_plain.json").write_text(
        json.dumps({"hook": "admission", "snapshot": snap, "expect": {"action": "admit"}})
    )
    (tmp_path / "02_marked.json").write_text(
        json.dumps({"hook": "admission", "snapshot": marked, "expect": {"action": "admit"}})
    )
    assert main(["test", str(FIXTURES / "admit.wat"), str(tmp_path)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out
    assert main(["test", str(FIXTURES / "malformed.wat"), str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "PASS 01_plain.json" in out and "FAIL 02_marked.json" in out
    assert main(["test", "native:tenant-clamp-py", str(tmp_path)]) == 0


def test_sha256_of_fixture_is_what_module_pins() -> None:
    spec = module("admit")
    assert spec.sha256 == hashlib.sha256((FIXTURES / "admit.wat").read_bytes()).hexdigest()
