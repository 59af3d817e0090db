"""Sources for the scrape-time gauges: engine scrapes, replica states, NVML.

- :class:`EngineScraper` polls each Ready replica's adapter ``metrics()`` and
  keeps its ``kv_cache_usage_ratio`` (ORCH-7003); a replica that stops being
  Ready or whose engine does not report the ratio has no series.
- :func:`model_state_samples` is the one-hot ``model_state`` gauge (ORCH-7004).
- :class:`Gpu` reads utilization and memory through NVML (``nvidia-ml-py``)
  only when a driver and devices exist; otherwise it reports nothing and the
  GPU series are absent (ORCH-7005).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterable
from typing import Protocol, cast

from llama_orch.core.errors import OrchError
from llama_orch.core.replica import ReplicaState

from .logline import TASK_LOG_FIELDS, direct_handler
from .metrics import Attrs
from .pools import Pool
from .tasks import TaskRecord

__all__ = [
    "REPLICA_STATES",
    "TASK_LOG_FIELDS",
    "EngineScraper",
    "Gpu",
    "log_task_end",
    "model_state_samples",
    "replica_attrs",
    "safe_url",
]

_log = logging.getLogger("llama_orch.orchestratord")

REPLICA_STATES = ("provisioning", "starting", "ready", "draining", "stopped", "failed")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def log_task_end(rec: TaskRecord, pool: Pool) -> None:
    """One JSON log line per terminal task with the fields of ORCH-7030; never the
    prompt, never a header (ORCH-1504). ORCH-2822: written by the daemon's handler from
    the fields when it is the only one to see it, else through ``Logger.handle``."""
    if not _log.isEnabledFor(logging.INFO):
        return
    st = pool.states.get(rec.replica_id) if rec.replica_id else None
    end = rec.finished_at or rec.created
    fields: dict[str, object] = {
        "job_id": rec.task_id,
        "session_id": rec.session_id,
        "tenant": rec.tenant,
        "correlation_id": rec.correlation_id,
        "api": rec.api,  # ORCH-9103
        "engine": rec.engine,
        "engine_version": rec.engine_version or None,
        "pool_id": rec.pool_id,
        "replica_id": rec.replica_id,
        "model_id": st.model_ref if st else pool.config.model,
        "ctx": st.ctx if st and st.ctx else pool.config.ctx,
        "kv_warmth": rec.kv_warmth,
        "priority": rec.priority,
        "state": rec.state,
        "queue_time_ms": _ms((rec.dispatched or end) - rec.created),
        "decode_time_ms": _ms(end - rec.first_token) if rec.first_token else 0,
        "tokens_in": rec.prompt_tokens,
        "tokens_out": rec.tokens_out,
        "queue_position": rec.queue_position,
        "predicted_start_ms": rec.predicted_start_ms,
        "error_code": rec.error_code.value if rec.error_code else None,  # ORCH-1967
    }
    if rec.trace_id is not None:  # ORCH-7045
        fields["trace_id"] = rec.trace_id
    handler = direct_handler(_log)
    if handler is not None:  # ORCH-2822: the daemon's handler alone: no record
        handler.write_fields(time.time(), _log.name, "task ended", fields)
    else:
        _log.handle(task_end_record(fields))


# ORCH-2804: where the task-end record says it was logged (no frame walk per record).
_CODE = log_task_end.__code__


class _Template:
    """The attributes of one ``task ended`` record made by the stdlib under the daemon's
    set-up, and the process start time its ``relativeCreated`` counts from."""

    attrs: dict[str, object] | None = None
    start = 0.0


def _daemon_records() -> bool:
    """Whether a record made now has nothing that depends on the thread, the process or
    the asyncio task (the daemon's set-up, ORCH-2781) and comes from the stdlib's factory."""
    return (
        not (
            logging.logThreads
            or logging.logProcesses
            or logging.logMultiprocessing
            or getattr(logging, "logAsyncioTasks", False)  # Python 3.12+
        )
        and logging.getLogRecordFactory() is logging.LogRecord
    )


def task_end_record(fields: dict[str, object]) -> logging.LogRecord:
    """The ``task ended`` record with ``fields`` as ``_log.info("task ended", extra=fields)``
    makes it, but for the caller's place (``log_task_end``'s file, name and first line;
    ORCH-2804). Under the daemon's set-up it is a copy of one template record's
    attributes with the time and the fields set: ``LogRecord.__init__`` less its work."""
    if not _daemon_records():
        return _log.makeRecord(
            _log.name, logging.INFO, _CODE.co_filename, _CODE.co_firstlineno,
            "task ended", (), None, _CODE.co_name, fields,
        )  # fmt: skip
    template = _Template.attrs
    if template is None:
        made = _log.makeRecord(
            _log.name, logging.INFO, _CODE.co_filename, _CODE.co_firstlineno,
            "task ended", (), None, _CODE.co_name,
        )  # fmt: skip
        template = _Template.attrs = dict(made.__dict__)
        _Template.start = made.created - made.relativeCreated / 1000
    record = logging.LogRecord.__new__(logging.LogRecord)
    attrs = record.__dict__
    attrs.update(template)
    now = time.time()
    attrs["created"] = now
    attrs["msecs"] = int((now - int(now)) * 1000) + 0.0  # as LogRecord (gh-89047)
    attrs["relativeCreated"] = (now - _Template.start) * 1000
    attrs.update(fields)
    return record


def safe_url(url: str) -> str:
    """``url`` without its user-info part (``user:password@``), for logs (ORCH-7032)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def replica_attrs(state: ReplicaState) -> Attrs:
    return {
        "engine": state.engine,
        "engine_version": state.engine_version,
        "pool_id": state.pool_id,
        "replica_id": state.replica_id,
    }


