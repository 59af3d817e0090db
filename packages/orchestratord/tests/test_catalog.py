"""Model catalog, trust and lifecycle on mock pools (ORCH-3310..3333).

Models are tiny files served by a local origin (https) or given by path; the
real-engine journey is ``test_catalog_real.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from llama_orch.core.catalog_config import TrustConfig, TrustKey
from llama_orch.core.config import Config
from llama_orch.orchestratord.catalog import Catalog
from llama_orch.orchestratord.trust import Signature, TrustPolicy, signed_message
from llama_orch.testing.model_server import ModelFileServer

V1 = b"GGUF" + os.urandom(300_000)
V2 = b"GGUF" + os.urandom(300_000)
V3 = b"GGUF" + os.urandom(300_000)
D1, D2, D3 = (hashlib.sha256(v).hexdigest() for v in (V1, V2, V3))
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def _pub(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(digest: str, key: Ed25519PrivateKey = KEY, key_id: str = "release") -> dict[str, str]:
    sig = base64.b64encode(key.sign(signed_message(digest))).decode()
    return {"key_id": key_id, "signature": sig}


def _trust(mode: str = "strict", **kw: Any) -> dict[str, Any]:
    return {"mode": mode, "keys": [{"id": "release", "public_key": _pub(KEY)}], **kw}


@pytest.fixture
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelFileServer]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "v1.gguf").write_bytes(V1)
    (tmp_path / "o" / "v2.gguf").write_bytes(V2)
    (tmp_path / "o" / "v3.gguf").write_bytes(V3)
    tampered = bytearray(V2)
    tampered[1000] ^= 0x01  # one byte changed
    (tmp_path / "o" / "tampered.gguf").write_bytes(bytes(tampered))
    with ModelFileServer() as server:
        for name in ("v1.gguf", "v2.gguf", "v3.gguf", "tampered.gguf"):
            server.add_file(name, tmp_path / "o" / name)
        yield server


def _config(tmp_path: Path, trust: dict[str, Any], **admission: Any) -> Config:
    pool = {"engine": "mock", "endpoints": ["mock://0"], "adapter_options": {"token_delay_ms": 0}}
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 2.0},
        "auth": {"enabled": False},
        "admission": admission,
        "catalog": {"path": str(tmp_path / "catalog.sqlite3"), "trust": trust},
        "pools": [
            {"id": "stable", "model": "tiny:stable", **pool},
            {"id": "canary", "model": "tiny:next", **pool},
        ],
    }
    return msgspec.convert(doc, Config)


def _sample(scrape: str, name: str, **labels: str) -> float:
    """The value of one series of a Prometheus text scrape (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(scrape):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def test_trust_policy_verdicts() -> None:
    """ORCH-3311..3313: listed key passes; unsigned, unlisted, bad, disallowed do not."""
    strict = TrustPolicy(msgspec.convert(_trust(allowed_sources=["https"]), TrustConfig))
    ok = msgspec.convert(sign(D1), Signature)

    def judge(policy: TrustPolicy, sigs: list[dict[str, str]], source: str = "https") -> Any:
        return policy.judge(
            source=source, digest=D1, signatures=[msgspec.convert(s, Signature) for s in sigs]
        )

    assert strict.judge(source="https", digest=D1, signatures=[ok]).result == "pass"
    for sigs, reason in [
        ([], "unsigned"),
        ([sign(D1, OTHER, "stranger")], "unlisted_key"),
        ([sign(D1, OTHER)], "bad_signature"),  # listed id, wrong key
        ([sign(D2)], "bad_signature"),  # a signature over another digest
        ([{"key_id": "release", "signature": "!!"}], "bad_signature"),
    ]:
        v = judge(strict, sigs)
        assert (v.result, v.reason) == ("fail", reason), sigs
    assert judge(strict, [sign(D1)], "pypi").reason == "source_not_allowed"
    assert strict.source_verdict("https") is None
    assert strict.source_verdict("pypi").refused  # type: ignore[union-attr]
    warn = TrustPolicy(
        TrustConfig(mode="warn", keys=[TrustKey(id="release", public_key=_pub(KEY))])
    )
    assert (judge(warn, []).result, judge(warn, []).reason) == ("warn", "unsigned")
    assert judge(TrustPolicy(TrustConfig(mode="off")), []).result == "pass"


async def test_register_under_strict_verifies_and_refuses(
    start_orchestrator, origin: ModelFileServer, tmp_path: Path
) -> None:
    """ORCH-3310, ORCH-3313, ORCH-3314, ORCH-3320..3322: a signed model registers with
    its provenance and resolves by tag, digest and name; tampered, unsigned, unlisted,
    malformed and half-downloaded ones are refused and leave nothing behind."""
    run = await start_orchestrator(_config(tmp_path, _trust()))
    api = run.url + "/v1/catalog/models"

    async def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resp = await run.http.post(api, json=body)
        return resp.status, await resp.json()

    v1 = f"{origin.url}/files/v1.gguf"
    status, entry = await post(
        {"name": "tiny", "ref": v1, "digest": D1, "tags": ["stable"], "signatures": [sign(D1)],
         "license": "Apache-2.0", "ctx": 512, "state": "active"}
    )  # fmt: skip
    assert status == 201, entry
    assert entry["id"] == D1[:16] and entry["digest"] == D1 and entry["size"] == len(V1)
    assert entry["provenance"] == {
        "source": "https", "source_url": v1, "version": None, "manifest_digest": None
    }  # fmt: skip
    assert entry["state"] == "active" and entry["history"][0]["to_state"] == "active"
    cat = run.orch.catalog.catalog
    assert cat.resolve("tiny:stable").id == cat.resolve(f"sha256:{D1}").id == D1[:16]
    assert cat.resolve("tiny").id == D1[:16] and cat.resolve("tiny:nope") is None
    got = await run.http.get(f"{api}/{D1[:16]}")
    assert (await got.json())["digest"] == D1
    verified = await run.http.post(f"{api}/{D1[:16]}/verify")
    assert verified.status == 200 and (await verified.json())["result"] == "pass"

    refused = [
        # a tampered copy (one byte) of v2 pinned to v2's signed digest
        ({"name": "tiny", "ref": f"{origin.url}/files/tampered.gguf", "digest": D2,
          "signatures": [sign(D2)]}, 403, "UNTRUSTED_ARTIFACT", "expected " + D2),
        # the same copy, not pinned: its digest has no valid signature
        ({"name": "tiny", "ref": f"{origin.url}/files/tampered.gguf", "signatures": [sign(D2)]},
         403, "UNTRUSTED_ARTIFACT", "does not verify"),
        ({"name": "tiny", "ref": f"{origin.url}/files/v2.gguf"}, 403, "UNTRUSTED_ARTIFACT",
         "no signature"),
        ({"name": "tiny", "ref": f"{origin.url}/files/v2.gguf",
          "signatures": [sign(D2, OTHER, "stranger")]}, 403, "UNTRUSTED_ARTIFACT", "stranger"),
        ({"name": "tiny", "ref": "ftp:x/y.gguf"}, 400, "INVALID_PARAMS", "unknown model source"),
        ({"name": "tiny", "ref": "hf:no-revision/x.gguf"}, 400, "INVALID_PARAMS", "owner/name@"),
        ({"name": "tiny", "ref": v1, "digest": D1[:63]}, 400, "INVALID_PARAMS", "$.digest"),
        ({"name": "Bad Name", "ref": v1}, 400, "INVALID_PARAMS", "$.name"),
        ({"name": "tiny", "ref": v1, "digest": D1, "signatures": [sign(D1)]}, 400,
         "INVALID_PARAMS", "already registered"),
    ]  # fmt: skip
    for body, want_status, code, text in refused:
        status, err = await post(body)
        assert (status, err["code"]) == (want_status, code), (body, err)
        assert text in err["message"], (text, err)
    # a download that stops half-way: a typed 4xx, resumable, nothing registered
    origin.cut_after(100_000)
    v3 = {"name": "tiny", "ref": f"{origin.url}/files/v3.gguf", "signatures": [sign(D3)]}
    status, err = await post(v3)
    assert status == 400 and "stopped at" in err["message"], err
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "llama-orch" / "models"
    assert not (cache / D3[:16]).exists()  # never a partial file under the final name
    origin.cut_after(None)
    listed = await (await run.http.get(api)).json()
    assert [m["id"] for m in listed["models"]] == [D1[:16]]
    status, entry = await post({**v3, "tags": ["next"]})
    assert status == 201 and (cache / D3[:16] / "v3.gguf").read_bytes() == V3
    assert origin.state.requests[-1][2] == "bytes=100000-"  # resumed, not restarted

    text = run.orch.metrics.render().decode()
    for reason in ("ok", "digest_mismatch", "bad_signature", "unsigned", "unlisted_key"):
        assert f'reason="{reason}"' in text and "catalog_verifications_total{" in text, reason
    # persisted: a new catalog on the same file sees both entries and their history
    again = Catalog(str(tmp_path / "catalog.sqlite3"))
    assert {e.id for e in again.list()} == {D1[:16], D3[:16]}
    assert again.get(D1[:16]).signatures[0].key_id == "release"


async def test_canary_promote_rollback_deprecate_retire(
    start_orchestrator, origin: ModelFileServer, tmp_path: Path
) -> None:
    """ORCH-3330..3333 on two mock pools, one per version of ``tiny``."""
    run = await start_orchestrator(_config(tmp_path, {"mode": "warn"}, queue_capacity=512))
    api = run.url + "/v1/catalog/models"
    for data, tag, state in ((V1, "stable", "active"), (V2, "next", "draft")):
        path = tmp_path / f"{tag}.gguf"
        path.write_bytes(data)
        resp = await run.http.post(
            api, json={"name": "tiny", "ref": str(path), "tags": [tag], "state": state}
        )
        assert resp.status == 201, await resp.text()
    i1, i2 = D1[:16], D2[:16]

    async def state(mid: str, **body: Any) -> tuple[int, dict[str, Any]]:
        resp = await run.http.post(f"{api}/{mid}/state", json=body)
        return resp.status, await resp.json()

    assert (await state(i2, state="canary"))[0] == 400  # a canary needs a weight
    status, body = await state(i2, state="canary", weight=0.2)
    assert status == 200 and body["model"]["state"] == "canary", body

    async def burst(n: int) -> dict[str, int]:
        ids = []
        for _ in range(n):
            resp = await run.submit(model_ref="tiny", max_tokens=2)
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["task_id"])
        split: dict[str, int] = {}
        for tid in ids:  # every accepted task ends with exactly one terminal event
            events = await run.events(tid)
            assert [e[1] for e in events if e[1] in ("end", "error")] == ["end"]
            pid = run.orch.get(tid).pool_id
            split[pid] = split.get(pid, 0) + 1
        return split

    split = await burst(200)
    assert 0.15 <= split["canary"] / 200 <= 0.25, split  # ORCH-3331: 20 % +- 5 %
    text = run.orch.metrics.render().decode()
    assert f'catalog_routed_total{{lifecycle="canary",model_id="{i2}"}} {split["canary"]}' in text
    assert f'catalog_routed_total{{lifecycle="active",model_id="{i1}"}} {split["stable"]}' in text
    # ORCH-3380: what ran, per version, from /metrics: the same split by outcome
    async with run.http.get(run.url + "/metrics") as r:
        scrape = await r.text()
    ran = {
        mid: _sample(scrape, "catalog_tasks_total", model_id=mid, lifecycle=lc, outcome="completed")
        for mid, lc in ((i1, "active"), (i2, "canary"))
    }
    assert ran == {i1: split["stable"], i2: split["canary"]}, ran
    assert 0.15 <= ran[i2] / sum(ran.values()) <= 0.25
    tokens = _sample(scrape, "catalog_tokens_out_total", model_id=i2, lifecycle="canary")
    assert tokens == 2 * split["canary"]  # max_tokens=2 each
    ttft = _sample(scrape, "catalog_latency_first_token_ms_count", model_id=i2, lifecycle="canary")
    assert ttft == split["canary"]

    promoted = await (await run.http.post(f"{api}/{i2}/promote")).json()
    assert {m["id"]: m["state"] for m in promoted["models"]} == {i2: "active", i1: "deprecated"}
    gone = await run.submit(model_ref="tiny:stable", max_tokens=2)
    err = await gone.json()
    assert gone.status == 410 and err["code"] == "MODEL_DEPRECATED", err
    assert f"use tiny:next ({i2})" in err["message"]
    # ORCH-3370: override runs the Deprecated version anyway, on the pool still serving it
    forced = await run.submit(model_ref="tiny:stable", max_tokens=2, override=True)
    assert forced.status == 202, await forced.text()
    assert forced.headers["Deprecation"].startswith("@") and "Sunset" not in forced.headers
    forced_id = (await forced.json())["task_id"]
    assert [e[1] for e in await run.events(forced_id) if e[1] in ("end", "error")] == ["end"]
    assert run.orch.get(forced_id).pool_id == "stable"
    text = run.orch.metrics.render().decode()
    assert f'catalog_routed_total{{lifecycle="deprecated",model_id="{i1}"}} 1' in text
    # ORCH-3365: every version's lifecycle, one-hot
    for mid, now in ((i1, "deprecated"), (i2, "active")):
        for lc in ("draft", "active", "canary", "deprecated", "retired"):
            value = "1.0" if lc == now else "0.0"
            assert f'catalog_model_state{{lifecycle="{lc}",model_id="{mid}"}} {value}' in text
    assert await burst(5) == {"canary": 5}  # the promoted version serves the name

    back = await (await run.http.post(f"{api}/{i2}/rollback")).json()
    assert {m["id"]: m["state"] for m in back["models"]} == {i2: "canary", i1: "active"}
    assert await burst(5) == {"stable": 5}  # rollback: all traffic on the old version

    status, body = await state(i1, state="active")  # ORCH-3330: not a transition
    assert status == 400 and "allowed next states" in body["message"]
    status, body = await state(i2, state="retired", drain_deadline_ms=1000)
    assert status == 200 and body["drained_pools"] == ["canary"], body
    assert run.orch.pools["canary"].draining and not run.orch.pools["stable"].draining
    status, body = await state(i2, state="active")
    assert status == 400 and "allowed next states: none" in body["message"]
    history = [(h.from_state, h.to_state) for h in run.orch.catalog.catalog.get(i2).history]
    assert history == [
        (None, "draft"), ("draft", "canary"), ("canary", "active"), ("active", "canary"),
        ("canary", "retired"),
    ]  # fmt: skip
    # ORCH-3334: a grace period serves with Deprecation/Sunset headers, then 410
    status, body = await state(i1, state="deprecated", grace_ms=60_000)
    assert status == 200 and body["model"]["grace_until_ms"] > 0
    warned = await run.submit(model_ref="tiny:stable", max_tokens=2)
    assert warned.status == 202, await warned.text()
    assert warned.headers["Deprecation"].startswith("@") and "GMT" in warned.headers["Sunset"]
    plain = await run.submit(max_tokens=2, pool_id="stable")
    assert "Deprecation" not in plain.headers
    assert (await state(i1, state="active"))[0] == 200
    assert (await state(i1, state="deprecated"))[0] == 200  # no grace
    gone = await run.submit(model_ref="tiny:stable", max_tokens=2)
    assert gone.status == 410 and "Deprecation" not in gone.headers
    # no Active version left: the name itself answers 410 (newest entry: retired)
    by_name = await run.submit(model_ref="tiny", max_tokens=2)
    assert (
        by_name.status == 410 and f"model tiny {i2} is retired" in (await by_name.json())["message"]
    )
    retired = await run.submit(model_ref="tiny:next", max_tokens=2, override=True)
    assert retired.status == 410, await retired.text()  # ORCH-3370: never a Retired one
    deleted = await run.http.delete(f"{api}/{i2}")
    assert deleted.status == 204
    assert (await run.http.delete(f"{api}/{i1}")).status == 400  # active: kept
    assert (await run.http.get(f"{api}/{i2}")).status == 404


