"""``orchestratord init`` and the ``--help`` texts (ORCH-5130, ORCH-5131)."""

from __future__ import annotations

import hashlib
import stat

import pytest
from llama_orch.core.config import load_config
from llama_orch.orchestratord.auth import load_keys
from llama_orch.orchestratord.main import main


def test_init_writes_a_starter_config_that_loads(tmp_path, capsys) -> None:
    """ORCH-5130: embedded pool on the default model, a tenant and an admin key as hashes,
    the keys printed once on stdout."""
    path = tmp_path / "llama-orch.yaml"
    assert main(["init", "--path", str(path), "--tenant", "team-x"]) == 0
    out, err = capsys.readouterr()
    keys = dict(line.split(": ", 1) for line in out.strip().splitlines())
    tenant_key, admin_key = keys["tenant key (team-x)"], keys["admin key (ops)"]
    text = path.read_text()
    assert tenant_key not in text and admin_key not in text  # only hashes at rest
    assert text.count("\n#") >= 3  # commented for people
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = load_config(str(path))
    (pool,) = cfg.pools
    assert pool.engine == "llamacpp-http" and pool.model.startswith("pypi:qwen2.5-coder")
    assert not pool.endpoints  # started by the embedded pool manager
    by_role = {k.role: k for k in load_keys(cfg.auth)}
    digest = "sha256:" + hashlib.sha256(tenant_key.encode()).hexdigest()
    assert by_role["tenant"].hash == digest and by_role["tenant"].tenant == "team-x"
    digest = "sha256:" + hashlib.sha256(admin_key.encode()).hexdigest()
    assert by_role["admin"].hash == digest
    assert f"orchestratord --config {path}" in err


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mine\n")
    assert main(["init", "--path", str(path)]) == 2
    assert path.read_text() == "mine\n" and "--force" in capsys.readouterr().err
    assert main(["init", "--path", str(path), "--force"]) == 0
    assert load_config(str(path)).pools[0].id == "default"


def test_help_is_written_for_people(capsys) -> None:
    """ORCH-5131: what it does, its subcommands, config, an example."""
    from llama_orch.pool_managerd.main import main as pool_managerd

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("llama-orch daemon", "init", "keygen", "hash-key", "first run:", "--config"):
        assert needle in text, needle
    with pytest.raises(SystemExit):
        pool_managerd(["--help"])
    text = capsys.readouterr().out
    for needle in ("supervises", "embeds the same pool manager", "example:", "--config"):
        assert needle in text, needle
