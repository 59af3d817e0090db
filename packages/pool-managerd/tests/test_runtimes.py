"""Launching vllm-http, triton and tgi-http pools (ORCH-POOL-3030..3037), without the engines.

A fake ``python`` stands in for a vLLM install (``launch.python``): it lists
its "packages" for ``engine_version``, refuses connections while "loading"
(like vLLM), records its command line and environment, and starts a child
that leaves the engine's process group (as vLLM's EngineCore was once seen
to outlive it). The real vLLM launch is proven by
``packages/orchestratord/tests/test_serve_launch_engines_real.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import msgspec
import pytest
from llama_orch.core.config import Config, EngineLaunchConfig, PoolConfig
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd.engine import process_table
from llama_orch.pool_managerd.errors import ProvisionError
from llama_orch.pool_managerd.runtimes import LaunchPlan, Prepared, check_launch, plan, prepare

FAKE_VLLM = """\
import http.server, json, os, sys, time
if sys.argv[1] == "-c":  # the engine_version probe lists the installed packages
    print(json.dumps(["torch==2.13.0+cpu", "vllm==0.99.0"]))
    sys.exit(0)
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
record = os.environ["FAKE_RECORD"]
pid = os.fork()
if pid == 0:  # like an engine core: leaves the engine's process group
    os.setpgid(0, 0)
    time.sleep(3600)
    os._exit(0)
with open(record, "w") as fh:
    json.dump({"argv": args, "env": dict(os.environ), "cwd": os.getcwd(), "child": pid}, fh)
time.sleep(float(os.environ.get("FAKE_LOAD_S", "0")))  # loading: connections refused

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    path = tmp_path / "venv" / "bin" / "python"
    path.parent.mkdir(parents=True)
    path.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    path.chmod(0o755)
    return path


@pytest.fixture
def hf_model(tmp_path: Path) -> Path:
    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model / "model.safetensors").write_bytes(b"\0" * 1024)
    return model


def _alive(pid: int) -> bool:
    return pid in process_table()


