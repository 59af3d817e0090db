"""Configuration structs for orchestratord and the embedded pool manager.

These msgspec structs are the single source of the config schema:
``tools/gen_config_schema.py`` writes ``contracts/config/config.schema.json``
from them, and a test fails when the committed schema drifts (ORCH-1004).
Unknown keys are rejected so that a typo never silently changes behaviour.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from .catalog_config import CatalogConfig
from .placement_policy import PlacementConfig
from .policy_config import PoliciesConfig, check_policies

__all__ = [
    "PRIORITIES",
    "AdmissionConfig",
    "ApiKey",
    "AuthConfig",
    "Config",
    "DispatchConfig",
    "EngineLaunchConfig",
    "FullPolicy",
    "LimitsConfig",
    "ObservabilityConfig",
    "PoolConfig",
    "PoolManagerdConfig",
    "Priority",
    "RemotePoolManager",
    "Role",
    "ServerConfig",
    "SessionConfig",
    "check_api_keys",
    "load_config",
    "parse_config",
]

# The one definition of the priority classes, highest first (issue #14).
Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

FullPolicy = Literal["reject", "drop-lru", "shed-low-priority"]
PositiveInt = Annotated[int, Meta(ge=1)]


Role = Literal["admin", "tenant"]
TenantName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# "sha256:" + 64 lowercase hex digits of the key's SHA-256 (ORCH-8002).
KeyHash = Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080  # 0 = pick a free port
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 10.0
    # TLS (ORCH-8030): PEM files handed to the HTTP server; both or neither.
    certfile: str | None = None
    keyfile: str | None = None
    # The ASGI server that runs the HTTP listener (ORCH-2810): uvicorn (httptools,
    # HTTP/1.1) or hypercorn (h11, also HTTP/2).
    http_server: Literal["hypercorn", "uvicorn"] = "uvicorn"


class ApiKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One API key, stored only as its hash (ORCH-8002)."""

    id: TenantName  # names the key in logs; never the key itself
    hash: KeyHash
    role: Role = "tenant"
    tenant: TenantName | None = None  # required for role ``tenant``


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """API keys and roles (ORCH-8001..8008). On unless ``enabled: false``."""

    enabled: bool = True
    keys: list[ApiKey] = []
    # A YAML or JSON file holding a list of ``ApiKey`` entries (a secret mount).
    keys_file: str | None = None
    public_metrics: bool = False  # /metrics without a key (ORCH-8006)
    public_health: bool = False  # /v1/pools/{id}/health without a key


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Bounds on what one client can make the server hold (ORCH-8010..8016)."""

    max_body_bytes: PositiveInt = 1_048_576
    max_prompt_bytes: PositiveInt = 524_288  # UTF-8 bytes of prompt or all messages
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 16_384  # request line + headers
    max_streams_per_tenant: PositiveInt = 1024  # ORCH-2701: the reason is in the spec
    # A stream whose client accepts no bytes for this long is cut (ORCH-8015).
    stream_stall_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    stream_chunk_bytes: Annotated[int, Meta(ge=1024)] = 65_536
    # An SSE comment on every open stream that sent nothing for this long (ORCH-1962).
    sse_keepalive_s: Annotated[float, Meta(gt=0)] = 15.0


class AdmissionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    queue_capacity: PositiveInt = 64  # queued tasks per pool, all priorities (ORCH-1101)
    full_policy: FullPolicy = "reject"
    default_max_tokens: PositiveInt = 256
    max_tokens_limit: PositiveInt = 8192
    event_log_retention_s: Annotated[float, Meta(gt=0)] = 600.0
    max_retained_tasks: PositiveInt = 10_000


class SessionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_ms: PositiveInt = 600_000
    max_turns: PositiveInt = 8
    # Per-session budgets enforced at admission (ORCH-1405); None = unlimited.
    token_budget: PositiveInt | None = None  # prompt + generated tokens over all turns
    time_budget_ms: PositiveInt | None = None  # engine time (dispatch to end) over all turns
    # Cost units over all turns; a token costs ``pools[].cost_per_token[priority]`` (ORCH-1906).
    cost_budget: Annotated[float, Meta(gt=0)] | None = None


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A token bucket: ``rps`` requests per second, ``burst`` banked (default ceil(rps))."""

    rps: Annotated[float, Meta(gt=0)] | None = None
    burst: PositiveInt | None = None


