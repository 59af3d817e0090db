"""schemathesis against both OpenAPI documents and a live orchestratord (ORCH-8040).

orchestratord runs as a subprocess with the mock adapter and API keys. Every
operation of ``data.yaml`` and ``control.yaml`` gets up to ``EXAMPLES``
generated requests (valid and invalid bodies, parameters and headers), sent
with the key of the role the operation needs (and, for one in four, no key or
the wrong role's key). Every answer must be below 500, conform to the
documents (status, headers, content type, body schema), and every error must
decode as an ``ErrorBody``. The number of generated cases is printed and
written to ``fuzz-cases.txt`` in the test's temporary directory.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from llama_orch.core.errors import ErrorBody
from llama_orch.orchestratord.auth import hash_key

OPENAPI = Path(__file__).resolve().parents[3] / "contracts" / "openapi"
EXAMPLES = 60  # per operation; bounded so CI stays within seconds per operation
TENANT = "llo_fuzz-tenant-" + "t" * 32
ADMIN = "llo_fuzz-admin-" + "a" * 32
ADMIN_OPS = {
    "drainPool",
    "reloadPool",
    "getReplicaSets",
    "getMetrics",
    "getAdminStatus",
    "listAdminTasks",
    "getAdminTask",
    "streamAdminTask",
    "cancelAdminTask",
    "listAdminSessions",
    "reloadPolicies",
    "getPolicies",
}
# the count test reads what the fuzz tests of this module ran: one worker for all (ORCH-6240)
pytestmark = pytest.mark.xdist_group("fuzz-openapi")

CASES: Counter[str] = Counter()
_error = msgspec.json.Decoder(ErrorBody)

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, shutdown_grace_s: 1.0}}
auth:
  keys:
    - {{id: fuzz-tenant, role: tenant, tenant: fuzz, hash: "{tenant}"}}
    - {{id: fuzz-admin, role: admin, hash: "{admin}"}}
limits: {{max_body_bytes: 65536}}
admission: {{queue_capacity: 16}}
pools:
  - id: main
    engine: mock
    model: mock-model
    endpoints: ["mock://0"]
    adapter_options: {{token_delay_ms: 0, slots: 4, eos_after: 3}}
"""

data_schema = schemathesis.openapi.from_path(OPENAPI / "data.yaml")
control_schema = schemathesis.openapi.from_path(OPENAPI / "control.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp / "orchestratord.yaml"
    cfg.write_text(CONFIG.format(port=port, tenant=hash_key(TENANT), admin=hash_key(ADMIN)))
    log = (tmp / "orchestratord.log").open("wb")
    exe = Path(sys.executable).with_name("orchestratord")
    proc = subprocess.Popen([str(exe), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                r = requests.get(
                    url + "/v1/pools/main/health", headers={"Authorization": f"Bearer {ADMIN}"}
                )
                if r.status_code == 200 and r.json()["ready"]:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        yield url, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp / "orchestratord.log").read_text()[-3000:]


def _key_for(case: schemathesis.Case) -> str | None:
    op = case.operation.definition.raw["operationId"]
    right = ADMIN if op in ADMIN_OPS else TENANT
    # one case in four probes auth: no key, or the other role's key
    probe = CASES[op] % 4
    if probe == 1:
        return None
    if probe == 2:
        return TENANT if right == ADMIN else ADMIN
    return right


def _check(case: schemathesis.Case, url: str) -> None:
    op = case.operation.definition.raw["operationId"]
    key = _key_for(case)
    CASES[op] += 1
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = case.call(base_url=url, headers=headers, timeout=30)
    assert response.status_code < 500, (op, response.status_code, response.text[:500])
    if response.status_code >= 400:
        _error.decode(response.content)  # every error is an envelope (ORCH-2001)
    negative = {
        str(getattr(loc, "value", loc))
        for loc, info in (case.meta.components.items() if case.meta else ())
        if info.mode.is_negative
    }
    if negative & {"body", "path"}:
        # a body or path outside the documents is refused (413/431 count as refusals); an
        # unknown header or query parameter may be ignored, as HTTP allows
        assert 400 <= response.status_code < 500, (op, response.status_code, response.text[:300])
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=[
            # a body the schema allows can still be refused by admission (unknown pool, ctx)
            schemathesis.checks.positive_data_acceptance,
            # replaced by the 4xx check above, which also accepts 413 and 431
            schemathesis.checks.negative_data_rejection,
            # the stored key differs per probe; the check replays without ours
            schemathesis.checks.ignored_auth,
        ],
    )


_fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)


@data_schema.parametrize()
@_fuzz
def test_data_plane_fuzz(case: schemathesis.Case, server) -> None:
    """ORCH-8040: data.yaml operations."""
    _check(case, server[0])


@control_schema.parametrize()
@_fuzz
def test_control_plane_fuzz(case: schemathesis.Case, server) -> None:
    """ORCH-8040: control.yaml operations."""
    _check(case, server[0])


def test_fuzz_case_count(server) -> None:
    """ORCH-8040: report how many cases ran; every operation got some."""
    total = sum(CASES.values())
    lines = [f"{op}: {n}" for op, n in sorted(CASES.items())] + [f"total: {total}"]
    (server[1] / "fuzz-cases.txt").write_text("\n".join(lines) + "\n")
    print("\nschemathesis cases: " + ", ".join(lines))
    documented = sum(
        1
        for name in ("data", "control")
        for item in yaml.safe_load((OPENAPI / f"{name}.yaml").read_text())["paths"].values()
        for method in ("get", "post", "put", "patch", "delete")
        if method in item
    )
    assert len(CASES) == documented and total >= documented * 10