async def test_a_vllm_pool_launches_gates_through_loading_and_leaves_nothing_behind(
    fake_vllm: Path,
    hf_model: Path,
    fake_adapter: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-POOL-3030..3033, 3035..3037: vLLM command and environment from the pool;
    refused connections while loading are not a failure; engine_version is
    ``<package>-<version>+sha256.<12>``; a child that left the group is stopped."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    monkeypatch.setenv("FAKE_LOAD_S", "1.5")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    cfg = Config(
        allow_cpu_inference=True,
        pools=[
            PoolConfig(
                id="v",
                engine="vllm-http",
                model=str(hf_model),
                ctx=512,
                slots=3,
                threads=2,
                engine_flags=["--swap-space", "0"],
                startup_timeout_s=30,
                launch=EngineLaunchConfig(python=str(fake_vllm), env={"EXTRA": "1"}),
            )
        ],
    )
    async with PoolManager(cfg) as pm:
        (state,) = pm.replicas()
        assert state.status == "ready", state.last_error
        doc = json.loads(record.read_text())
        child = int(doc["child"])
        assert _alive(child) and os.getpgid(child) != state.pid
        # ORCH-6244: vLLM's model-info cache links to one shared per engine_version
        shared = tmp_path / "user-cache" / "llama-orch" / "vllm-modelinfos" / state.engine_version
        link = Path(doc["env"]["VLLM_CACHE_ROOT"]) / "modelinfos"
        assert link.is_symlink() and link.resolve() == shared.resolve()
        (link / "entry.json").write_text("{}")  # what vLLM writes there
    argv, env = doc["argv"], doc["env"]

    def flag(name: str) -> str:
        return str(argv[argv.index(name) + 1])

    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert flag("--model") == str(hf_model) and flag("--served-model-name") == str(hf_model)
    assert flag("--max-model-len") == "512" and flag("--max-num-seqs") == "3"
    assert flag("--dtype") == "bfloat16" and flag("--host") == "127.0.0.1"
    assert "--tensor-parallel-size" not in argv  # CPU: one shard
    assert argv[-3:] == ["--enforce-eager", "--swap-space", "0"]  # engine_flags last
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["OMP_NUM_THREADS"] == "2" and env["EXTRA"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and "VIRTUAL_ENV" not in env
    scratch = Path(env["TMPDIR"])
    assert doc["cwd"] == str(scratch) and env["VLLM_CACHE_ROOT"] == str(scratch / "vllm-cache")
    assert state.engine_version.startswith("vllm-0.99.0+sha256.")
    assert len(state.engine_version.rsplit(".", 1)[1]) == 12
    assert state.model_digest and state.slots == 3
    # After stop: the group, the child that left it and the scratch directory are gone.
    assert state.pid is not None and not _alive(state.pid)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "a child that left the engine's group outlived it"
    assert not scratch.exists()
    assert (shared / "entry.json").is_file()  # removing the scratch unlinked the link only


async def test_kill_9_of_the_leader_is_a_crash_even_while_its_child_holds_the_output(
    fake_vllm: Path,
    hf_model: Path,
    fake_adapter: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-POOL-3037: the child keeps the engine's stdout open after the leader is
    killed; the supervisor still sees the exit at once (not probes failing later)
    and stops the child."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    pool = PoolConfig(
        id="v",
        engine="vllm-http",
        model=str(hf_model),
        breaker_failures=1,  # no restart: the failure itself is under test
        health_probe_interval_s=30,  # probes cannot be what notices
        launch=EngineLaunchConfig(python=str(fake_vllm)),
    )
    seen: list[str] = []
    async with PoolManager(
        Config(allow_cpu_inference=True, pools=[pool]),
        on_change=lambda s: seen.append(s.last_error or ""),
    ) as pm:
        (state,) = pm.replicas()
        assert state.status == "ready" and state.pid is not None
        child = int(json.loads(record.read_text())["child"])
        os.kill(state.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pm.replicas()[0].status == "ready" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (state,) = pm.replicas()
        assert state.status == "failed" and "engine exited with code -9" in (state.last_error or "")
        assert not _alive(child), "the child outlived its killed leader"


async def test_a_vllm_engine_that_exits_while_loading_fails_with_its_output(
    fake_vllm: Path, hf_model: Path, fake_adapter: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-POOL-3035: the grace period covers loading, not an exit."""
    monkeypatch.setenv("FAKE_RECORD", "/nonexistent/dir/record.json")  # the engine dies
    pool = PoolConfig(
        id="v",
        engine="vllm-http",
        model=str(hf_model),
        startup_timeout_s=30,
        provision_retries=0,
        breaker_failures=1,
        launch=EngineLaunchConfig(python=str(fake_vllm)),
    )
    t0 = time.monotonic()
    async with PoolManager(Config(allow_cpu_inference=True, pools=[pool])) as pm:
        (state,) = pm.replicas()
    assert state.status == "failed" and time.monotonic() - t0 < 20
    assert "FileNotFoundError" in (state.last_error or ""), state.last_error


def _prep(executable: str = "/x/python", model: str = "/m") -> Prepared:
    return Prepared(object, Path(executable), "v+sha256.0", Path(model), "d" * 64)


def _plan(pool: PoolConfig, prep: Prepared | None = None, host: str = "127.0.0.1") -> LaunchPlan:
    ports = iter(range(9000, 9100))
    return plan(pool, prep or _prep(), host=host, port=lambda: next(ports), scratch=Path("/s"))


def test_vllm_plan_on_gpus_shards_over_the_mask_unless_told() -> None:
    """ORCH-POOL-3033: tensor-parallel = devices of the mask, or launch.tensor_parallel."""
    pool = PoolConfig(id="v", engine="vllm-http", devices="0,1", slots=4, ctx=4096)
    got = _plan(pool, host="10.0.0.5")
    cmd = got.command
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert cmd[cmd.index("--dtype") + 1] == "auto" and "--enforce-eager" not in cmd
    assert got.env["CUDA_VISIBLE_DEVICES"] == "0,1" and "VLLM_CPU_KVCACHE_SPACE" not in got.env
    assert got.base_url == "http://10.0.0.5:9000" and got.health_path == "/health"
    assert got.options == {"slots": 4, "served_model": pool.model}
    one = msgspec.structs.replace(pool, launch=EngineLaunchConfig(tensor_parallel=1))
    assert "--tensor-parallel-size" not in _plan(one).command
    assert "--runner" not in cmd


def test_vllm_plan_with_embeddings_runs_a_pooling_runner() -> None:
    """ORCH-9281: embeddings: true -> vLLM's pooling runner, the causal model converted."""
    pool = PoolConfig(id="v", engine="vllm-http", embeddings=True, engine_flags=["--x"])
    cmd = _plan(pool).command
    assert cmd[-5:] == ["--runner", "pooling", "--convert", "embed", "--x"]


def test_triton_plans_tritonserver_with_trtllm_ranks_and_pytriton() -> None:
    """ORCH-POOL-3032, 3033: tritonserver on the repository (TRT-LLM: one mpirun rank per
    shard, rank 0 serves HTTP); PyTriton: the app, SIGINT to stop, a token for stats."""
    launch = EngineLaunchConfig(
        model_repository="/repo", triton_model="ensemble", triton_backend="tensorrtllm"
    )
    pool = PoolConfig(id="t", engine="triton", devices="0,1", ctx=2048, launch=launch)
    got = _plan(pool, _prep("/bin/tritonserver", "/repo"))
    cmd = got.command
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"] and cmd.count("/bin/tritonserver") == 2
    rank0, rank1 = " ".join(cmd).split(" : ")
    assert "--http-port 9000" in rank0 and "--metrics-port 9001" in rank0
    assert "--metrics-address 127.0.0.1" in rank0  # loopback unless configured (ORCH-POOL-3014)
    assert "shm-region-prefix-name=prefix0_" in rank0 and "--allow-http false" in rank1
    assert "shm-region-prefix-name=prefix1_" in rank1 and "--load-model tensorrt_llm" in rank1
    assert got.health_path == "/v2/health/ready" and got.stop_signal == signal.SIGTERM
    assert got.options["model"] == "ensemble" and got.options["ctx"] == 2048
    assert got.options["metrics_url"] == "http://127.0.0.1:9001/metrics"

    py = EngineLaunchConfig(triton_server="pytriton", pytriton_app="/app.py", triton_model="m")
    pool = PoolConfig(id="p", engine="triton", slots=2, launch=py)
    got = _plan(pool, _prep("/venv/bin/python", "/app.py"))
    assert got.command[:2] == ["/venv/bin/python", "/app.py"]
    app_cfg = json.loads(got.command[2])
    assert app_cfg["model_name"] == "m" and app_cfg["instances"] == 2
    assert app_cfg["access_token"] == got.options["access_token"]
    assert got.stop_signal == signal.SIGINT and got.health_path == "/v2/models/m/ready"
    assert got.env["PYTRITON_HOME"] == "/s/pytriton-home" and "LD_LIBRARY_PATH" in got.env


def test_tgi_plan() -> None:
    """ORCH-POOL-3032, 3033: text-generation-launcher with shards, dtype, quantize."""
    launch = EngineLaunchConfig(tensor_parallel=4, dtype="bfloat16", quantize="awq")
    pool = PoolConfig(id="g", engine="tgi-http", ctx=1024, devices="0,1,2,3", launch=launch)
    prep = Prepared(object, Path("/bin/tgl"), "v", None, "d" * 64, "org/model")
    got = _plan(pool, prep)
    cmd = got.command
    assert cmd[0] == "/bin/tgl" and cmd[cmd.index("--model-id") + 1] == "org/model"
    assert cmd[cmd.index("--num-shard") + 1] == "4" and cmd[cmd.index("--quantize") + 1] == "awq"
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--max-total-tokens") + 1] == "1024"
    assert got.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and got.health_path == "/health"
    assert "HF_HUB_OFFLINE" not in got.env  # a hub id is fetched by TGI itself


def test_launch_keys_must_fit_the_engine() -> None:
    """ORCH-POOL-3034."""
    ok = PoolConfig(id="v", engine="vllm-http", launch=EngineLaunchConfig(dtype="half"))
    assert check_launch(ok) is None
    bad = PoolConfig(id="l", engine="llamacpp-http", launch=EngineLaunchConfig(dtype="half"))
    assert check_launch(bad) == "pool l: launch.dtype does not apply to llamacpp-http"
    no_model = PoolConfig(id="t", engine="triton")
    assert "launch.triton_model" in (check_launch(no_model) or "")
    trt = EngineLaunchConfig(triton_model="e", trtllm_version="0.20.0")
    assert "tensorrtllm" in (check_launch(PoolConfig(id="t", engine="triton", launch=trt)) or "")


def test_engines_not_installable_here_fail_provisioning_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-POOL-3031: a missing tritonserver / text-generation-launcher is a
    ProvisionError that says where it was looked for; TRT-LLM's version is part
    of engine_version."""
    monkeypatch.setenv("PATH", str(tmp_path))
    triton = PoolConfig(
        id="t", engine="triton", launch=EngineLaunchConfig(triton_model="m"), model=str(tmp_path)
    )
    with pytest.raises(ProvisionError, match="tritonserver not found"):
        prepare(triton, object, lambda _: None)
    with pytest.raises(ProvisionError, match="text-generation-launcher not found"):
        prepare(PoolConfig(id="g", engine="tgi-http"), object, lambda _: None)
    binary = tmp_path / "tritonserver"
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    (tmp_path / "repo" / "ensemble").mkdir(parents=True)
    (tmp_path / "repo" / "ensemble" / "config.pbtxt").write_text('name: "ensemble"')
    launch = EngineLaunchConfig(
        triton_model="ensemble",
        model_repository=str(tmp_path / "repo"),
        triton_backend="tensorrtllm",
        trtllm_version="0.20.0",
    )
    prep = prepare(PoolConfig(id="t", engine="triton", launch=launch), object, lambda _: None)
    assert prep.executable == binary and prep.model_path == tmp_path / "repo"
    assert prep.engine_version.startswith("tritonserver+trtllm-0.20.0+sha256.")
    tgi = PoolConfig(id="g", engine="tgi-http", model="org/model", engine_binary=str(binary))
    with pytest.raises(ProvisionError, match="model_digest"):
        prepare(tgi, object, lambda _: None)


async def test_stop_waits_until_killed_processes_have_exited() -> None:
    """ORCH-POOL-3038: a SIGKILLed process is not yet gone; the wait ends at its exit
    (not before, not on a poll) and names the survivors when it times out."""
    from llama_orch.pool_managerd.engine import _until_exited

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        assert await _until_exited({proc.pid}, timeout=0.2) == {proc.pid}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        loop.call_later(0.3, os.kill, proc.pid, signal.SIGKILL)
        assert await _until_exited({proc.pid}, timeout=10.0) == set()
        assert loop.time() - t0 >= 0.3
        assert proc.pid not in process_table()  # a zombie at most, until reaped
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert await _until_exited({proc.pid}, timeout=1.0) == set()  # reaped: nothing to wait for


def test_llama_server_plan_saves_slots_in_the_replica_scratch() -> None:
    """ORCH-2370: llama-server may save and restore slot caches (ORCH-2369) in the
    replica's scratch directory, which is removed when the engine stops; the pool's
    own engine_flags still come last."""
    pool = PoolConfig(id="l", engine="llamacpp-http", engine_flags=["--x"])
    cmd = _plan(pool).command
    assert cmd[cmd.index("--slot-save-path") + 1] == "/s"
    assert cmd[-1] == "--x"
