"""Model sources through the content-addressed cache (ORCH-3300..3303), offline.

The ``https`` and ``hf`` sources are exercised against a local origin
(:mod:`llama_orch.testing.model_server`): these machines reach no model hub.
"""

from __future__ import annotations

import hashlib
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_orch.core.model_source_api import available_model_sources, split_model_ref
from llama_orch.pool_managerd.errors import ProvisionError, VerificationError
from llama_orch.pool_managerd.provision import provision_model
from llama_orch.pool_managerd.sources import ModelCache, UnknownModelSource
from llama_orch.testing.model_server import HubRepo, ModelFileServer

PAYLOAD = b"GGUF" + os.urandom(3 << 20)  # 3 MiB: several 1 MiB blocks
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelCache:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return ModelCache()


@pytest.fixture
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelFileServer]:
    model = tmp_path / "origin" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(PAYLOAD)
    with ModelFileServer() as server:
        server.add_file("m.gguf", model)
        server.add_repo("acme/tiny", HubRepo({"gguf/m.gguf": model}))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _blobs(cache: ModelCache) -> list[Path]:
    return sorted(p for p in cache.root.rglob("*") if p.is_file() and p.suffix == ".gguf")


def test_the_builtin_sources_are_entry_points() -> None:
    """ORCH-3300: one entry-point group; the name is the reference's prefix."""
    assert {"file", "pypi", "https", "hf"} <= set(available_model_sources())
    assert split_model_ref("https://h/x.gguf") == ("https", "https://h/x.gguf")
    assert split_model_ref("hf:a/b@main/x.gguf") == ("hf", "a/b@main/x.gguf")
    assert split_model_ref("/m/x.gguf") == ("file", "/m/x.gguf")
    assert split_model_ref("file:///m/x.gguf") == ("file", "/m/x.gguf")


def test_https_downloads_verifies_and_caches_by_digest(
    cache: ModelCache, origin: ModelFileServer
) -> None:
    """ORCH-3302: the blob is stored under its digest; a second fetch is a cache hit."""
    url = f"{origin.url}/files/m.gguf#sha256={DIGEST}"
    seen: list[str] = []
    got = cache.fetch(url, progress=seen.append)
    assert (got.sha256, got.size, got.source) == (DIGEST, len(PAYLOAD), "https")
    assert got.path == cache.root / DIGEST[:16] / "m.gguf" and got.path.read_bytes() == PAYLOAD
    assert any("downloading m.gguf: 3 MiB (100%)" in s for s in seen)
    n = len(origin.state.requests)
    assert cache.fetch(url).path == got.path and len(origin.state.requests) == n  # no request


def test_a_download_that_stops_half_way_resumes_and_never_lands_partial(
    cache: ModelCache, origin: ModelFileServer
) -> None:
    """ORCH-3303: a cut connection is a typed error, the final name never holds the
    partial bytes, and the next attempt asks only for the rest (Range)."""
    url = f"{origin.url}/files/m.gguf"
    origin.cut_after(1 << 20)
    with pytest.raises(ProvisionError, match="stopped at") as info:
        cache.fetch(url, expected_sha256=DIGEST)
    assert not isinstance(info.value, VerificationError)
    assert _blobs(cache) == []  # nothing under a final name
    (partial,) = (cache.root / ".partial").glob("*.part")
    assert 0 < partial.stat().st_size < len(PAYLOAD)
    have = partial.stat().st_size
    origin.cut_after(None)
    got = cache.fetch(url, expected_sha256=DIGEST)
    assert got.path.read_bytes() == PAYLOAD
    assert origin.state.requests[-1] == ("GET", "/files/m.gguf", f"bytes={have}-")
    assert not list((cache.root / ".partial").glob("*.part"))


def test_wrong_bytes_are_refused_and_not_kept(cache: ModelCache, origin: ModelFileServer) -> None:
    """ORCH-3303: a digest mismatch is a VerificationError; nothing is cached or resumed."""
    with pytest.raises(VerificationError, match=f"expected {'0' * 64}"):
        cache.fetch(f"{origin.url}/files/m.gguf", expected_sha256="0" * 64)
    assert _blobs(cache) == [] and not list((cache.root / ".partial").glob("*.part"))


def test_bad_references_are_typed_errors(cache: ModelCache, origin: ModelFileServer) -> None:
    """Unknown source, malformed locators, a missing file: clear errors, nothing cached."""
    with pytest.raises(UnknownModelSource, match="unknown model source 'ftp'"):
        cache.fetch("ftp:host/x.gguf")
    with pytest.raises(UnknownModelSource, match="expected owner/name@revision/path"):
        cache.fetch("hf:acme/tiny/gguf/m.gguf")
    with pytest.raises(UnknownModelSource, match="only #sha256="):
        cache.fetch(f"{origin.url}/files/m.gguf#sha256=abc")
    with pytest.raises(ProvisionError, match="HTTP 404"):
        cache.fetch(f"{origin.url}/files/nope.gguf")
    with pytest.raises(ProvisionError, match="HTTP 404"):
        cache.fetch("hf:acme/tiny@main/gguf/nope.gguf")
    assert _blobs(cache) == []


