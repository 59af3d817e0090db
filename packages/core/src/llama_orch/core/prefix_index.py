"""An approximate per-replica index of prompt-prefix blocks (ORCH-2301..2304).

The orchestrator cannot see an engine's KV cache, but it knows every prompt
it sent where. A prompt (the full templated text, never only its first
message, ORCH-2301) is cut into blocks of ``block_chars`` characters; block
``i`` is named by a hash chained over blocks ``0..i``, so two prompts share
block ``i`` exactly when they share their first ``(i + 1) * block_chars``
characters. Characters stand in for tokens (about ``chars_per_token`` of them
per token), as in llm-d's approximate scorer: no tokenizer on the dispatch path.

Each replica has an LRU of the block hashes it was sent, bounded by its
capacity in blocks (ORCH-2302): the engine's prompt cache size in tokens
converted to blocks. A dispatch touches its blocks from the last to the first
(ORCH-2362), so a shared prefix stays recent, the tails of one-off prompts are
evicted first, and a prompt loses its blocks from its end: never a middle block,
which would make every block after it unmatchable while still taking room. The expected
hit of a prompt on a replica is the number of its leading blocks the replica
holds (ORCH-2303). A replica whose engine restarted forgets everything
(ORCH-2304). Pure: stdlib only, no clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

__all__ = ["PrefixIndex", "block_hashes"]


def block_hashes(text: str, block_chars: int) -> list[bytes]:
    """Chained hashes of the complete ``block_chars`` blocks of ``text``.

    A trailing partial block is not hashed: an engine caches whole prompts,
    but the next prompt only reuses what it shares, and a partial block can
    not be shared as a whole.
    """
    if block_chars < 1:
        raise ValueError("block_chars must be >= 1")
    out: list[bytes] = []
    prev = b""
    # Cut on characters, hash bytes: a block boundary never splits a character.
    for start in range(0, len(text) - block_chars + 1, block_chars):
        chunk = text[start : start + block_chars].encode("utf-8", "surrogatepass")
        prev = hashlib.blake2b(prev + chunk, digest_size=12).digest()
        out.append(prev)
    return out


class PrefixIndex:
    """Which prompt blocks each replica is expected to hold in its cache."""

    def __init__(self, block_chars: int = 256, chars_per_token: float = 4.0) -> None:
        if block_chars < 1 or chars_per_token <= 0:
            raise ValueError("block_chars >= 1 and chars_per_token > 0 required")
        self.block_chars = block_chars
        self.chars_per_token = chars_per_token
        self._lru: dict[str, OrderedDict[bytes, None]] = {}
        self._epoch: dict[str, object] = {}

    def hashes(self, prompt: str) -> list[bytes]:
        return block_hashes(prompt, self.block_chars)

    def capacity_blocks(self, cache_tokens: int) -> int:
        """An engine cache of ``cache_tokens`` tokens, in blocks (at least 1)."""
        return max(1, int(cache_tokens * self.chars_per_token) // self.block_chars)

    def tokens(self, blocks: int) -> int:
        """The expected tokens of ``blocks`` blocks."""
        return int(blocks * self.block_chars / self.chars_per_token)

    def match(self, replica_id: str, hashes: Sequence[bytes]) -> int:
        """Leading blocks of ``hashes`` that ``replica_id`` holds (ORCH-2303)."""
        lru = self._lru.get(replica_id)
        if not lru:
            return 0
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def held(self, replica_id: str, hashes: Iterable[bytes]) -> int:
        """How many of ``hashes`` ``replica_id`` holds, wherever they are in the chain
        (equal to :meth:`match` when eviction keeps prefixes, ORCH-2362)."""
        lru = self._lru.get(replica_id)
        return sum(1 for h in hashes if h in lru) if lru else 0

    def record(self, replica_id: str, hashes: Iterable[bytes], capacity_blocks: int) -> None:
        """``replica_id`` was sent a prompt with these blocks; keep at most
        ``capacity_blocks`` of its blocks, evicting the least recently sent."""
        lru = self._lru.setdefault(replica_id, OrderedDict())
        # ORCH-2362: deepest block first, so block 0 ends most recent: a block is never
        # less recent than the blocks after it in its chain, eviction takes a prompt's
        # tail first, and what a replica holds of any prompt stays a prefix of it
        for h in reversed(list(hashes)):
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > max(1, capacity_blocks):
            lru.popitem(last=False)

    def observe_epoch(self, replica_id: str, epoch: object) -> None:
        """Forget a replica's blocks when its engine instance changed (ORCH-2304):
        ``epoch`` is anything that changes with a restart (pid, address, count)."""
        if self._epoch.get(replica_id, epoch) != epoch:
            self._lru.pop(replica_id, None)
        self._epoch[replica_id] = epoch

    def forget(self, replica_id: str) -> None:
        self._lru.pop(replica_id, None)
        self._epoch.pop(replica_id, None)

    def size(self, replica_id: str) -> int:
        """Blocks held for ``replica_id``."""
        return len(self._lru.get(replica_id, ()))

    def replicas(self) -> list[str]:
        return sorted(self._lru)
