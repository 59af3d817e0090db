"""HTTPS through Hypercorn with a certificate made in the test (ORCH-8030).

trustme makes a throwaway CA and a server certificate for 127.0.0.1 (it wraps
``cryptography``), so the test needs no files and no network.
"""

from __future__ import annotations

import ssl

import aiohttp
import msgspec
import pytest
import trustme
from llama_orch.core.config import Config
from llama_orch.orchestratord.errors import StartupError
from llama_orch.orchestratord.serve import serve


def _tls_config(mock_config, certfile: str, keyfile: str) -> Config:
    cfg = mock_config(adapter_options={"token_delay_ms": 1})
    server = msgspec.structs.replace(cfg.server, certfile=certfile, keyfile=keyfile)
    return msgspec.structs.replace(cfg, server=server)


async def test_serves_https_with_a_generated_certificate(start_orchestrator, mock_config, tmp_path):
    """ORCH-8030: submit and stream over TLS; a client that does not trust the CA fails."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    run = await start_orchestrator(_tls_config(mock_config, str(certfile), str(keyfile)))
    https = run.url.replace("http://", "https://")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            https + "/v1/tasks", json={"prompt": "hi", "max_tokens": 3}, ssl=trusting
        ) as r:
            assert r.status == 202, await r.text()
            tid = (await r.json())["task_id"]
        async with http.get(f"{https}/v1/tasks/{tid}/stream", ssl=trusting) as r:
            body = await r.read()
        assert r.status == 200 and b"event: end" in body
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(https + "/v1/capabilities", ssl=ssl.create_default_context()):
                pass
        with pytest.raises(aiohttp.ClientError):  # plaintext HTTP is not served on this port
            async with http.get(run.url + "/v1/capabilities") as r:
                await r.read()


async def test_unusable_certificate_refuses_to_start(mock_config, tmp_path):
    """ORCH-8030: a missing or broken certificate stops startup with a StartupError."""
    (tmp_path / "bad.pem").write_text("not a certificate")
    cfg = _tls_config(mock_config, str(tmp_path / "bad.pem"), str(tmp_path / "bad.pem"))
    with pytest.raises(StartupError, match="TLS"):
        await serve(cfg)
