"""Provisioning and launch plans, by engine (ORCH-POOL-3030..3037, ORCH-4120).

:data:`LAUNCHERS` maps each launchable engine to its
:class:`~.launch_api.Launcher` (:mod:`.launch_engines`). :func:`prepare` runs
once per pool (in a worker thread): it provisions the engine's environment and
the model in the format that engine loads, and derives ``engine_version`` the
same way for every engine (ORCH-POOL-3036). :func:`plan` turns a pool, a
:class:`Prepared` and fresh ports into the command, environment, readiness
path and adapter options of one replica.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llama_orch.core.config import EngineLaunchConfig, PoolConfig

from .errors import ProvisionError
from .launch_api import Launcher, LaunchPlan, ModelProvider, Prepared
from .launch_engines import LlamaServerLauncher, TgiLauncher, TritonLauncher, VllmLauncher
from .provision import Progress

__all__ = [
    "LAUNCHABLE_ENGINES",
    "LAUNCHERS",
    "LaunchPlan",
    "Prepared",
    "check_launch",
    "launcher_for",
    "plan",
    "prepare",
]

LAUNCHERS: Mapping[str, Launcher] = {
    launcher.engine: launcher
    for launcher in (LlamaServerLauncher(), VllmLauncher(), TritonLauncher(), TgiLauncher())
}
LAUNCHABLE_ENGINES = frozenset(LAUNCHERS)


def launcher_for(engine: str) -> Launcher:
    try:
        return LAUNCHERS[engine]
    except KeyError:
        raise ProvisionError(f"engine {engine} cannot be launched by pool-managerd") from None


def check_launch(pool: PoolConfig) -> str | None:
    """Why ``pool`` cannot be launched here (no launcher for its engine, or a
    ``launch`` that does not fit it), or None (ORCH-POOL-3005, ORCH-POOL-3034)."""
    launcher = LAUNCHERS.get(pool.engine)
    if launcher is None:
        return f"engine {pool.engine} cannot be launched by pool-managerd yet"
    applies = launcher.applies
    default = EngineLaunchConfig()
    stray = [
        k
        for k in EngineLaunchConfig.__struct_fields__
        if k not in applies and getattr(pool.launch, k) != getattr(default, k)
    ]
    if stray:
        return f"pool {pool.id}: launch.{', launch.'.join(stray)} does not apply to {pool.engine}"
    return launcher.check(pool)


def prepare(
    pool: PoolConfig,
    adapter_cls: Any,
    progress: Progress,
    *,
    model_provider: ModelProvider | None = None,
) -> Prepared:
    """Provision ``pool``'s engine and model; blocking, run it in a thread.
    ``model_provider(ref, engine=..., progress=...)`` replaces the model sources
    for a GGUF model (orchestratord's catalog checks its trust policy there,
    ORCH-3313)."""
    launcher = launcher_for(pool.engine)
    return launcher.prepare(pool, adapter_cls, progress, model_provider=model_provider)


def plan(
    pool: PoolConfig, prep: Prepared, *, host: str, port: Callable[[], int], scratch: Path
) -> LaunchPlan:
    """The launch of one replica of ``pool`` (ORCH-POOL-3032, ORCH-POOL-3033)."""
    return launcher_for(pool.engine).plan(pool, prep, host=host, port=port, scratch=scratch)