class TenantConfig(RateLimit, forbid_unknown_fields=True, kw_only=True):
    """Fair-share weight and quotas of one tenant (ORCH-1110, ORCH-1114)."""

    weight: PositiveInt = 1
    max_concurrent: PositiveInt | None = None  # queued + running tasks


class WatchdogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Stuck-task limits (ORCH-1115); None disables a limit."""

    wall_timeout_s: Annotated[float, Meta(gt=0)] | None = None  # dispatch to end
    idle_timeout_s: Annotated[float, Meta(gt=0)] | None = None  # between engine events


class WaitingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The service-time model and what a queued task sees and how long it waits
    (ORCH-1950..1969)."""

    # Samples of the service-time model halve in weight every this many seconds (ORCH-1954).
    model_half_life_s: Annotated[float, Meta(gt=0)] = 600.0
    # Admission refuses a deadline only if finish x (1 - margin) > deadline (ORCH-1958).
    deadline_margin: Annotated[float, Meta(ge=0, lt=1)] = 0.2
    # A queued task's ``queued`` event is re-sent at most this often when it changed (ORCH-1961).
    queued_event_interval_s: Annotated[float, Meta(gt=0)] = 1.0
    # Bounded waits (ORCH-1965): longest time queued; longest time without a Ready replica.
    queue_ttl_s: Annotated[float, Meta(gt=0)] | None = 600.0
    unready_timeout_s: Annotated[float, Meta(gt=0)] | None = 30.0
    # Retry-After carried by the terminal error of a task ended by these bounds.
    expired_retry_after_ms: PositiveInt = 1000


class SchedulingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Weighted fair queuing, quotas, deadlines and the watchdog (ARCHITECTURE §6)."""

    priority_weights: dict[str, PositiveInt] = msgspec.field(
        default_factory=lambda: {"interactive": 8, "batch": 1}
    )
    tenants: dict[str, TenantConfig] = {}
    default_tenant: TenantConfig = msgspec.field(default_factory=TenantConfig)
    priority_limits: dict[str, RateLimit] = {}
    share_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.01  # admission_share EWMA
    deadline_cv: Annotated[float, Meta(gt=0)] = 0.25  # spread assumed by on_time_probability
    # ``hard`` interrupts running lower-priority work, only on adapters that declare
    # ``interruptible_decode``; ``soft`` never interrupts (ORCH-1901).
    preemption: Literal["soft", "hard"] = "soft"
    watchdog: WatchdogConfig = msgspec.field(default_factory=WatchdogConfig)
    waiting: WaitingConfig = msgspec.field(default_factory=WaitingConfig)


class EngineLaunchConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How pool-managerd launches a pool's engine beyond the shared pool fields
    (ORCH-POOL-3030..3037). Keys that do not apply to the pool's engine are refused
    at startup, so a setting is never silently ignored (ORCH-POOL-3034)."""

    # Shards per replica; None = one per device of ``devices`` (1 on the CPU).
    tensor_parallel: PositiveInt | None = None
    dtype: str | None = None  # vllm-http, tgi-http: --dtype (vLLM on the CPU: bfloat16)
    env: dict[str, str] = {}  # extra environment of the engine process
    # vllm-http: the python of an existing vLLM install; None = the provisioned CPU venv.
    python: str | None = None
    # triton: `tritonserver` on `model_repository`, or `pytriton`: `pytriton_app` run in
    # the provisioned PyTriton venv (it binds `triton_model` and serves it).
    triton_server: Literal["tritonserver", "pytriton"] = "tritonserver"
    model_repository: str | None = None
    triton_model: str | None = None  # the decoupled text model the adapter calls
    pytriton_app: str | None = None
    triton_backend: Literal["python", "vllm", "tensorrtllm"] | None = None
    # TensorRT-LLM (triton_backend: tensorrtllm): the version of the backend in the
    # image, carried into engine_version; model-repository parameters are not edited.
    trtllm_version: str | None = None
    # tgi-http: --quantize (e.g. awq, gptq, bitsandbytes); None = as the model says.
    quantize: str | None = None


class DispatchConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``pools[].dispatch``: the dispatch guard for told finishes (ORCH-2931..2935).
    ``guard_told_finish``: a factor ``f`` ≥ 1, or null (off, the default): a queued task
    whose prefill would push a task running on a replica past its admission + ``f`` x
    its told finish waits (at the head of the queue) until that task ends, unless the
    wait would miss its own deadline. Memory backend only (ignored with ``state:``).
    ``keep_told_start``: a margin ``m`` ≥ 1, or null (off, the default): within a
    priority and tenant, a task with a deadline passes a queued task without one only
    when its start-by (deadline - ``m`` x its told service) is earlier than that task's
    (admission + ``m`` x its told start), ORCH-2972. Memory backend only."""

    guard_told_finish: Annotated[float, Meta(ge=1)] | None = None
    keep_told_start: Annotated[float, Meta(ge=1)] | None = None


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One pool of identical engine replicas.

    With ``endpoints`` empty the embedded pool manager provisions and starts
    ``replicas`` engine processes; with ``endpoints`` set, orchestratord uses
    already-running engines at those URLs and starts nothing.
    """

    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    engine: str = "llamacpp-http"
    model: str = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
    replicas: PositiveInt = 1
    slots: PositiveInt = 1  # parallel sequences per replica (-np)
    ctx: PositiveInt = 2048  # per-slot context window in tokens
    threads: PositiveInt | None = None
    devices: str | None = None  # CUDA_VISIBLE_DEVICES mask; None = CPU
    engine_binary: str | None = None
    engine_flags: list[str] = []
    continuous_batching: bool = True
    # Start the engines with embeddings on so the pool serves /v1/embeddings (ORCH-9211):
    # llama-server --embeddings --pooling mean (it still generates); vLLM --runner pooling
    # --convert embed (it then serves embeddings only, ORCH-9281).
    embeddings: bool = False
    endpoints: list[str] = []
    # sha256 of the model behind ``endpoints`` (engines do not report it);
    # pools the pool manager launches get it from provisioning.
    model_digest: str | None = None
    engine_version: str | None = None
    adapter_options: dict[str, str | int | float | bool] = {}
    # Cost units per prompt or generated token, by priority, for session cost budgets
    # (ORCH-1906); a priority not listed costs 0.
    cost_per_token: dict[str, Annotated[float, Meta(ge=0)]] = {}
    startup_timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    # Supervision (ORCH-POOL-3007, 3015-3017): restarts back off exponentially
    # with jitter; ``breaker_failures`` failures within ``breaker_window_s``
    # open the circuit (the replica stays ``failed`` until a reload or a reset).
    restart_backoff_initial_s: Annotated[float, Meta(gt=0)] = 1.0
    restart_backoff_max_s: Annotated[float, Meta(gt=0)] = 30.0
    restart_jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    breaker_failures: PositiveInt = 5
    breaker_window_s: Annotated[float, Meta(gt=0)] = 300.0
    # Liveness probes of a Ready engine; their timeout is independent of
    # request timeouts so that a busy engine does not flap.
    health_probe_interval_s: Annotated[float, Meta(gt=0)] = 2.0
    health_probe_timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    health_probe_failures: PositiveInt = 3
    # Preload: MemAvailable must exceed model size x this factor (0 = off).
    ram_headroom_factor: Annotated[float, Meta(ge=0)] = 1.2
    # A failed provisioning is retried with the restart backoff (ORCH-3027).
    provision_retries: Annotated[int, Meta(ge=0)] = 3
    # Engine-specific launch settings (vllm-http, triton, tgi-http: ORCH-POOL-3030).
    launch: EngineLaunchConfig = msgspec.field(default_factory=EngineLaunchConfig)
    # Placement policy inside a replica set (ORCH-2310, issue #17).
    placement: PlacementConfig = msgspec.field(default_factory=PlacementConfig)
    # The dispatch guard for told finishes (ORCH-2931); off unless set.
    dispatch: DispatchConfig = msgspec.field(default_factory=DispatchConfig)
    # Moves of one running task to another replica of its set when its replica dies
    # or resets mid-stream (ORCH-2330); 0 turns migration off.
    migration_limit: Annotated[int, Meta(ge=0)] = 1


class PoolManagerdConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``pool-managerd`` daemon's HTTP API (ORCH-3021); served only with a token.

    The token is ``token``, else the contents of ``token_file``, else
    ``$LLAMA_ORCH_POOL_TOKEN``.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8090  # 0 = pick a free port
    token: str | None = None
    token_file: str | None = None
    # Address the engines listen on and are reported at; a remote orchestratord needs
    # one it can reach (a pod IP). ``$LLAMA_ORCH_ENGINE_HOST`` overrides it (ORCH-6223).
    engine_host: str = "127.0.0.1"


