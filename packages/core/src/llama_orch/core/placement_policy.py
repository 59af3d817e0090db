"""Placement policies within a replica set (ORCH-2310..2315).

:func:`llama_orch.core.placement.place` picks the replica set; among its Ready
replicas with a free slot, a pool's placement policy picks one:

- ``least-loaded``: the most free slots, then the session's previous replica,
  then the least assigned work, then the lowest ``replica_id`` (ORCH-1907).
- ``round-robin``: the next replica after the one picked last, by
  ``replica_id``, skipping full ones (ORCH-2311).
- ``prefix-aware``: the longest expected prefix hit from the
  :class:`~llama_orch.core.prefix_index.PrefixIndex`; among equal hits the
  session's previous replica (it also holds the session's last answer), then
  ``least-loaded``; with no hit anywhere, ``least-loaded``. The load-imbalance
  guard overrides the hit when the warm replica runs more than
  ``imbalance_abs`` tasks more than the least-loaded one *and* more than
  ``imbalance_rel`` times as many (ORCH-2312).

Every choice says which rule decided (:data:`Decision`), for the
``placement_decisions_total`` counter (ORCH-2320). Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

if TYPE_CHECKING:  # config imports this module; placement imports config via queue
    from .placement import ReplicaView

__all__ = [
    "DECISIONS",
    "PLACEMENT_POLICIES",
    "Decision",
    "PlacementConfig",
    "PlacementPolicy",
    "choose_in_set",
    "imbalanced",
    "least_loaded",
    "round_robin",
]

PlacementPolicy = Literal["least-loaded", "prefix-aware", "round-robin"]
PLACEMENT_POLICIES: tuple[str, ...] = ("least-loaded", "prefix-aware", "round-robin")
# prefix: the longest expected hit won; guard: the imbalance guard overrode it;
# load: least-loaded (its policy, or prefix-aware without a hit); rotate: round-robin;
# prefix-aware on engines with per-slot caches (ORCH-2357, ORCH-2371): slot, a slot
# holding the prefix (or copied from one); wait, behind a busy one.
Decision = Literal["prefix", "guard", "load", "rotate", "slot", "wait"]
DECISIONS: tuple[str, ...] = ("prefix", "guard", "load", "rotate", "slot", "wait")


class PlacementConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``pools[].placement``: how a task picks its replica inside its replica set
    (ORCH-2310). ``policy``: ``least-loaded``, ``prefix-aware`` or ``round-robin``.
    The prefix index of ``prefix-aware`` hashes blocks of ``block_chars``
    characters, counts ``chars_per_token`` characters per token and keeps per
    replica the engine cache's worth of blocks: ``cache_tokens`` tokens (default
    the replica's KV size, ctx x slots). ``learn``: a replica holds a prompt from
    the task's ``completion`` there (default; llama-server shares a prefix across
    slots only once the slot that computed it is released) or from its
    ``dispatch``. Its load-imbalance guard places on the
    least-loaded replica when the warm one runs more than ``imbalance_abs`` tasks
    more and more than ``imbalance_rel`` times as many (ORCH-2312). On a pool whose
    engine declares ``engine_slots`` (llama-server) and with ``engine_slots`` true
    (the default), ``prefix-aware`` follows the slot rules (ORCH-2350..2373): it
    tracks which engine slot holds which prefix and pins the task to one
    (``id_slot``), copying a slot's cache into an empty one instead of a cold
    prefill; it waits behind a busy slot whose prefix is ``slot_wait_min_tokens``
    longer when its task has at most ``slot_wait_tokens`` tokens left (0, the
    default: never); with ``host_cache`` it also counts the replica index as the
    engine's host prompt cache."""

    policy: PlacementPolicy = "least-loaded"
    # Prefix index (ORCH-2301, ORCH-2302): characters per hashed block, the
    # characters assumed per token, and the engine's prompt cache per replica in
    # tokens (None: the replica's KV size, ctx x slots).
    block_chars: Annotated[int, Meta(ge=16, le=65536)] = 64
    chars_per_token: Annotated[float, Meta(gt=0, le=64)] = 4.0
    cache_tokens: Annotated[int, Meta(ge=1)] | None = None
    # When a replica is taken to hold a prompt (ORCH-2302): ``completion``, once
    # the task that sent it completed there (llama-server shares a prefix between
    # slots only after the slot that computed it is released), or ``dispatch``, as
    # soon as it was sent (engines that share blocks of running requests).
    learn: Literal["completion", "dispatch"] = "completion"
    # Load-imbalance guard of prefix-aware (ORCH-2312), in running tasks.
    imbalance_abs: Annotated[int, Meta(ge=0)] = 2
    imbalance_rel: Annotated[float, Meta(ge=1)] = 1.5
    # Slot rules (ORCH-2371): false keeps the replica-level rule of ORCH-2312 even on
    # engines with per-slot caches.
    engine_slots: bool = True
    # Slot rules (ORCH-2353): pin behind a busy slot whose prefix is at least
    # ``slot_wait_min_tokens`` tokens longer than the best idle slot's, when its
    # task has at most ``slot_wait_tokens`` tokens left to generate.
    # 0 (the default) never waits: measured, waiting keeps a shared prompt in the few
    # slots that first computed it and the sessions then queue behind those slots.
    slot_wait_min_tokens: Annotated[int, Meta(ge=1)] = 256
    slot_wait_tokens: Annotated[int, Meta(ge=0)] = 0
    # Slot rules: the engine keeps prompts evicted from its slots in a host cache
    # (llama-server ``--cache-ram``, on by default) that it restores for requests it
    # places itself; the replica prefix index then stands for that cache.
    host_cache: bool = True


