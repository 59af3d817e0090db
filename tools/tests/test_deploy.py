"""Kubernetes manifests, the readiness probe and the Dockerfile (issue #22).

Proves ORCH-6220, ORCH-6221 and ORCH-6222. The manifests are rendered with
``tools/k8s_render.py`` (no kustomize binary is installable here) and
validated offline with kubernetes-validate's bundled schemas, strict mode
(unknown fields fail), for several Kubernetes versions.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml
from llama_orch.core.config import parse_config
from llama_orch.pool_managerd.engine import free_port

from .conftest import ROOT, _load, dockerfile_runs

k8s = _load("k8s_render")
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["base", "overlays/gpu", "overlays/cpu-dev", "overlays/ha"]
# oldest and newest schema sets kubernetes-validate bundles that we support, and one between
K8S_VERSIONS = ["1.29.0", "1.33.0", "1.37.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
PROBE = ROOT / "deploy" / "docker" / "llama_orch_probe.py"


def _docs(overlay: str) -> list[dict[str, Any]]:
    return k8s.render(KUBE / overlay)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


def _config(docs: list[dict[str, Any]]):
    cm = _one(docs, "ConfigMap", "llama-orch-config")
    return parse_config(cm["data"]["llama-orch.yaml"])


# ---------------------------------------------------------------- ORCH-6220 schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_offline(overlay: str, version: str) -> None:
    """ORCH-6220: every rendered resource against that version's schema, strict."""
    validated = 0
    for doc in _docs(overlay):
        if doc["kind"] in CRD_KINDS:
            continue  # no bundled schema: checked against their sources below
        kv.validate(doc, version, strict=True)
        validated += 1
    assert validated >= 5


def test_validation_rejects_a_broken_manifest() -> None:
    """The offline validation can fail: an unknown field and a wrong type."""
    deploy = _one(_docs("base"), "Deployment", "orchestratord")
    typo = k8s.apply_json6902(deploy, [{"op": "add", "path": "/spec/replica", "value": 1}])
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, K8S_VERSIONS[0], strict=True)
    wrong = k8s.apply_json6902(deploy, [{"op": "replace", "path": "/spec/replicas", "value": "1"}])
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong, K8S_VERSIONS[-1], strict=True)


def test_crd_resources_match_their_sources() -> None:
    """ORCH-6220: the PrometheusRule is ci/alerts' rules (regenerated, not edited); the
    ServiceMonitor scrapes the orchestratord Service's named port at /metrics."""
    rule_file = KUBE / "overlays" / "gpu" / "prometheusrule.yaml"
    assert rule_file.read_text(encoding="utf-8") == k8s.prometheus_rule(), (
        "run: python3 tools/k8s_render.py --write-rules"
    )
    docs = _docs("overlays/gpu")
    alerts = yaml.safe_load((ROOT / "ci/alerts/llama-orch.rules.yml").read_text())
    assert _one(docs, "PrometheusRule")["spec"]["groups"] == alerts["groups"]
    monitor, service = _one(docs, "ServiceMonitor"), _one(docs, "Service", "orchestratord")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    secret = _one(docs, "Secret", "llama-orch-secrets")
    assert endpoint["authorization"]["credentials"]["key"] in secret["stringData"]


# ---------------------------------------------------------------- renderer


def test_renderer_json6902_and_refusals(tmp_path: Path) -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    out = k8s.apply_json6902(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "remove", "path": "/c"},
            {"op": "replace", "path": "/a/b/1", "value": 9},
            {"op": "test", "path": "/a/b/3", "value": 3},
            {"op": "add", "path": "/d~1e", "value": {}},
        ],
    )
    assert out == {"a": {"b": [0, 9, 2, 3]}, "d/e": {}}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # the input is untouched
    for bad in (
        [{"op": "remove", "path": "/nope"}],
        [{"op": "move", "path": "/a", "from": "/c"}],
        [{"op": "test", "path": "/c", "value": "y"}],
    ):
        with pytest.raises(k8s.KustomizeError):
            k8s.apply_json6902(doc, bad)
    (tmp_path / "r.yaml").write_text("kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [r.yaml]\ncommonLabels: {a: b}\n")
    with pytest.raises(k8s.KustomizeError, match="unsupported keys"):
        k8s.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [r.yaml]\npatches:\n  - patch: |-\n"
        "      {apiVersion: v1, kind: ConfigMap, metadata: {name: y}, $patch: delete}\n"
    )
    with pytest.raises(k8s.KustomizeError, match="matches nothing"):
        k8s.render(tmp_path)


