"""``https``: a model file at an HTTP(S) URL, downloaded resumably (ORCH-3300).

``https://mirror.example/m.gguf#sha256=<hex>`` pins the digest the way pip
pins a file; without the fragment the digest is what arrives (the catalog
records it at registration and compares every later fetch with it).
"""

from __future__ import annotations

import posixpath
import urllib.parse
from pathlib import Path

from llama_orch.core.model_source_api import (
    SHA256_HEX,
    MalformedModelRef,
    ModelSource,
    Progress,
    SourceMeta,
)

from ._download import download_resumable

__all__ = ["HttpsSource"]


class HttpsSource(ModelSource):
    def resolve(self, locator: str) -> SourceMeta:
        url, pinned = _split(locator)
        name = posixpath.basename(urllib.parse.urlsplit(url).path)
        return SourceMeta(
            filename=urllib.parse.unquote(name) or "model.bin", source_url=url, sha256=pinned
        )

    def fetch(self, locator: str, meta: SourceMeta, partial: Path, progress: Progress) -> None:
        url, _ = _split(locator)
        download_resumable(url, partial, progress, label=meta.filename)


def _split(locator: str) -> tuple[str, str | None]:
    parts = urllib.parse.urlsplit(locator)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MalformedModelRef(f"{locator!r} is not an http(s) URL")
    if not parts.path or parts.path.endswith("/"):
        raise MalformedModelRef(f"{locator!r} names no file")
    pinned = None
    if parts.fragment:
        key, _, value = parts.fragment.partition("=")
        if key != "sha256" or not SHA256_HEX.match(value):
            raise MalformedModelRef(
                f"fragment {parts.fragment!r}: only #sha256=<64 lowercase hex digits> is allowed"
            )
        pinned = value
    return urllib.parse.urlunsplit(parts._replace(fragment="")), pinned
