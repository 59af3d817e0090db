"""Errors of the policy host.

::

    PolicyError
    ├── PolicyLoadError          the policy never runs (bad digest, import, ABI, vectors)
    │   └── ImportRefused        the module imports something the host does not provide
    └── PolicyCallError          one call failed; ``code`` says how (ORCH-8504, ORCH-8513)

A call error ends in the hook's configured outcome (fail-open or
fail-closed) and never escapes the hook.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CallCode", "ImportRefused", "PolicyCallError", "PolicyError", "PolicyLoadError"]

# out_of_fuel and interrupt are the sandbox stopping a call; trap is any other
# wasm trap (unreachable, bounds, stack); output is a malformed decision;
# exception is a native policy raising.
CallCode = Literal["out_of_fuel", "interrupt", "trap", "memory", "output", "exception"]


class PolicyError(Exception):
    def __init__(self, policy: str, message: str) -> None:
        super().__init__(f"policy {policy}: {message}")
        self.policy = policy


class PolicyLoadError(PolicyError):
    pass


class ImportRefused(PolicyLoadError):
    def __init__(self, policy: str, module: str, name: str) -> None:
        super().__init__(
            policy,
            f"import {module}.{name} is not provided (only the llorch.* functions and WASI "
            "that the config grants can be imported)",
        )
        self.import_name = f"{module}.{name}"


class PolicyCallError(PolicyError):
    def __init__(self, policy: str, code: CallCode, message: str) -> None:
        super().__init__(policy, f"{code}: {message}")
        self.code: CallCode = code