def test_renderer_agrees_with_kubectl_kustomize() -> None:
    """Where `kubectl kustomize` exists (it does on this project's machine image), the
    renderer's output equals real kustomize's, resource by resource."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the renderer is checked by the tests above")
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(KUBE / overlay)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
        ours = {(d["kind"], d["metadata"]["name"]): d for d in _docs(overlay)}
        assert ours == real, overlay


# ---------------------------------------------------------------- ORCH-6221 topology and probes


def test_orchestratord_is_one_replica_with_probes_on_real_endpoints() -> None:
    """ORCH-6221: one replica, Recreate (several only on the shared store, see the next
    test); liveness on pool health, readiness through the probe script; ports and pools
    agree with the config the pod reads."""
    control = yaml.safe_load((ROOT / "contracts/openapi/control.yaml").read_text())
    for overlay in OVERLAYS:
        docs = _docs(overlay)
        cfg = _config(docs)
        assert cfg.auth.public_health, "the kubelet's probes carry no API key"
        pools = {p.id for p in cfg.pools}
        deploy = _one(docs, "Deployment", "orchestratord")
        if cfg.state is None:  # per-process state: two instances would split the queue
            assert deploy["spec"]["replicas"] == 1
            assert deploy["spec"]["strategy"]["type"] == "Recreate"
        pod = deploy["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert {p["containerPort"] for p in c["ports"]} == {cfg.server.port}
        live = c["livenessProbe"]["httpGet"]["path"]
        assert live.removeprefix("/v1/pools/").removesuffix("/health") in pools
        assert "/v1/pools/{pool_id}/health" in control["paths"]
        ready = c["readinessProbe"]["exec"]["command"]
        assert ready[:2] == ["llama-orch-probe", "orchestratord"]
        assert ready[ready.index("--pool") + 1] in pools
        assert ready[ready.index("--url") + 1].endswith(f":{cfg.server.port}")
        assert pod["securityContext"]["runAsNonRoot"] is True
        pdb = _one(docs, "PodDisruptionBudget", "orchestratord")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= (
            deploy["spec"]["template"]["metadata"]["labels"].items()
        )


def test_ha_overlay_runs_several_instances_on_one_valkey() -> None:
    """ORCH-6220, ORCH-2520: several orchestratord replicas only with a shared `state:`
    store; the store's Service is the one the config names, AOF on a volume, only
    orchestratord may reach it; rolling updates and evictions keep a quorum serving."""
    docs = _docs("overlays/ha")
    cfg = _config(docs)
    assert cfg.state is not None and cfg.state.backend == "valkey" and cfg.state.url
    url = cfg.state.url
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    svc = _one(docs, "Service", host)
    sts = _one(docs, "StatefulSet", "valkey")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    target = svc["spec"]["ports"][0]["targetPort"]
    assert int(port) == svc["spec"]["ports"][0]["port"]
    assert target in {p["name"] for p in c["ports"]}
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # never drop a task
    data = args[args.index("--dir") + 1]
    assert {"name": "data", "mountPath": data} in c["volumeMounts"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    netpol = _one(docs, "NetworkPolicy", "valkey")
    (rule,) = netpol["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestratord"}}}
    ]
    deploy = _one(docs, "Deployment", "orchestratord")
    replicas = deploy["spec"]["replicas"]
    assert replicas >= 2 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    pdb = _one(docs, "PodDisruptionBudget", "orchestratord")
    assert 1 <= pdb["spec"]["minAvailable"] < replicas  # an eviction may proceed


def test_pool_managerd_daemonset_on_gpu_nodes() -> None:
    """ORCH-6221: a DaemonSet requesting nvidia.com/gpu for the device masks of its pools,
    engines on the pod IP (ORCH-6223), its port the config's, a token-checked readiness;
    ORCH-6233: orchestratord finds the pods through their headless Service."""
    docs = _docs("overlays/gpu")
    cfg = _config(docs)
    ds = _one(docs, "DaemonSet", "pool-managerd")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert not cfg.pool_managers, "no node addresses in the config: discovery finds the pods"
    remote = {pid for d in cfg.pool_manager_discovery for pid in d.pools}
    assert remote and remote <= {p.id for p in cfg.pools if not p.endpoints}
    for pool in cfg.pools:
        assert pool.devices is not None, f"pool {pool.id} would run on the CPU"
        indices = {int(d) for d in pool.devices.split(",")}
        assert indices <= set(range(gpus)), f"{pool.id} masks {indices}, pod has {gpus} GPU(s)"
    assert not cfg.allow_cpu_inference
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (port,) = c["ports"]
    assert port["containerPort"] == cfg.pool_managerd.port
    assert "hostPort" not in port  # reached at the pod IP, inside the NetworkPolicy
    assert cfg.pool_managerd.host == "0.0.0.0"
    for overlay in ("overlays/gpu", "overlays/ha"):
        o_docs = _docs(overlay)
        (found,) = _config(o_docs).pool_manager_discovery
        svc = _one(o_docs, "Service", found.dns.split(".")[0])
        assert svc["spec"]["clusterIP"] == "None"  # headless: one A record per pod
        assert svc["spec"]["publishNotReadyAddresses"] is True  # engines still starting
        assert (
            svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
        )
        (svc_port,) = svc["spec"]["ports"]
        assert found.port == svc_port["port"] == port["containerPort"]
        assert svc_port["targetPort"] == port["name"]
    env = {e["name"]: e["valueFrom"] for e in c["env"]}
    assert env["LLAMA_ORCH_ENGINE_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["LLAMA_ORCH_POOL_TOKEN"]["secretKeyRef"]["name"] == "llama-orch-secrets"
    assert c["readinessProbe"]["exec"]["command"][:2] == ["llama-orch-probe", "pool-managerd"]
    assert c["livenessProbe"]["tcpSocket"]["port"] == port["name"]
    pmd = yaml.safe_load((ROOT / "contracts/openapi/pool-managerd.yaml").read_text())
    assert "/v1/replicas" in pmd["paths"]
    netpol = _one(docs, "NetworkPolicy", "pool-managerd")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= (
        ds["spec"]["template"]["metadata"]["labels"].items()
    )
    # the image tag is the release version in every overlay that names one; the GPU
    # nodes run the Dockerfile's CUDA variant (ORCH-6236)
    release = _load("bump_version").release_version()
    image = c["image"]
    assert image.endswith(f":{release}-cuda"), image
    o_image = _one(docs, "Deployment", "orchestratord")["spec"]["template"]["spec"]["containers"]
    assert o_image[0]["image"] == image.removesuffix("-cuda")
    # cpu-dev: no DaemonSet, the pool runs embedded on the CPU
    dev = _docs("overlays/cpu-dev")
    assert not [d for d in dev if d["kind"] == "DaemonSet"]
    assert not [
        d for d in dev if d["kind"] == "Service" and d["metadata"]["name"] == "pool-managerd"
    ]
    dev_cfg = _config(dev)
    assert dev_cfg.allow_cpu_inference and not dev_cfg.pool_managers
    assert not dev_cfg.pool_manager_discovery


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)  # nothing to await across processes: poll the socket
    raise AssertionError(f"{url} did not answer in {timeout} s")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[dict[str, str]]:
    """orchestratord (mock pool, keys, public health) and pool-managerd (token, no pools)
    as real processes, stopped by process group at teardown."""
    o_port, p_port = free_port(), free_port()
    (tmp_path / "o.yaml").write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": o_port, "shutdown_grace_s": 1},
                "auth": {
                    "keys": [{"id": "ops", "role": "admin", "hash": "sha256:" + "0" * 64}],
                    "public_health": True,
                },
                "pools": [
                    {"id": "default", "engine": "mock", "model": "m", "endpoints": ["mock://0"]}
                ],
            }
        )
    )
    (tmp_path / "p.yaml").write_text(
        json.dumps({"pool_managerd": {"host": "127.0.0.1", "port": p_port, "token": "tok"}})
    )
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bindir / name), "--config", str(tmp_path / cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name, cfg in (("orchestratord", "o.yaml"), ("pool-managerd", "p.yaml"))
    ]
    try:
        _wait_http(f"http://127.0.0.1:{o_port}/v1/pools/default/health", procs[0])
        _wait_http(f"http://127.0.0.1:{p_port}/v1/replicas", procs[1])
        yield {
            "orchestratord": f"http://127.0.0.1:{o_port}",
            "pool-managerd": f"http://127.0.0.1:{p_port}",
        }
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _probe(command: list[str], url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The manifest's probe command, with the script's path and the test daemon's URL."""
    argv = [sys.executable, str(PROBE), *command[1:]]
    argv[argv.index("--url") + 1] = url
    full_env = {**os.environ, **env}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=full_env)