def test_catalog_openapi_is_valid_and_matches_the_structs() -> None:
    """ORCH-3321: contracts/openapi/catalog.yaml is valid OpenAPI 3.1 and its schemas
    list exactly the fields of the wire structs."""
    import yaml
    from llama_orch.orchestratord import artifacts, catalog_api, catalog_service
    from llama_orch.orchestratord import catalog as cat_mod
    from openapi_spec_validator import validate

    doc = yaml.safe_load(
        (Path(__file__).resolve().parents[3] / "contracts/openapi/catalog.yaml").read_text()
    )
    validate(doc)
    schemas = doc["components"]["schemas"]
    for name, struct in [
        ("CatalogEntry", cat_mod.Entry),
        ("Provenance", cat_mod.Provenance),
        ("Transition", cat_mod.Transition),
        ("Signature", Signature),
        ("RegisterRequest", catalog_service.RegisterRequest),
        ("StateRequest", catalog_service.StateRequest),
        ("VerifyResult", catalog_service.VerifyResult),
        ("SwitchRequest", catalog_service.SwitchRequest),
        ("PoolSwitch", catalog_service.PoolSwitch),
        ("RegisterProgress", catalog_api.RegisterProgress),
        ("ArtifactRequest", artifacts.ArtifactRequest),
        ("Artifact", artifacts.Artifact),
    ]:
        fields = {f.encode_name for f in msgspec.structs.fields(struct)}
        assert set(schemas[name]["properties"]) == fields, name


