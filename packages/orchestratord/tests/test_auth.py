"""API keys, roles and tenant isolation through HTTP (ORCH-8001..8007, ORCH-8020)."""

from __future__ import annotations

import hmac
import io
import sys
import uuid

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord import auth as auth_module
from llama_orch.orchestratord.auth import Authenticator, hash_key, load_keys
from llama_orch.orchestratord.errors import StartupError
from llama_orch.orchestratord.main import main as orchestratord_main


def _h(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


async def _tid(run, key: str, **body) -> str:
    resp = await run.submit(key=key, **body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


async def test_missing_or_invalid_key_is_401_with_envelope(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-8003: 401 UNAUTHENTICATED, WWW-Authenticate, X-Correlation-Id; key not echoed."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth))
    bad = "llo_wrong-key-" + "z" * 30
    cases = [None, bad, "", "Basic " + keys["a"], keys["a"] + "x"]
    for value in cases:
        headers = {"X-Correlation-Id": "corr-401"}
        if value is not None:
            headers["Authorization"] = value if value.startswith("Basic") else f"Bearer {value}"
        async with run.http.post(
            run.url + "/v1/tasks", json={"prompt": "hi"}, headers=headers
        ) as r:
            body = await r.read()
            assert r.status == 401, body
            assert r.headers["X-Correlation-Id"] == "corr-401"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            err = msgspec.json.decode(body)
            assert err["code"] == "UNAUTHENTICATED" and err["message"]
            assert bad.encode() not in body and keys["a"].encode() not in body
    assert run.orch.tasks.in_flight("a") == 0 and len(run.orch.tasks) == 0


async def test_wrong_role_is_403(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8003/8006: tenant key on the control plane and /metrics → 403; admin key on
    the data plane → 403; capabilities and health accept either role."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth))
    tenant, admin = keys["a"], keys["admin"]
    forbidden = [
        ("POST", "/v1/pools/mock/drain", tenant),
        ("GET", "/v1/replicasets", tenant),
        ("GET", "/metrics", tenant),
        ("POST", "/v1/tasks", admin),
        ("GET", f"/v1/tasks/{uuid.uuid4()}", admin),
        ("GET", f"/v1/sessions/{uuid.uuid4()}", admin),
    ]
    for method, path, key in forbidden:
        async with run.http.request(method, run.url + path, json={}, headers=_h(key)) as r:
            assert r.status == 403, (path, await r.text())
            assert (await r.json())["code"] == "FORBIDDEN"
            assert "X-Correlation-Id" in r.headers
    assert run.orch.pools["mock"].draining is False  # the refused drain did nothing
    for path in ("/v1/capabilities", "/v1/pools/mock/health"):
        for key in (tenant, admin):
            async with run.http.get(run.url + path, headers=_h(key)) as r:
                assert r.status == 200, path
    assert "queue_depth" in await run.metrics_text(admin)


async def test_tenant_cannot_see_another_tenants_tasks_or_sessions(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-8005: stream, status, cancel, session read/delete of another tenant → 404,
    identical to an unknown ID; the owner still has everything."""
    auth, keys = tenant_keys("a", "b")
    run = await start_orchestrator(mock_config(auth=auth, adapter_options={"token_delay_ms": 20}))
    a, b = keys["a"], keys["b"]
    sid = str(uuid.uuid4())
    tid = await _tid(run, a, max_tokens=50, session_id=sid)
    unknown = str(uuid.uuid4())
    for path, method in (
        (f"/v1/tasks/{tid}", "GET"),
        (f"/v1/tasks/{tid}/stream", "GET"),
        (f"/v1/tasks/{tid}/cancel", "POST"),
        (f"/v1/sessions/{sid}", "GET"),
        (f"/v1/sessions/{sid}", "DELETE"),
    ):
        async with run.http.request(method, run.url + path, headers=_h(b)) as r:
            foreign = (r.status, await r.json())
        other = path.replace(tid, unknown).replace(sid, unknown)
        async with run.http.request(method, run.url + other, headers=_h(b)) as r:
            missing = (r.status, await r.json())
        assert foreign[0] == missing[0] == 404, (path, foreign)
        assert foreign[1]["code"] == missing[1]["code"] == "NOT_FOUND"
        masked = foreign[1]["message"].replace(tid, "ID").replace(sid, "ID")
        assert masked == missing[1]["message"].replace(unknown, "ID")  # nothing tells them apart
    # nothing happened to A's task or session
    events = await run.events(tid, key=a)
    assert events[-1][1] == "end" and events[-1][2]["reason"] == "length"
    async with run.http.get(f"{run.url}/v1/sessions/{sid}", headers=_h(a)) as r:
        assert r.status == 200 and (await r.json())["turns"] == 1
    # the same session ID from B is B's own, new session (budgets and turns apart)
    await run.events(await _tid(run, b, max_tokens=2, session_id=sid), key=b)
    async with run.http.get(f"{run.url}/v1/sessions/{sid}", headers=_h(b)) as r:
        assert (await r.json())["turns"] == 1
    async with run.http.get(f"{run.url}/v1/sessions/{sid}", headers=_h(a)) as r:
        assert (await r.json())["turns"] == 1
    # B can cancel its own task
    own = await _tid(run, b, max_tokens=50)
    async with run.http.post(f"{run.url}/v1/tasks/{own}/cancel", headers=_h(b)) as r:
        assert r.status == 204


async def test_tenant_comes_from_the_key_not_the_body(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8004: a body naming a tenant is an unknown field (400); the key's tenant counts
    for quotas."""
    auth, keys = tenant_keys("a", "b")
    cfg = mock_config(auth=auth)
    cfg.scheduling.tenants = {"a": msgspec.convert({"max_concurrent": 1}, type=_tenant_type())}
    run = await start_orchestrator(cfg)
    resp = await run.submit(key=keys["b"], tenant="a", max_tokens=2)
    assert resp.status == 400
    err = await resp.json()
    assert err["code"] == "INVALID_PARAMS" and "tenant" in err["message"]
    tid = await _tid(run, keys["a"], max_tokens=2)
    assert run.orch.get(tid).tenant == "a"


def _tenant_type():
    from llama_orch.core.config import TenantConfig

    return TenantConfig


async def test_public_metrics_and_health(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8006: protected by default; public when configured; data plane stays closed."""
    auth, _keys = tenant_keys("a", public_metrics=True, public_health=True)
    run = await start_orchestrator(mock_config(auth=auth))
    for path in ("/metrics", "/v1/pools/mock/health"):
        async with run.http.get(run.url + path) as r:
            assert r.status == 200, path
    for path in ("/v1/capabilities", "/v1/replicasets"):
        async with run.http.get(run.url + path) as r:
            assert r.status == 401, path


def _cfg(doc: dict) -> Config:
    return msgspec.convert(doc, Config)


def test_no_keys_no_start_and_keys_file(tmp_path):
    """ORCH-8001/8007: auth on without keys refuses to start; keys_file entries load;
    a tenant key without a tenant or duplicate ids are refused."""
    with pytest.raises(StartupError, match=r"auth\.keys"):
        load_keys(_cfg({}).auth)
    assert load_keys(_cfg({"auth": {"enabled": False}}).auth) == []
    key = "llo_" + "f" * 40
    path = tmp_path / "keys.yaml"
    path.write_text(f"- id: file-key\n  role: tenant\n  tenant: t1\n  hash: {hash_key(key)}\n")
    keys = load_keys(_cfg({"auth": {"keys_file": str(path)}}).auth)
    assert [(k.id, k.tenant) for k in keys] == [("file-key", "t1")]
    who = Authenticator(_cfg({}).auth, keys).identify(f"Bearer {key}")
    assert (who.key_id, who.role, who.tenant) == ("file-key", "tenant", "t1")
    path.write_text(f"- id: k\n  role: tenant\n  hash: {hash_key(key)}\n")
    with pytest.raises(StartupError, match="no `tenant`"):
        load_keys(_cfg({"auth": {"keys_file": str(path)}}).auth)
    path.write_text(f"- {{id: k, role: admin, hash: {hash_key(key)}}}\n" * 2)
    with pytest.raises(StartupError, match="unique"):
        load_keys(_cfg({"auth": {"keys_file": str(path)}}).auth)
    with pytest.raises(msgspec.ValidationError):  # plaintext where a hash belongs
        _cfg({"auth": {"keys": [{"id": "k", "role": "admin", "hash": key}]}})


def test_every_stored_hash_is_compared_in_constant_time(monkeypatch):
    """ORCH-8002: hmac.compare_digest against every key, also when the first matches."""
    keys = [f"llo_{n}" + "q" * 40 for n in range(5)]
    cfg = _cfg(
        {
            "auth": {
                "keys": [
                    {"id": f"k{n}", "role": "admin", "hash": hash_key(k)}
                    for n, k in enumerate(keys)
                ]
            }
        }
    )
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    authn = Authenticator(cfg.auth, load_keys(cfg.auth))
    assert authn.identify(f"Bearer {keys[0]}").key_id == "k0"
    assert len(calls) == 5
    calls.clear()
    with pytest.raises(Exception, match="not valid"):
        authn.identify("Bearer llo_nope" + "q" * 40)
    assert len(calls) == 5


def test_keygen_and_hash_key_commands(monkeypatch, capsys):
    """ORCH-8002: keygen prints the key on stdout, the hash-only entry on stderr;
    hash-key reads stdin and refuses short keys."""
    assert orchestratord_main(["keygen", "--id", "k1", "--tenant", "t1"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("llo_") and len(key) >= 44
    assert hash_key(key) in err and key not in err and "tenant: t1" in err
    entry = msgspec.yaml.decode(err.split("\n", 1)[1])
    cfg = _cfg({"auth": {"keys": entry}})
    assert Authenticator(cfg.auth, load_keys(cfg.auth)).identify(f"Bearer {key}").tenant == "t1"
    monkeypatch.setattr(sys, "stdin", io.StringIO(key + "\n"))
    assert orchestratord_main(["hash-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key(key)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert orchestratord_main(["hash-key"]) == 2
    assert "32" in capsys.readouterr().err


async def test_llorch_sends_the_key_from_the_environment(
    start_orchestrator, mock_config, tenant_keys, monkeypatch, capsys
):
    """ORCH-8020: `llorch submit` with $LLORCH_API_KEY succeeds; without it exits 2 with
    the 401 shown; the key is never printed."""
    from llama_orch.cli.main import build_parser, run_submit

    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth))
    args = build_parser().parse_args(["submit", "--url", run.url, "--max-tokens", "3", "hi"])
    monkeypatch.delenv("LLORCH_API_KEY", raising=False)
    assert await run_submit(args, out=io.StringIO()) == 2
    out, err = capsys.readouterr()
    assert "UNAUTHENTICATED" in err
    monkeypatch.setenv("LLORCH_API_KEY", keys["a"])
    assert await run_submit(args, out=io.StringIO()) == 0
    out, err = capsys.readouterr()
    assert keys["a"] not in out + err
    assert run.orch.tasks.in_flight("a") == 0 and any(
        t.tenant == "a" for t in run.orch.tasks._tasks.values()
    )
