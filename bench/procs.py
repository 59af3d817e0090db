"""Processes of a benchmark run: fake engines, orchestratord, LiteLLM, throwaway venvs.

Every process runs in its own process group and is stopped by ``Procs`` in a
``finally`` (by PID/group, never by name). Split out of ``run.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
BIN = Path(PY).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llama-orch" / "bench"
LITELLM_VERSION = "1.106.2"
TOOLS = ["matplotlib==3.11.*", "py-spy", "pyinstrument"]  # tools venv: plot, profile

LEVELS = (1, 16, 64, 256)
REQS = {1: 200, 16: 1000, 64: 2000, 256: 2000}
LITELLM_REQS = {1: 100, 16: 200, 64: 200, 256: 256}
MAX_STREAMS = 4096  # open streams the bench may hold (hold stage: 1000; c <= 256)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()  # urlopen's answer is typed Any
        return body


class Procs:
    """Every process the bench starts; stopped by process group, in reverse."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        logf = (self.logdir / f"{name}.log").open("wb")
        p = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=ROOT,
        )
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for _, p in reversed(list(self.procs)):
            self.stop(p)

    def wait_ready(
        self,
        p: subprocess.Popen[bytes],
        url: str,
        timeout: float,
        check: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                name = next((n for n, q in self.procs if q is p), "?")
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited {p.returncode}:\n{tail}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                body = http_get(url, headers=headers)
                if check is None or check(body):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{url} not ready in {timeout}s")


# --------------------------------------------------------------------------- components


def start_fake(procs: Procs, name: str, delay_ms: float, slots: int = 512) -> tuple[str, int]:
    port = free_port()
    p = procs.start(
        name,
        [
            PY,
            str(HERE / "fake_engine.py"),
            "--port",
            str(port),
            "--token-delay-ms",
            str(delay_ms),
            "--slots",
            str(slots),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(p, url + "/health", 30)
    return url, p.pid


def start_orch(
    procs: Procs,
    name: str,
    engine_url: str | list[str],
    tmp: Path,
    *,
    queue_capacity: int = 8192,
    prefix: list[str] | None = None,
    pythonpath: str | None = None,
    state: dict[str, Any] | None = None,
    args: list[str] | None = None,
) -> tuple[str, subprocess.Popen[bytes]]:
    """One orchestratord on ``engine_url``; ``state``: its ``state:`` section (a shared
    store), ``args``: more command-line arguments (``--workers N``)."""
    port = free_port()
    # Every limit a stage depends on is set here, not left to the defaults
    # (ORCH-2700): a default that changes must not change what the bench measures
    # (issue #20: the default max_streams_per_tenant answered 429 to most requests).
    server: dict[str, Any] = {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0}
    http_server = os.environ.get("LLORCH_BENCH_HTTP_SERVER")
    if http_server and not pythonpath:  # ORCH-2810; the compared sources keep their own
        server["http_server"] = http_server
    cfg = {
        "server": server,
        "auth": {"enabled": False},  # loopback benchmark; auth cost is not measured here
        "admission": {
            "queue_capacity": queue_capacity,
            "full_policy": "reject",
            "max_tokens_limit": 8192,  # the hold stage asks for 4000
            "max_retained_tasks": 10_000,
            "event_log_retention_s": 600.0,
        },
        "limits": {
            "max_streams_per_tenant": MAX_STREAMS,  # > the largest c and the hold stage
            "max_body_bytes": 1_048_576,
            "max_prompt_bytes": 524_288,
            "stream_stall_timeout_s": 60.0,
            "sse_keepalive_s": 15.0,
        },
        "scheduling": {
            "default_tenant": {"weight": 1},  # no rate limit, no max_concurrent
            "waiting": {"queue_ttl_s": 600.0, "unready_timeout_s": 30.0},
        },
        "allow_cpu_inference": True,
        "pools": [
            {
                "id": "bench",
                "engine": "llamacpp-http",
                "model": "fake-model",
                # one replica per URL (bench/ha_relay.py --replicas)
                "endpoints": [engine_url] if isinstance(engine_url, str) else engine_url,
            }
        ],
    }
    if state is not None:  # a state store (issue #13, bench/ha_relay.py)
        cfg["state"] = state
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(cfg))
    # ORCH-2750: the event loop of the bench's own orchestratord (the compared
    # sources keep their default), so that asyncio and uvloop are measured alike
    event_loop = os.environ.get("LLORCH_BENCH_EVENT_LOOP")
    if event_loop and not pythonpath:
        args = [*(args or []), "--event-loop", event_loop]
    env = None
    if pythonpath:  # an overlay of other sources (the "before" of a change), first on the path
        env = dict(os.environ, PYTHONPATH=pythonpath)
    p = procs.start(
        name,
        [*(prefix or []), str(BIN / "orchestratord"), "--config", str(path), *(args or [])],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(
        p, url + "/v1/pools/bench/health", 60, check=lambda b: json.loads(b).get("ready") is True
    )
    return url, p


def ensure_venv(name: str, packages: list[str], probe: str) -> Path:
    """A throwaway venv under the user cache (never a project dependency)."""
    venv = CACHE / name
    py = venv / "bin" / "python"
    stamp = venv / ".bench-packages"
    want = " ".join(packages)
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return venv
    log(f"installing {want} into {venv} (one time)")
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    with (CACHE / f"{name}-install.log").open("wb") as out:
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *packages],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    probe_env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")  # no remote fetch
    subprocess.run([str(py), "-c", probe], check=True, env=probe_env)
    stamp.write_text(want)
    log(f"installed in {time.monotonic() - t0:.0f}s")
    return venv


def start_litellm(procs: Procs, tmp: Path, backends: dict[str, str]) -> tuple[str, int, str]:
    venv = ensure_venv("litellm-venv", [f"litellm[proxy]=={LITELLM_VERSION}"], "import litellm")
    key = "sk-bench-" + secrets.token_hex(8)  # trap 1: no master key -> refuses to start
    lines = ["model_list:"]
    for model, url in backends.items():
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            "      model: openai/fake-model",
            f"      api_base: {url}/v1",
            "      api_key: sk-dummy",
        ]
    cfg = tmp / "litellm.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = dict(
        os.environ, LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True"
    )  # trap 2: offline cost-map fetch
    p = procs.start(
        "litellm",
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(p, url + "/health/liveliness", 180)
    return url, p.pid, key


def loadgen(
    mode: str,
    url: str,
    c: int,
    n: int,
    *,
    cap_s: float,
    watch: dict[str, int],
    max_tokens: int = 32,
    extra: list[str] | None = None,
    warmup: int | None = None,
) -> dict[str, Any]:
    """Run ``bench/loadgen.py`` as its own process (so the measured servers' CPU is
    theirs alone) and return its JSON result; logs a one-line summary."""
    cmd = [
        PY,
        str(HERE / "loadgen.py"),
        "--mode",
        mode,
        "--url",
        url,
        "--concurrency",
        str(c),
        "--requests",
        str(n),
        "--max-tokens",
        str(max_tokens),
        "--cap-s",
        str(cap_s),
        *(f"--watch={k}={v}" for k, v in watch.items()),
        *(extra or []),
    ]
    if warmup is not None:
        cmd += ["--warmup", str(warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap_s * 3 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout)
    if "ttft_ms" not in res:  # hold mode
        log(f"  {mode:6s} {res}")
        return res
    lat = res["ttft_ms"]["50"]
    log(
        f"  {mode:6s} c={c:<3d} ok={res['ok']}/{res['done']} err={res['errors']} "
        f"req/s={res['req_per_s']:.1f} ttft50={lat if lat is None else round(lat, 2)} "
        f"cpu={ {k: round(v, 2) for k, v in res['cpu_s'].items()} }"
    )
    return res


# --------------------------------------------------------------------------- llama-server

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"


@dataclass(frozen=True)
class LlamaServer:
    """One real llama-server the bench started: its URL, when it started (our monotonic
    clock; its log counts from there), its log file, and what it runs."""

    url: str
    started: float
    log: Path
    engine_version: str
    model_digest: str
    proc: subprocess.Popen[bytes]


def start_llama_server(
    procs: Procs,
    name: str,
    *,
    model: str = SMOLLM2,
    threads: int = 1,
    extra_flags: tuple[str, ...] = ("--no-repack",),
    timeout: float = 180.0,
    slot_save_path: Path | None = None,
) -> LlamaServer:
    """Provision (cached) and start one llama-server with 4 slots of 2,048 tokens,
    stopped with the other processes of ``procs``. The default flag: this build's
    repacking dies with SIGILL on these CPUs."""
    from llama_orch.pool_managerd.engine import LlamaServerSpec
    from llama_orch.pool_managerd.provision import provision_llama_server, provision_model

    binary = provision_llama_server(progress=log)
    model_path, digest = provision_model(model, progress=log)
    spec = LlamaServerSpec(
        binary=binary.path,
        model_path=model_path,
        port=free_port(),
        slots=4,
        ctx_per_slot=2048,
        threads=threads,
        slot_save_path=slot_save_path,  # as pool-managerd starts it (ORCH-2370)
        extra_flags=extra_flags,
    )
    started = time.monotonic()
    p = procs.start(name, spec.command(), env=spec.env())
    procs.wait_ready(p, spec.base_url + "/health", timeout)
    return LlamaServer(
        spec.base_url, started, procs.logdir / f"{name}.log", binary.engine_version, digest, p
    )
