"""The orchestrator: composes admission, dispatch, the runs and their ending.

One instance per daemon. Everything runs on one event loop; the invariants
of ARCHITECTURE §3 rest on that: a state change and its event are appended
in the same step, so no interleaving can emit a token after a terminal event
(ORCH-1106, ORCH-2004).

Who does what:

- :class:`~.admission.Admission`: a submission becomes a queued task (or the
  typed error that says why not);
- :class:`~.dispatch.Dispatcher`: one loop per pool puts queued tasks on free
  slots and releases the slot when the run is over;
- :class:`~.runner.Runner`: one run of a task on its engine;
- :class:`~.ending.Ending`: the one end path (:meth:`Orchestrator.end`) and
  the one "task ended" hook (ORCH-2411, ORCH-2412).

This class builds them with their dependencies (ORCH-2420), starts and stops
the loops, and is the facade the HTTP layer and the frontends call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from llama_orch.core.api import EndEvent, ErrorEvent, TaskAccepted
from llama_orch.core.config import Config
from llama_orch.core.errors import NotFound
from llama_orch.core.predict import ShareTracker
from llama_orch.core.queue import DEFAULT_TENANT, PRIORITIES
from llama_orch.core.quota import Quotas
from llama_orch.core.replica import ReplicaState

from .admission import Admission
from .catalog_service import CatalogService
from .deadlines import DeadlineStats
from .dispatch import Dispatcher
from .ending import Ending, error_event
from .metrics import Metrics
from .migration import Migrator
from .placer import Placer
from .policies import make_policy_host
from .pools import Pool
from .preemption import Preemptor
from .runner import Runner
from .selftest import SelfTests
from .sessions import SessionTable
from .stored import StoreBridge
from .stored_waiting import store_waiting_loop
from .tasks import TaskRecord, TaskStore
from .telemetry import EngineScraper, Gpu, model_state_samples
from .tracing import Tracing
from .waiting import waiting_loop
from .watchdog import watchdog_loop
from .workload import Workload

if TYPE_CHECKING:
    from collections.abc import Sequence

    from llama_orch.policy_host import PolicyHost

    from .auth import Authenticator

__all__ = ["Orchestrator"]


class Orchestrator:
    def __init__(self, config: Config) -> None:
        self.config = config
        # the app's key check, set by ``build_app``; SIGHUP replaces its keys (ORCH-8009)
        self.auth: Authenticator | None = None
        sched = config.scheduling
        self.pools: dict[str, Pool] = {
            p.id: Pool(p, config.admission, scheduling=sched) for p in config.pools
        }
        self.quotas = Quotas(sched.tenants, sched.default_tenant, sched.priority_limits)
        self.shares = ShareTracker(sched.share_alpha)
        self.deadlines = DeadlineStats(self.pools.values())  # ORCH-1112, ORCH-7006
        self.sessions = SessionTable(config.sessions)
        self.scraper = EngineScraper(
            self.pools.values(), config.observability.engine_scrape_interval_s
        )
        self.gpu = Gpu()
        self.tracing = Tracing(config.observability.otlp_traces_endpoint)
        self.metrics = Metrics(
            queue_depths=self._queue_depths,
            shares=lambda: [(v, {"tenant": t, "priority": p}) for t, p, v in self.shares.items()],
            deadlines_met=self.deadlines.samples,
            kv_usage=self.scraper.kv_usage,
            model_states=lambda: model_state_samples(self.pools.values()),
            gpu_utilization=lambda: self.gpu.read(self.pools.values())[0],
            vram_used=lambda: self.gpu.read(self.pools.values())[1],
            prefix_hits=self.scraper.prefix_hits,  # ORCH-2322
        )
        self.ending = Ending(self.pools, self.sessions, self.tracing, self.metrics)
        self.tasks = TaskStore(
            retention_s=config.admission.event_log_retention_s,
            max_tasks=config.admission.max_retained_tasks,
            on_finish=self.ending.on_task_ended,  # ORCH-2412
        )
        self.placer = Placer(self.pools, self.metrics)  # ORCH-2310 (issue #17)
        guards = {  # the pools' dispatch guards (ORCH-2931), none with a store (ORCH-2934)
            p.id: p.dispatch.guard_told_finish
            for p in config.pools
            if p.dispatch.guard_told_finish is not None and config.state is None
        }
        self.workload = Workload(sched.waiting, deadline_cv=sched.deadline_cv, guards=guards)
        for p in config.pools:  # ORCH-2972: start-bys, none with a store (as the guard)
            if config.state is None:
                self.pools[p.id].queue.keep_told_start = p.dispatch.keep_told_start
        self.catalog = CatalogService(config.catalog, self.metrics)  # issue #18
        policies = make_policy_host(config, self.metrics)  # ORCH-8540 (issue #16)
        preemptor = Preemptor(sched.preemption, self.workload, self.metrics)
        self.dispatcher = Dispatcher(
            runner=Runner(
                metrics=self.metrics,
                sessions=self.sessions,
                workload=self.workload,
                preemptor=preemptor,
                migrator=Migrator(self.metrics),  # ORCH-2330 (issue #17)
                tracing=self.tracing,
                hard_preemption=sched.preemption == "hard",
                stored=config.state is not None,
            ),
            workload=self.workload,
            placer=self.placer,
            preemptor=preemptor,
            sessions=self.sessions,
            shares=self.shares,
            deadlines=self.deadlines,
            metrics=self.metrics,
            tracing=self.tracing,
            scraper=self.scraper,
            policies=policies,
            catalog=self.catalog,
        )
        self.self_tests = SelfTests(
            enabled=config.observability.self_test,
            timeout_s=config.observability.self_test_timeout_s,
            telemetry_page=self.metrics.render,
        )
        for pool in self.pools.values():
            pool.gate = self.self_tests.gate  # ORCH-7050: checks before Ready
        self.self_tests.on_decode = lambda engine, ms: self.workload.seed(engine, overhead_ms=ms)
        # ORCH-2520: with a `state:` section the store holds queues and event logs
        self.state = (
            StoreBridge(
                config.state,
                config=config,
                pools=self.pools,
                tasks=self.tasks,
                metrics=self.metrics,
                tracing=self.tracing,
                ending=self.ending,
                dispatcher=self.dispatcher,
            )
            if config.state is not None
            else None
        )
        self.admission = Admission(
            limits=config.admission,
            pools=self.pools,
            tasks=self.tasks,
            quotas=self.quotas,
            sessions=self.sessions,
            workload=self.workload,
            metrics=self.metrics,
            tracing=self.tracing,
            catalog=self.catalog,
            state=self.state,
            policies=policies,
        )
        self._stopped = False
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ composition

    @property
    def policies(self) -> PolicyHost | None:
        """The operators' policies (ORCH-8540); a reload swaps them everywhere."""
        return self.dispatcher.policies

    @policies.setter
    def policies(self, host: PolicyHost | None) -> None:
        self.dispatcher.policies = self.admission.policies = host

    @property
    def accepting(self) -> bool:
        """False once shutdown began: admission refuses every submission."""
        return self.admission.accepting

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for pool in self.pools.values():
            if self.state is not None:  # the store bridge dispatches (ORCH-2523)
                self._loops.append(  # ORCH-2561, ORCH-2562: queued events, bounded waits
                    asyncio.create_task(
                        store_waiting_loop(self.state, pool, self.workload, self.deadlines),
                        name=f"store-waiting-{pool.id}",
                    )
                )
                continue
            self._loops.append(
                asyncio.create_task(self.dispatcher.loop(pool), name=f"dispatch-{pool.id}")
            )
            self._loops.append(  # ORCH-1961, ORCH-1965: queued events and bounded waits
                asyncio.create_task(waiting_loop(self, pool), name=f"waiting-{pool.id}")
            )
        self._loops.append(asyncio.create_task(self.scraper.run(), name="engine-scrape"))
        wd = self.config.scheduling.watchdog
        if wd.wall_timeout_s is not None or wd.idle_timeout_s is not None:
            self._loops.append(asyncio.create_task(watchdog_loop(self, wd), name="watchdog"))

    def on_replica_change(self, state: ReplicaState) -> None:
        pool = self.pools.get(state.pool_id)
        if pool is not None:
            pool.update(state)

    async def shutdown(self, grace_s: float, *, beside: Sequence[asyncio.Task[None]] = ()) -> None:
        """Stop admission, let running tasks finish within ``grace_s``, end the rest.
        ``beside``: the caller's tasks that use the pools' adapters (endpoint probes,
        pool-manager clients); cancelled and awaited with this instance's loops, before
        the adapters close (ORCH-2817: an adapter called after its close would open a
        new HTTP session that nothing closes)."""
        if self._stopped:
            return
        self._stopped = True
        self.admission.accepting = False
        if self.state is not None:
            self.state.stop_dispatching()  # queued tasks stay in the store (ORCH-2527)
        # ORCH-2413: woken by every phase change, no polling
        await self.tasks.wait_for(
            lambda: not any(t.state == "running" for t in self.tasks.active()), grace_s
        )
        runners = [t.runner for t in self.tasks.active() if t.runner]
        for rec in self.tasks.active():
            if self.state is not None and rec.state == "queued":
                continue  # still queued in the store: another instance, or the restart, runs it
            self.end(rec, self.error_event(rec, "orchestratord is shutting down"))
        await self.self_tests.aclose()
        for loop in (*self._loops, *beside):
            loop.cancel()
        await asyncio.gather(*self._loops, *beside, *runners, return_exceptions=True)
        for pool in self.pools.values():
            await pool.stop_tasks()  # ORCH-2817: nothing calls an adapter after its close
            for replica in pool.replicas.values():
                await replica.adapter.aclose()
        self.metrics.shutdown()
        if self.policies is not None:
            self.policies.close()
        self.gpu.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes OTLP off the event loop

    def _queue_depths(self) -> list[tuple[int, dict[str, str]]]:
        return [
            (pool.queue.depth(p), {"engine": pool.engine, "pool_id": pool.id, "priority": p})
            for pool in self.pools.values()
            for p in PRIORITIES
        ]

    # ------------------------------------------------------------------ the facade

    async def submit(
        self,
        body: bytes,
        tenant: str = DEFAULT_TENANT,
        *,
        api: str = "orchqueue",
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        attempt: int | None = None,
        note: bytes | None = None,
    ) -> TaskAccepted:
        """Admit one task of ``tenant`` or raise the OrchError that says why not;
        ``extra``: engine request fields OrchQueue v1 does not carry (a facade's);
        ``idempotency_key``, ``attempt``: for retry reservations (ORCH-1979);
        ``note``: a facade's own fields, stored with the task (ORCH-2592)."""
        return await self.admission.submit(
            body,
            tenant,
            api=api,
            extra=extra,
            idempotency_key=idempotency_key,
            attempt=attempt,
            note=note,
        )

    def budget_headers(self, task_id: str) -> dict[str, str]:
        """``X-Budget-*`` headers for the 202 of a session task (ORCH-1405)."""
        return self.admission.budget_headers(task_id)

    def get(self, task_id: str) -> TaskRecord:
        rec = self.tasks.get(task_id)
        if rec is None:
            raise NotFound(f"unknown task {task_id}")
        return rec

    def cancel(self, task_id: str) -> None:
        """End the task now; the caller answers 204 only after this returned (ORCH-2004)."""
        self.ending.cancel(self.get(task_id))

    def end(self, rec: TaskRecord, terminal: EndEvent | ErrorEvent) -> bool:
        """The one end path from outside a task's runner (ORCH-2411); False when the
        task had already ended."""
        return self.ending.end(rec, terminal)

    error_event = staticmethod(error_event)
