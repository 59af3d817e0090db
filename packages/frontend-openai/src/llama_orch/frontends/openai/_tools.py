"""Tool calls on any engine that can hold its output to a JSON schema
(ORCH-9240..ORCH-9246).

Models and chat templates disagree on how tools reach the prompt and how a
call comes back (Qwen's template answers a fenced block through llama-server,
SmolLM2's ignores tools), so the facade does not rely on them: it describes
the tools in a system message of its own, renders earlier calls and their
results as plain turns through the model's chat template, and reads a call as
one JSON object ``{"name": <tool>, "arguments": <its parameters>}``.

- ``tool_choice`` ``required`` (Anthropic ``any``) or a named function: the
  engine's constrained decoding (``GenerateRequest.json_schema``) holds the
  output to exactly such an object, so the answer is a valid call by
  construction, whatever the model.
- ``auto``: the model answers freely; the answer is a call when all of it is
  such an object naming a declared tool (a Markdown code fence around it is
  allowed), else text. How often a model decides well is the model's
  (measured in the package README).
- ``none``: the tools are not described; history is still rendered.

Every active mode needs ``Capability.JSON_SCHEMA`` (ORCH-9242): a pool whose
engine cannot constrain its output gets a 400 naming ``tools``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llama_orch.core.api import ChatMessage as OrchMessage

from ._common import ApiError

__all__ = [
    "Tool",
    "ToolCall",
    "ToolPlan",
    "anthropic_plan",
    "call_text",
    "openai_plan",
    "responses_plan",
]

_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.S)
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The tools of one request and what ``tool_choice`` asks of the answer."""

    tools: tuple[Tool, ...]
    mode: str  # "auto" | "required" | "none"
    forced: str | None = None  # a named function: that one and no other

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    @property
    def constrained(self) -> bool:
        """The engine holds the output to a call (ORCH-9241)."""
        return self.active and (self.mode == "required" or self.forced is not None)

    def _callable(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if self.forced in (None, t.name))

    def schema(self) -> dict[str, Any]:
        """The JSON schema of a call to one of the callable tools."""
        alts = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self._callable()
        ]
        return alts[0] if len(alts) == 1 else {"anyOf": alts}

    def instructions(self) -> str:
        """The system text that describes the tools to the model (ORCH-9240)."""
        lines = [
            json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters})
            for t in self.tools
        ]
        how = (
            'To call a function, answer with only a JSON object {"name": <function name>,'
            ' "arguments": <its arguments>}.'
        )
        if self.forced is not None:
            tail = f" Call the function {self.forced} now."
        elif self.mode == "required":
            tail = " Call one of them now."
        else:
            tail = " If no function fits the request, answer the user in plain text."
        return "You can call these functions:\n" + "\n".join(lines) + "\n" + how + tail

    def parse(self, text: str) -> ToolCall | None:
        """The call ``text`` makes, or ``None`` when it is an answer in text."""
        body = text.strip()
        if (fenced := _FENCE.match(body)) is not None:
            body = fenced.group(1)
        if not body.startswith("{"):
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        names = {t.name for t in self._callable()}
        if not isinstance(doc, dict) or doc.get("name") not in names:
            return None
        args = doc.get("arguments", {})
        return ToolCall(doc["name"], args) if isinstance(args, dict) else None

    def undecided(self, text: str) -> bool:
        """While streaming in ``auto`` mode: can ``text`` still become a call?"""
        head = text.lstrip()
        return head == "" or head.startswith(("{", "`"))

    def with_instructions(self, messages: list[OrchMessage]) -> list[OrchMessage]:
        if not self.active:
            return messages
        text = self.instructions()
        if messages and messages[0].role == "system":
            first = OrchMessage(role="system", content=messages[0].content + "\n\n" + text)
            return [first, *messages[1:]]
        return [OrchMessage(role="system", content=text), *messages]


def call_text(name: str, arguments: Any) -> str:
    """An earlier call as the model is asked to write one (ORCH-9243)."""
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    return json.dumps({"name": name, "arguments": arguments})


