"""The seam between the pool manager and one engine kind (ORCH-4120).

A :class:`Launcher` knows one engine: which ``launch`` keys apply to it, how a
pool's engine and model are provisioned (:meth:`Launcher.prepare`, once per
pool, in a worker thread) and how one replica's process is run and gated
(:meth:`Launcher.plan`). :mod:`.launch_engines` holds one implementation per
engine; :mod:`.runtimes` picks it by ``pool.engine``, so neither the pool
manager nor the process runner branches on the engine kind.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llama_orch.core.config import PoolConfig

from .errors import ProvisionError
from .provision import Progress, sha256_file

__all__ = [
    "LaunchPlan",
    "Launcher",
    "ModelProvider",
    "Prepared",
    "binary_version",
    "merge_options",
    "need_binary",
]

# provide(ref, engine=..., progress=...) -> (path, sha256)
ModelProvider = Callable[..., tuple[Path, str]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a pool's replicas share once provisioned (ORCH-POOL-3031)."""

    adapter_cls: Any
    executable: Path  # the engine binary, or the python that runs it
    engine_version: str
    model_path: Path | None  # None: a hub id the engine fetches itself (TGI)
    digest: str
    model_id: str = ""  # what the engine is told to load, when not model_path


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """One replica's process: command, environment and how to gate it."""

    command: list[str]
    env: dict[str, str]
    base_url: str
    health_path: str
    options: dict[str, str | int | float | bool]  # adapter options (config wins)
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    ports: tuple[int, ...] = field(default=())
    # (link in the scratch directory, shared directory): made before the spawn (ORCH-6244)
    links: tuple[tuple[Path, Path], ...] = field(default=())


class Launcher(Protocol):
    """One engine kind's provisioning and launch (ORCH-4120)."""

    engine: str  # the adapter name of ``pool.engine``
    applies: frozenset[str]  # the ``launch`` keys this engine reads (ORCH-POOL-3034)

    def check(self, pool: PoolConfig) -> str | None:
        """Engine-specific misfits of ``pool.launch`` beyond ``applies``, or None."""
        ...

    def prepare(
        self,
        pool: PoolConfig,
        adapter_cls: Any,
        progress: Progress,
        *,
        model_provider: ModelProvider | None = None,
    ) -> Prepared:
        """Provision the engine and the model; blocking."""
        ...

    def plan(
        self, pool: PoolConfig, prep: Prepared, *, host: str, port: Callable[[], int], scratch: Path
    ) -> LaunchPlan:
        """The process of one replica (ORCH-POOL-3032, ORCH-POOL-3033)."""
        ...


def need_binary(explicit: str | None, name: str, where: str) -> Path:
    found = explicit or shutil.which(name)
    if not found or not Path(found).expanduser().is_file():
        raise ProvisionError(
            f"{name} not found (engine_binary, PATH); {where}. It is not installable from "
            "PyPI: install it or run pool-managerd in the engine's image"
        )
    return Path(found).expanduser()


def binary_version(path: Path, name: str, label: str = "") -> str:
    return f"{name}{label}+sha256.{sha256_file(path)[:12]}"


def merge_options(base: dict[str, Any], pool: PoolConfig) -> dict[str, str | int | float | bool]:
    return {**base, **pool.adapter_options}
