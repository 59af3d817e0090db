"""The Haiku task of ``llorch demo`` (ARCHITECTURE §10).

The prompt asks for the current Amsterdam minute in English words and a fresh
random nonce, so a correct answer cannot come from a cache or a fixture: it
proves a real model read this very request.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

__all__ = [
    "HAIKU_GRAMMAR",
    "HAIKU_SYSTEM",
    "THREE_LINES_GRAMMAR",
    "HaikuCheck",
    "check_haiku",
    "haiku_messages",
    "haiku_prompt",
    "make_nonce",
    "minute_words",
    "now_minute",
]

AMSTERDAM = ZoneInfo("Europe/Amsterdam")

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty"}


def minute_words(minute: int) -> str:
    """English words for ``minute`` in 0..59: 0 → "zero", 37 → "thirty-seven"."""
    if not 0 <= minute <= 59:
        raise ValueError(f"minute must be in 0..59, got {minute}")
    if minute < 20:
        return _ONES[minute]
    tens, ones = divmod(minute, 10)
    word = _TENS[tens * 10]
    return word if ones == 0 else f"{word}-{_ONES[ones]}"


def now_minute(now: datetime | None = None) -> int:
    """The current minute in Europe/Amsterdam (``now`` may be any aware datetime)."""
    moment = now.astimezone(AMSTERDAM) if now is not None else datetime.now(AMSTERDAM)
    return moment.minute


def make_nonce(length: int = 8) -> str:
    """``length`` random lowercase ASCII letters from a CSPRNG."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(length))


# The protocol prompt stays as the user turn; this system turn only asks for
# exact copying. Measured on Qwen2.5-Coder-0.5B (temperature 0, 24 nonces):
# 24/24 accepted with it, 23/24 without (the miss capitalised the nonce at the
# start of a line).
HAIKU_SYSTEM = (
    "You are a careful poet. Copy every quoted string exactly as given, letter for "
    "letter, keeping its lowercase letters lowercase even at the start of a line."
)


# ORCH-1010: the engine's grammar gives the answer its form only: three lines, each
# with a visible character. It never supplies the minute words or the nonce (the
# model must still copy both); it removes the miss where the model answered on one
# line (3 of the 4 misses in 120 pairs, TODO.md issue #3).
THREE_LINES_GRAMMAR = r"""root ::= line "\n" line "\n" line
line ::= [ \t]* [^ \t\n] [^\n]*
"""

# ORCH-4019: the gate's grammar is the three lines above written in lowercase (no
# letter A-Z anywhere). Still form only: it spells no word, and the nonce is
# lowercase by the protocol while the minute words are matched case-insensitively,
# so a correct answer stays correct. It removes the miss where the model wrote the
# nonce capitalised at the start of a line (CI run of stop 29: "Jazakucx").
HAIKU_GRAMMAR = r"""root ::= line "\n" line "\n" line
line ::= [ \t]* [^ \t\nA-Z] [^\nA-Z]*
"""


def haiku_messages(words: str, nonce: str) -> list[dict[str, str]]:
    """The chat turns of the Haiku protocol (ARCHITECTURE §10)."""
    return [
        {"role": "system", "content": HAIKU_SYSTEM},
        {"role": "user", "content": haiku_prompt(words, nonce)},
    ]


def haiku_prompt(words: str, nonce: str) -> str:
    return (
        "Write a haiku (3 lines). "
        f'Include this exact English minute phrase: "{words}". '
        f'Also include this nonce verbatim: "{nonce}". '
        "Output only the poem."
    )


@dataclass(frozen=True, slots=True)
class HaikuCheck:
    has_minute_words: bool
    has_nonce: bool
    non_empty_lines: int

    @property
    def accepted(self) -> bool:
        return self.has_minute_words and self.has_nonce and self.non_empty_lines >= 3


def check_haiku(text: str, words: str, nonce: str) -> HaikuCheck:
    """Apply the §10 acceptance rules to the model's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    return HaikuCheck(
        has_minute_words=words.lower() in text.lower(),
        has_nonce=nonce in text,
        non_empty_lines=len(lines),
    )
