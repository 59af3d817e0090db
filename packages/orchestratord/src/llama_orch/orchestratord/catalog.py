"""The model catalog: entries, tags, lifecycle (ORCH-3320..3333, ORCH-3383).

Entries live in memory, so reads on the admission path never wait for a
backend, and are written through to a :class:`CatalogBackend`: a SQLite file
by default (one row per entry, the entry as JSON, created on the first
registration), or with ``state: {backend: valkey}`` the shared store, where
every instance sees one catalog. Every write is computed on the catalog's
current version and committed only if the backend is still at that version;
otherwise the catalog reloads and computes it again, so a transition is
checked against the state it changes whichever instance wrote last.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal, Protocol

import msgspec
from llama_orch.core.errors import InvalidParams, ModelDeprecated, NotFound

from .trust import Signature

__all__ = [
    "ALLOWED",
    "LIFECYCLE",
    "Catalog",
    "CatalogBackend",
    "Entry",
    "LifecycleState",
    "Provenance",
    "SqliteCatalog",
    "Transition",
    "default_catalog_path",
]

LifecycleState = Literal["draft", "active", "canary", "deprecated", "retired"]
LIFECYCLE: tuple[LifecycleState, ...] = ("draft", "active", "canary", "deprecated", "retired")
# ORCH-3330: the transitions an operator may ask for
ALLOWED: dict[str, tuple[str, ...]] = {
    "draft": ("active", "canary", "retired"),
    "canary": ("active", "draft", "deprecated", "retired"),
    "active": ("deprecated", "retired", "canary"),
    "deprecated": ("active", "retired"),
    "retired": (),
}
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Tag = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
_ID = re.compile(r"^[0-9a-f]{16}$")


class Provenance(msgspec.Struct):
    source: str
    source_url: str
    version: str | None = None
    manifest_digest: str | None = None


class Transition(msgspec.Struct):
    at_ms: int
    from_state: LifecycleState | None
    to_state: LifecycleState
    reason: str = ""
    # promote: the entry that was Active before (rollback restores it)
    previous_active: str | None = None


class Entry(msgspec.Struct, kw_only=True):
    id: str
    name: str
    tags: list[str]
    digest: str
    size: int
    format: str
    ref: str  # the source reference the bytes are fetched from
    provenance: Provenance
    signatures: list[Signature] = []
    sbom: str | None = None
    license: str | None = None
    chat_template: str | None = None
    ctx: int | None = None
    state: LifecycleState = "draft"
    weight: float = 0.0  # canary share of the name's traffic (ORCH-3331)
    replacement: str | None = None  # named in MODEL_DEPRECATED (ORCH-3332)
    grace_until_ms: int | None = None  # deprecated but served, with a warning, until then
    registered_ms: int = 0
    history: list[Transition] = []


# Set while admitting a task for a Deprecated entry in its grace period: the
# 202 carries Deprecation/Sunset headers (ORCH-3334).
DEPRECATION: contextvars.ContextVar[Entry | None] = contextvars.ContextVar(
    "llorch_deprecation", default=None
)


def default_catalog_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llama-orch" / "catalog.sqlite3"


def _now_ms() -> int:
    return int(time.time() * 1000)


class CatalogBackend(Protocol):
    """Where the catalog's entries persist: id → the entry as JSON, and a version
    that every committed change increments (ORCH-3383)."""

    shared: bool  # True when other orchestratord instances read the same catalog
    location: str  # for log lines

    def load(self) -> tuple[int, dict[str, bytes]]:
        """The version and every entry, as one consistent snapshot."""
        ...

    def version(self) -> int: ...

    def commit(
        self, expected: int, put: dict[str, bytes], delete: builtins.list[str]
    ) -> int | None:
        """Write ``put`` and delete ``delete`` if the version is still ``expected``;
        the new version, or None when another writer changed the catalog first."""
        ...

    def take_credit(self, name: str, weight: float) -> bool:
        """Add ``weight`` to the canary credit of ``name``; True when it reached one."""
        ...

    def wait_change(self, timeout: float) -> None:
        """Block until another writer may have changed the catalog, or ``timeout``."""
        ...

    def wake(self) -> None:
        """End a ``wait_change`` in another thread now."""
        ...

    def close(self) -> None: ...


class SqliteCatalog:
    """One orchestratord's catalog file; the canary credit is this process's."""

    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._credit: dict[str, float] = {}

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a connection that is closed afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time, also across processes
            try:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, doc BLOB NOT NULL)"
                )
                db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT v FROM meta WHERE k = 'version'").fetchone()
        return int(row[0]) if row else 0

    def load(self) -> tuple[int, dict[str, bytes]]:
        if not self.path.is_file():  # created by the first registration, not by a read
            return 0, {}
        with self._db() as db:
            return self._version(db), {
                k: bytes(v) for k, v in db.execute("SELECT id, doc FROM models")
            }

    def version(self) -> int:
        if not self.path.is_file():
            return 0
        with self._db() as db:
            return self._version(db)

    def commit(
        self, expected: int, put: dict[str, bytes], delete: builtins.list[str]
    ) -> int | None:
        with self._db() as db:
            if self._version(db) != expected:
                return None
            db.executemany("INSERT OR REPLACE INTO models (id, doc) VALUES (?, ?)", put.items())
            db.executemany("DELETE FROM models WHERE id = ?", [(k,) for k in delete])
            db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('version', ?)", (expected + 1,))
            return expected + 1

    def take_credit(self, name: str, weight: float) -> bool:
        # an accumulator, not a coin: weight 0.2 is exactly 1 task in 5 (ORCH-3331)
        acc = self._credit.get(name, 0.0) + weight
        self._credit[name] = acc % 1.0
        return acc >= 1.0

    def wait_change(self, timeout: float) -> None:
        time.sleep(timeout)  # not shared: nothing to wait for (the file is not watched)

    def wake(self) -> None:
        return None

    def close(self) -> None:
        return None


class Conflict(Exception):
    """Another writer changed the catalog since it was read: compute again."""


class Catalog:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path).expanduser() if path else default_catalog_path()
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._version = -1
        self.backend: CatalogBackend = SqliteCatalog(self.path)
        self.refresh()

    def use(self, backend: CatalogBackend) -> None:
        """Keep the catalog in ``backend`` from now on (the shared store, ORCH-3383)."""
        self.backend.close()
        self.backend = backend
        self._version = -1
        self.refresh()

    def refresh(self) -> bool:
        """Reload when another writer changed the backend; True if it did."""
        if self.backend.version() == self._version:
            return False
        version, docs = self.backend.load()
        entries = {k: msgspec.json.decode(doc, type=Entry) for k, doc in docs.items()}
        with self._lock:
            # copy-on-write: writes run in worker threads while admission iterates
            self._entries, self._version = entries, version
        return True

    def _write(
        self, change: Callable[[], tuple[builtins.list[Entry], builtins.list[str]]]
    ) -> builtins.list[Entry]:
        """Compute ``change`` (entries to write, ids to delete) on the current catalog and
        commit it; on a conflict reload and compute it again (its checks see the new state)."""
        for _ in range(20):
            self.refresh()
            put, delete = change()
            docs = {e.id: msgspec.json.encode(e) for e in put}
            with self._lock:
                version = self.backend.commit(self._version, docs, delete)
                if version is None:
                    continue
                entries = {**self._entries, **{e.id: e for e in put}}
                for k in delete:
                    entries.pop(k, None)
                self._entries, self._version = entries, version
            return put
        raise Conflict("the catalog kept changing under this write; try again")

    # ------------------------------------------------------------------ reads

    def list(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: (e.name, e.registered_ms, e.id))

    def get(self, entry_id: str) -> Entry:
        e = self._entries.get(entry_id)
        if e is None:
            raise NotFound(f"unknown catalog model {entry_id}")
        return e

    def by_digest(self, digest: str) -> Entry | None:
        return self._entries.get(digest[:16]) if _DIGEST.match(digest) else None

    def resolve(self, ref: str) -> Entry | None:
        """``sha256:<hex>``, an id, ``name:tag`` or ``name`` -> entry (ORCH-3322)."""
        if not self._entries:
            return None
        if m := _DIGEST.match(ref):
            e = self._entries.get(m.group(1)[:16])
            return e if e is not None and e.digest == m.group(1) else None
        if _ID.match(ref) and ref in self._entries:
            return self._entries[ref]
        name, _, tag = ref.partition(":")
        mine = [e for e in self._entries.values() if e.name == name]
        if tag:
            return next((e for e in mine if tag in e.tags), None)
        # the name: its Active entry; with none, its newest deprecated or retired one
        # (so that a task for it learns why and what replaces it, ORCH-3332)
        active = next((e for e in mine if e.state == "active"), None)
        if active is not None:
            return active
        gone = [e for e in mine if e.state in ("deprecated", "retired")]
        return max(gone, key=lambda e: e.registered_ms) if gone else None

    def canary_of(self, name: str) -> Entry | None:
        return next(
            (e for e in self._entries.values() if e.name == name and e.state == "canary"), None
        )

    def active_of(self, name: str) -> Entry | None:
        return next(
            (e for e in self._entries.values() if e.name == name and e.state == "active"), None
        )

    def choose(self, ref: str, *, override: bool = False) -> Entry | None:
        """The entry a task for ``ref`` runs on (ORCH-3331, ORCH-3332); None if ``ref``
        is not a catalog reference. ``override`` runs a Deprecated entry anyway
        (ORCH-3370)."""
        e = self.resolve(ref)
        if e is None:
            return None
        in_grace = bool(e.grace_until_ms) and _now_ms() < (e.grace_until_ms or 0)
        if e.state == "deprecated" and (in_grace or override):
            DEPRECATION.set(e)  # still served, with a warning (ORCH-3334, ORCH-3370)
            return e
        if e.state in ("deprecated", "retired"):
            instead = self._entries.get(e.replacement or "")
            named = f"; use {instead.name}:{instead.id}" if instead else ""
            if instead is not None and instead.tags:
                named = f"; use {instead.name}:{instead.tags[0]} ({instead.id})"
            raise ModelDeprecated(f"model {e.name} {e.id} is {e.state}{named}")
        if e.state == "active":
            canary = self.canary_of(e.name)
            # a credit, not a coin: weight 0.2 is exactly 1 task in 5, kept where the
            # catalog is, so several instances split one stream of tasks (ORCH-3331)
            if canary is not None and canary.weight > 0:
                if self.backend.take_credit(e.name, canary.weight):
                    return canary
        return e

    # ------------------------------------------------------------------ writes

    def add(self, entry: Entry) -> Entry:
        def change() -> tuple[builtins.list[Entry], builtins.list[str]]:
            same = self.by_digest(entry.digest)
            if same is not None:
                raise InvalidParams(
                    f"sha256 {entry.digest} is already registered as {same.name} ({same.id})"
                )
            if entry.state == "active" and (act := self.active_of(entry.name)) is not None:
                raise InvalidParams(
                    f"{entry.name} already has an Active entry {act.id}; use promote"
                )
            entry.registered_ms = _now_ms()
            entry.history = [Transition(entry.registered_ms, None, entry.state, "registered")]
            return [entry, *self._take_tags(entry)], []

        self._write(change)
        return entry

    def _take_tags(self, entry: Entry) -> builtins.list[Entry]:  # `list` is a method here
        """A tag is held by one entry of a name: tagging moves it (ORCH-3322)."""
        changed = []
        for other in self._entries.values():
            if other.name == entry.name and other.id != entry.id:
                kept = [t for t in other.tags if t not in entry.tags]
                if kept != other.tags:
                    changed.append(msgspec.structs.replace(other, tags=kept))
        return changed

    def delete(self, entry_id: str) -> None:
        def change() -> tuple[builtins.list[Entry], builtins.list[str]]:
            e = self.get(entry_id)
            if e.state not in ("draft", "retired"):
                raise InvalidParams(
                    f"{e.id} is {e.state}: only draft or retired entries are deleted"
                )
            return [], [e.id]

        self._write(change)

    def transition(
        self,
        entry_id: str,
        to: LifecycleState,
        *,
        weight: float | None = None,
        replacement: str | None = None,
        reason: str = "",
        grace_ms: int | None = None,
    ) -> Entry:
        def change() -> tuple[builtins.list[Entry], builtins.list[str]]:
            e = self.get(entry_id)
            if to not in ALLOWED[e.state] and not to == e.state == "canary":  # canary: new weight
                raise InvalidParams(
                    f"{e.id} is {e.state}; allowed next states: {list(ALLOWED[e.state]) or 'none'}"
                )
            if to in ("active", "canary"):
                other = (self.active_of if to == "active" else self.canary_of)(e.name)
                if other is not None and other.id != e.id:
                    raise InvalidParams(f"{e.name} already has a {to} entry {other.id}")
            if replacement is not None:
                self.get(replacement)
            if to == "canary" and not 0 < (weight if weight is not None else e.weight) < 1:
                raise InvalidParams("a canary needs 0 < weight < 1 - at `$.weight`")
            new = msgspec.structs.replace(
                e,
                state=to,
                weight=(weight if weight is not None else e.weight) if to == "canary" else 0.0,
                replacement=replacement if replacement is not None else e.replacement,
                grace_until_ms=_now_ms() + grace_ms if to == "deprecated" and grace_ms else None,
                history=[*e.history, Transition(_now_ms(), e.state, to, reason)],
            )
            return [new], []

        return self._write(change)[0]

    def promote(self, entry_id: str) -> builtins.list[Entry]:
        """Canary -> Active; the previous Active -> Deprecated, replaced by it (ORCH-3333)."""

        def change() -> tuple[builtins.list[Entry], builtins.list[str]]:
            e = self.get(entry_id)
            if e.state != "canary":
                raise InvalidParams(f"{e.id} is {e.state}: only a canary is promoted")
            old = self.active_of(e.name)
            now = _now_ms()
            new = msgspec.structs.replace(
                e,
                state="active",
                weight=0.0,
                history=[
                    *e.history,
                    Transition(now, "canary", "active", "promote", old.id if old else None),
                ],
            )
            changed = [new]
            if old is not None:
                changed.append(
                    msgspec.structs.replace(
                        old,
                        state="deprecated",
                        replacement=e.id,
                        history=[*old.history, Transition(now, "active", "deprecated", "promote")],
                    )
                )
            return changed, []

        return self._write(change)

    @staticmethod
    def _last_promote(e: Entry) -> Transition:
        last = e.history[-1] if e.history else None
        if e.state != "active" or last is None or last.reason != "promote":
            raise InvalidParams(
                f"{e.id} is {e.state} and was not just promoted: nothing to roll back"
            )
        return last

    def rollback_target(self, e: Entry) -> Entry | None:
        """The entry that is Active after rolling ``e`` back, when the rollback
        changes the Active version (the pools following the name reload to it,
        ORCH-3360); raises when there is nothing to roll back."""
        if e.state == "canary":
            return None
        prev = self._entries.get(self._last_promote(e).previous_active or "")
        return prev if prev is not None and prev.state == "deprecated" else None

    def rollback(self, entry_id: str) -> builtins.list[Entry]:
        """Undo the last promote of ``entry_id``, or send a canary back to draft."""

        def change() -> tuple[builtins.list[Entry], builtins.list[str]]:
            e = self.get(entry_id)
            now = _now_ms()
            if e.state == "canary":
                back = msgspec.structs.replace(
                    e,
                    state="draft",
                    weight=0.0,
                    history=[*e.history, Transition(now, "canary", "draft", "rollback")],
                )
                return [back], []
            last = self._last_promote(e)
            changed = [
                msgspec.structs.replace(
                    e, state="canary", weight=0.0,
                    history=[*e.history, Transition(now, "active", "canary", "rollback")],
                )
            ]  # fmt: skip
            prev = self._entries.get(last.previous_active or "")
            if prev is not None and prev.state == "deprecated":
                undo = Transition(now, "deprecated", "active", "rollback")
                changed.append(
                    msgspec.structs.replace(
                        prev, state="active", replacement=None, history=[*prev.history, undo]
                    )
                )
            return changed, []

        return self._write(change)
