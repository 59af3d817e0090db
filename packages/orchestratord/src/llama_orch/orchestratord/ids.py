"""The random identifiers made per request (ORCH-2806, ORCH-2823): a task's ID and a
request's correlation ID have ``uuid.uuid4()``'s bits and text, made from the random
bytes without a ``UUID`` object (its constructor and ``str`` were ~1.3 % of
orchestratord's samples in the one-request profile, two per request).

ORCH-2823: the random bytes come from ``os.urandom`` in blocks of :data:`BLOCK_IDS`
IDs, not one call (a system call) per ID (1.7 % of the samples, session 20). A block's
version and variant bits are set once for all its IDs; each ID is one ``next`` on the
block's iterator, which under the GIL never hands the same 16 bytes to two callers. A
forked child starts with no block, so parent and child never share one.
"""

from __future__ import annotations

import binascii
import os
import struct
from collections.abc import Iterator

__all__ = ["BLOCK_IDS", "new_correlation_id", "new_task_id"]

BLOCK_IDS = 256  # IDs per os.urandom call (4 KiB)
_SIXTEEN = struct.Struct("16s")
# byte 6 of each ID: version 4 (high nibble 0100); byte 8: the RFC 4122 variant (10xxxxxx)
_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


class _Pool:
    ids: Iterator[tuple[bytes]] = iter(())


def _reset() -> None:
    _Pool.ids = iter(())


os.register_at_fork(after_in_child=_reset)


def _refill() -> Iterator[tuple[bytes]]:
    block = bytearray(os.urandom(16 * BLOCK_IDS))
    block[6::16] = block[6::16].translate(_VERSION)
    block[8::16] = block[8::16].translate(_VARIANT)
    _Pool.ids = ids = _SIXTEEN.iter_unpack(bytes(block))
    return ids


def _uuid4_bytes() -> bytes:
    """16 random bytes with the version (4) and variant (RFC 4122) bits of ``uuid4``."""
    for (raw,) in _Pool.ids:
        return raw
    for (raw,) in _refill():
        return raw
    raise AssertionError("a new block holds BLOCK_IDS IDs")  # pragma: no cover


def new_task_id() -> tuple[str, int]:
    """A new task ID: ``str(uuid4())``'s text and the same UUID's 128-bit number."""
    raw = _uuid4_bytes()
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", int.from_bytes(raw, "big")


def new_correlation_id() -> bytes:
    """A new correlation ID: ``uuid4().hex``, ASCII."""
    return binascii.hexlify(_uuid4_bytes())
