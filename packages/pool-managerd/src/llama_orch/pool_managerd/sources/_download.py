"""Resumable HTTP(S) downloads into a partial file (ORCH-3303)."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

from llama_orch.core.model_source_api import ModelFetchError, Progress, ProgressLine

__all__ = ["download_resumable"]

_BLOCK = 1 << 20


def download_resumable(
    url: str,
    partial: Path,
    progress: Progress,
    *,
    label: str,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> None:
    """Append the rest of ``url`` to ``partial``: ask for ``Range: bytes=<have>-``;
    a 206 continues the file, a 200 (no range support) starts it over. A
    connection that stops half-way raises :class:`ModelFetchError` and keeps
    what arrived, so the next attempt resumes."""
    have = partial.stat().st_size if partial.exists() else 0
    req = urllib.request.Request(url, headers=dict(headers or {}))
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left: the partial file is whole
            return
        raise ModelFetchError(f"GET {url} answered HTTP {exc.code}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ModelFetchError(f"GET {url} failed: {exc}") from exc
    with resp:
        if resp.status == 206:
            mode, done = "ab", have
            total = _total_of_range(resp.headers.get("Content-Range"))
            progress(f"{label}: resuming at {have >> 20} MiB")
        else:
            mode, done = "wb", 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        last = time.monotonic()
        try:
            with partial.open(mode) as out:
                while block := resp.read(_BLOCK):
                    out.write(block)
                    done += len(block)
                    now = time.monotonic()
                    if now - last >= 1.0:  # ORCH-3375: at least every 2 s
                        last = now
                        progress(_line(label, done, total))
        except (OSError, http.client.HTTPException) as exc:
            raise ModelFetchError(
                f"download of {url} stopped at {done} bytes ({exc}); the next attempt resumes"
            ) from exc
    if total is not None and done != total:
        raise ModelFetchError(
            f"download of {url} stopped at {done} of {total} bytes; the next attempt resumes"
        )
    progress(_line(label, done, total))


def _line(label: str, done: int, total: int | None) -> ProgressLine:
    pct = f" ({100 * done // total}%)" if total else ""
    return ProgressLine(f"downloading {label}: {done >> 20} MiB{pct}", done, total)


def _total_of_range(value: str | None) -> int | None:
    # "bytes 100-999/1000"
    if value and "/" in value:
        tail = value.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else None
    return None
