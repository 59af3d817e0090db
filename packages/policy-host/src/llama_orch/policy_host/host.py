"""The policy host: runs the configured policy of each hook (ORCH-8513, ORCH-8540..8550).

Every call is counted (``policy_calls_total{policy,hook,outcome}``, timed in
``policy_decision_ms``); a failed call is counted in
``policy_traps_total{policy,code}`` and ends in the hook's ``on_error``
outcome: ``open`` decides as if there were no policy, ``closed`` rejects
(admission) or leaves the task unplaced (placement). Every decision other
than admit is one audit log line. :meth:`PolicyHost.reload` builds the new
set completely (loads, verifies, runs the vectors) before swapping it in,
so a bad new version never replaces a running one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llama_orch.core.policy_config import HookConfig, PoliciesConfig, PolicyModule
from llama_orch.policy_sdk.abi import (
    AdmissionDecision,
    AdmissionSnapshot,
    Admit,
    Decision,
    Hook,
    PlacementDecision,
    PlacementSnapshot,
    Reject,
    Rewrite,
    Snapshot,
)

from ._engine import default_cache_dir
from .errors import PolicyCallError, PolicyLoadError
from .native import NativeRunner
from .vectors import run_vectors
from .wasm import WasmPolicy

__all__ = ["AdmissionResult", "Observer", "PlacementResult", "PolicyHost", "load_policy"]

audit = logging.getLogger("llama_orch.policy_host.audit")
FAIL_CLOSED_RETRY_MS = 1000


class Runner(Protocol):
    name: str
    kind: str

    def decide(self, hook: Hook, snapshot: Snapshot, budget_ms: float) -> Decision: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


class Observer(Protocol):
    def call(self, policy: str, hook: str, outcome: str, ms: float) -> None: ...
    def trap(self, policy: str, code: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    policy: str
    decision: AdmissionDecision
    failed: bool = False  # the policy failed and this is the hook's on_error outcome


@dataclass(frozen=True, slots=True)
class PlacementResult:
    policy: str
    replica_id: str | None  # None: the host's own placement (no usable score)
    refused: bool = False  # fail-closed: do not place this task


def load_policy(
    spec: PolicyModule,
    *,
    cache_dir: Path | None = None,
    base_dir: Path | None = None,
    epoch_tick_ms: float = 1.0,
) -> Runner:
    if spec.entry_point is not None:
        return NativeRunner(spec)
    return WasmPolicy(
        spec, cache_dir=cache_dir, base_dir=base_dir or Path.cwd(), epoch_tick_ms=epoch_tick_ms
    )


class PolicyHost:
    def __init__(
        self,
        cfg: PoliciesConfig,
        *,
        base_dir: Path | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.base_dir = base_dir or Path.cwd()
        self.observer = observer
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.traps: Counter[tuple[str, str]] = Counter()
        self._clock = clock
        self.cfg = cfg
        self._runners = self._load_all(cfg)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.cache_dir) if self.cfg.cache_dir else default_cache_dir()

    def _load_all(self, cfg: PoliciesConfig) -> dict[str, Runner]:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        used = {h.policy for h in (cfg.admission, cfg.placement) if h is not None}
        runners: dict[str, Runner] = {}
        try:
            for spec in cfg.modules:
                if spec.name not in used:
                    continue
                runner = load_policy(
                    spec, cache_dir=cache, base_dir=self.base_dir, epoch_tick_ms=cfg.epoch_tick_ms
                )
                runners[spec.name] = runner
                if spec.vectors is not None:
                    vdir = Path(spec.vectors)
                    report = run_vectors(
                        runner, vdir if vdir.is_absolute() else self.base_dir / vdir
                    )
                    if report.failures:
                        raise PolicyLoadError(spec.name, f"vectors fail: {report.failures}")
        except BaseException:
            for r in runners.values():
                r.close()
            raise
        return runners

    def reload(self, cfg: PoliciesConfig) -> None:
        """Swap in ``cfg``'s policies atomically; on any load error the running set stays
        (ORCH-8570) and the error propagates."""
        new = self._load_all(cfg)
        old, self._runners, self.cfg = self._runners, new, cfg
        for r in old.values():
            r.close()

    def close(self) -> None:
        for r in self._runners.values():
            r.close()
        self._runners = {}

    def loaded(self) -> list[tuple[str, str, str | None]]:
        """(name, kind, sha256) of every running policy."""
        return [(n, r.kind, getattr(r, "sha256", None)) for n, r in self._runners.items()]

    @property
    def has_admission(self) -> bool:
        return self.cfg.admission is not None

    @property
    def has_placement(self) -> bool:
        return self.cfg.placement is not None

    def _call(self, hook: Hook, hc: HookConfig, snapshot: Snapshot) -> Decision | PolicyCallError:
        runner = self._runners[hc.policy]
        t0 = self._clock()
        try:
            decision: Decision | PolicyCallError = runner.decide(hook, snapshot, hc.budget_ms)
            if isinstance(snapshot, AdmissionSnapshot) and isinstance(decision, Rewrite):
                _check_rewrite(hc.policy, snapshot, decision)
        except PolicyCallError as exc:
            decision = exc
        ms = (self._clock() - t0) * 1000
        if isinstance(decision, PolicyCallError):
            outcome = f"error_{hc.on_error}"
            self.traps[hc.policy, decision.code] += 1
            if self.observer is not None:
                self.observer.trap(hc.policy, decision.code)
            audit.warning(
                "policy=%s hook=%s outcome=%s code=%s error=%s",
                hc.policy,
                hook,
                outcome,
                decision.code,
                decision,
            )
        elif isinstance(decision, PlacementDecision):
            outcome = "scored"
        else:
            outcome = type(decision).__name__.lower()
        self.calls[hc.policy, hook, outcome] += 1
        if self.observer is not None:
            self.observer.call(hc.policy, hook, outcome, ms)
        return decision

    def admission(self, snapshot: AdmissionSnapshot) -> AdmissionResult | None:
        """The admission decision, or None when no admission policy is configured."""
        hc = self.cfg.admission
        if hc is None:
            return None
        d = self._call("admission", hc, snapshot)
        if isinstance(d, PolicyCallError):
            if hc.on_error == "open":
                return AdmissionResult(hc.policy, Admit(reason=f"fail-open: {d.code}"), True)
            return AdmissionResult(
                hc.policy,
                Reject(reason=f"policy failed ({d.code})", retry_after_ms=FAIL_CLOSED_RETRY_MS),
                True,
            )
        assert not isinstance(d, PlacementDecision)
        if not isinstance(d, Admit):
            audit.info(
                "policy=%s hook=admission task_id=%s tenant=%s decision=%s",
                hc.policy,
                snapshot.task.task_id,
                snapshot.task.tenant,
                _describe(d),
            )
        return AdmissionResult(hc.policy, d)

    def placement(self, snapshot: PlacementSnapshot) -> PlacementResult | None:
        """The replica the policy scores highest among those offered (ties: the
        first offered), or None when no placement policy is configured."""
        hc = self.cfg.placement
        if hc is None:
            return None
        d = self._call("placement", hc, snapshot)
        if isinstance(d, PolicyCallError):
            return PlacementResult(hc.policy, None, refused=hc.on_error == "closed")
        assert isinstance(d, PlacementDecision)
        best: str | None = None
        for r in snapshot.replicas:  # hard constraints: only offered replicas count
            score = d.scores.get(r.replica_id)
            if score is not None and (best is None or score > d.scores[best]):
                best = r.replica_id
        audit.info(
            "policy=%s hook=placement task_id=%s decision=%s chosen=%s",
            hc.policy,
            snapshot.task.task_id,
            _describe(d),
            best,
        )
        return PlacementResult(hc.policy, best)


def _check_rewrite(policy: str, snapshot: AdmissionSnapshot, d: Rewrite) -> None:
    """A rewrite may lower max_tokens and name only an offered pool (ORCH-8522)."""
    if d.max_tokens is not None and d.max_tokens > snapshot.task.max_tokens:
        raise PolicyCallError(
            policy,
            "output",
            f"rewrite raises max_tokens to {d.max_tokens}"
            f" (the task asked for {snapshot.task.max_tokens})",
        )
    if d.pool_id is not None and d.pool_id not in snapshot.pools:
        raise PolicyCallError(policy, "output", f"rewrite names unknown pool {d.pool_id!r}")


def _describe(d: Decision) -> str:
    import msgspec

    return msgspec.json.encode(d).decode()
