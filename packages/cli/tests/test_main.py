"""``llorch submit`` and ``llorch cancel`` against the fake orchestratord."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest
from llama_orch.cli.main import build_parser, main, run_cancel, run_submit


class LiveOut(io.StringIO):
    """Records what had been written at each flush, to prove tokens arrive live."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[str] = []

    def flush(self) -> None:
        self.flushes.append(self.getvalue())


def submit_args(url: str, *extra: str, prompt: str = "hello"):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["submit", prompt, "--url", url, *extra])


async def test_submit_streams_tokens_live_and_prints_summary(fake, capsys) -> None:
    """ORCH-5001."""
    out = LiveOut()
    code = await run_submit(submit_args(fake.url, "--max-tokens", "4", "--seed", "7"), out=out)
    assert code == 0
    assert out.getvalue() == "The quick brown fox\n"
    assert out.flushes[:4] == ["The", "The quick", "The quick brown", "The quick brown fox"]
    (task,) = fake.tasks.values()
    assert task.request.max_tokens == 4 and task.request.seed == 7
    assert task.request.prompt == "hello" and task.request.workload == "completion"
    err = capsys.readouterr().err
    assert task.task_id in err
    assert "queue wait     7 ms" in err
    assert "first token" in err and "client-measured" in err
    assert "tokens out     4" in err
    assert "tokens/s       16.0" in err  # 4 tokens in 250 ms of decode
    assert "end reason     length" in err


async def test_submit_shows_the_live_queue_position(fake, capsys) -> None:
    """ORCH-1963: each ``queued`` event is shown on stderr; stdout stays the text."""
    out = LiveOut()
    assert await run_submit(submit_args(fake.url, "--max-tokens", "2", prompt="wait"), out=out) == 0
    assert out.getvalue() == "The quick\n"
    err = capsys.readouterr().err
    assert "queued position 2, starts in ~3.0 s, ends in ~3.7 s" in err  # ORCH-2907
    assert (
        err.index("position 2")
        < err.index("position 1")
        < err.index("position 0, starts in ~0.0 s")
    )


async def test_submit_chat_sends_a_user_message(fake) -> None:
    args = submit_args(fake.url, "--chat", "--priority", "batch")
    code = await run_submit(args, out=io.StringIO())
    assert code == 0
    (task,) = fake.tasks.values()
    assert task.request.workload == "chat" and task.request.priority == "batch"
    assert task.request.messages is not None and task.request.messages[0].content == "hello"


async def test_submit_429_exits_3_and_shows_retry_after(fake, capsys) -> None:
    fake.busy = True  # always refuses (1.5 s): one retry (ORCH-5010), then the refusal
    assert await run_submit(submit_args(fake.url, "--retries", "1"), out=io.StringIO()) == 3
    assert len(fake.submits) == 2
    err = capsys.readouterr().err
    assert "ADMISSION_REJECT" in err and "queue full" in err
    assert "Retry-After: 2 s" in err and "X-Backoff-Ms: 1500" in err


async def test_submit_400_exits_2(fake, capsys) -> None:
    assert await run_submit(submit_args(fake.url, "--max-tokens", "9999"), out=io.StringIO()) == 2
    assert "INVALID_PARAMS" in capsys.readouterr().err


async def test_submit_invalid_locally_exits_2_without_request(fake, capsys) -> None:
    assert await run_submit(submit_args(fake.url, "--seed", "-1"), out=io.StringIO()) == 2
    assert fake.tasks == {}
    assert "seed" in capsys.readouterr().err


async def test_stream_error_event_exits_1(fake, capsys) -> None:
    out = io.StringIO()
    assert await run_submit(submit_args(fake.url, prompt="fail"), out=out) == 1
    assert out.getvalue().startswith("The quick")
    assert "WORKER_RESET: engine died" in capsys.readouterr().err


async def test_submit_no_stream_prints_task_id(fake) -> None:
    out = io.StringIO()
    assert await run_submit(submit_args(fake.url, "--no-stream"), out=out) == 0
    assert out.getvalue().strip() in fake.tasks


async def test_submit_resumes_over_a_dropped_connection(fake) -> None:
    fake.drop_at = 3
    out = io.StringIO()
    assert await run_submit(submit_args(fake.url), out=out) == 0
    assert out.getvalue() == "The quick brown fox jumps over the lazy dog.\n"
    assert fake.stream_requests == ["submit", "2"]  # one request, then a resume (ORCH-2713)


async def test_ctrl_c_during_stream_cancels_the_task(fake) -> None:
    """ORCH-5002: asyncio.run turns Ctrl-C into cancelling the main task."""
    fake.hold_at = 3
    run = asyncio.create_task(run_submit(submit_args(fake.url), out=io.StringIO()))
    await asyncio.wait_for(fake.holding.wait(), 10)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert fake.cancels == list(fake.tasks)


async def test_cancel_command_posts_cancel(fake, capsys) -> None:
    """ORCH-5002."""
    args = build_parser().parse_args(["cancel", "t-42", "--url", fake.url])
    assert await run_cancel(args) == 0
    assert fake.cancels == ["t-42"]
    assert "cancel sent for task t-42" in capsys.readouterr().err


async def test_main_entry_point_runs_a_submit(fake, capsys) -> None:
    code = await asyncio.to_thread(main, ["submit", "hi", "--url", fake.url, "--max-tokens", "2"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == "The quick\n"
    assert "end reason     length" in captured.err


async def test_unreachable_server_exits_1(capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await run_submit(submit_args(f"http://127.0.0.1:{port}"), out=io.StringIO()) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_url_defaults_to_llorch_url_env(monkeypatch) -> None:
    monkeypatch.setenv("LLORCH_URL", "http://orch.example:9000")
    assert build_parser().parse_args(["cancel", "x"]).url == "http://orch.example:9000"


def test_help_is_written_for_people(capsys) -> None:
    """ORCH-5131: what llorch does, its commands, where URL and key come from, examples."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in (
        "llorch demo",
        "llorch submit",
        "status",
        "top",
        "tasks",
        "sessions",
        "pools",
        "keys",
        "completion",
        "$LLORCH_URL",
        "$LLORCH_API_KEY",
        "orchestratord init",
    ):
        assert needle in text, needle
