"""Remote pool-managerds: leased replica streams and commands (ORCH-3023..3026).

For every entry of ``pool_managers`` orchestratord follows
``GET /v1/replicas/stream`` of that pool-managerd. Each message renews the
lease; when none arrived within the lease TTL, every replica of that
pool-managerd leaves placement (``failed``, ``lease expired: ...``) whatever
its engine's health — a stopped or partitioned pool-managerd can no longer
supervise, drain or reload its engines — and the stream is reopened with
bounded backoff. The snapshot of the new stream restores them. Remote
replicas are known here as ``<name>/<replica_id>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from llama_orch.core.config import RemotePoolManager
from llama_orch.core.errors import NotFound, PoolUnavailable, PoolUnready, UntrustedArtifact
from llama_orch.core.registry import Lease, ReplicaChanged, Snapshot, registry_decoder
from llama_orch.core.replica import ReplicaState

from .errors import StartupError

if TYPE_CHECKING:
    from .service import Orchestrator

__all__ = ["TOKEN_ENV", "RemotePoolManagerClient", "pool_token"]

_log = logging.getLogger("llama_orch.orchestratord")
TOKEN_ENV = "LLAMA_ORCH_POOL_TOKEN"


def pool_token(cfg: RemotePoolManager) -> str:
    """The bearer token of a pool-managerd entry; none is a startup error (ORCH-3023)."""
    if cfg.token:
        return cfg.token
    if cfg.token_file:
        try:
            token = Path(cfg.token_file).read_text().strip()
        except OSError as exc:
            raise StartupError(f"pool_managers[{cfg.name}]: cannot read token_file: {exc}") from exc
        if token:
            return token
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise StartupError(
            f"pool_managers[{cfg.name}] has no token: set `token`, `token_file` or ${TOKEN_ENV}"
        )
    return token


class _StreamEnded(Exception):
    pass


class RemotePoolManagerClient:
    """Follows one remote pool-managerd and sends it commands."""

    def __init__(self, cfg: RemotePoolManager, orch: Orchestrator) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._orch = orch
        self._auth = {"Authorization": f"Bearer {pool_token(cfg)}"}
        self._base = cfg.url.rstrip("/")
        self._known: dict[str, ReplicaState] = {}  # local id → last state the remote sent
        self.lease_expires = 0.0  # time.monotonic() deadline
        self.expired = True  # no lease until the first message
        self._renewed = asyncio.Event()

    def serves(self, pool_id: str) -> bool:
        return pool_id in self.cfg.pools

    def replica_ids(self, pool_id: str) -> list[str]:
        return sorted(rid for rid, s in self._known.items() if s.pool_id == pool_id)

    def status(self, replica_id: str) -> str:
        state = self._known.get(replica_id)
        return state.status if state is not None else "stopped"

    # ------------------------------------------------------------------ stream

    async def run(self) -> None:
        """Follow the stream forever (cancel to stop), reconnecting with backoff."""
        watcher = asyncio.create_task(self._watch_lease(), name=f"lease-{self.name}")
        delay = 0.1
        try:
            async with aiohttp.ClientSession(headers=self._auth) as http:
                while True:
                    try:
                        await self._follow(http)
                        reason = "stream ended"
                    except TimeoutError:
                        reason = "no message within the lease TTL"
                    except (aiohttp.ClientError, OSError, _StreamEnded) as exc:
                        reason = str(exc) or type(exc).__name__
                    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                        reason = f"undecodable message: {exc}"
                    _log.warning("registry stream of pool-managerd %s: %s", self.name, reason)
                    if not self.expired:
                        delay = 0.1  # it was healthy: retry fast
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cfg.reconnect_max_s)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _follow(self, http: aiohttp.ClientSession) -> None:
        ttl = self.cfg.lease_ttl_s
        url = f"{self._base}/v1/replicas/stream?lease_ttl_ms={int(ttl * 1000)}"
        # A stopped process still completes TCP handshakes (kernel backlog):
        # only an answer within the TTL counts.
        async with asyncio.timeout(ttl):
            resp = await http.get(url, timeout=aiohttp.ClientTimeout(total=None))
        async with resp:
            if resp.status != 200:
                body = (await resp.read())[:300]
                raise _StreamEnded(f"HTTP {resp.status}: {body.decode(errors='replace')}")
            buf = b""
            while True:
                async with asyncio.timeout(ttl):
                    chunk = await resp.content.readany()
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._receive(registry_decoder.decode(line))

    def _receive(self, msg: Snapshot | ReplicaChanged | Lease) -> None:
        self.lease_expires = time.monotonic() + msg.lease_ttl_ms / 1000
        self._renewed.set()
        if isinstance(msg, Snapshot):
            restored, self.expired = self.expired, False
            seen = {self._apply(s) for s in msg.replicas}
            for rid in [r for r in self._known if r not in seen]:
                gone = self._known.pop(rid)
                self._publish(_replace(gone, status="stopped", backoff_ms=0))
            if restored:
                _log.info("pool-managerd %s: lease granted, %d replica(s)", self.name, len(seen))
            return
        if self.expired:
            # The old stream came back after its lease ran out: what we hold
            # is the last word of the pool-managerd, valid again.
            self.expired = False
            for state in self._known.values():
                self._publish(state)
        if isinstance(msg, ReplicaChanged):
            self._apply(msg.state)

    def _apply(self, remote: ReplicaState) -> str:
        rid = f"{self.name}/{remote.replica_id}"
        if not self.serves(remote.pool_id) or remote.pool_id not in self._orch.pools:
            _log.warning(
                "pool-managerd %s reports replica %s of pool %s, which it is not configured "
                "to serve: ignored",
                self.name,
                remote.replica_id,
                remote.pool_id,
            )
            return rid
        state = _replace(remote, replica_id=rid)
        if state.status == "stopped":
            self._known.pop(rid, None)  # gone for good: nothing to restore later
        else:
            self._known[rid] = state
        self._publish(state)
        return rid

    def republish(self, pool_id: str) -> None:
        """Apply the last states of ``pool_id`` again (its draining flag changed)."""
        for state in list(self._known.values()):
            if state.pool_id == pool_id and not self.expired:
                self._publish(state)

    def _publish(self, state: ReplicaState) -> None:
        pool = self._orch.pools.get(state.pool_id)
        if pool is not None and pool.draining and state.status == "ready":
            state = _replace(state, status="draining")  # a drained pool stays drained
        self._orch.on_replica_change(state)

    async def _watch_lease(self) -> None:
        while True:
            self._renewed.clear()
            wait = self.lease_expires - time.monotonic()
            if wait > 0 or self.expired:
                # Woken by a renewal (which may move the deadline) or the deadline.
                timeout = None if self.expired else wait
                try:
                    async with asyncio.timeout(timeout):
                        await self._renewed.wait()
                except TimeoutError:
                    pass
                continue
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        why = (
            f"lease expired: pool-managerd {self.name} at {self._base} sent nothing within "
            f"{self.cfg.lease_ttl_s:g}s"
        )
        _log.error("%s; its %d replica(s) leave placement", why, len(self._known))
        for state in self._known.values():
            if state.status != "stopped":
                self._orch.on_replica_change(
                    _replace(state, status="failed", last_error=why, backoff_ms=0)
                )

    def forget(self, why: str) -> None:
        """Its pool-managerd left discovery (ORCH-6231): every replica leaves placement."""
        _log.warning("%s; its %d replica(s) leave placement", why, len(self._known))
        for state in self._known.values():
            self._orch.on_replica_change(
                _replace(state, status="stopped", last_error=why, backoff_ms=0)
            )
        self._known.clear()

    # ------------------------------------------------------------------ commands

    async def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        url = f"{self._base}{path}"
        try:
            async with (
                aiohttp.ClientSession(headers=self._auth) as http,
                http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp,
            ):
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PoolUnavailable(
                f"pool-managerd {self.name} at {self._base} did not answer {path}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        try:
            doc = msgspec.json.decode(data) if data else {}
        except msgspec.DecodeError:
            doc = {"message": data[:300].decode(errors="replace")}
        if status == 200:
            return doc
        msg = f"pool-managerd {self.name}: {doc.get('message', '')}"
        if status == 403:
            raise UntrustedArtifact(msg)
        if status == 404:
            raise NotFound(msg)
        if status == 503:
            raise PoolUnready(msg)
        raise PoolUnavailable(f"{msg} (HTTP {status})")

    def _local(self, ids: list[str]) -> list[str]:
        return [f"{self.name}/{rid}" for rid in ids]

    async def drain(self, pool_id: str, deadline_ms: int = 0) -> list[str]:
        doc = await self._post(
            f"/v1/pools/{pool_id}/drain", {"deadline_ms": deadline_ms}, 60 + deadline_ms / 1000
        )
        return self._local(doc["replicas"])

    async def reload(
        self, pool_id: str, model_ref: str, model_digest: str | None, drain_deadline_ms: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"new_model_ref": model_ref, "drain_deadline_ms": drain_deadline_ms}
        if model_digest is not None:
            body["model_digest"] = model_digest
        doc: dict[str, Any] = await self._post(f"/v1/pools/{pool_id}/reload", body, 3600)
        doc["replicas"] = self._local(doc["replicas"])
        doc["retired"] = self._local(doc["retired"])
        return doc

    async def drained(self, pool_id: str) -> bool:
        doc = await self._post(f"/v1/pools/{pool_id}/reload/drained", {}, 30)
        return bool(doc["released"])

    async def reset(self, pool_id: str) -> list[str]:
        doc = await self._post(f"/v1/pools/{pool_id}/reset", {}, 30)
        return self._local(doc["replicas"])


def _replace(state: ReplicaState, **changes: Any) -> ReplicaState:
    return msgspec.structs.replace(state, **changes)
