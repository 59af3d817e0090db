"""Session table: TTL, turns, budgets, token totals and replica affinity (ORCH-1401..1405).

Sessions are keyed by ``(tenant, session_id)``: a session belongs to the tenant
of the key that opened it, and the same ID sent by another tenant names another
session, so no tenant can read, extend or evict another's (ORCH-8005).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llama_orch.core.api import SessionInfo
from llama_orch.core.config import SessionConfig
from llama_orch.core.errors import InvalidParams
from llama_orch.core.replica import ReplicaSetKey

__all__ = ["Session", "SessionKey", "SessionTable"]

SessionKey = tuple[str, str]  # (tenant, session_id)


@dataclass
class Session:
    key: SessionKey
    expires_at: float
    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    replica_id: str | None = None  # where the KV of the last turn lives
    set_key: ReplicaSetKey | None = None  # every turn stays in one replica set (ORCH-1302)
    engine_ms: int = 0  # dispatch-to-end time over all turns, for the time budget
    reserved_tokens: int = 0  # prompt + max_tokens of turns admitted but not finished
    cost: float = 0.0  # cost units of finished turns (ORCH-1906)
    reserved_cost: float = 0.0  # cost of prompt + max_tokens of unfinished turns
    last_used: float = field(default_factory=time.monotonic)


class SessionTable:
    def __init__(self, config: SessionConfig) -> None:
        self._cfg = config
        self._sessions: dict[SessionKey, Session] = {}

    @property
    def max_turns(self) -> int:
        return self._cfg.max_turns

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if v.expires_at <= now]:
            del self._sessions[sid]

    def get(self, key: SessionKey) -> Session | None:
        self._expire(time.monotonic())
        return self._sessions.get(key)

    def cost_remaining(self, s: Session) -> float | None:
        """Cost units left in the session's budget; None = unlimited (ORCH-1906)."""
        if self._cfg.cost_budget is None:
            return None
        return max(0.0, self._cfg.cost_budget - s.cost - s.reserved_cost)

    def remaining(self, s: Session) -> tuple[int | None, int | None]:
        """(tokens, time ms) left in the session's budgets; None = unlimited (ORCH-1405)."""
        cfg = self._cfg
        tokens = None
        if cfg.token_budget is not None:
            used = s.tokens_in + s.tokens_out + s.reserved_tokens
            tokens = max(0, cfg.token_budget - used)
        ms = None if cfg.time_budget_ms is None else max(0, cfg.time_budget_ms - s.engine_ms)
        return tokens, ms

    def begin_turn(self, key: SessionKey, tokens: int = 0, cost: float = 0.0) -> Session:
        """Count a new turn of ``tokens`` (prompt + max_tokens) costing up to ``cost``;
        refuse beyond ``max_turns`` (ORCH-1402) or the session's token, time
        (ORCH-1405) or cost (ORCH-1906) budget."""
        now = time.monotonic()
        self._expire(now)
        session_id = key[1]
        s = self._sessions.get(key)
        if s is None:
            s = self._sessions[key] = Session(key, now + self._cfg.ttl_ms / 1000)
        if s.turns >= self._cfg.max_turns:
            raise InvalidParams(
                f"session {session_id} reached max_turns={self._cfg.max_turns}; "
                "delete it or start a new session"
            )
        tok_left, ms_left = self.remaining(s)
        if tok_left is not None and tokens > tok_left:
            raise InvalidParams(
                f"session {session_id} has {tok_left} tokens left in its budget,"
                f" the task needs up to {tokens} - at `$.max_tokens`"
            )
        if ms_left == 0:
            raise InvalidParams(f"session {session_id} used up its time budget")
        cost_left = self.cost_remaining(s)
        if cost_left is not None and cost > cost_left:
            raise InvalidParams(
                f"session {session_id} has {cost_left:g} cost units left in its budget,"
                f" the task may cost up to {cost:g} - at `$.max_tokens`"
            )
        s.reserved_tokens += tokens
        s.reserved_cost += cost
        s.turns += 1
        s.last_used = now
        s.expires_at = now + self._cfg.ttl_ms / 1000
        return s

    def undo_turn(self, key: SessionKey, tokens: int = 0, cost: float = 0.0) -> None:
        """Give back a turn ``begin_turn`` counted whose task was then not admitted
        (a full queue): a rejected submission uses no turn and reserves nothing."""
        s = self._sessions.get(key)
        if s is None:
            return
        s.turns = max(0, s.turns - 1)
        s.reserved_tokens = max(0, s.reserved_tokens - tokens)
        s.reserved_cost = max(0.0, s.reserved_cost - cost)

    def record(
        self,
        key: SessionKey,
        replica_id: str | None,
        tokens_in: int,
        tokens_out: int,
        *,
        reserved: int = 0,
        engine_ms: int = 0,
        set_key: ReplicaSetKey | None = None,
        cost_per_token: float = 0.0,
    ) -> None:
        """Settle a finished turn: its real usage replaces its reservation of
        ``reserved`` tokens (at ``cost_per_token``)."""
        s = self._sessions.get(key)
        if s is None:
            return
        s.tokens_in += tokens_in
        s.tokens_out += tokens_out
        s.reserved_tokens = max(0, s.reserved_tokens - reserved)
        s.cost += (tokens_in + tokens_out) * cost_per_token
        s.reserved_cost = max(0.0, s.reserved_cost - reserved * cost_per_token)
        s.engine_ms += engine_ms
        if replica_id is not None:
            s.replica_id = replica_id
        if set_key is not None:
            s.set_key = set_key

    def all(self) -> list[Session]:
        """Every unexpired session of every tenant (admin listing, ORCH-5123)."""
        self._expire(time.monotonic())
        return list(self._sessions.values())

    def delete(self, key: SessionKey) -> Session | None:
        return self._sessions.pop(key, None)

    def info(self, s: Session) -> SessionInfo:
        remaining = max(0, int((s.expires_at - time.monotonic()) * 1000))
        return SessionInfo(
            session_id=s.key[1],
            ttl_ms_remaining=remaining,
            turns=s.turns,
            max_turns=self._cfg.max_turns,
            kv_bytes=0,  # engines here do not report per-session KV size
            kv_warmth=s.replica_id is not None,
            tokens_in=s.tokens_in,
            tokens_out=s.tokens_out,
        )
