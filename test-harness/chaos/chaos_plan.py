"""The seeded load model and fault schedule of a chaos run (pure: no I/O).

``make_plan(profile, seed)`` draws every arrival (tenant, priority, prompt,
deadline, session, client behaviour) and every fault (kind, target, time,
duration) from one ``random.Random(seed)``; the plan's ``digest`` is the
sha256 of its canonical JSON, so two runs of one seed are shown to hold the
same load and faults (ORCH-6102).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Fault kinds injected for real by chaos_run.py.
FAULT_KINDS = (
    "engine_kill9",  # SIGKILL of an engine's process group; restarted after `duration_s`
    "engine_sigstop",  # SIGSTOP for `duration_s`, then SIGCONT
    "net_blackhole",  # the proxy to one engine drops every byte for `duration_s`
    "net_latency",  # the proxy to one engine delays each chunk by `latency_ms`
    "net_reset",  # the proxy resets every open connection to one engine, once
    "overload",  # `burst` extra submissions within `duration_s`
    # With the shared state store (a profile with ``store=True``, ORCH-6110):
    "store_kill9",  # SIGKILL of valkey-server; restarted on its AOF after `duration_s`
    "store_sigstop",  # SIGSTOP of valkey-server for `duration_s`, then SIGCONT
    "orchestratord_kill9",  # SIGKILL of orchestratord; the same config restarted after `duration_s`
    # With a remote pool-managerd serving the pool (``pool_managerd=True``, ORCH-6114):
    "pool_managerd_kill9",  # SIGKILL of pool-managerd (its engines die with it); restarted
    "restart_storm",  # engines killed as they come up until every breaker is open; held
    # open `duration_s`, then a reset through orchestratord (ORCH-3026)
)
# Kinds that need a remote pool-managerd in the topology (ORCH-6114).
POOL_FAULT_KINDS = ("pool_managerd_kill9", "restart_storm")
# The runner waits at most this long for a task streaming tokens before a store fault.
STORE_FAULT_WAIT_S = 1.5
# Kinds that need the shared state store in the topology (ORCH-6110).
STORE_FAULT_KINDS = ("store_kill9", "store_sigstop", "orchestratord_kill9")
# Seams: kinds that need a component this runner does not start yet. The plan
# refuses them so that a profile cannot claim to have injected them (ORCH-6101).
PENDING_FAULT_KINDS = {
    "orchestratord_pause": "needs a second orchestratord instance to take over (HA harness)",
}
APIS = ("tasks", "openai")  # the task API; the OpenAI-compatible /v1/completions

Behaviour = Literal["read", "cancel", "disconnect"]


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: int = 1
    max_concurrent: int | None = None
    share: float = 1.0  # relative arrival rate


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    at_s: float  # nominal time; jittered by the seed
    duration_s: float = 0.0
    latency_ms: int = 0
    burst: int = 0


@dataclass(frozen=True)
class Profile:
    name: str
    duration_s: float  # load phase; then the drain phase
    rate_per_s: float  # steady arrivals per second (Poisson)
    tenants: tuple[Tenant, ...]
    faults: tuple[FaultSpec, ...]
    engines: int = 2
    slots: int = 2
    queue_capacity: int = 12
    idle_timeout_s: float = 4.0
    p_batch: float = 0.4
    p_cancel: float = 0.2
    p_disconnect: float = 0.15
    p_deadline: float = 0.15
    p_session: float = 0.15
    openai_share: float = 0.25  # fraction sent to the OpenAI-compatible API
    # orchestratord on the Valkey state store, a harness-owned valkey-server with AOF
    # (ORCH-6110); `lease_ms` is the store's lease (`state.lease_ms`)
    store: bool = False
    lease_ms: int = 1500
    # the pool served by a harness-started remote pool-managerd (`engines` replicas it
    # launches and supervises) instead of `endpoints:` behind fault proxies (ORCH-6114)
    pool_managerd: bool = False
    max_tokens: tuple[int, ...] = (8, 16, 32, 48, 64, 96)


@dataclass(frozen=True)
class Arrival:
    n: int
    at_s: float
    tenant: str
    priority: str
    prompt: str
    max_tokens: int
    behaviour: Behaviour
    cancel_after_s: float = 0.0  # "cancel": after the 202
    disconnect_after: int = 0  # "disconnect": events read before the cut
    reconnect_after_s: float = 0.0
    deadline_ms: int | None = None
    session: int | None = None  # session index; turns of one session run in order
    api: str = "tasks"
    burst: bool = False


@dataclass(frozen=True)
class Fault:
    n: int
    kind: str
    at_s: float
    target: int  # engine index
    duration_s: float
    latency_ms: int = 0
    burst: int = 0


@dataclass
class Plan:
    profile: str
    seed: int
    duration_s: float
    arrivals: list[Arrival] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "arrivals": [asdict(a) for a in self.arrivals],
            "faults": [asdict(f) for f in self.faults],
        }

    @property
    def digest(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# Prompts of mixed lengths: short questions, paragraphs, long pasted text.
_WORDS = (
    "river stone lantern harbor violet engine orbit meadow cipher silver thunder "
    "paper garden falcon mirror copper winter signal canyon velvet ember quartz"
).split()
_OPENERS = (
    "Write a short story about",
    "Explain in simple words",
    "List ten facts about",
    "Describe",
    "Continue the text:",
    "Count from one to fifty, then talk about",
)


def _prompt(rng: random.Random, n: int) -> str:
    size = rng.choices((4, 40, 160), weights=(5, 3, 1))[0]
    body = " ".join(rng.choice(_WORDS) for _ in range(size))
    # The marker lets the harness's proxy tie each engine request to its arrival.
    return f"[chaos-{n:06d}] {rng.choice(_OPENERS)} {body}"


def _arrival(rng: random.Random, prof: Profile, n: int, at: float, burst: bool) -> Arrival:
    tenants = prof.tenants
    tenant = rng.choices([t.name for t in tenants], weights=[t.share for t in tenants])[0]
    priority = "batch" if burst or rng.random() < prof.p_batch else "interactive"
    max_tokens = rng.choice(prof.max_tokens)
    u = rng.random()
    behaviour: Behaviour = "read"
    if u < prof.p_cancel:
        behaviour = "cancel"
    elif u < prof.p_cancel + prof.p_disconnect:
        behaviour = "disconnect"
    deadline = rng.choice((8_000, 20_000, 60_000)) if rng.random() < prof.p_deadline else None
    session = rng.randrange(6) if rng.random() < prof.p_session and not burst else None
    api = "openai" if rng.random() < prof.openai_share else "tasks"
    return Arrival(
        n=n,
        at_s=round(at, 3),
        tenant=tenant,
        priority=priority,
        prompt=_prompt(rng, n),
        max_tokens=max_tokens,
        behaviour=behaviour,
        cancel_after_s=round(rng.uniform(0.0, 3.0), 3) if behaviour == "cancel" else 0.0,
        disconnect_after=rng.randrange(1, 12) if behaviour == "disconnect" else 0,
        reconnect_after_s=round(rng.uniform(0.1, 1.0), 3) if behaviour == "disconnect" else 0.0,
        deadline_ms=deadline,
        session=session,
        api=api,
        burst=burst,
    )


def make_plan(prof: Profile, seed: int) -> Plan:
    for spec in prof.faults:
        if spec.kind in PENDING_FAULT_KINDS:
            raise ValueError(f"fault {spec.kind}: {PENDING_FAULT_KINDS[spec.kind]}")
        if spec.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {spec.kind}")
        if spec.kind in STORE_FAULT_KINDS and not prof.store:
            raise ValueError(f"fault {spec.kind}: needs a profile with the state store")
        if spec.kind in POOL_FAULT_KINDS and not prof.pool_managerd:
            raise ValueError(f"fault {spec.kind}: needs a profile with a remote pool-managerd")
        if prof.pool_managerd and spec.kind not in (*POOL_FAULT_KINDS, "overload"):
            raise ValueError(f"fault {spec.kind}: the pool-managerd profile has no proxies")
    rng = random.Random(seed)
    plan = Plan(profile=prof.name, seed=seed, duration_s=prof.duration_s)
    faults: list[Fault] = []
    for n, spec in enumerate(prof.faults):
        at = max(1.0, spec.at_s + rng.uniform(-2.0, 2.0))
        faults.append(
            Fault(
                n=n,
                kind=spec.kind,
                at_s=round(at, 3),
                target=rng.randrange(prof.engines),
                duration_s=spec.duration_s,
                latency_ms=spec.latency_ms,
                burst=spec.burst,
            )
        )
    plan.faults = sorted(faults, key=lambda f: f.at_s)
    t, n = 0.0, 0
    arrivals: list[Arrival] = []
    while True:
        t += rng.expovariate(prof.rate_per_s)
        if t >= prof.duration_s:
            break
        arrivals.append(_arrival(rng, prof, n, t, burst=False))
        n += 1
    for f in plan.faults:
        if f.kind == "overload":
            for _ in range(f.burst):
                at = f.at_s + rng.uniform(0.0, f.duration_s)
                arrivals.append(_arrival(rng, prof, n, at, burst=True))
                n += 1
        elif f.kind in (*STORE_FAULT_KINDS, *POOL_FAULT_KINDS):
            # submits while the store (or orchestratord) is down: spread over the fault,
            # which the runner injects at most STORE_FAULT_WAIT_S late (ORCH-6111)
            for k in range(f.burst):
                at = f.at_s + (k + 0.5) * (f.duration_s + STORE_FAULT_WAIT_S) / f.burst
                arrivals.append(_arrival(rng, prof, n, at, burst=True))
                n += 1
    plan.arrivals = sorted(arrivals, key=lambda a: (a.at_s, a.n))
    return plan


TENANTS = (
    Tenant("alpha", weight=3, share=2.0),
    Tenant("beta", weight=1, share=2.0),
    Tenant("gamma", weight=1, max_concurrent=2, share=1.0),
)

CI = Profile(
    name="ci",
    duration_s=100.0,
    rate_per_s=0.8,
    tenants=TENANTS,
    faults=(
        FaultSpec("engine_kill9", at_s=15.0, duration_s=3.0),
        FaultSpec("engine_sigstop", at_s=35.0, duration_s=6.0),
        FaultSpec("net_blackhole", at_s=55.0, duration_s=6.0),
        FaultSpec("overload", at_s=75.0, duration_s=2.0, burst=36),
    ),
)


def _long_faults(duration_s: float) -> tuple[FaultSpec, ...]:
    cycle = (
        FaultSpec("engine_kill9", at_s=0.0, duration_s=3.0),
        FaultSpec("net_latency", at_s=0.0, duration_s=20.0, latency_ms=150),
        FaultSpec("engine_sigstop", at_s=0.0, duration_s=8.0),
        FaultSpec("overload", at_s=0.0, duration_s=3.0, burst=48),
        FaultSpec("net_blackhole", at_s=0.0, duration_s=8.0),
        FaultSpec("net_reset", at_s=0.0),
    )
    out: list[FaultSpec] = []
    t, k = 30.0, 0
    while t < duration_s - 30:
        spec = cycle[k % len(cycle)]
        out.append(FaultSpec(spec.kind, t, spec.duration_s, spec.latency_ms, spec.burst))
        t += 55.0
        k += 1
    return tuple(out)


LONG = Profile(
    name="long",
    duration_s=1800.0,
    rate_per_s=0.7,
    tenants=TENANTS,
    faults=_long_faults(1800.0),
)

# orchestratord on the Valkey store (ORCH-6110): the store killed and restarted on its
# AOF, the store paused, orchestratord killed and restarted with the same config.
# Short (CI <= 45 s): few arrivals, no OpenAI-API clients (that API has no resume, so a
# client of a killed orchestratord cannot reconnect), no quota tenant (the daemon's
# end times, which the quota check needs, do not survive its kill -9).
STORE = Profile(
    name="store",
    duration_s=22.0,
    rate_per_s=1.0,
    tenants=(Tenant("alpha", weight=3, share=2.0), Tenant("beta", weight=1, share=1.0)),
    faults=(
        FaultSpec("store_kill9", at_s=4.0, duration_s=2.0, burst=3),
        FaultSpec("store_sigstop", at_s=10.5, duration_s=3.0, burst=3),
        FaultSpec("orchestratord_kill9", at_s=17.0, duration_s=0.5, burst=2),
    ),
    openai_share=0.0,
    store=True,
    max_tokens=(8, 16, 32, 48),
)

# A pool launched and supervised by a remote pool-managerd (ORCH-6114): pool-managerd
# killed with SIGKILL and restarted, then a restart storm that opens every replica's
# breaker (2 failures in 60 s), held open, then reset through orchestratord.
POOL_PM = Profile(
    name="pool",
    duration_s=22.0,
    rate_per_s=1.0,
    tenants=(Tenant("alpha", weight=3, share=2.0), Tenant("beta", weight=1, share=1.0)),
    faults=(
        FaultSpec("pool_managerd_kill9", at_s=3.5, duration_s=0.5, burst=2),
        FaultSpec("restart_storm", at_s=13.0, duration_s=3.0, burst=3),
    ),
    openai_share=0.0,
    pool_managerd=True,
    max_tokens=(8, 16, 32, 48),
)

PROFILES = {"ci": CI, "long": LONG, "store": STORE, "pool": POOL_PM}