def _tool(name: Any, description: Any, parameters: Any, where: str) -> Tool:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ApiError(
            400, "a tool name must be 1-64 letters, digits, '_' or '-'",
            param=f"{where}.name", code="invalid_value",
        )  # fmt: skip
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ApiError(
            400, "tool parameters must be a JSON schema object", param=f"{where}.parameters",
            code="invalid_value",
        )  # fmt: skip
    return Tool(name, description if isinstance(description, str) else "", parameters)


def _forced(name: Any, tools: tuple[Tool, ...], param: str) -> str:
    if name not in {t.name for t in tools}:
        raise ApiError(
            400, f"`{param}` names {name!r}, which is not one of `tools`", param=param,
            code="invalid_value",
        )  # fmt: skip
    return str(name)


def openai_plan(tools: list[Any] | None, tool_choice: Any) -> ToolPlan | None:
    """ORCH-9240: OpenAI's ``tools`` / ``tool_choice``; ``None`` without tools."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ApiError(
                400, "`tool_choice` needs `tools`", param="tool_choice", code="invalid_value"
            )
        return None
    found = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise ApiError(
                400, "only tools of type 'function' are supported", param=f"tools[{i}].type",
                code="unsupported_parameter",
            )  # fmt: skip
        where = f"tools[{i}].function"
        found.append(_tool(fn.get("name"), fn.get("description"), fn.get("parameters"), where))
    plan_tools = tuple(found)
    if tool_choice in (None, "auto", "none", "required"):
        return ToolPlan(plan_tools, tool_choice or "auto")
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        return ToolPlan(plan_tools, "required", _forced(name, plan_tools, "tool_choice"))
    raise ApiError(
        400, "`tool_choice` must be 'none', 'auto', 'required' or a function",
        param="tool_choice", code="invalid_value",
    )  # fmt: skip


def anthropic_plan(tools: list[Any] | None, tool_choice: Any) -> ToolPlan | None:
    """ORCH-9245: Anthropic's ``tools`` / ``tool_choice`` (auto, any, tool, none)."""
    if not tools:
        if tool_choice is not None:
            raise ApiError(400, "tool_choice: needs tools", param="tool_choice", code="invalid")
        return None
    found = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") not in (None, "custom"):
            raise ApiError(
                400, f"tools.{i}: only client tools (name, input_schema) are supported",
                param=f"tools.{i}.type", code="invalid",
            )  # fmt: skip
        where = f"tools.{i}"
        found.append(_tool(t.get("name"), t.get("description"), t.get("input_schema"), where))
    plan_tools = tuple(found)
    kind = tool_choice.get("type") if isinstance(tool_choice, dict) else tool_choice
    if kind in (None, "auto", "none"):
        return ToolPlan(plan_tools, kind or "auto")
    if kind == "any":
        return ToolPlan(plan_tools, "required")
    if kind == "tool":
        name = tool_choice.get("name") if isinstance(tool_choice, dict) else None
        return ToolPlan(plan_tools, "required", _forced(name, plan_tools, "tool_choice.name"))
    raise ApiError(
        400, "tool_choice.type: must be auto, any, tool or none", param="tool_choice.type",
        code="invalid",
    )  # fmt: skip


def responses_plan(tools: list[Any] | None, tool_choice: Any) -> ToolPlan | None:
    """ORCH-9270: the Responses API's flat function tools (``{"type": "function",
    "name", "description", "parameters"}``) and ``tool_choice`` (``none``, ``auto``,
    ``required`` or ``{"type": "function", "name"}``); ``None`` without tools."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ApiError(
                400, "`tool_choice` needs `tools`", param="tool_choice", code="invalid_value"
            )
        return None
    found = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            raise ApiError(
                400, f"only tools of type 'function' are supported (got {kind!r})",
                param=f"tools[{i}].type", code="unsupported_parameter",
            )  # fmt: skip
        found.append(_tool(t.get("name"), t.get("description"), t.get("parameters"), f"tools[{i}]"))
    plan_tools = tuple(found)
    if tool_choice in (None, "auto", "none", "required"):
        return ToolPlan(plan_tools, tool_choice or "auto")
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = tool_choice.get("name")
        return ToolPlan(plan_tools, "required", _forced(name, plan_tools, "tool_choice.name"))
    raise ApiError(
        400, "`tool_choice` must be 'none', 'auto', 'required' or {'type': 'function', 'name'}",
        param="tool_choice", code="invalid_value",
    )  # fmt: skip
