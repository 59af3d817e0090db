"""bench/ttft_stages.py: each stage's timestamp is given to the request whose window
(from its send to the next request's send) holds it, the first of each stage counts,
and a write after the request's first token is told apart from the head's write.

uv run pytest bench/tests -q
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ttft_stages  # bench/ttft_stages.py

MS = 1_000_000


def test_stages_are_split_by_request_window() -> None:
    sends = [(0, 10 * MS), (20 * MS, 31 * MS)]  # (sent, client saw the first token)
    events = [
        ("written", 1 * MS // 10),  # the previous answer's last write, in this window
        ("req_in", 1 * MS),
        ("writing", 2 * MS),  # the head
        ("eng_written", 3 * MS),
        ("eng_written", 4 * MS),  # a second one: only the first counts
        ("token", 9 * MS),
        ("writing", 9 * MS + MS // 2),  # the first token's frame
        ("req_in", 21 * MS),
        ("token", 30 * MS),
    ]
    per = ttft_stages.stages(sends, events)
    assert per["req_in"] == [1.0, 1.0]
    assert per["writing"] == [2.0]
    assert per["writing_token"] == [9.5]
    assert per["eng_written"] == [3.0]
    assert per["token"] == [9.0, 10.0]
    assert per["client_token"] == [10.0, 11.0]
    assert per["written"] == [0.1]
