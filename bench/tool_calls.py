"""How often a model's tool calls come out right through the OpenAI facade's tool
plan (issue #15, ORCH-9240..9244).

Sends what the facade sends for a chat request with two tools (its own
instructions through the model's chat template, and for ``required`` its
JSON-schema constraint) straight to a running ``llama-server`` and reads the
answers as the facade does (``ToolPlan.parse``), ``--runs`` seeds per prompt:
two prompts that need a tool (weather, addition) and two that do not (a
greeting, a haiku). Prints one line per mode and prompt: the right outcome
(the expected call, or text) out of the runs, and what came instead.

    llama-server -m MODEL.gguf --port 8090 -np 1 -t 2 &
    uv run bench/tool_calls.py --url http://127.0.0.1:8090 --runs 8
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections import Counter
from typing import Any

from llama_orch.core.api import ChatMessage
from llama_orch.frontends.openai._tools import openai_plan

TOOLS: list[Any] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
]  # fmt: skip
PROMPTS = {
    "weather": ("What is the weather in Paris?", "get_weather"),
    "add": ("What is 17 plus 25?", "add"),
    "hello": ("Say hello to me in French.", None),
    "haiku": ("Write a haiku about the sea.", None),
}


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=900) as resp:
        return json.load(resp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="a llama-server base URL")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--modes", default="auto,required")
    ap.add_argument("--temperature", type=float, default=1.0, help="the facade's default")
    ap.add_argument("--max-tokens", type=int, default=40)
    args = ap.parse_args()
    for mode in args.modes.split(","):
        plan = openai_plan(TOOLS, mode)
        assert plan is not None
        for name, (text, want) in PROMPTS.items():
            if plan.constrained and want is None:
                continue  # a constrained answer is a call by construction
            msgs = plan.with_instructions([ChatMessage(role="user", content=text)])
            prompt = _post(
                args.url + "/apply-template",
                {"messages": [{"role": m.role, "content": m.content} for m in msgs]},
            )["prompt"]
            body: dict[str, Any] = {
                "prompt": prompt, "n_predict": args.max_tokens,
                "temperature": args.temperature,
            }  # fmt: skip
            if plan.constrained:
                body["json_schema"] = plan.schema()
            got: Counter[str] = Counter()
            start = time.monotonic()
            for seed in range(args.runs):
                out = _post(args.url + "/completion", {**body, "seed": seed})["content"]
                call = plan.parse(out)
                if call is not None:
                    got[f"call:{call.name}"] += 1
                else:
                    got["text" if not out.lstrip().startswith(("{", "`")) else "not-a-call"] += 1
            right = got[f"call:{want}"] if want else got["text"]
            per_run = (time.monotonic() - start) / args.runs
            print(
                f"mode={mode} prompt={name} want={want or 'text'} right={right}/{args.runs}"
                f" {dict(got)} {per_run:.1f} s/run",
                flush=True,
            )


if __name__ == "__main__":
    main()