def _ll_rank(r: ReplicaView, affinity: str | None) -> tuple[int, bool, int]:
    return (r.free, r.replica_id == affinity, -r.load)


def least_loaded(candidates: Sequence[ReplicaView], affinity: str | None) -> ReplicaView:
    """Most free slots, then the session's replica, then the least work, then the
    lowest id (the built-in rule of ORCH-1907)."""
    best = candidates[0]
    for r in candidates:
        rank, best_rank = _ll_rank(r, affinity), _ll_rank(best, affinity)
        if rank > best_rank or (rank == best_rank and r.replica_id < best.replica_id):
            best = r
    return best


def round_robin(candidates: Sequence[ReplicaView], last: str | None) -> ReplicaView:
    """The first candidate after ``last`` by id, wrapping around (ORCH-2311)."""
    ordered = sorted(candidates, key=lambda r: r.replica_id)
    if last is not None:
        for r in ordered:
            if r.replica_id > last:
                return r
    return ordered[0]


def imbalanced(warm: ReplicaView, coolest: ReplicaView, cfg: PlacementConfig) -> bool:
    """The guard of ORCH-2312: ``warm`` runs too many more tasks than ``coolest``."""
    diff = warm.busy - coolest.busy
    return diff > cfg.imbalance_abs and warm.busy > cfg.imbalance_rel * coolest.busy


def choose_in_set(
    candidates: Sequence[ReplicaView],
    cfg: PlacementConfig,
    *,
    affinity: str | None = None,
    hits: Mapping[str, int] | None = None,
    last: str | None = None,
) -> tuple[ReplicaView, Decision] | None:
    """The replica among ``candidates`` (Ready, same set) the policy picks, and why.

    Candidates without a free slot are ignored; None when none has one.
    ``hits`` maps replica ids to their expected prefix hit (any unit), ``last``
    is the replica round-robin picked last.
    """
    free = [r for r in candidates if r.free > 0]
    if not free:
        return None
    if cfg.policy == "round-robin":
        return round_robin(free, last), "rotate"
    coolest = least_loaded(free, affinity)
    if cfg.policy == "least-loaded" or not hits:
        return coolest, "load"
    top = max(hits.get(r.replica_id, 0) for r in free)
    if top <= 0:
        return coolest, "load"
    tied = [r for r in free if hits.get(r.replica_id, 0) == top]
    warm = next((r for r in tied if r.replica_id == affinity), None) or least_loaded(tied, affinity)
    if warm is not coolest and imbalanced(warm, coolest, cfg):
        return coolest, "guard"
    return warm, "prefix"
