"""A fast fake inference engine for benchmarks: the model is never the bottleneck.

Speaks two wire formats over one aiohttp server:

* llama.cpp ``llama-server`` native API (what ``llamacpp-http`` calls):
  ``GET /health``, ``GET /props``, ``POST /tokenize``, ``POST /apply-template``, ``GET /metrics``,
  ``POST /completion`` (SSE ``data: {...}`` chunks, no ``[DONE]``, a final
  chunk with ``"stop":true``, ``stop_type`` and the counters);
* OpenAI: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (SSE
  chunks then ``data: [DONE]``), ``GET /v1/models``.

Every token is distinct (`` t0``, `` t1``, ...), so proxies that refuse
repeated chunks (LiteLLM's ``REPEATED_STREAMING_CHUNK_LIMIT``) stay happy.
``--token-delay-ms`` sleeps before each token (the first one too, as a model's
prefill would); 0 writes the whole stream without sleeping.

Run: ``python bench/fake_engine.py --port 18001 --token-delay-ms 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

try:  # msgspec is in the workspace venv; plain json works too
    import msgspec

    _loads = msgspec.json.decode
except ImportError:  # pragma: no cover
    _loads = json.loads

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class FakeEngine:
    def __init__(self, *, delay_ms: float, tokens: int, slots: int, n_ctx: int, model: str):
        self.delay = delay_ms / 1000.0
        self.default_tokens = tokens
        self.slots = slots
        self.n_ctx = n_ctx
        self.model = model
        self.prompt_tokens_total = 0
        self.tokens_predicted_total = 0
        self.processing = 0
        self.requests_total = 0

    # -- helpers ----------------------------------------------------------
    @staticmethod
    def _count(prompt: object) -> int:
        if isinstance(prompt, str):
            return len(prompt.split()) + 1  # + BOS
        if isinstance(prompt, list):
            return len(prompt) + 1
        return 1

    async def _body(self, request: web.Request) -> dict:
        raw = await request.read()
        try:
            body = _loads(raw) if raw else {}
        except Exception as exc:
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": {"code": 400, "message": str(exc), "type": "invalid_request_error"}}
                ),
                content_type="application/json",
            ) from exc
        return body if isinstance(body, dict) else {}

    def _n(self, body: dict, *names: str) -> int:
        for name in names:
            v = body.get(name)
            if isinstance(v, int) and v >= 0:
                return v
        return self.default_tokens

    async def _stream(self, request: web.Request, chunks, final: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        delay = self.delay
        self.processing += 1
        self.requests_total += 1
        try:
            for chunk in chunks:
                if delay:
                    await asyncio.sleep(delay)
                await resp.write(chunk)
                self.tokens_predicted_total += 1
            await resp.write(final)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away (a cancel): stop generating
        finally:
            self.processing -= 1
        return resp

    # -- llama.cpp native -------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "total_slots": self.slots,
                "default_generation_settings": {"n_ctx": self.n_ctx, "params": {}},
                "model_path": f"/fake/{self.model}.gguf",
                "model_alias": self.model,
                "build_info": "b0-fake",
                # as llama-server does: the template /apply-template renders, and its
                # special tokens (the llamacpp-http adapter renders it itself, ORCH-5011)
                "chat_template": CHATML_TEMPLATE,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "modalities": {"vision": False, "audio": False},
            }
        )

    async def apply_template(self, request: web.Request) -> web.Response:
        """llama-server's ``/apply-template``: chat messages to one ChatML prompt."""
        body = await self._body(request)
        turns = "".join(
            f"<|im_start|>{m.get('role', '')}\n{m.get('content', '')}<|im_end|>\n"
            for m in body.get("messages") or []
            if isinstance(m, dict)
        )
        return web.json_response({"prompt": turns + "<|im_start|>assistant\n"})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        n = self._count(body.get("content", ""))
        return web.json_response({"tokens": list(range(1, n + 1))})

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE llamacpp:prompt_tokens_total counter\n"
            f"llamacpp:prompt_tokens_total {self.prompt_tokens_total}\n"
            "# TYPE llamacpp:tokens_predicted_total counter\n"
            f"llamacpp:tokens_predicted_total {self.tokens_predicted_total}\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            f"llamacpp:requests_processing {self.processing}\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            "llamacpp:requests_deferred 0\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        n = self._n(body, "n_predict", "max_tokens")
        p = self._count(body.get("prompt", ""))
        self.prompt_tokens_total += p
        chunks = (
            b'data: {"index":0,"content":" t%d","tokens":[%d],"stop":false,"id_slot":0,'
            b'"tokens_predicted":%d,"tokens_evaluated":%d}\n\n' % (i, 1000 + i, i + 1, p)
            for i in range(n)
        )
        final = (
            b'data: {"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,'
            b'"model":"%s","tokens_predicted":%d,"tokens_evaluated":%d,'
            b'"has_new_line":false,"truncated":false,"stop_type":"limit",'
            b'"stopping_word":"","tokens_cached":%d,"timings":{}}\n\n'
            % (self.model.encode(), n, p, p + n)
        )
        if not body.get("stream", False):
            return web.json_response(
                {
                    "content": "".join(f" t{i}" for i in range(n)),
                    "stop": True,
                    "tokens_predicted": n,
                    "tokens_evaluated": p,
                    "stop_type": "limit",
                }
            )
        return await self._stream(request, chunks, final)

    # -- OpenAI -----------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def v1_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        n = self._n(body, "max_tokens")
        p = self._count(body.get("prompt", ""))
        self.prompt_tokens_total += p
        created = int(time.time())
        head = b'data: {"id":"cmpl-fake","object":"text_completion","created":%d,"model":"%s",' % (
            created,
            str(body.get("model", self.model)).encode(),
        )
        if not body.get("stream", False):
            return web.json_response(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": created,
                    "model": body.get("model", self.model),
                    "choices": [
                        {
                            "index": 0,
                            "text": "".join(f" t{i}" for i in range(n)),
                            "logprobs": None,
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n},
                }
            )
        chunks = (
            head
            + b'"choices":[{"index":0,"text":" t%d","logprobs":null,"finish_reason":null}]}\n\n' % i
            for i in range(n)
        )
        final = (
            head + b'"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length"}]}'
            b"\n\ndata: [DONE]\n\n"
        )
        return await self._stream(request, chunks, final)

    async def v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        n = self._n(body, "max_tokens", "max_completion_tokens")
        msgs = body.get("messages") or []
        p = sum(self._count(m.get("content", "")) for m in msgs if isinstance(m, dict))
        self.prompt_tokens_total += p
        created = int(time.time())
        head = (
            b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":%d,'
            b'"model":"%s",' % (created, str(body.get("model", self.model)).encode())
        )
        if not body.get("stream", False):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": body.get("model", self.model),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "message": {
                                "role": "assistant",
                                "content": "".join(f" t{i}" for i in range(n)),
                            },
                        }
                    ],
                    "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n},
                }
            )
        chunks = (
            head
            + (
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":" t%d"},'
                b'"finish_reason":null}]}\n\n' % i
                if i == 0
                else b'"choices":[{"index":0,"delta":{"content":" t%d"},"finish_reason":null}]}\n\n'
                % i
            )
            for i in range(n)
        )
        final = (
            head + b'"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
            b"data: [DONE]\n\n"
        )
        return await self._stream(request, chunks, final)


def build_app(engine: FakeEngine) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes(
        [
            web.get("/health", engine.health),
            web.get("/v1/health", engine.health),
            web.get("/props", engine.props),
            web.post("/tokenize", engine.tokenize),
            web.post("/apply-template", engine.apply_template),
            web.get("/metrics", engine.metrics),
            web.post("/completion", engine.completion),
            web.post("/completions", engine.completion),
            web.get("/v1/models", engine.models),
            web.post("/v1/completions", engine.v1_completions),
            web.post("/v1/chat/completions", engine.v1_chat),
        ]
    )
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18001)
    ap.add_argument("--token-delay-ms", type=float, default=5.0)
    ap.add_argument("--tokens", type=int, default=32, help="when the request sets no limit")
    ap.add_argument("--slots", type=int, default=512, help="total_slots reported by /props")
    ap.add_argument("--n-ctx", type=int, default=8192, help="per-slot context in /props")
    ap.add_argument("--model", default="fake-model")
    args = ap.parse_args(argv)
    engine = FakeEngine(
        delay_ms=args.token_delay_ms,
        tokens=args.tokens,
        slots=args.slots,
        n_ctx=args.n_ctx,
        model=args.model,
    )
    web.run_app(
        build_app(engine),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