def model_state_samples(pools: Iterable[Pool]) -> list[tuple[float, Attrs]]:
    out: list[tuple[float, Attrs]] = []
    for pool in pools:
        for st in pool.states.values():
            base = replica_attrs(st) | {
                "breaker": "open" if st.circuit_open else "closed",
                "cpu_inference": "true" if st.cpu_inference else "false",
            }
            out.extend((float(st.status == s), base | {"state": s}) for s in REPLICA_STATES)
    return out


class EngineScraper:
    """Background poll of every Ready replica's engine metrics."""

    def __init__(self, pools: Iterable[Pool], interval_s: float) -> None:
        self._pools = list(pools)
        self.interval_s = interval_s
        self._kv: dict[tuple[str, str], tuple[float, Attrs]] = {}
        self._prefix: dict[tuple[str, str], tuple[float, Attrs]] = {}
        self._warned: set[str] = set()

    def kv_usage(self) -> list[tuple[float, Attrs]]:
        return list(self._kv.values())

    def prefix_hits(self) -> list[tuple[float, Attrs]]:
        """The engines' own prefix-cache hit ratio per replica (ORCH-2322)."""
        return list(self._prefix.values())

    async def scrape_once(self) -> None:
        seen: set[tuple[str, str]] = set()
        for pool in self._pools:
            for replica in pool.ready_replicas():
                st = replica.state
                key = (pool.id, st.replica_id)
                try:
                    m = await replica.adapter.metrics()
                except Exception as exc:  # a scrape never takes the loop down
                    if st.replica_id not in self._warned:
                        self._warned.add(st.replica_id)
                        detail = exc.message if isinstance(exc, OrchError) else repr(exc)
                        _log.info("engine scrape of %s failed: %s", st.replica_id, detail)
                    continue
                if m.kv_cache_usage_ratio is not None:
                    seen.add(key)
                    self._kv[key] = (m.kv_cache_usage_ratio, replica_attrs(st))
                hits, queries = m.prefix_cache_hits_total, m.prefix_cache_queries_total
                if hits is not None and queries:  # ORCH-2322: only engines that count
                    self._prefix[key] = (min(1.0, hits / queries), replica_attrs(st))
        for key in set(self._kv) - seen:
            del self._kv[key]
        ready = {(p.id, r.state.replica_id) for p in self._pools for r in p.ready_replicas()}
        for key in set(self._prefix) - ready:
            del self._prefix[key]

    async def run(self) -> None:
        while True:
            await self.scrape_once()
            await asyncio.sleep(self.interval_s)


class _NvmlUtilization(Protocol):
    gpu: int  # percent


class _NvmlMemory(Protocol):
    used: int  # bytes


class Nvml(Protocol):
    """The part of ``pynvml`` (nvidia-ml-py) that :class:`Gpu` uses."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> object: ...
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> _NvmlUtilization: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object) -> _NvmlMemory: ...


class Gpu:
    """NVML probe; ``available`` is False when there is no library, driver or device."""

    def __init__(self, nvml: Nvml | None = None) -> None:
        self.available = False
        self._nvml = nvml
        if self._nvml is None:
            try:
                # nvidia-ml-py ships no type information: Nvml says what is used of it
                self._nvml = cast(Nvml, importlib.import_module("pynvml"))
            except ImportError:
                _log.info("NVML: nvidia-ml-py is not installed; no GPU metrics")
                return
        try:
            self._nvml.nvmlInit()
            count = int(self._nvml.nvmlDeviceGetCount())
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            _log.info("NVML: no GPU available (%s); no GPU metrics", exc)
            return
        self.available = count > 0
        if not self.available:
            _log.info("NVML: no GPU device; no GPU metrics")

    def read(self, pools: Iterable[Pool]) -> tuple[list[tuple[float, Attrs]], ...]:
        """(utilization samples, vram samples) for each device of each Ready replica's pool."""
        util: list[tuple[float, Attrs]] = []
        vram: list[tuple[float, Attrs]] = []
        nvml = self._nvml
        if not self.available or nvml is None:  # available implies an NVML module
            return util, vram
        for pool in pools:
            mask = pool.config.devices
            if not mask:
                continue
            for replica in pool.ready_replicas():
                for dev in (d.strip() for d in mask.split(",") if d.strip()):
                    try:
                        handle = nvml.nvmlDeviceGetHandleByIndex(int(dev))
                        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                    except Exception as exc:
                        _log.warning("NVML: device %s unreadable: %s", dev, exc)
                        continue
                    attrs = replica_attrs(replica.state) | {"device": dev}
                    util.append((float(rates.gpu) / 100.0, attrs))
                    vram.append((float(mem.used), attrs))
        return util, vram

    def close(self) -> None:
        if self.available and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down: nothing left to report to
                pass
            self.available = False