async def test_artifacts_are_content_addressed_per_tenant_with_lineage(
    start_orchestrator, tenant_keys, tmp_path: Path
) -> None:
    """ORCH-3350..3352."""

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    auth, keys = tenant_keys("a", "b")
    cfg = _config(tmp_path, {"mode": "warn"})
    cfg = msgspec.structs.replace(
        cfg,
        auth=msgspec.convert(auth, type(cfg.auth)),
        catalog=msgspec.structs.replace(cfg.catalog, artifact_max_bytes=64),
    )
    run = await start_orchestrator(cfg)
    api = run.url + "/v1/artifacts"

    async def post(key: str, **body: Any) -> tuple[int, dict[str, Any]]:
        resp = await run.http.post(api, json=body, headers=bearer(keys[key]))
        return resp.status, await resp.json()

    status, plan = await post("a", content="step 1: think", tags={"kind": "plan"})
    digest = hashlib.sha256(b"step 1: think").hexdigest()
    assert status == 201 and plan["id"] == digest and plan["size"] == 13, plan
    status, out = await post(
        "a", content=base64.b64encode(b"\x00\xffout").decode(), encoding="base64",
        parents=[digest], media_type="application/octet-stream",
    )  # fmt: skip
    assert status == 201 and out["parents"] == [digest]
    status, again = await post("a", content="step 1: think", tags={"run": "7"})
    assert status == 200 and again["tags"] == {"kind": "plan", "run": "7"}
    got = await run.http.get(f"{api}/{out['id']}", headers=bearer(keys["a"]))
    doc = await got.json()
    assert got.status == 200 and base64.b64decode(doc["content"]) == b"\x00\xffout"
    assert doc["encoding"] == "base64"
    # another tenant: 404 like an unknown id, and it cannot use a's artifact as a parent
    other = await run.http.get(f"{api}/{digest}", headers=bearer(keys["b"]))
    assert other.status == 404
    status, err = await post("b", content="x", parents=[digest])
    assert status == 400 and "unknown parent" in err["message"]
    status, err = await post("a", content="y" * 65)
    assert (status, err["code"]) == (413, "REQUEST_TOO_LARGE")
    status, err = await post("a", content="%%%", encoding="base64")
    assert status == 400 and "base64" in err["message"]
    assert (await run.http.post(api, json={"content": "x"})).status == 401


