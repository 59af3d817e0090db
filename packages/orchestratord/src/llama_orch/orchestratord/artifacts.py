"""Artifacts: content-addressed blobs with tags and lineage, per tenant (ORCH-3350..3352).

Prompts, plans and outputs a client wants to keep next to its tasks. The id
is the sha256 of the content, so storing the same bytes twice is one
artifact (its tags merge, its parents union). A tenant sees only its own
artifacts; another tenant's id answers 404 like an unknown one (ORCH-8005).
They live in the catalog's SQLite file, in their own table, and are bounded
by ``catalog.artifact_max_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from llama_orch.core.errors import InvalidParams, NotFound, RequestTooLarge
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["ARTIFACT_ROUTES", "Artifact", "ArtifactStore"]

_json = msgspec.json.Encoder()
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class ArtifactRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"
    media_type: Annotated[str, msgspec.Meta(max_length=255)] = "text/plain"
    tags: dict[str, Annotated[str, msgspec.Meta(max_length=256)]] = {}
    parents: list[Digest] = []  # lineage: the artifacts this one was made from


class Artifact(msgspec.Struct, kw_only=True):
    id: str  # sha256 of the content
    size: int
    media_type: str
    tags: dict[str, str]
    parents: list[str]
    created_ms: int


class ArtifactWithContent(Artifact, kw_only=True):
    content: str
    encoding: str


class ArtifactStore:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction on a connection that is closed afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS artifacts (tenant TEXT NOT NULL, id TEXT NOT NULL,"
                " doc BLOB NOT NULL, content BLOB NOT NULL, PRIMARY KEY (tenant, id))"
            )
            yield db

    def put(self, tenant: str, req: ArtifactRequest) -> tuple[Artifact, bool]:
        if req.encoding == "base64":
            try:
                data = base64.b64decode(req.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidParams("content is not valid base64 - at `$.content`") from exc
        else:
            data = req.content.encode()
        if len(data) > self.max_bytes:
            raise RequestTooLarge(
                f"artifact of {len(data)} bytes exceeds catalog.artifact_max_bytes={self.max_bytes}"
            )
        aid = hashlib.sha256(data).hexdigest()
        with self._lock, self._db() as db:
            for parent in req.parents:
                row = db.execute(
                    "SELECT 1 FROM artifacts WHERE tenant = ? AND id = ?", (tenant, parent)
                ).fetchone()
                if row is None:
                    raise InvalidParams(f"unknown parent artifact {parent} - at `$.parents`")
            row = db.execute(
                "SELECT doc FROM artifacts WHERE tenant = ? AND id = ?", (tenant, aid)
            ).fetchone()
            if row is not None:
                old = msgspec.json.decode(row[0], type=Artifact)
                art = msgspec.structs.replace(
                    old,
                    tags={**old.tags, **req.tags},
                    parents=list(dict.fromkeys([*old.parents, *req.parents])),
                )
            else:
                art = Artifact(
                    id=aid,
                    size=len(data),
                    media_type=req.media_type,
                    tags=dict(req.tags),
                    parents=list(dict.fromkeys(req.parents)),
                    created_ms=int(time.time() * 1000),
                )
            db.execute(
                "INSERT OR REPLACE INTO artifacts (tenant, id, doc, content) VALUES (?, ?, ?, ?)",
                (tenant, aid, msgspec.json.encode(art), data),
            )
        return art, row is None

    def get(self, tenant: str, aid: str) -> ArtifactWithContent:
        if not self.path.is_file():
            raise NotFound(f"unknown artifact {aid}")
        with self._lock, self._db() as db:
            row = db.execute(
                "SELECT doc, content FROM artifacts WHERE tenant = ? AND id = ?", (tenant, aid)
            ).fetchone()
        if row is None:
            raise NotFound(f"unknown artifact {aid}")
        art = msgspec.json.decode(row[0], type=Artifact)
        data: bytes = row[1]
        try:
            content, encoding = data.decode(), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode(), "base64"
        return ArtifactWithContent(
            **msgspec.structs.asdict(art), content=content, encoding=encoding
        )


def _store(request: Request) -> ArtifactStore:
    store = request.app.state.artifacts  # set by build_app
    assert isinstance(store, ArtifactStore)
    return store


async def create(request: Request) -> Response:
    try:
        req = msgspec.json.decode(await request.body(), type=ArtifactRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidParams(str(exc)) from exc
    art, new = _store(request).put(request.state.principal.tenant, req)
    headers = {"Location": f"/v1/artifacts/{art.id}"}
    return Response(_json.encode(art), 201 if new else 200, headers, media_type="application/json")


async def fetch(request: Request) -> Response:
    art = _store(request).get(request.state.principal.tenant, request.path_params["artifact_id"])
    return Response(_json.encode(art), 200, media_type="application/json")


# The app guards them with tenant access (ORCH-3350); they read ``app.state.artifacts``.
ARTIFACT_ROUTES = [
    Route("/v1/artifacts", create, methods=["POST"]),
    Route("/v1/artifacts/{artifact_id}", fetch, methods=["GET"]),
]
