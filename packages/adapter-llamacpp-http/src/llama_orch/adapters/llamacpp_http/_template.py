"""Chat templates rendered in process, as llama-server renders them (ORCH-5011).

llama-server reports its model's Jinja chat template in ``GET /props`` and
renders it on ``POST /apply-template``. Asking it for every chat request cost a
round trip before admission (22 % of the OpenAI facade's CPU in the profile,
all of it on the time to first token). The template is a pure function of the
messages, so it is rendered here with Jinja2's sandbox under the engine's
settings (HF-style: ``trim_blocks``, ``lstrip_blocks``, ``raise_exception``,
``strftime_now``, a ``tojson`` that does not HTML-escape), compiled once per
distinct template.

Jinja2 is not the engine's renderer (llama.cpp has its own), so a template is
trusted only for an engine whose own answers to :data:`PROBES` it reproduced;
the adapter checks that once per engine process and otherwise keeps asking the
engine.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["PROBES", "ChatTemplate", "compile_template"]

Messages = list[dict[str, str]]

# Conversations of the roles and shapes admission sends (ORCH-9243 turns tool calls
# and results into plain system/user/assistant turns): with and without a system
# message, one and several turns, an empty turn, multi-line and non-ASCII text, and
# text that looks like template syntax. None ends with an assistant turn: llama-server
# continues such a turn (the template rendered without it, then its text appended),
# so those conversations are always the engine's to render (ChatTemplate.renders).
PROBES: tuple[Messages, ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "S\n\nline"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c  \n {{ x }} {% raw %} é 漢字 😀"},
    ],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": '{"name": "f"}'},
     {"role": "user", "content": ""}],
)  # fmt: skip


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    return json.dumps(
        value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


_env = _environment()


class ChatTemplate:
    """One engine's template with its special tokens."""

    __slots__ = ("_globals", "_template", "bos_token", "eos_token")

    def __init__(self, template: jinja2.Template, bos_token: str, eos_token: str) -> None:
        self._template = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        # ORCH-2819: the globals merged once, with the special tokens; Jinja's
        # ``render`` merges its globals (a ChainMap) into a new dict twice per call
        self._globals: dict[str, Any] = {
            **template.globals,
            "add_generation_prompt": True,
            "bos_token": bos_token,
            "eos_token": eos_token,
        }

    @staticmethod
    def renders(messages: Messages) -> bool:
        """Whether the conversation is one this renderer may answer: not empty, and
        not ending with an assistant turn for the engine to continue."""
        return bool(messages) and messages[-1].get("role") != "assistant"

    def render(self, messages: Messages) -> str:
        """The prompt; raises :class:`jinja2.TemplateError` (or a template's own
        error) when the template refuses the messages. What ``Template.render`` does,
        with a context built from the merged globals (ORCH-2819)."""
        t = self._template
        env = t.environment
        ctx = env.context_class(env, {**self._globals, "messages": messages}, t.name, t.blocks)
        try:
            return env.concat(t.root_render_func(ctx))
        except Exception:
            env.handle_exception()


@functools.lru_cache(maxsize=32)
def _compiled(source: str) -> jinja2.Template:
    return _env.from_string(source)


def compile_template(source: str, bos_token: str, eos_token: str) -> ChatTemplate | None:
    """The template, compiled once per process for every adapter reporting it;
    ``None`` for no template or one Jinja2 cannot compile."""
    if not source:
        return None
    try:
        return ChatTemplate(_compiled(source), bos_token, eos_token)
    except jinja2.TemplateError:
        return None
