"""A WebAssembly policy in its sandbox (ORCH-8510..8515).

Loading checks, in order: the file's sha256 against the pinned one, every
import against what the config grants (anything else is refused, naming the
import), the ABI v1 exports, and ``llorch_abi_version() == 1`` in a first
instance. One instance is kept per policy; before every call the store is
refuelled and the epoch deadline re-armed. A call that traps (fuel, epoch,
memory, any other trap) discards the instance: the next call builds a fresh
one. Memory is capped by the store's limits (``memory.grow`` fails past the
cap; a module whose minimum exceeds it does not instantiate), and a store
holds one instance, one memory and one table.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import wasmtime
from llama_orch.core.policy_config import FetchGrant, PolicyModule
from llama_orch.policy_sdk.abi import (
    ABI_VERSION,
    HOOK_IDS,
    Decision,
    DecisionError,
    Hook,
    Snapshot,
    decode_decision,
    encode,
)

from ._engine import TICKER, compile_module, engine_for
from .errors import CallCode, ImportRefused, PolicyCallError, PolicyLoadError

__all__ = ["WasmPolicy", "fetch_allowed"]

log = logging.getLogger("llama_orch.policy_host")
audit = logging.getLogger("llama_orch.policy_host.audit")

REQUIRED_EXPORTS = ("memory", "llorch_abi_version", "llorch_alloc", "llorch_decide")
WASI_MODULE = "wasi_snapshot_preview1"
MAX_LOG_BYTES = 1024
# Signatures as (params, results) of i32/i64; a FuncType is built per use because
# wasmtime-py hands its ownership to the linker.
_HOST_SIGS: dict[str, tuple[list[str], list[str]]] = {
    "log": (["i32", "i32"], []),
    "now_ms": ([], ["i64"]),
    "fetch": (["i32", "i32", "i32", "i32"], ["i32"]),
}


def _functype(name: str) -> wasmtime.FuncType:
    params, results = _HOST_SIGS[name]
    vt = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}
    return wasmtime.FuncType([vt[p]() for p in params], [vt[r]() for r in results])


def fetch_allowed(grant: FetchGrant | None, url: str) -> bool:
    """Deny by default; allow only a URL under one of the grant's prefixes (ORCH-8560)."""
    return grant is not None and any(url.startswith(prefix) for prefix in grant.allow)


