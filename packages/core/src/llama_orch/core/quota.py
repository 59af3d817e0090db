"""Admission quotas: token buckets per tenant and per priority, concurrency caps (ORCH-1114).

Pure code: the caller passes ``now`` (seconds, monotonic). A refusal raises
:class:`~llama_orch.core.errors.AdmissionRejected` with ``policy_label``
``"quota"``, so every quota refusal is a typed, counted 429: a bucket's with
``retry_after_ms`` set to the time until a token is back; ``max_concurrent``'s as
:class:`TenantBusy` without it, for the caller to tell when one of the tenant's
tasks in flight ends, which only the workload forecast knows (ORCH-1125).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .config import RateLimit, TenantConfig
from .errors import AdmissionRejected

__all__ = ["QUOTA_LABEL", "Quotas", "TenantBusy", "TokenBucket"]

QUOTA_LABEL = "quota"


class TenantBusy(AdmissionRejected):
    """A refusal by the tenant's ``max_concurrent`` (ORCH-1114): admitted again only
    when one of its own tasks in flight ends, so ``retry_after_ms`` is None here and
    the caller fills in the earliest forecast end of those tasks (ORCH-1125)."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_ms(self, now: float) -> int:
        """0 when a token is available now, else milliseconds until one is."""
        self._refill(now)
        if self.tokens >= 1:
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate * 1000))

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


class Quotas:
    """All quota state of one orchestrator."""

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        default_tenant: TenantConfig,
        priorities: Mapping[str, RateLimit],
    ) -> None:
        self._tenants = dict(tenants)
        self._default = default_tenant
        self._priorities = dict(priorities)
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def tenant_config(self, tenant: str) -> TenantConfig:
        return self._tenants.get(tenant, self._default)

    def _bucket(
        self, key: tuple[str, str], rps: float, burst: int | None, now: float
    ) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket(rps, burst or max(1, math.ceil(rps)), now)
        return b

    def bucket_tokens(self, tenant: str, now: float) -> float | None:
        """Tokens left in the tenant's rps bucket, None when it has no rate limit."""
        cfg = self.tenant_config(tenant)
        if cfg.rps is None:
            return None
        b = self._bucket(("t", tenant), cfg.rps, cfg.burst, now)
        b.wait_ms(now)  # refills to ``now``
        return b.tokens

    def admit(self, tenant: str, priority: str, in_flight: int, now: float) -> None:
        """Charge one request or raise ``AdmissionRejected`` (nothing is charged then)."""
        cfg = self.tenant_config(tenant)
        if cfg.max_concurrent is not None and in_flight >= cfg.max_concurrent:
            raise TenantBusy(
                f"tenant {tenant!r} has {in_flight} tasks in flight"
                f" (max_concurrent={cfg.max_concurrent})",
                policy_label=QUOTA_LABEL,
                retry_after_ms=None,
            )
        buckets: list[tuple[str, TokenBucket]] = []
        if cfg.rps is not None:
            buckets.append(
                (f"tenant {tenant!r}", self._bucket(("t", tenant), cfg.rps, cfg.burst, now))
            )
        plimit = self._priorities.get(priority)
        if plimit is not None and plimit.rps is not None:
            bucket = self._bucket(("p", priority), plimit.rps, plimit.burst, now)
            buckets.append((f"priority {priority!r}", bucket))
        for what, b in buckets:
            wait = b.wait_ms(now)
            if wait:
                raise AdmissionRejected(
                    f"{what} exceeded its rate ({b.rate:g}/s, burst {b.burst})",
                    policy_label=QUOTA_LABEL,
                    retry_after_ms=wait,
                )
        for _, b in buckets:
            b.take(now)
