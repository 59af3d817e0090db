"""Session table: TTL, turn count, token totals and replica affinity (ORCH-1401..1403)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llama_orch.core.api import SessionInfo
from llama_orch.core.config import SessionConfig
from llama_orch.core.errors import InvalidParams

__all__ = ["Session", "SessionTable"]


@dataclass
class Session:
    session_id: str
    expires_at: float
    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    replica_id: str | None = None  # where the KV of the last turn lives
    last_used: float = field(default_factory=time.monotonic)


class SessionTable:
    def __init__(self, config: SessionConfig) -> None:
        self._cfg = config
        self._sessions: dict[str, Session] = {}

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if v.expires_at <= now]:
            del self._sessions[sid]

    def get(self, session_id: str) -> Session | None:
        self._expire(time.monotonic())
        return self._sessions.get(session_id)

    def begin_turn(self, session_id: str) -> Session:
        """Count a new turn; refuse beyond ``max_turns`` (ORCH-1402)."""
        now = time.monotonic()
        self._expire(now)
        s = self._sessions.get(session_id)
        if s is None:
            s = self._sessions[session_id] = Session(session_id, now + self._cfg.ttl_ms / 1000)
        if s.turns >= self._cfg.max_turns:
            raise InvalidParams(
                f"session {session_id} reached max_turns={self._cfg.max_turns}; "
                "delete it or start a new session"
            )
        s.turns += 1
        s.last_used = now
        s.expires_at = now + self._cfg.ttl_ms / 1000
        return s

    def record(
        self, session_id: str, replica_id: str | None, tokens_in: int, tokens_out: int
    ) -> None:
        s = self._sessions.get(session_id)
        if s is None:
            return
        s.tokens_in += tokens_in
        s.tokens_out += tokens_out
        if replica_id is not None:
            s.replica_id = replica_id

    def delete(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def info(self, s: Session) -> SessionInfo:
        remaining = max(0, int((s.expires_at - time.monotonic()) * 1000))
        return SessionInfo(
            session_id=s.session_id,
            ttl_ms_remaining=remaining,
            turns=s.turns,
            max_turns=self._cfg.max_turns,
            kv_bytes=0,  # engines here do not report per-session KV size
            kv_warmth=s.replica_id is not None,
            tokens_in=s.tokens_in,
            tokens_out=s.tokens_out,
        )
