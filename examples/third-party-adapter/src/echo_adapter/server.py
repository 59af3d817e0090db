"""The ``echo`` engine: a tiny HTTP server that repeats the prompt's words.

A stand-in for a real engine so the example needs nothing installed: each
generation streams one word every ``delay_ms`` as Server-Sent Events. The
words of the prompt are repeated until ``max_tokens``; a prompt that ends with
``.`` is echoed once and then ends with end-of-sequence. A client that
disconnects frees its slot at the next word.

Wire (what :class:`echo_adapter.EchoAdapter` maps):

* ``GET /health`` 200; ``GET /info`` version, model, digest, slots, ctx;
* ``POST /tokenize`` ``{"text"}`` → ``{"tokens": [...]}``;
* ``GET /metrics`` Prometheus text (``echo_requests_running``, ``echo_*_total``);
* ``POST /generate`` ``{"prompt", "max_tokens", "stop"}`` → ``data: {"text"}`` per
  word, then ``data: {"done": true, "reason", "tokens", "prompt_tokens"}``;
  400 for a prompt that is empty or over ``ctx``, 429 when every slot is busy.

Run it: ``python -m echo_adapter.server --port 8090``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

__all__ = ["VERSION", "EchoEngine", "running"]

VERSION = "echo-1.0"


class _Generate(msgspec.Struct):
    prompt: str
    max_tokens: int
    stop: list[str] = []


class EchoEngine:
    def __init__(self, *, slots: int = 4, ctx: int = 2048, delay_ms: float = 2.0) -> None:
        self.slots, self.ctx, self.delay_s = slots, ctx, delay_ms / 1000
        self.running = 0
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/info", self.info)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/generate", self.generate)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def info(self, request: web.Request) -> web.Response:
        digest = "sha256:" + hashlib.sha256(VERSION.encode()).hexdigest()
        return web.json_response(
            {"version": VERSION, "model": "echo", "digest": digest, "slots": self.slots,
             "ctx": self.ctx}
        )  # fmt: skip

    async def tokenize(self, request: web.Request) -> web.Response:
        text = msgspec.json.decode(await request.read(), type=dict[str, str])["text"]
        return web.json_response({"tokens": [len(word) for word in text.split()]})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = [
            f"echo_requests_running {self.running}",
            f"echo_prompt_tokens_total {self.prompt_tokens_total}",
            f"echo_generated_tokens_total {self.generated_tokens_total}",
        ]
        return web.Response(text="\n".join(lines) + "\n")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            req = msgspec.json.decode(await request.read(), type=_Generate)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        words = req.prompt.split()
        if not words or len(words) >= self.ctx:
            error = f"prompt of {len(words)} tokens does not fit the context of {self.ctx}"
            return web.json_response({"error": error}, status=400)
        if self.running >= self.slots:
            return web.json_response({"error": "every slot is busy"}, status=429)
        self.running += 1
        self.prompt_tokens_total += len(words)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            once = req.prompt.rstrip().endswith(".")
            text, n, reason = "", 0, "length"
            while n < req.max_tokens:
                if once and n == len(words):
                    reason = "eos"
                    break
                await asyncio.sleep(self.delay_s)  # the engine's decode step
                token = " " + words[n % len(words)]
                n += 1
                self.generated_tokens_total += 1
                hit = [i for s in req.stop if s and (i := (text + token).find(s)) >= 0]
                if hit:
                    cut = (text + token)[: min(hit)][len(text) :]
                    if cut:
                        await resp.write(b"data: " + msgspec.json.encode({"text": cut}) + b"\n\n")
                    reason = "stop"
                    break
                text += token
                # A gone client fails this write: the generation ends, its slot frees.
                await resp.write(b"data: " + msgspec.json.encode({"text": token}) + b"\n\n")
            done = {"done": True, "reason": reason, "tokens": n, "prompt_tokens": len(words)}
            await resp.write(b"data: " + msgspec.json.encode(done) + b"\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.running -= 1
        return resp


@contextlib.asynccontextmanager
async def running(engine: EchoEngine, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``engine`` in this event loop; yields its base URL (port 0: a free one)."""
    runner = web.AppRunner(engine.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    engine = EchoEngine(slots=args.slots, ctx=args.ctx, delay_ms=args.delay_ms)
    web.run_app(engine.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
