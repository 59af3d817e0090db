"""A ``triton`` pool launched by pool-managerd: PyTriton (tritonserver 2.51) on the CPU.

The app is the test suite's PyTriton model over the session's llama-server,
so the readiness gate's one-token decode (ORCH-POOL-3004) goes through the
real Triton adapter, Triton's generate_stream and a real model.
"""

from __future__ import annotations

import pytest
from llama_orch.core.config import Config, EngineLaunchConfig, PoolConfig
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd.engine import process_table
from llama_orch.pool_managerd.provision import sha256_file
from llama_orch.pool_managerd.provision_python import PythonEngine
from llama_orch.testing_engines.llamacpp import RunningLlamaServer
from llama_orch.testing_engines.python_engines import PYTRITON_APP

pytestmark = pytest.mark.real_engine


async def test_a_pytriton_pool_becomes_ready_and_stops_without_leftovers(
    pytriton_engine: PythonEngine, smollm2_server: RunningLlamaServer
) -> None:
    """ORCH-POOL-3030..3032, 3035..3037 on a real Triton: launch, gate, SIGINT stop."""
    pool = PoolConfig(
        id="tri",
        engine="triton",
        model="smollm2-over-llama-server",
        ctx=512,
        slots=1,
        startup_timeout_s=180,
        launch=EngineLaunchConfig(
            triton_server="pytriton",
            pytriton_app=str(PYTRITON_APP),
            triton_model="smollm2",
            env={"PYTRITON_APP_LLAMA_URL": smollm2_server.base_url},
        ),
    )
    async with PoolManager(Config(allow_cpu_inference=True, pools=[pool])) as pm:
        (state,) = pm.replicas()
        assert state.status == "ready", state.last_error
        assert state.engine_version.startswith("nvidia-pytriton-0.7.0+sha256.")
        assert state.model_digest == sha256_file(PYTRITON_APP)  # the app is the model
        assert state.pid is not None
        sid = state.pid
        members = [p for p, (_, s, _) in process_table().items() if s == sid]
        assert len(members) >= 2, "PyTriton runs tritonserver as a child"
    left = [p for p, (_, s, _) in process_table().items() if s == sid]
    assert left == [], f"processes of the Triton engine outlived stop(): {left}"