def test_hf_uses_the_hub_resolve_layout_pinned_to_the_commit(
    cache: ModelCache, origin: ModelFileServer
) -> None:
    """ORCH-3301: HEAD resolve (no redirect) gives commit, LFS sha256 and size;
    the bytes come from the resolve URL at that commit; the Hub's digest is checked."""
    got = cache.fetch("hf:acme/tiny@main/gguf/m.gguf")
    commit = HubRepo({}).commit
    assert got.sha256 == DIGEST and got.meta.sha256 == DIGEST
    assert got.meta.version == commit
    assert got.meta.source_url == f"{origin.url}/acme/tiny/resolve/{commit}/gguf/m.gguf"
    methods = [(m, p) for m, p, _ in origin.state.requests]
    assert methods[:2] == [
        ("HEAD", "/acme/tiny/resolve/main/gguf/m.gguf"),
        ("GET", f"/acme/tiny/resolve/{commit}/gguf/m.gguf"),
    ]
    # the same bytes from another source are the same cache entry (content-addressed)
    again = cache.fetch(f"{origin.url}/files/m.gguf#sha256={DIGEST}")
    assert again.path == got.path and len(_blobs(cache)) == 1
    with pytest.raises(VerificationError, match="published with sha256"):
        cache.fetch("hf:acme/tiny@main/gguf/m.gguf", expected_sha256="1" * 64)


def test_provision_model_goes_through_the_sources(
    cache: ModelCache, origin: ModelFileServer, tmp_path: Path
) -> None:
    path, digest = provision_model(f"{origin.url}/files/m.gguf", expected_sha256=DIGEST)
    assert digest == DIGEST and path.read_bytes() == PAYLOAD
    local = tmp_path / "local.gguf"
    local.write_bytes(b"GGUF x")
    assert provision_model(f"file:{local}") == (local, hashlib.sha256(b"GGUF x").hexdigest())
    with pytest.raises(VerificationError):
        provision_model(str(local), expected_sha256=DIGEST)


def test_a_third_party_source_is_found_by_its_entry_point(
    cache: ModelCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-3300: a distribution that registers ``llama_orch.model_sources`` adds a
    source without any change here (an installed dist-info on sys.path)."""
    site = tmp_path / "site"
    (site / "echo_source-0.1.dist-info").mkdir(parents=True)
    (site / "echo_source-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: echo-source\nVersion: 0.1\n"
    )
    (site / "echo_source-0.1.dist-info" / "entry_points.txt").write_text(
        "[llama_orch.model_sources]\necho = echo_source:EchoSource\n"
    )
    (site / "echo_source.py").write_text(
        textwrap.dedent(
            """
            from llama_orch.core.model_source_api import ModelSource, SourceMeta

            class EchoSource(ModelSource):
                def resolve(self, locator):
                    return SourceMeta(filename=locator + ".gguf", source_url="echo:" + locator)

                def fetch(self, locator, meta, partial, progress):
                    partial.write_bytes(b"GGUF" + locator.encode())
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "echo_source", raising=False)
    assert "echo" in available_model_sources()
    got = cache.fetch("echo:hello")
    assert got.path.read_bytes() == b"GGUFhello" and got.source == "echo"
    assert got.path.parent.name == hashlib.sha256(b"GGUFhello").hexdigest()[:16]


def test_registration_fetches_from_the_origin_when_only_the_caller_pins(
    cache: ModelCache, origin: ModelFileServer, tmp_path: Path
) -> None:
    """ORCH-3310: with the genuine bytes cached, a tampered origin pinned to their
    digest is still caught when ``from_origin`` (what registration uses)."""
    cache.fetch(f"{origin.url}/files/m.gguf#sha256={DIGEST}")
    bad = bytearray(PAYLOAD)
    bad[10] ^= 1
    (tmp_path / "bad.gguf").write_bytes(bytes(bad))
    origin.add_file("bad.gguf", tmp_path / "bad.gguf")
    url = f"{origin.url}/files/bad.gguf"
    assert cache.fetch(url, expected_sha256=DIGEST).sha256 == DIGEST  # content-addressed hit
    with pytest.raises(VerificationError, match=f"expected {DIGEST}"):
        cache.fetch(url, expected_sha256=DIGEST, from_origin=True)
    assert cache.lookup(DIGEST) is not None  # the genuine blob is untouched
