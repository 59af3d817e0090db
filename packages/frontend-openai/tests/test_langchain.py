"""LangChain's ``ChatOpenAI`` (``langchain-openai``) against the facade, unmodified
(mock engine; test_real_llamacpp.py repeats it on llama-server)."""

from __future__ import annotations

import asyncio

from langchain_openai import ChatOpenAI


async def test_chat_openai_invoke_and_stream(start_daemon, config, key):
    """ORCH-9120, ORCH-9121 through LangChain: invoke and stream, sync and async."""
    d = await start_daemon(config())
    llm = ChatOpenAI(base_url=d.base, api_key=key, model="mock", max_tokens=6, temperature=0)  # type: ignore[arg-type]
    try:
        await _invoke_and_stream(llm, d)
    finally:  # its pooled connections, else a later test sees them as unraisable warnings
        llm.root_client.close()
        await llm.root_async_client.close()


async def _invoke_and_stream(llm: ChatOpenAI, d) -> None:
    answer = await asyncio.to_thread(llm.invoke, "Say hi.")
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 6
    pieces = await asyncio.to_thread(lambda: [str(c.content) for c in llm.stream("Say hi.")])
    assert "".join(pieces).strip()
    async_pieces = [str(c.content) async for c in llm.astream("Say hi.")]
    assert "".join(async_pieces).strip()
    assert all(r.api == "openai" for r in (d.orch.tasks.get(t) for t in d.orch.tasks._tasks) if r)
    assert len(d.orch.tasks) == 3
