"""``llorch-policy build``: the SDK's C and Zig templates compile to import-free
modules with a small minimum memory (ORCH-8505, ORCH-8530)."""

from __future__ import annotations

import importlib.util
import time
from importlib import resources
from pathlib import Path

import pytest
from llama_orch.policy_sdk.build import STACK_SIZE, BuildError, build, cached_build, command
from llama_orch.policy_sdk.cli import main

SDK = Path(str(resources.files("llama_orch.policy_sdk")))
needs_zig = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None, reason="the SDK's `build` extra is not installed"
)


def _sections(wasm: bytes) -> dict[int, list[bytes]]:
    """Section id -> payloads of a wasm binary (enough to read imports and memory)."""
    assert wasm[:4] == b"\0asm"
    out: dict[int, list[bytes]] = {}
    i = 8
    while i < len(wasm):
        sid = wasm[i]
        i += 1
        size, shift = 0, 0
        while True:
            b = wasm[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.setdefault(sid, []).append(wasm[i : i + size])
        i += size
    return out


def test_command_keeps_the_stack_small() -> None:
    """ORCH-8530: without `-z stack-size` the minimum memory is 16 MiB."""
    c = command(Path("p.c"), Path("p.wasm"))
    assert f"-Wl,-z,stack-size={STACK_SIZE}" in c and "--target=wasm32-freestanding" in c
    z = command(Path("p.zig"), Path("p.wasm"))
    assert "--stack" in z and str(STACK_SIZE) in z
    with pytest.raises(BuildError):
        command(Path("p.rs"), Path("p.wasm"))


@needs_zig
@pytest.mark.parametrize("template", ["c/template.c", "zig/template.zig"])
def test_templates_build_without_imports(template: str, tmp_path: Path) -> None:
    """ORCH-8505: the templates build, export the ABI and import nothing."""
    out = tmp_path / "t.wasm"
    t0 = time.perf_counter()
    assert main(["build", str(SDK / template), "-o", str(out)]) == 0
    print(f"{template}: built in {time.perf_counter() - t0:.2f} s, {out.stat().st_size} bytes")
    sections = _sections(out.read_bytes())
    assert 2 not in sections, "the module has an import section"
    export_names = sections[7][0]
    for name in (b"memory", b"llorch_abi_version", b"llorch_alloc", b"llorch_decide"):
        assert name in export_names
    mem = sections[5][0]  # count, flags, min
    assert mem[0] == 1
    flags, minimum = mem[1], mem[2]
    assert flags in (0, 1) and minimum < 16, f"minimum memory {minimum} pages"


@needs_zig
def test_build_error_carries_the_compiler_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int llorch_admission( {")
    with pytest.raises(BuildError, match=r"bad\.c"):
        build(bad, tmp_path / "bad.wasm")


@needs_zig
def test_cached_build_is_keyed_by_content(tmp_path: Path) -> None:
    src = tmp_path / "p.c"
    src.write_text((SDK / "c/template.c").read_text())
    first = cached_build(src, cache_dir=tmp_path / "cache")
    t0 = time.perf_counter()
    assert cached_build(src, cache_dir=tmp_path / "cache") == first
    assert time.perf_counter() - t0 < 1.0  # a hit is a file lookup
    src.write_text(src.read_text() + "\n/* changed */\n")
    assert cached_build(src, cache_dir=tmp_path / "cache") != first
