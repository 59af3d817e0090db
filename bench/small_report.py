"""The tail every small bench shares: its Markdown report printed and, with
``--out``, written (the state-store scans, the admitter cost, the HA relay)."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: Path | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.write_text(text)
