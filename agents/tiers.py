"""Tiers: capacities, promotion and demotion.

Records enter WORKING, or LONG_TERM when their importance reaches ``promote_importance``. Each
user has a capacity per tier; when a tier overflows, its least retained records move one step
colder (WORKING → SHORT_TERM → ARCHIVE, LONG_TERM → ARCHIVE) until the tier is back at
``demote_to_fraction`` of its capacity. A record reaching ``promote_access_count`` accesses is
promoted to LONG_TERM. ARCHIVE has no capacity. Search covers every tier unless filtered.

Retention, in [0, 1], weighs importance (0.5), recency of the last access or of recording (0.3,
half-life ``recency_half_life_s``) and access frequency (0.2, saturating at the promotion count).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from hivemem.pool.enums import Tier
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import LocalIndex
from hivemem.pool.settings import TierSettings

#: Where an overflowing tier sends its least retained records.
COLDER = {
    Tier.WORKING: Tier.SHORT_TERM,
    Tier.SHORT_TERM: Tier.ARCHIVE,
    Tier.LONG_TERM: Tier.ARCHIVE,
}


def _tier_of(user_id: str, tier: Tier) -> And:
    return And(
        all=[
            Cond(field="scope.user_id", op="eq", value=user_id),
            Cond(field="tier", op="eq", value=tier),
        ]
    )


def received_tier(importance: float, settings: TierSettings) -> Tier:
    """Where a record another agent shared lands: SHORT_TERM (it is not this agent's working
    set until it uses it; access promotes it as usual), or LONG_TERM when important."""
    return Tier.LONG_TERM if importance >= settings.promote_importance else Tier.SHORT_TERM


def initial_tier(importance: float, settings: TierSettings) -> Tier:
    """The tier a new record enters when the caller names none."""
    return Tier.LONG_TERM if importance >= settings.promote_importance else Tier.WORKING


class Retainable(Protocol):
    """What retention is computed from (a MemoryRecord or the index's RetentionFacts)."""

    @property
    def importance(self) -> float: ...
    @property
    def access_count(self) -> int: ...
    @property
    def last_accessed_at(self) -> datetime | None: ...
    @property
    def recorded_at(self) -> datetime: ...


def retention(record: Retainable, now: datetime, settings: TierSettings) -> float:
    """How much a record deserves to stay in its tier, in [0, 1] (higher stays)."""
    last = record.last_accessed_at or record.recorded_at
    age_s = max((now - last).total_seconds(), 0.0)
    recency = math.pow(0.5, age_s / settings.recency_half_life_s)
    frequency = min(record.access_count / settings.promote_access_count, 1.0)
    return 0.5 * record.importance + 0.3 * recency + 0.2 * frequency


class TierManager:
    """Keeps each user's tiers within capacity; callers hold the memory's write lock.

    Tier sizes are counted in the index once per (user, tier) and then followed in memory as
    records arrive through :meth:`enforce` and are demoted. Removals (delete, forget, clear)
    can only make a followed size too large, which is safe: before demoting, the tier is
    measured again, and nothing moves unless it really overflows. Growth that bypasses
    :meth:`enforce` (promotion by access, in the background) calls :meth:`invalidate`.
    """

    def __init__(self, index: LocalIndex, settings: TierSettings) -> None:
        self._index = index
        self._settings = settings
        self._sizes: dict[tuple[str, Tier], int] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget the followed tier sizes (thread-safe)."""
        with self._lock:
            self._sizes.clear()

    def enforce(self, added: Mapping[str, Counter[Tier]], now: datetime) -> int:
        """Account for records just added (per user, per tier) and demote what overflows, warm
        tiers first so that demoted records are checked where they land; returns how many
        records moved."""
        moved = 0
        for user_id in sorted(added):
            arrivals = Counter(added[user_id])
            for tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.LONG_TERM):
                if arrivals[tier]:
                    demoted = self._enforce_tier(user_id, tier, arrivals[tier], now)
                    arrivals[COLDER[tier]] += demoted
                    moved += demoted
        return moved

    def _size(self, user_id: str, tier: Tier, arrived: int) -> int:
        key = (user_id, tier)
        with self._lock:
            known = self._sizes.get(key)
        if known is None:  # counting in the index already includes the arrivals
            return self._index.count(_tier_of(user_id, tier))
        return known + arrived

    def _enforce_tier(self, user_id: str, tier: Tier, arrived: int, now: datetime) -> int:
        size = self._size(user_id, tier, arrived)
        capacity = self._settings.capacity.get(tier)
        victims = []
        if capacity is not None and size > capacity:
            facts = self._index.retention_facts(_tier_of(user_id, tier))
            size = len(facts)  # the followed size may have been stale: measure it
            if size > capacity:
                keep = int(capacity * self._settings.demote_to_fraction)
                ranked = sorted(facts, key=lambda r: (retention(r, now, self._settings), r.id))
                victims = ranked[: size - keep]
                self._index.update_fields({r.id: {"tier": COLDER[tier]} for r in victims})
                size -= len(victims)
        with self._lock:
            self._sizes[(user_id, tier)] = size
        return len(victims)

    def promotions(self, accessed: Iterable[tuple[str, Tier, int]]) -> dict[str, Tier]:
        """Of ``(id, tier, updated access count)``, those that earn LONG_TERM by access."""
        return {
            record_id: Tier.LONG_TERM
            for record_id, tier, count in accessed
            if count >= self._settings.promote_access_count
            and tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.ARCHIVE)
        }