def test_a_fetch_failure_at_load_is_retriable_not_untrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-3313: only a trust or digest finding is final (VerificationError); an
    origin that cannot be reached at load is a ProvisionError the pool retries."""
    import shutil

    from llama_orch.core.catalog_config import CatalogConfig
    from llama_orch.orchestratord.catalog_service import CatalogService, RegisterRequest
    from llama_orch.orchestratord.metrics import Metrics
    from llama_orch.pool_managerd.errors import ProvisionError, VerificationError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "v1.gguf").write_bytes(V1)
    svc = CatalogService(
        CatalogConfig(path=str(tmp_path / "c.sqlite3"), trust=TrustConfig(mode="warn")),
        Metrics(queue_depths=list),
    )
    with ModelFileServer() as origin:
        origin.add_file("v1.gguf", tmp_path / "v1.gguf")
        req = RegisterRequest(name="tiny", ref=f"{origin.url}/files/v1.gguf", tags=["stable"])
        svc.register(req, lambda _m: None)
        path, digest = svc.provide("tiny:stable", engine="mock", progress=lambda _m: None)
        assert digest == D1 and path.read_bytes() == V1
    shutil.rmtree(tmp_path / "cache" / "llama-orch" / "models" / D1[:16])
    with pytest.raises(ProvisionError) as info:
        svc.provide("tiny:stable", engine="mock", progress=lambda _m: None)
    assert not isinstance(info.value, VerificationError), info.value


async def test_registration_streams_progress_then_one_result(
    start_orchestrator, origin: ModelFileServer, tmp_path: Path
) -> None:
    """ORCH-3375: with Accept: text/event-stream, registration answers progress events
    (byte counts of the download) and one terminal event; a refusal is an `error`
    event with its status, and nothing is recorded."""
    from llama_orch.core.sse import SSEParser

    run = await start_orchestrator(_config(tmp_path, _trust()))
    api = run.url + "/v1/catalog/models"

    async def stream(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        headers = {"Accept": "text/event-stream"}
        async with run.http.post(api, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            parser = SSEParser()
            return [
                (m.event, msgspec.json.decode(m.data))
                for chunk in [await resp.read()]
                for m in parser.feed(chunk)
            ]

    v2 = f"{origin.url}/files/v2.gguf"
    events = await stream({"name": "tiny", "ref": v2, "signatures": [sign(D2)]})
    assert [e for e, _ in events][-1] == "registered" and events[-1][1]["digest"] == D2
    assert {e for e, _ in events[:-1]} == {"progress"}
    sized = [d for e, d in events if e == "progress" and d["done_bytes"] is not None]
    assert sized and sized[-1]["done_bytes"] == sized[-1]["total_bytes"] == len(V2), events
    assert all(d["message"] for e, d in events if e == "progress")

    tampered = {"name": "tiny", "ref": f"{origin.url}/files/tampered.gguf", "digest": D3}
    events = await stream(tampered)
    assert events[-1][0] == "error" and [e for e, _ in events].count("error") == 1
    assert (events[-1][1]["status"], events[-1][1]["code"]) == (403, "UNTRUSTED_ARTIFACT")
    events = await stream({"name": "tiny", "ref": "ftp:x/y.gguf"})
    assert (events[-1][0], events[-1][1]["status"]) == ("error", 400)
    # a malformed body is refused before any stream
    resp = await run.http.post(api, json={"name": "Bad"}, headers={"Accept": "text/event-stream"})
    assert resp.status == 400
    listed = await (await run.http.get(api)).json()
    assert [m["id"] for m in listed["models"]] == [D2[:16]]
