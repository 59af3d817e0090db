"""Deterministic "model": token text, tokenizer and chat template.

Everything here is a pure function of its inputs, so two adapters (or two
processes) given the same seed and prompt produce the same stream.

* Token ``i`` of a generation is ``" " + WORDS[h % len(WORDS)]`` where ``h``
  is a BLAKE2b hash of ``(seed, prompt, i)``.
* :func:`tokenize` returns ``[BOS_ID]`` followed by one id per
  whitespace-separated word of the text (``2 + hash(word) % 50_000``), so a
  prompt of *n* words counts as *n + 1* tokens, like an engine adding BOS.
"""

from __future__ import annotations

import hashlib

__all__ = ["BOS_ID", "WORDS", "render_chat", "token_text", "tokenize_text"]

BOS_ID = 1
_VOCAB = 50_000

WORDS: tuple[str, ...] = (
    "the",
    "a",
    "llama",
    "orchestrates",
    "tokens",
    "quickly",
    "over",
    "green",
    "hills",
    "while",
    "models",
    "stream",
    "text",
    "and",
    "slots",
    "wait",
    "for",
    "their",
    "turn",
    "under",
    "bright",
    "stars",
    "queue",
    "seed",
    "river",
    "stone",
    "engine",
    "mock",
    "quiet",
    "forest",
    "north",
    "window",
)


def _hash(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def token_text(seed: int, prompt: str, index: int) -> str:
    """The text of generated token ``index`` (0-based); always starts with a space."""
    return " " + WORDS[_hash(str(seed), prompt, str(index)) % len(WORDS)]


def tokenize_text(text: str) -> list[int]:
    return [BOS_ID, *(2 + _hash(word) % _VOCAB for word in text.split())]


def render_chat(messages: list[dict[str, str]]) -> str:
    """``<|role|>content\\n`` per message, then ``<|assistant|>``."""
    return "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"
