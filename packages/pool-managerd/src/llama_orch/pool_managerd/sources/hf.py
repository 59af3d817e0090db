"""``hf``: a file of a Hugging Face Hub repository, ``hf:owner/name@revision/path``.

It speaks the Hub's HTTP resolve layout, the same one ``huggingface_hub``
uses (ORCH-3301): ``HEAD {endpoint}/{repo}/resolve/{revision}/{path}``
without following redirects answers the commit the revision points at
(``X-Repo-Commit``), the file's sha256 for LFS files (``X-Linked-Etag``, else
``ETag``) and its size (``X-Linked-Size``); the bytes are then fetched from
the resolve URL *at that commit*, so a branch that moves between the two
requests cannot swap the file. ``HF_ENDPOINT`` points at a mirror (default
``https://huggingface.co``).
"""

from __future__ import annotations

import http.client
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from llama_orch.core.model_source_api import (
    SHA256_HEX,
    MalformedModelRef,
    ModelFetchError,
    ModelSource,
    Progress,
    SourceMeta,
)

from ._download import download_resumable

__all__ = ["HfSource", "parse_hf_locator"]

_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def parse_hf_locator(locator: str) -> tuple[str, str, str]:
    """``owner/name@revision/path/in/repo`` -> (repo, revision, path)."""
    repo, at, rest = locator.partition("@")
    if not at or not _REPO.match(repo):
        raise MalformedModelRef(f"{locator!r}: expected owner/name@revision/path")
    revision, slash, path = rest.partition("/")
    if not slash or not path or not _REVISION.match(revision) or ".." in path.split("/"):
        raise MalformedModelRef(f"{locator!r}: expected owner/name@revision/path")
    return repo, revision, path


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _url(repo: str, revision: str, path: str) -> str:
    quoted = urllib.parse.quote(revision, safe="")
    return f"{_endpoint()}/{repo}/resolve/{quoted}/{urllib.parse.quote(path)}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 302 itself carries the metadata


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    tag = value.removeprefix("W/").strip('"')
    return tag if SHA256_HEX.match(tag) else None


class HfSource(ModelSource):
    def resolve(self, locator: str) -> SourceMeta:
        repo, revision, path = parse_hf_locator(locator)
        url = _url(repo, revision, path)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            resp = opener.open(urllib.request.Request(url, method="HEAD"), timeout=60)
            headers = resp.headers
            resp.close()
        except urllib.error.HTTPError as exc:
            if exc.code not in (301, 302, 303, 307, 308):
                raise ModelFetchError(f"HEAD {url} answered HTTP {exc.code}") from exc
            headers = exc.headers
        except (OSError, http.client.HTTPException) as exc:
            raise ModelFetchError(f"HEAD {url} failed: {exc}") from exc
        commit = headers.get("X-Repo-Commit")
        sha = _etag(headers.get("X-Linked-Etag")) or _etag(headers.get("ETag"))
        size = headers.get("X-Linked-Size") or headers.get("Content-Length")
        pinned = _url(repo, commit, path) if commit else url
        return SourceMeta(
            filename=posixpath.basename(path),
            source_url=pinned,
            sha256=sha,
            size=int(size) if size and size.isdigit() else None,
            version=commit or revision,
        )

    def fetch(self, locator: str, meta: SourceMeta, partial: Path, progress: Progress) -> None:
        download_resumable(meta.source_url, partial, progress, label=meta.filename)
