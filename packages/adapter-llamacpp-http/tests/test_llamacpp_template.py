"""Chat templates rendered in process (ORCH-5011, ORCH-5012).

A small fake llama-server (aiohttp.web on 127.0.0.1:0) counts its
``/apply-template`` calls; the real-engine test compares the adapter's rendering
with the engine's own on two models' templates.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import jinja2
import pytest
from aiohttp import web
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.core.errors import InvalidParams
from llama_orch.testing_engines.llamacpp import RunningLlamaServer

Messages = list[dict[str, str]]

CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml(messages: Messages) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


# The shapes the facades send (ORCH-9240, ORCH-9243) and plain conversations.
TOOL_SYSTEM = (
    "Be brief.\n\nYou can call these tools:\n"
    '{"name": "get_weather", "description": "Weather of a city", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}}}\n'
    'To call one, answer with one JSON object {"name": <tool>, "arguments": <its arguments>}.'
)
SHAPES: list[Messages] = [
    [{"role": "user", "content": "Hi?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
    [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three\n\n  four {{ x }} {% raw %} é 漢字"},
    ],
    [
        {"role": "system", "content": TOOL_SYSTEM},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"role": "user", "content": 'Result of get_weather:\n{"temp_c": 21}'},
    ],
]


@dataclass
class Engine:
    base_url: str
    applied: int = 0  # /apply-template calls

    def adapter(self) -> LlamaCppHttpAdapter:
        return LlamaCppHttpAdapter(AdapterTarget(replica_id="fake", base_url=self.base_url))


@pytest.fixture
async def engine() -> AsyncIterator[Callable[..., Awaitable[Engine]]]:
    runners: list[web.AppRunner] = []

    async def start(template: str = CHATML, *, differ: bool = False) -> Engine:
        app = web.Application()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        eng = Engine(f"http://127.0.0.1:{sock.getsockname()[1]}")

        async def props(_: web.Request) -> web.Response:
            return web.json_response(
                {"total_slots": 1, "chat_template": template, "bos_token": "<s>",
                 "eos_token": "</s>", "default_generation_settings": {"n_ctx": 512}}
            )  # fmt: skip

        async def apply(request: web.Request) -> web.Response:
            eng.applied += 1
            messages = (await request.json())["messages"]
            if any(m["role"] == "tool" for m in messages):
                err = {"code": 400, "message": "no tool role", "type": "invalid_request_error"}
                return web.json_response({"error": err}, status=400)
            prompt = chatml(messages)
            return web.json_response({"prompt": ("[engine] " if differ else "") + prompt})

        app.router.add_get("/props", props)
        app.router.add_post("/apply-template", apply)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        await web.SockSite(runner, sock).start()
        return eng

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_after_the_probes_chats_render_without_the_engine(engine) -> None:
    """ORCH-5011: the template the engine reports is rendered in process once the
    probes agreed; the engine sees no /apply-template call per request."""
    eng = await engine()
    adapter = eng.adapter()
    try:
        assert await adapter.apply_chat_template(SHAPES[0]) == chatml(SHAPES[0])
        probes = eng.applied
        assert probes >= 3  # the probe conversations, asked once
        for shape in SHAPES * 3:
            assert await adapter.apply_chat_template(shape) == chatml(shape)
        assert eng.applied == probes
        assert adapter.local_renders >= len(SHAPES) * 3
        # a conversation ending with an assistant turn is the engine's to continue
        prefill = [*SHAPES[0], {"role": "assistant", "content": "Hel"}]
        assert await adapter.apply_chat_template(prefill) == chatml(prefill)
        assert eng.applied == probes + 1
        # a rendering that raises is the engine's to answer (its 400)
        with pytest.raises(InvalidParams, match="no tool role"):
            await adapter.apply_chat_template([{"role": "tool", "content": "x"}])
        assert eng.applied == probes + 2
    finally:
        await adapter.aclose()


@pytest.mark.parametrize("template", ["", "{% for m in messages %}{{ m.content }", CHATML])
async def test_the_engine_renders_when_the_probes_disagree_or_there_is_no_template(
    engine, template: str
) -> None:
    """ORCH-5011: no template, one that does not compile, or a rendering that differs
    from the engine's: every chat goes to /apply-template, answered as before."""
    eng = await engine(template, differ=template == CHATML)
    adapter = eng.adapter()
    prefix = "[engine] " if template == CHATML else ""
    try:
        for shape in SHAPES:
            assert await adapter.apply_chat_template(shape) == prefix + chatml(shape)
        before = eng.applied
        assert await adapter.apply_chat_template(SHAPES[1]) == prefix + chatml(SHAPES[1])
        assert eng.applied == before + 1
        assert adapter.local_renders == 0
    finally:
        await adapter.aclose()


@pytest.mark.real_engine
async def test_rendering_equals_the_engines_on_real_templates(
    smollm2_server: RunningLlamaServer, start_llama_server, qwen_model
) -> None:
    """ORCH-5012: Qwen2.5-Coder's template (tool logic, a default system text) and
    SmolLM2's, every facade shape: the adapter's rendering is the engine's, done in
    process after the probes."""
    qwen = start_llama_server(qwen_model, slots=1, ctx_per_slot=256, threads=1)
    async with aiohttp.ClientSession() as http:
        for server in (smollm2_server, qwen):
            adapter = LlamaCppHttpAdapter(
                AdapterTarget(replica_id="real", base_url=server.base_url)
            )
            try:
                for shape in SHAPES:
                    url = server.base_url + "/apply-template"
                    async with http.post(url, json={"messages": shape}) as resp:
                        assert resp.status == 200
                        expected = (await resp.json())["prompt"]
                    assert await adapter.apply_chat_template(shape) == expected
                assert adapter.local_renders >= len(SHAPES) - 1  # all but the first
                # llama-server continues a last assistant turn: the engine renders it
                prefill = [*SHAPES[1], {"role": "assistant", "content": "Hel"}]
                async with http.post(url, json={"messages": prefill}) as resp:
                    expected = (await resp.json())["prompt"]
                assert expected.endswith("Hel")
                assert await adapter.apply_chat_template(prefill) == expected
            finally:
                await adapter.aclose()


GLOBALS_TEMPLATE = (
    "{% set ns = namespace(n=0) %}{{ bos_token }}"
    "{% for message in messages %}{% set ns.n = ns.n + 1 %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
    "{{ ns.n }}:{{ message['role'] }}={{ message['content'] | tojson }}"
    "{% for i in range(2) %}.{% endfor %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}>{% endif %}{{ strftime_now('%Y') | length }}"
)


@pytest.mark.parametrize("source", [CHATML, GLOBALS_TEMPLATE])
def test_render_is_jinjas_render(source: str) -> None:
    """ORCH-2819: the prompt from the merged globals is, to the character, what Jinja's
    own ``Template.render`` gives with the same variables; a template's refusal is
    raised as before."""
    from llama_orch.adapters.llamacpp_http._template import PROBES, compile_template

    ct = compile_template(source, "<s>", "</s>")
    assert ct is not None
    for messages in [*SHAPES, *PROBES]:
        want = ct._template.render(
            messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
        )
        assert ct.render(messages) == want
    with pytest.raises(jinja2.TemplateError, match="no tool role"):
        ct.render([{"role": "tool", "content": "x"}])
