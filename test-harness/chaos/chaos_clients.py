"""The load clients of a chaos run: OrchQueue v1 (submit with Retry-After, stream with
Last-Event-ID reconnects, cancel) and the OpenAI-compatible streaming completions; every
submit, event and connection is recorded with its times for the checker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from typing import Any

import aiohttp
import chaos_plan
import msgspec
from chaos_history import TERMINAL
from chaos_procs import POOL, STREAM_TIMEOUT_S, now
from chaos_state import RunState
from chaos_topology import Topology
from llama_orch.core.sse import SSEParser


def _close_now(r: aiohttp.ClientResponse) -> float:
    """Close an OpenAI client's stream, the API's cancel, and return when its FIN left:
    the socket is shut down here, not at the transport's close, which asyncio defers to
    the loop's next turn (ORCH-6250: our part of a cancel starts then; a busy runner loop
    must not count as orchestratord's)."""
    conn = r.connection
    sock = (
        None if conn is None or conn.transport is None else conn.transport.get_extra_info("socket")
    )
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    t = now()
    r.close()
    return t


class LoadClients:
    def __init__(self, topo: Topology, state: RunState, seed: int) -> None:
        self.topo, self.state, self.seed = topo, state, seed
        self.sessions: dict[tuple[str, int], asyncio.Lock] = {}

    async def client(self, http: aiohttp.ClientSession, a: chaos_plan.Arrival) -> None:
        rec: dict[str, Any] = {
            "n": a.n,
            "tenant": a.tenant,
            "priority": a.priority,
            "behaviour": a.behaviour,
            "burst": a.burst,
            "session": a.session,
            "api": a.api,
            "max_tokens": a.max_tokens,
            "submits": [],
            "task_id": None,
            "t_accepted": None,
            "events": [],
            "connections": [],
            "cancel": None,
        }
        self.state.records[a.n] = rec
        await asyncio.sleep(max(0.0, self.state.t0 + a.at_s - time.monotonic()))
        if a.api not in chaos_plan.APIS:
            raise ValueError(f"arrival {a.n}: unknown api {a.api!r}")
        lock = None
        if a.session is not None:
            lock = self.sessions.setdefault((a.tenant, a.session), asyncio.Lock())
            await lock.acquire()
        try:
            if a.api == "openai":
                await self._openai_client(http, a, rec)
            else:
                await self._task_client(http, a, rec)
        finally:
            if lock is not None:
                lock.release()

    async def _task_client(
        self, http: aiohttp.ClientSession, a: chaos_plan.Arrival, rec: dict[str, Any]
    ) -> None:
        headers = {"Authorization": f"Bearer {self.topo.keys[a.tenant]}"}
        body: dict[str, Any] = {
            "prompt": a.prompt,
            "max_tokens": a.max_tokens,
            "priority": a.priority,
            "temperature": 0.7,
            "seed": a.n,
        }
        if a.deadline_ms:
            body["deadline_ms"] = a.deadline_ms
        if a.session is not None:
            body["session_id"] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"chaos/{self.seed}/{a.tenant}/{a.session}")
            )
        first_ra: float | None = None
        t_first = 0.0
        t_send0 = now()
        while True:
            t_send = now()
            try:
                async with http.post(
                    self.topo.orch_url + "/v1/tasks",
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(30),
                ) as r:
                    status = r.status
                    data = await r.json(content_type=None)
                    ra = r.headers.get("Retry-After")
                    backoff = r.headers.get("X-Backoff-Ms")
            except (TimeoutError, aiohttp.ClientError) as exc:
                rec["submits"].append(
                    {
                        "t_send": t_send,
                        "t_recv": now(),
                        "status": 0,
                        "code": repr(exc)[:80],
                        "retry_after": None,
                    }
                )
                # orchestratord down (killed, restarting): nothing was sent, so a client
                # may submit again; any other failure might have been admitted: stop
                refused = isinstance(exc, aiohttp.ClientConnectorError)
                if refused and now() - t_send0 < 20 and not self.state.stopping.is_set():
                    await asyncio.sleep(0.5)
                    continue
                return
            t_recv = now()
            sub = {
                "t_send": t_send,
                "t_recv": t_recv,
                "status": status,
                "code": data.get("code") if isinstance(data, dict) else None,
                "message": str(data.get("message"))[:200] if isinstance(data, dict) else None,
                "policy": data.get("policy_label") if isinstance(data, dict) else None,
                "retry_after": float(ra) if ra is not None else None,
                "backoff_ms": int(backoff) if backoff is not None else None,
            }
            rec["submits"].append(sub)
            if status == 202:
                rec["task_id"], rec["t_accepted"] = data["task_id"], t_recv
                break
            if ra is None or status not in (429, 503):
                return
            if first_ra is None:
                first_ra, t_first = float(ra), t_recv
            if t_recv - t_first > 3 * first_ra + 10 or self.state.stopping.is_set():
                return
            await asyncio.sleep(0.5)  # probe often: measures the real wait to admission
        tid = rec["task_id"]
        canceller = None
        if a.behaviour == "cancel":
            canceller = asyncio.create_task(self._cancel(http, tid, a.cancel_after_s, rec, headers))
        last: int | None = None
        limit = a.disconnect_after if a.behaviour == "disconnect" else None
        attempt = 0
        while True:
            done, last = await self._stream(http, tid, headers, rec, last, limit)
            attempt += 1
            if done:
                break
            # Reconnect with Last-Event-ID until the terminal: at least 6 times, and for
            # as long as an event came in the last 45 s (orchestratord or its store may
            # be restarting: ORCH-6110)
            if attempt >= 6 and now() - self._last_event_t(rec) > 45:
                break
            if limit is not None:
                limit = None
                await asyncio.sleep(a.reconnect_after_s)
            else:
                await asyncio.sleep(0.5)
        if canceller is not None:
            await canceller

    async def _openai_client(
        self, http: aiohttp.ClientSession, a: chaos_plan.Arrival, rec: dict[str, Any]
    ) -> None:
        """A streaming ``POST /v1/completions`` through the OpenAI-compatible frontend.

        The API has no cancel call and no resume: a client that cancels closes its
        stream (after ``cancel_after_s`` from the answer's headers, or after
        ``disconnect_after`` chunks), which the frontend turns into a cancel of the task
        (ORCH-9113). Every chunk is kept with its receive time; ``[DONE]``, an error
        chunk and the close are recorded in ``rec["oa"]`` for the checker.
        """
        headers = {
            "Authorization": f"Bearer {self.topo.keys[a.tenant]}",
            "x-llorch-priority": a.priority,
        }
        if a.deadline_ms:
            headers["x-llorch-deadline-ms"] = str(a.deadline_ms)
        if a.session is not None:
            headers["x-llorch-session-id"] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"chaos/{self.seed}/{a.tenant}/{a.session}")
            )
        body = {
            "model": POOL,
            "prompt": a.prompt,
            "max_tokens": a.max_tokens,
            "temperature": 0.7,
            "seed": a.n,
            "stream": True,
        }
        oa: dict[str, Any] = {"chunks": [], "done": None, "error": None, "closed": None}
        rec["oa"] = oa
        first_ra: float | None = None
        t_first = 0.0
        timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S, sock_read=STREAM_TIMEOUT_S)
        while True:
            t_send = now()
            try:
                async with http.post(
                    self.topo.orch_url + "/v1/completions",
                    json=body,
                    headers=headers,
                    timeout=timeout,
                ) as r:
                    status = r.status
                    if status != 200:
                        data = await r.json(content_type=None)
                        err = data.get("error") if isinstance(data, dict) else None
                        ra = r.headers.get("retry-after")
                        ms = r.headers.get("retry-after-ms")
                        rec["submits"].append(
                            {
                                "t_send": t_send,
                                "t_recv": now(),
                                "status": status,
                                "code": (err or {}).get("code"),
                                "message": str((err or {}).get("message"))[:200],
                                "policy": r.headers.get("x-llorch-policy-label"),
                                "retry_after": float(ra) if ra is not None else None,
                                "backoff_ms": int(ms) if ms is not None else None,
                            }
                        )
                    else:
                        t_recv = now()
                        rec["submits"].append(
                            {"t_send": t_send, "t_recv": t_recv, "status": 200, "code": None,
                             "retry_after": None}
                        )  # fmt: skip
                        rec["task_id"] = r.headers["x-llorch-task-id"]
                        rec["t_accepted"] = t_recv
                        await self._openai_read(r, a, oa)
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                if rec["task_id"] is not None:
                    oa["broken"] = repr(exc)[:120]
                    return
                rec["submits"].append(
                    {"t_send": t_send, "t_recv": now(), "status": 0,
                     "code": repr(exc)[:80], "retry_after": None}
                )  # fmt: skip
                return
            if ra is None or status not in (429, 503):
                return
            if first_ra is None:
                first_ra, t_first = float(ra), now()
            if now() - t_first > 3 * first_ra + 10 or self.state.stopping.is_set():
                return
            await asyncio.sleep(0.5)  # probe often: measures the real wait to admission

    async def _openai_read(
        self, r: aiohttp.ClientResponse, a: chaos_plan.Arrival, oa: dict[str, Any]
    ) -> None:
        parser = SSEParser()
        limit = a.disconnect_after if a.behaviour == "disconnect" else None
        close_at = (
            asyncio.get_running_loop().time() + a.cancel_after_s
            if a.behaviour == "cancel"
            else None
        )
        try:
            async with asyncio.timeout_at(close_at):
                async for raw in r.content.iter_any():
                    for msg in parser.feed(raw):
                        t = now()
                        if msg.data == "[DONE]":
                            oa["done"] = t
                            continue
                        d = msgspec.json.decode(msg.data)
                        if "error" in d:
                            oa["error"] = [t, d["error"]]
                            continue
                        for c in d.get("choices", []):
                            oa["chunks"].append([t, c.get("text", ""), c.get("finish_reason")])
                        n_text = sum(1 for c in oa["chunks"] if c[2] is None)
                        if limit is not None and n_text >= limit and oa["done"] is None:
                            oa["closed"] = _close_now(r)  # the frontend cancels the task
                            return
        except TimeoutError:
            if oa["done"] is None and oa["error"] is None:
                oa["closed"] = _close_now(r)

    async def _cancel(
        self,
        http: aiohttp.ClientSession,
        tid: str,
        after: float,
        rec: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        await asyncio.sleep(after)
        t0 = now()
        while True:
            t_send = now()
            status = 0
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.post(
                    self.topo.orch_url + f"/v1/tasks/{tid}/cancel",
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(30),
                ) as r:
                    status = r.status
                    await r.read()
            rec["cancel"] = {"t_send": t_send, "t_recv": now(), "status": status}
            # orchestratord or its store down (503, or no answer): cancel again, 10 s at most
            if status not in (0, 503) or now() - t0 > 10 or self.state.stopping.is_set():
                return
            await asyncio.sleep(0.5)

    def _last_event_t(self, rec: dict[str, Any]) -> float:
        ev = rec["events"]
        return float(ev[-1][0]) if ev else float(rec["t_accepted"])

    async def _stream(
        self,
        http: aiohttp.ClientSession,
        tid: str,
        headers: dict[str, str],
        rec: dict[str, Any],
        last: int | None,
        limit: int | None,
    ) -> tuple[bool, int | None]:
        h = dict(headers)
        if last is not None:
            h["Last-Event-ID"] = str(last)
        conn: dict[str, Any] = {"t_open": now(), "last_event_id": last, "n": 0, "error": None}
        rec["connections"].append(conn)
        parser = SSEParser()
        try:
            async with http.get(
                self.topo.orch_url + f"/v1/tasks/{tid}/stream",
                headers=h,
                timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S, sock_read=STREAM_TIMEOUT_S),
            ) as r:
                if r.status != 200:
                    conn["error"] = f"HTTP {r.status}"
                    return False, last
                async for chunk in r.content.iter_any():
                    for msg in parser.feed(chunk):
                        t = now()
                        eid = int(msg.id) if msg.id is not None else -1
                        data = msgspec.json.decode(msg.data)
                        rec["events"].append([t, eid, msg.event, data])
                        if msg.event == "started":
                            self.state.live[rec["n"]] = [data.get("replica_id"), 0]
                        elif msg.event == "token" and rec["n"] in self.state.live:
                            self.state.live[rec["n"]][1] += 1
                        elif msg.event in TERMINAL:
                            self.state.live.pop(rec["n"], None)
                        conn["n"] += 1
                        last = eid
                        if msg.event in TERMINAL:
                            conn["t_close"] = now()
                            return True, last
                        if limit is not None and conn["n"] >= limit:
                            conn["t_close"] = now()
                            conn["error"] = "planned disconnect"
                            return False, last
        except (TimeoutError, aiohttp.ClientError) as exc:
            conn["error"] = repr(exc)[:120]
        conn["t_close"] = now()
        return False, last

    async def replay(self, http: aiohttp.ClientSession, rec: dict[str, Any]) -> None:
        tid = rec["task_id"]
        out: list[list[Any]] = []
        parser = SSEParser()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(
                self.topo.orch_url + f"/v1/tasks/{tid}/stream",
                headers={"Authorization": f"Bearer {self.topo.keys[rec['tenant']]}"},
                timeout=aiohttp.ClientTimeout(total=20),
            ) as r:
                rec["replay_status"] = r.status
                if r.status != 200:
                    rec["replay"] = []
                    return
                async for chunk in r.content.iter_any():
                    for msg in parser.feed(chunk):
                        out.append([int(msg.id or -1), msg.event, msgspec.json.decode(msg.data)])
        rec["replay"] = out

    # ----------------------------------------------------------------- run
