"""wasmtime engines, the epoch ticker and the compiled-module cache (ORCH-8511, ORCH-8512).

One engine per sandbox setting (fuel on or off): a serialized module only
loads into an engine with the same settings, so the cache key holds the
settings and the wasmtime version. One daemon thread advances the epoch of
every engine each ``tick_ms``; a call's deadline is counted in those ticks.
"""

from __future__ import annotations

import hashlib
import os
import threading
from importlib.metadata import version
from pathlib import Path

import wasmtime

__all__ = ["EpochTicker", "compile_module", "engine_for"]

WASMTIME_VERSION = version("wasmtime")
MAX_WASM_STACK = 512 * 1024
_engines: dict[bool, wasmtime.Engine] = {}
_lock = threading.Lock()


def engine_for(fuel: bool) -> wasmtime.Engine:
    with _lock:
        engine = _engines.get(fuel)
        if engine is None:
            cfg = wasmtime.Config()
            cfg.consume_fuel = fuel
            cfg.epoch_interruption = True
            cfg.max_wasm_stack = MAX_WASM_STACK
            cfg.cranelift_opt_level = "speed"
            engine = _engines[fuel] = wasmtime.Engine(cfg)
        return engine


def _settings_key(fuel: bool) -> str:
    return f"wasmtime-{WASMTIME_VERSION}-fuel{int(fuel)}-epoch1-stack{MAX_WASM_STACK}-speed"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-orch" / "policies" / "compiled"


def compile_module(data: bytes, *, fuel: bool, cache_dir: Path | None) -> wasmtime.Module:
    """Compile ``data`` (wasm or WAT), or load the serialized result of an earlier compile."""
    engine = engine_for(fuel)
    if cache_dir is None:
        return wasmtime.Module(engine, data)
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir / _settings_key(fuel) / f"{digest}.cwasm"
    if path.is_file():
        try:
            # Only files this host wrote are deserialized: the cache is ours.
            return wasmtime.Module.deserialize_file(engine, str(path))
        except wasmtime.WasmtimeError:
            path.unlink(missing_ok=True)
    module = wasmtime.Module(engine, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(module.serialize())
    tmp.replace(path)
    return module


class EpochTicker:
    """Advances every engine's epoch each ``tick_ms`` while anyone holds it."""

    def __init__(self) -> None:
        self._users = 0
        self._tick_s = 0.001
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def tick_ms(self) -> float:
        return self._tick_s * 1000

    def acquire(self, tick_ms: float) -> None:
        with self._lock:
            self._users += 1
            # the finest tick any holder asked for (a deadline is counted in ticks)
            self._tick_s = min(self._tick_s, tick_ms / 1000) if self._users > 1 else tick_ms / 1000
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="llorch-policy-epoch", daemon=True
                )
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            thread = self._thread if self._users == 0 else None
            if thread is not None:
                self._thread = None
                self._stop.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            for fuel in (False, True):
                engine = _engines.get(fuel)
                if engine is not None:
                    engine.increment_epoch()


TICKER = EpochTicker()
