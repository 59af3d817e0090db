"""The Haiku helpers of ``llorch demo`` (ARCHITECTURE §10, ORCH-5003)."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime

import pytest
from llama_orch.cli.haiku import (
    HAIKU_GRAMMAR,
    THREE_LINES_GRAMMAR,
    check_haiku,
    haiku_prompt,
    make_nonce,
    minute_words,
    now_minute,
)


@pytest.mark.parametrize(
    ("minute", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty-one"),
        (30, "thirty"),
        (37, "thirty-seven"),
        (45, "forty-five"),
        (59, "fifty-nine"),
    ],
)
def test_minute_words(minute: int, words: str) -> None:
    assert minute_words(minute) == words


def test_every_minute_has_distinct_words() -> None:
    assert len({minute_words(m) for m in range(60)}) == 60


@pytest.mark.parametrize("minute", [-1, 60])
def test_minute_words_rejects_out_of_range(minute: int) -> None:
    with pytest.raises(ValueError):
        minute_words(minute)


def test_now_minute_uses_amsterdam_time() -> None:
    # Amsterdam is UTC+1 or UTC+2; a zone with a 30-minute offset would differ.
    assert now_minute(datetime(2025, 1, 15, 12, 34, tzinfo=UTC)) == 34


def test_nonce_is_eight_lowercase_letters_and_fresh() -> None:
    nonces = {make_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(n) == 8 and set(n) <= set(string.ascii_lowercase) for n in nonces)


def test_prompt_wording() -> None:
    assert haiku_prompt("nine", "abcdefgh") == (
        'Write a haiku (3 lines). Include this exact English minute phrase: "nine". '
        'Also include this nonce verbatim: "abcdefgh". Output only the poem.'
    )


def test_check_haiku_rules() -> None:
    words, nonce = minute_words(3), make_nonce()
    good = check_haiku(f"Three lines\nat {words.upper()} past\n{nonce} hums\n", words, nonce)
    assert good.accepted and good.non_empty_lines == 3
    wrong_case_nonce = check_haiku(f"a\n{words}\n{nonce.upper()}", words, nonce)
    assert not wrong_case_nonce.has_nonce and not wrong_case_nonce.accepted
    two_lines = check_haiku(f"{words}\n\n{nonce}\n", words, nonce)
    assert two_lines.non_empty_lines == 2 and not two_lines.accepted


def test_gate_grammar_gives_form_only() -> None:
    """ORCH-1010, ORCH-4019: the gate's grammar spells nothing of the answer: its only
    literal is the line break and every class that admits a letter is a negated class,
    which excludes the uppercase letters A-Z (the lowercase nonce and case-insensitive
    minute words stay writable)."""
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', HAIKU_GRAMMAR)
    assert literals and set(literals) == {"\\n"}
    classes = re.findall(r"\[((?:[^\]\\]|\\.)*)\]", HAIKU_GRAMMAR)
    letter_classes = [c for c in classes if c not in {" \\t"}]
    assert letter_classes and all(c.startswith("^") and "A-Z" in c for c in letter_classes)
    assert "A-Z" not in THREE_LINES_GRAMMAR  # the form before ORCH-4019, kept for the tool