class WasmPolicy:
    """One policy module, compiled once, with one live instance."""

    kind = "wasm"

    def __init__(
        self,
        spec: PolicyModule,
        *,
        cache_dir: Path | None,
        base_dir: Path,
        epoch_tick_ms: float = 1.0,
    ) -> None:
        assert spec.path is not None
        self.name = spec.name
        self.spec = spec
        path = Path(spec.path)
        if not path.is_absolute():
            path = base_dir / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PolicyLoadError(self.name, f"cannot read {path}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise PolicyLoadError(
                self.name, f"{path} has sha256 {digest}, the config pins {spec.sha256}"
            )
        self.sha256 = digest
        if path.suffix == ".wat":  # text fixtures and tiny policies (pinned as text)
            try:
                data = bytes(wasmtime.wat2wasm(data.decode()))
            except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
                raise PolicyLoadError(self.name, f"{path} is not valid WAT: {exc}") from exc
        self._fuel = spec.fuel
        try:
            self.module = compile_module(data, fuel=spec.fuel > 0, cache_dir=cache_dir)
        except wasmtime.WasmtimeError as exc:
            raise PolicyLoadError(self.name, f"{path} does not compile: {exc}") from exc
        self._granted = {"log": spec.log, "now_ms": True, "fetch": spec.fetch is not None}
        for imp in self.module.imports:
            if imp.module == WASI_MODULE and spec.wasi:
                continue
            ok = imp.module == "llorch" and self._granted.get(imp.name or "", False)
            if ok and _signature(imp.type) != _HOST_SIGS[imp.name or ""]:
                raise PolicyLoadError(self.name, f"import llorch.{imp.name} has the wrong type")
            if not ok:
                raise ImportRefused(self.name, imp.module, imp.name or "")
        names = {e.name for e in self.module.exports}
        missing = [e for e in REQUIRED_EXPORTS if e not in names]
        if missing:
            raise PolicyLoadError(self.name, f"missing ABI v1 exports {missing}")
        self._linker = self._make_linker()
        self._instance: dict[str, Any] | None = None
        self._store: wasmtime.Store | None = None
        self._ticker_held = False
        TICKER.acquire(epoch_tick_ms)
        self._ticker_held = True
        try:
            self._instantiate()
        except PolicyCallError as exc:
            self.close()
            raise PolicyLoadError(self.name, f"does not instantiate: {exc}") from exc

    # -- host functions ------------------------------------------------------------

    def _make_linker(self) -> wasmtime.Linker:
        linker = wasmtime.Linker(engine_for(self._fuel > 0))
        if self.spec.wasi:
            linker.define_wasi()
        if self.spec.log:
            linker.define_func("llorch", "log", _functype("log"), self._log, access_caller=True)
        linker.define_func("llorch", "now_ms", _functype("now_ms"), _now_ms)
        if self.spec.fetch is not None:
            linker.define_func(
                "llorch", "fetch", _functype("fetch"), self._fetch, access_caller=True
            )
        return linker

    def _memory(self, caller: wasmtime.Caller) -> wasmtime.Memory:
        mem = caller.get("memory")
        assert isinstance(mem, wasmtime.Memory)
        return mem

    def _log(self, caller: wasmtime.Caller, ptr: int, length: int) -> None:
        n = max(0, min(length, MAX_LOG_BYTES))
        text = self._memory(caller).read(caller, ptr, ptr + n).decode("utf-8", "replace")
        log.info("policy %s: %s", self.name, text)

    def _fetch(
        self, caller: wasmtime.Caller, url_ptr: int, url_len: int, out: int, cap: int
    ) -> int:
        """Mediated fetch: the body's length (truncated to ``cap``), or -1 denied, -2 failed."""
        grant = self.spec.fetch
        mem = self._memory(caller)
        url = mem.read(caller, url_ptr, url_ptr + max(0, min(url_len, 2048))).decode(
            "utf-8", "replace"
        )
        if grant is None or not fetch_allowed(grant, url):
            audit.warning("policy=%s fetch=%s outcome=denied", self.name, url)
            return -1
        limit = min(cap, grant.max_bytes)
        try:
            with urllib.request.urlopen(url, timeout=grant.timeout_ms / 1000) as resp:
                body = resp.read(limit)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            audit.warning("policy=%s fetch=%s outcome=failed error=%s", self.name, url, exc)
            return -2
        mem.write(caller, body, out)
        audit.info("policy=%s fetch=%s outcome=ok bytes=%d", self.name, url, len(body))
        return len(body)

    # -- instance lifecycle -----------------------------------------------------

    def _instantiate(self) -> None:
        store = wasmtime.Store(engine_for(self._fuel > 0))
        store.set_limits(
            memory_size=self.spec.memory_mib << 20,
            table_elements=10_000,
            instances=1,
            tables=1,
            memories=1,
        )
        if self.spec.wasi:
            store.set_wasi(wasmtime.WasiConfig())  # nothing granted: no dirs, env, args, stdio
        self._arm(store, 50.0)
        try:
            inst = self._linker.instantiate(store, self.module)
            ex = inst.exports(store)
            init = ex.get("_initialize")
            if isinstance(init, wasmtime.Func):
                init(store)
            # by name, as self._instance holds them (wasmtime's extern union is not callable)
            exports: dict[str, Any] = {n: ex[n] for n in REQUIRED_EXPORTS}
            version = exports["llorch_abi_version"](store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise PolicyCallError(self.name, _code(exc), str(exc)) from exc
        if version != ABI_VERSION:
            raise PolicyLoadError(self.name, f"ABI version {version}, this host speaks 1")
        self._store, self._instance = store, exports

    def _arm(self, store: wasmtime.Store, budget_ms: float) -> None:
        if self._fuel > 0:
            store.set_fuel(self._fuel)
        store.set_epoch_deadline(max(2, math.ceil(budget_ms / TICKER.tick_ms) + 1))

    def discard(self) -> None:
        self._store = self._instance = None

    def close(self) -> None:
        self.discard()
        if self._ticker_held:
            self._ticker_held = False
            TICKER.release()

    def memory_bytes(self) -> int:
        """The live instance's memory size (0 without an instance)."""
        if self._store is None or self._instance is None:
            return 0
        return int(self._instance["memory"].data_len(self._store))

    # -- the call ---------------------------------------------------------------

    def decide(self, hook: Hook, snapshot: Snapshot, budget_ms: float) -> Decision:
        """One decision; a trap discards the instance and raises :class:`PolicyCallError`."""
        data = encode(snapshot)
        if self._instance is None:
            self._instantiate()
        store, ex = self._store, self._instance
        assert store is not None and ex is not None
        self._arm(store, budget_ms)
        try:
            ptr = ex["llorch_alloc"](store, len(data))
            if not ptr:
                raise PolicyCallError(self.name, "memory", f"no buffer for {len(data)} bytes")
            mem: wasmtime.Memory = ex["memory"]
            mem.write(store, data, ptr)
            packed = ex["llorch_decide"](store, HOOK_IDS[hook], ptr, len(data)) & (2**64 - 1)
            out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
            if out_len == 0 or out_ptr + out_len > mem.data_len(store):
                raise PolicyCallError(
                    self.name, "output", f"no decision (ptr={out_ptr}, len={out_len})"
                )
            raw = bytes(mem.read(store, out_ptr, out_ptr + out_len))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            self.discard()
            raise PolicyCallError(self.name, _code(exc), str(exc).splitlines()[0]) from exc
        except PolicyCallError:
            self.discard()
            raise
        try:
            return decode_decision(hook, raw)
        except DecisionError as exc:
            raise PolicyCallError(self.name, "output", str(exc)) from exc


def _signature(ty: object) -> tuple[list[str], list[str]] | None:
    if not isinstance(ty, wasmtime.FuncType):
        return None
    return [str(p) for p in ty.params], [str(r) for r in ty.results]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _code(exc: Exception) -> CallCode:
    if isinstance(exc, wasmtime.Trap):
        if exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return "out_of_fuel"
        if exc.trap_code == wasmtime.TrapCode.INTERRUPT:
            return "interrupt"
        return "trap"
    text = str(exc)
    if "fuel" in text:
        return "out_of_fuel"
    if "memory" in text and ("limit" in text or "minimum" in text):
        return "memory"
    return "trap"
