"""The model-source plugin contract (entry-point group ``llama_orch.model_sources``).

A model source turns a locator (the part of a model reference after
``<source>:``) into bytes. pool-managerd's content-addressed cache does the
rest: it gives the source a partial file to write, hashes what arrived,
compares it with the digest it expects, and only then moves the file under
its final name (ORCH-3302, ORCH-3303). A source therefore never decides what
is trusted; it only says where the bytes come from (provenance) and what
digest the origin publishes, if any.

A third party ships a source by depending on ``llama-orch-core`` and
registering a :class:`ModelSource` subclass::

    [project.entry-points."llama_orch.model_sources"]
    s3 = "my_pkg.s3:S3Source"

after which ``s3:bucket/key.gguf`` is a valid model reference (ORCH-3300).
This module does no I/O.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar

__all__ = [
    "MODEL_SOURCE_ENTRY_POINT_GROUP",
    "MalformedModelRef",
    "ModelFetchError",
    "ModelSource",
    "ModelSourceLoadError",
    "Progress",
    "ProgressLine",
    "SourceMeta",
    "available_model_sources",
    "load_model_source",
    "split_model_ref",
]

MODEL_SOURCE_ENTRY_POINT_GROUP = "llama_orch.model_sources"
Progress = Callable[[str], None]


class ProgressLine(str):
    """A progress message that also carries byte counts (ORCH-3375): a source
    passes one to ``progress`` while it downloads, so that a caller can draw a
    bar; callers that only print lines see a plain string."""

    done_bytes: int | None
    total_bytes: int | None

    def __new__(cls, text: str, done_bytes: int | None, total_bytes: int | None) -> ProgressLine:
        line = super().__new__(cls, text)
        line.done_bytes, line.total_bytes = done_bytes, total_bytes
        return line


# "<source>:<locator>"; a reference without a source prefix is a local path.
_SCHEME = re.compile(r"^([a-z][a-z0-9_-]{0,31}):(.*)$", re.S)
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class MalformedModelRef(ValueError):
    """A model reference or locator does not follow its source's grammar."""


class ModelFetchError(Exception):
    """A source could not deliver the bytes (network, missing file, refused)."""


class ModelSourceLoadError(Exception):
    """No source is registered under a name, or it failed to import."""


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """What a source knows about a locator before fetching it (the provenance)."""

    filename: str  # the name the cached file gets (engines and humans read it)
    source_url: str  # where the bytes come from, for the catalog's provenance
    sha256: str | None = None  # the digest the origin publishes or pins, if any
    size: int | None = None
    version: str | None = None  # package version, Hub commit, ...
    manifest_digest: str | None = None  # digest of the origin's manifest/index entry
    license: str | None = None
    chat_template: bool | None = None  # None: unknown


class ModelSource(ABC):
    """One way of obtaining model bytes. Instances are cheap and stateless."""

    #: True when the bytes already lie on this host and are used where they are
    #: (the ``file`` source): the cache hashes them but does not copy them.
    in_place: ClassVar[bool] = False

    @abstractmethod
    def resolve(self, locator: str) -> SourceMeta:
        """Validate ``locator`` (raise :class:`MalformedModelRef`) and describe it;
        may ask the origin for metadata (raise :class:`ModelFetchError`)."""

    @abstractmethod
    def fetch(self, locator: str, meta: SourceMeta, partial: Path, progress: Progress) -> None:
        """Write the bytes to ``partial``. The file may already hold a prefix
        from an interrupted attempt: a source that can resume appends to it,
        one that cannot truncates it. Raise :class:`ModelFetchError` on failure;
        the partial file is kept for the next attempt."""

    def local_path(self, locator: str) -> Path:
        """For ``in_place`` sources: where the bytes are."""
        raise NotImplementedError


def split_model_ref(ref: str) -> tuple[str, str]:
    """``"pypi:x"`` -> ``("pypi", "x")``; ``"https://h/m.gguf"`` -> ``("https", ...)``
    (an URL's locator keeps its scheme); a bare path -> ``("file", path)``."""
    if not ref.strip():
        raise MalformedModelRef("empty model reference")
    m = _SCHEME.match(ref)
    if m is None:
        return "file", ref
    source, rest = m.group(1), m.group(2)
    if source in ("http", "https"):
        return "https", ref
    if source == "file" and rest.startswith("//"):
        return "file", rest[2:]
    return source, rest


def load_model_source(name: str) -> ModelSource:
    """The source registered as ``name`` (fails loudly, ORCH-3300)."""
    matches = entry_points(group=MODEL_SOURCE_ENTRY_POINT_GROUP, name=name)
    if not matches:
        raise ModelSourceLoadError(
            f"unknown model source {name!r}; installed: {sorted(available_model_sources())}"
        )
    ep = next(iter(matches))
    try:
        cls = ep.load()
    except Exception as exc:
        raise ModelSourceLoadError(f"model source {name!r} ({ep.value}) failed: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ModelSource)):
        raise ModelSourceLoadError(f"model source {name!r} ({ep.value}) is not a ModelSource")
    return cls()


def available_model_sources() -> list[str]:
    """Names of the registered sources (not imported: listing never fails)."""
    names = {ep.name for ep in entry_points(group=MODEL_SOURCE_ENTRY_POINT_GROUP)}
    return sorted(names)