def test_readiness_probes_against_live_daemons(daemons: dict[str, str]) -> None:
    """ORCH-6221: the manifests' probe commands exit 0 only when the daemon can serve."""
    docs = _docs("overlays/gpu")
    o_cmd = _one(docs, "Deployment", "orchestratord")["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"
    ]["exec"]["command"]
    p_cmd = _one(docs, "DaemonSet", "pool-managerd")["spec"]["template"]["spec"]["containers"][0][
        "readinessProbe"
    ]["exec"]["command"]
    deadline = time.monotonic() + 60
    while (r := _probe(o_cmd, daemons["orchestratord"], {})).returncode != 0:
        assert time.monotonic() < deadline, r.stderr  # the mock replica becomes Ready
        time.sleep(0.2)
    unknown = [*o_cmd[: o_cmd.index("--pool") + 1], "nope"]
    r = _probe(unknown, daemons["orchestratord"], {})
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    r = _probe(p_cmd, daemons["pool-managerd"], {"LLAMA_ORCH_POOL_TOKEN": "tok"})
    assert r.returncode == 1 and "no Ready replica among 0" in r.stderr
    r = _probe(p_cmd, daemons["pool-managerd"], {"LLAMA_ORCH_POOL_TOKEN": "wrong"})
    assert r.returncode == 1 and "HTTP 401" in r.stderr


