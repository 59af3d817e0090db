"""The random identifiers made per request (ORCH-2806): a task's ID and a request's
correlation ID have ``uuid.uuid4()``'s bits and text, made from the random bytes
without a ``UUID`` object (its constructor and ``str`` were ~1.3 % of orchestratord's
samples in the one-request profile, two per request)."""

from __future__ import annotations

import os

__all__ = ["new_correlation_id", "new_task_id"]


def _uuid4_bytes() -> bytes:
    """16 random bytes with the version (4) and variant (RFC 4122) bits of ``uuid4``."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def new_task_id() -> tuple[str, int]:
    """A new task ID: ``str(uuid4())``'s text and the same UUID's 128-bit number."""
    raw = _uuid4_bytes()
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", int.from_bytes(raw, "big")


def new_correlation_id() -> bytes:
    """A new correlation ID: ``uuid4().hex``, ASCII."""
    return _uuid4_bytes().hex().encode()
