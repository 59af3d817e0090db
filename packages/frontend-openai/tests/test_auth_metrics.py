"""The facades' refused keys in auth_refused_total, by API (ORCH-8017)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADMIN_KEY, TENANT_KEY, mock_config

UNKNOWN = "llo_not-a-key-" + "z" * 40


def _refusals(text: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["reason"], s.labels["api"], s.labels["tenant"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "auth_refused_total"
    }


async def test_facade_refusals_are_counted_by_api(start_daemon):
    """ORCH-8017: a missing or unknown key (401) and an admin key (403) on the OpenAI
    routes count under api=openai, on the Anthropic route (`x-api-key`) under
    api=anthropic, tenant `none`; accepted facade calls count nothing."""
    d = await start_daemon(mock_config())
    chat = {"model": "mock-model", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}

    async with aiohttp.ClientSession() as http:

        async def post(path: str, headers: dict[str, str]) -> int:
            async with http.post(d.base + path, json=chat, headers=headers) as r:
                await r.read()
                return r.status

        async def scrape() -> dict[tuple[str, str, str], float]:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            async with http.get(d.url + "/metrics", headers=headers) as r:
                assert r.status == 200
                return _refusals(await r.text())

        tenant = {"Authorization": f"Bearer {TENANT_KEY}"}
        assert await post("/chat/completions", tenant) == 200
        assert await post("/messages", {"x-api-key": TENANT_KEY}) == 200
        async with http.get(d.base + "/models", headers=tenant) as r:
            assert r.status == 200
        assert await scrape() == {}
        assert await post("/chat/completions", {}) == 401
        async with http.get(
            d.base + "/models", headers={"Authorization": f"Bearer {UNKNOWN}"}
        ) as r:
            assert r.status == 401
        assert await post("/chat/completions", {"Authorization": f"Bearer {ADMIN_KEY}"}) == 403
        assert await post("/messages", {"x-api-key": UNKNOWN}) == 401
        assert await post("/messages", {"x-api-key": ADMIN_KEY}) == 403
        assert await scrape() == {
            ("unauthenticated", "openai", "none"): 2,
            ("forbidden", "openai", "none"): 1,
            ("unauthenticated", "anthropic", "none"): 1,
            ("forbidden", "anthropic", "none"): 1,
        }