# ---------------------------------------------------------------- ORCH-6222 Dockerfile

EXPECTED_RUNS = [
    "apt-get update && apt-get install -y --no-install-recommends ${BUILD_PACKAGES}"
    " && rm -rf /var/lib/apt/lists/*",
    "python3 -m pip install --no-cache-dir uv",
    "python3 tools/build_all.py --out /build/dist --venv /opt/llama-orch",
    "/opt/llama-orch/bin/python -m llama_orch.pool_managerd.provision_cli llama-server"
    " --copy-to /opt/llama-orch/engine",
    "apt-get update && apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES}"
    " && rm -rf /var/lib/apt/lists/*",
    "useradd --system --uid 10001 --create-home --home-dir /var/lib/llama-orch llama-orch",
]


def test_dockerfile_steps_are_the_project_entry_points() -> None:
    """ORCH-6222: multi-stage, non-root, the engine from the build stage; the only RUN
    steps that build or install llama-orch are the two project commands the tests run."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile_runs() == EXPECTED_RUNS
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    assert [s[-1] for s in stages] == ["build", "runtime"]
    lines = text.splitlines()
    assert "COPY --from=build /opt/llama-orch /opt/llama-orch" in lines
    user = [line for line in lines if line.startswith("USER ")]
    assert user == ["USER 10001:10001"]
    assert "LLAMA_SERVER_BIN=/opt/llama-orch/engine/bin/llama-server" in text
    probe_copy = [
        line for line in lines if "llama_orch_probe.py" in line and line.startswith("COPY")
    ]
    assert probe_copy == ["COPY deploy/docker/llama_orch_probe.py /usr/local/bin/llama-orch-probe"]
    assert os.access(PROBE, os.X_OK)
    for manifest_user in (10001,):
        for overlay in OVERLAYS:
            for d in _docs(overlay):
                if d["kind"] in ("Deployment", "DaemonSet"):
                    sc = d["spec"]["template"]["spec"]["securityContext"]
                    assert sc["runAsUser"] == manifest_user


def _dockerfile_args() -> dict[str, str]:
    """Every ``ARG name=default`` of the Dockerfile, quotes removed."""
    args: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("ARG ") and "=" in line:
            name, _, value = line[4:].partition("=")
            args[name] = value.strip('"')
    return args


def test_dockerfile_cpu_and_cuda_variants_share_their_steps() -> None:
    """ORCH-6236: base images, system packages and the llama-server variant are build
    arguments; by default a CPU build on python:3.11-slim; LLAMA_CUDA reaches provisioning
    as $LLAMA_ORCH_LLAMA_CUDA (ORCH-6235), so the RUN steps are the same for both."""
    from llama_orch.pool_managerd.provision import CUDA_ENV

    args = _dockerfile_args()
    assert args["PYTHON_IMAGE"].startswith("python:3.11")
    assert args["BUILD_IMAGE"] == args["RUNTIME_IMAGE"] == "${PYTHON_IMAGE}"
    assert args["LLAMA_CUDA"] == "0"
    assert args["BUILD_PACKAGES"].split() == ["cmake", "g++", "make"]
    assert args["RUNTIME_PACKAGES"].split() == ["libgomp1", "libstdc++6"]
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    env = [line for line in text.splitlines() if line.startswith("ENV ") and "XDG" in line]
    assert env and f"{CUDA_ENV}=${{LLAMA_CUDA}}" in env[0].split()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${BUILD_IMAGE}", "${RUNTIME_IMAGE}"]
    # the documented CUDA build: devel image to build, runtime image to run, Python added
    header = text.split("\nARG ", 1)[0]
    for needed in (
        "BUILD_IMAGE=nvidia/cuda:",
        "-devel-",
        "RUNTIME_IMAGE=nvidia/cuda:",
        "-runtime-",
        "LLAMA_CUDA=1",
        "python3-pip",
        'python3"',
    ):
        assert needed in header, needed


@pytest.mark.real_engine
def test_dockerfile_provisioning_step_runs_from_the_image_venv(
    image_install: dict[str, Path], llama_server_binary
) -> None:
    """ORCH-6222: the Dockerfile's provisioning command, run with the python of the venv
    its build step made (wheels only), finds the engine the fixtures use and copies it;
    the copy runs and keeps its engine_version."""
    (step,) = [r for r in dockerfile_runs() if "provision_cli" in r]
    argv = shlex.split(step)
    venv, dest = image_install["venv"], image_install["tmp"] / "engine"
    moved = {
        "/opt/llama-orch/bin/python": str(venv / "bin" / "python"),
        "/opt/llama-orch/engine": str(dest),
    }
    argv = [moved.get(a, a) for a in argv]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.setdefault("LLAMA_SERVER_BIN", str(llama_server_binary.path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["sha256"] == llama_server_binary.sha256
    assert out["path"] == str(dest / "bin" / "llama-server")
    ran = subprocess.run([out["path"], "--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr[-2000:]
    from llama_orch.pool_managerd.provision import provision_llama_server

    copied = provision_llama_server(out["path"])
    assert copied.sha256 == llama_server_binary.sha256
    if (llama_server_binary.path.parent.parent / "provision.json").is_file():
        assert copied.engine_version == llama_server_binary.engine_version


# ---------------------------------------------------------------- ORCH-6237 replay


def test_dockerfile_replay_plan_covers_every_run_step(tmp_path: Path) -> None:
    """ORCH-6237: the replay tool sees every RUN of the Dockerfile; only apt-get and
    useradd are system steps (checked, not run), the rest (pip uv, build_all, provision)
    are replayed as written; a new RUN step would be replayed, never silently skipped;
    image paths map into the replay's root, host paths do not."""
    replay = _load("dockerfile_replay")
    steps = replay.plan()
    assert [s.text for s in steps] == dockerfile_runs()
    replayed = [s.expanded for s in steps if not s.system]
    assert replayed == [EXPECTED_RUNS[1], EXPECTED_RUNS[2], EXPECTED_RUNS[3]]
    system = [s.expanded.split()[0] for s in steps if s.system]
    assert set(system) == {"apt-get", "useradd"}
    # build-args are expanded with their defaults, or with the values given
    (apt_build,) = [s for s in steps if s.system and s.stage == "build"]
    assert "install -y --no-install-recommends cmake g++ make &&" in apt_build.expanded
    stages = replay.parse(build_args={"BUILD_PACKAGES": "cmake g++ make python3 python3-pip"})
    assert "python3-pip" in next(s for s in stages[0].steps if s.instruction == "RUN").expanded
    assert stages[0].env["LLAMA_ORCH_LLAMA_CUDA"] == "0"
    cuda = replay.parse(build_args={"LLAMA_CUDA": "1", "BUILD_IMAGE": "nvidia/cuda:x-devel"})
    assert cuda[0].env["LLAMA_ORCH_LLAMA_CUDA"] == "1" and cuda[0].base == "nvidia/cuda:x-devel"
    mapper = replay._Mapper(tmp_path, replay.parse())
    assert mapper.tops == ["build", "opt", "src"]
    assert mapper(EXPECTED_RUNS[3]).split()[0] == f"{tmp_path}/opt/llama-orch/bin/python"
    assert mapper("/usr/bin/x /var/lib/apt /optional") == "/usr/bin/x /var/lib/apt /optional"
    extra = tmp_path / "Dockerfile"
    extra.write_text(
        (ROOT / "Dockerfile").read_text() + "RUN curl -fsSL https://example.invalid | sh\n"
    )
    assert [s.system for s in replay.plan(extra)][-1] is False
