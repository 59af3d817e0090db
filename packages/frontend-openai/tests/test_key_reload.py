"""The facades check keys against the set a SIGHUP reload put in place (ORCH-8009)."""

from __future__ import annotations

import aiohttp
import msgspec
import yaml
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.main import _reload

from .conftest import mock_config

KEYS = {name: f"llo_test-rotate-{name}-{'r' * 36}" for name in ("b", "c")}


def _entry(name: str) -> dict[str, str]:
    return {"id": f"key-{name}", "role": "tenant", "tenant": name, "hash": hash_key(KEYS[name])}


async def test_the_facades_use_the_reloaded_keys(start_daemon, tmp_path):
    """ORCH-8009: the OpenAI routes' Bearer key and the Anthropic route's `x-api-key`
    are checked against the keys file as a reload read it (b rotated out, c in)."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([_entry("b")]))
    cfg = msgspec.to_builtins(mock_config())
    cfg["auth"]["keys_file"] = str(keys_file)
    d = await start_daemon(msgspec.convert(cfg, type(mock_config())))
    path = tmp_path / "orch.json"
    path.write_bytes(msgspec.json.encode(msgspec.to_builtins(d.orch.config)))

    async with aiohttp.ClientSession() as http:

        async def chat(name: str) -> int:
            body = {"model": "mock-model", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            headers = {"Authorization": f"Bearer {KEYS[name]}"}
            async with http.post(d.base + "/chat/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status

        async def message(name: str) -> int:
            body = {"model": "mock-model", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            async with http.post(
                d.base + "/messages", json=body, headers={"x-api-key": KEYS[name]}
            ) as r:
                await r.read()
                return r.status

        assert [await chat("b"), await message("b"), await chat("c"), await message("c")] == [
            200, 200, 401, 401,
        ]  # fmt: skip
        keys_file.write_text(yaml.safe_dump([_entry("c")]))
        _reload([d.orch], str(path))
        assert [await chat("b"), await message("b"), await chat("c"), await message("c")] == [
            401, 401, 200, 200,
        ]  # fmt: skip