class RemotePoolManager(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A ``pool-managerd`` on another host that serves some of the pools (ORCH-3023)."""

    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    url: Annotated[str, Meta(pattern=r"^https?://")]
    pools: Annotated[list[str], Meta(min_length=1)]
    token: str | None = None
    token_file: str | None = None
    # Replicas leave placement when no message arrived for this long (ORCH-3024).
    lease_ttl_s: Annotated[float, Meta(ge=0.5, le=60)] = 5.0
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 2.0


class PoolManagerDiscovery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """pool-managerds found by name resolution (ORCH-6230, ORCH-6231).

    Every address ``dns`` resolves to (A and AAAA), e.g. the headless Service of a
    pool-managerd DaemonSet, is followed like a ``pool_managers`` entry named
    ``<name>-<address>``; the set is resolved again every ``interval_s``."""

    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,22}$")]
    dns: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    pools: Annotated[list[str], Meta(min_length=1)]
    scheme: Literal["http", "https"] = "http"
    interval_s: Annotated[float, Meta(gt=0)] = 10.0
    token: str | None = None
    token_file: str | None = None
    lease_ttl_s: Annotated[float, Meta(ge=0.5, le=60)] = 5.0
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 2.0


class ObservabilityConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Engine scrapes, traces and startup self-tests (ORCH-7003, ORCH-7042)."""

    engine_scrape_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    # OTLP/HTTP trace export, e.g. "http://127.0.0.1:4318/v1/traces"; None = no export.
    otlp_traces_endpoint: str | None = None
    self_test: bool = True  # preload, decode, cancel, telemetry checks before Ready
    self_test_timeout_s: Annotated[float, Meta(gt=0)] = 60.0


class StateDurability(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``state.durability``: what the store must confirm before a 202 (ORCH-2550).

    After the atomic admission the valkey backend issues, on the same connection,
    ``WAIT wait_replicas timeout_ms`` or, with ``wait_aof``, ``WAITAOF 1
    wait_replicas timeout_ms`` (the primary's AOF and ``wait_replicas`` replicas'
    AOF fsynced; Valkey >= 7.2, Redis >= 7.2). When the store does not confirm within
    ``timeout_ms`` the admission is withdrawn and the submit answers 503 with
    ``Retry-After`` (ORCH-2551)."""

    wait_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    wait_aof: bool = False
    timeout_ms: Annotated[int, Meta(ge=1, le=60000)] = 500


class StateSentinel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``state.sentinel``: find the store's primary through Valkey/Redis Sentinel
    (ORCH-2553); connections follow a failover to the promoted replica."""

    addresses: Annotated[
        list[Annotated[str, Meta(pattern=r"^[^\s:]+:[0-9]{1,5}$")]], Meta(min_length=1)
    ]
    master_name: Annotated[str, Meta(min_length=1)]
    password: str | None = None  # of the data nodes (primary and replicas)
    sentinel_password: str | None = None  # of the Sentinels themselves
    db: Annotated[int, Meta(ge=0)] = 0


class StateOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``state:`` in the config: the shared state store (ORCH-2501, ORCH-2520).

    Without a ``state:`` section orchestratord keeps its tasks in its own process
    (no store). ``backend`` names a ``llama_orch.state_stores`` plugin; for ``valkey``
    a missing ``url`` starts a private server under ``data_dir`` (ORCH-2513)."""

    backend: str = "memory"
    url: str | None = None
    data_dir: str | None = None
    key_prefix: str = "llorch"
    lease_ms: Annotated[int, Meta(ge=100)] = 3000
    # Embedded server only. Either way the AOF is written before a reply is sent, so
    # kill -9 of the server loses no acknowledged write; "always" also fsyncs before
    # the reply (survives a machine crash or power loss), "everysec" may lose ~1 s then.
    appendfsync: Literal["everysec", "always"] = "everysec"
    # ORCH-2550: WAIT/WAITAOF after the admitting call, before the 202 (valkey backend)
    durability: StateDurability | None = None
    # ORCH-2553: the primary found through Sentinel instead of `url` (valkey backend)
    sentinel: StateSentinel | None = None

    def __post_init__(self) -> None:
        if self.url is not None and self.sentinel is not None:
            raise ValueError("state: give either `url` or `sentinel`, not both")
        if self.backend == "memory" and (self.durability or self.sentinel):
            raise ValueError("state: `durability` and `sentinel` need a server backend (valkey)")


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    admission: AdmissionConfig = msgspec.field(default_factory=AdmissionConfig)
    sessions: SessionConfig = msgspec.field(default_factory=SessionConfig)
    scheduling: SchedulingConfig = msgspec.field(default_factory=SchedulingConfig)
    observability: ObservabilityConfig = msgspec.field(default_factory=ObservabilityConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    allow_cpu_inference: bool = False
    pools: list[PoolConfig] = []
    # Remote pool-managerd daemons; pools they serve are not started embedded.
    pool_managers: list[RemotePoolManager] = []
    # pool-managerds found through DNS, e.g. a headless Service (ORCH-6230).
    pool_manager_discovery: list[PoolManagerDiscovery] = []
    # Used by the ``pool-managerd`` daemon only.
    pool_managerd: PoolManagerdConfig = msgspec.field(default_factory=PoolManagerdConfig)
    # Admission and placement policies (ORCH-8540, issue #16).
    policies: PoliciesConfig = msgspec.field(default_factory=PoliciesConfig)
    # The shared task state store (ORCH-2520, issue #13); None: in-process only.
    state: StateOptions | None = None
    # Model catalog and its trust policy (ORCH-3311..3320, issue #18).
    catalog: CatalogConfig = msgspec.field(default_factory=CatalogConfig)


def check_api_keys(keys: list[ApiKey]) -> None:
    """Key ids are unique and every ``tenant`` key names its tenant (ORCH-8001)."""
    ids = [k.id for k in keys]
    if len(ids) != len(set(ids)):
        raise msgspec.ValidationError(f"auth key ids must be unique, got {ids}")
    for k in keys:
        if k.role == "tenant" and k.tenant is None:
            raise msgspec.ValidationError(f"auth key {k.id!r} has role tenant but no `tenant`")


def parse_config(data: bytes | str, *, fmt: Literal["yaml", "json"] = "yaml") -> Config:
    """Decode and validate a config document (raises ``msgspec.ValidationError``)."""
    if fmt == "json":
        cfg = msgspec.json.decode(data, type=Config)
    else:
        cfg = msgspec.yaml.decode(data, type=Config)
    unknown = set(cfg.scheduling.priority_weights) | set(cfg.scheduling.priority_limits)
    for pool in cfg.pools:
        unknown |= set(pool.cost_per_token)
    unknown -= set(PRIORITIES)
    if unknown:
        raise msgspec.ValidationError(
            f"unknown priorities {sorted(unknown)} in `scheduling` or `cost_per_token`"
        )
    if (cfg.server.certfile is None) != (cfg.server.keyfile is None):
        raise msgspec.ValidationError("`server.certfile` and `server.keyfile` go together")
    check_api_keys(cfg.auth.keys)
    check_policies(cfg.policies)
    ids = [p.id for p in cfg.pools]
    if len(ids) != len(set(ids)):
        raise msgspec.ValidationError(f"pool ids must be unique, got {ids}")
    names = [m.name for m in cfg.pool_managers]
    if len(names) != len(set(names)):
        raise msgspec.ValidationError(f"pool_managers names must be unique, got {names}")
    by_id = {p.id: p for p in cfg.pools}
    served = [("pool_managers", m.name, m.pools) for m in cfg.pool_managers]
    served += [("pool_manager_discovery", d.name, d.pools) for d in cfg.pool_manager_discovery]
    for section, name, pools in served:
        for pid in pools:
            if pid not in by_id:
                raise msgspec.ValidationError(f"{section}[{name}] lists unknown pool {pid}")
            if by_id[pid].endpoints:
                raise msgspec.ValidationError(
                    f"{section}[{name}] lists pool {pid}, which has `endpoints`"
                )
    found = [d.name for d in cfg.pool_manager_discovery]
    if len(found) != len(set(found)):
        raise msgspec.ValidationError(f"pool_manager_discovery names must be unique, got {found}")
    for name in names:  # ORCH-6230: a discovered `<name>-<address>` must not collide
        clash = [d for d in found if name.startswith(f"{d}-")]
        if clash:
            raise msgspec.ValidationError(
                f"pool_managers name {name} starts with pool_manager_discovery name {clash[0]}-"
            )
    return cfg


def load_config(path: str) -> Config:
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_config(data, fmt="json" if path.endswith(".json") else "yaml")
