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
    """Keeps each user's tiers within capacity; the caller holds the memory's write lock."""

    def __init__(self, index: LocalIndex, settings: TierSettings) -> None:
        self._index = index
        self._settings = settings
        self._last_moved = 0

    def enforce(self, grown: Mapping[str, set[Tier]], now: datetime) -> int:
        """Demote overflow for each user's tiers that just gained records (and for the tiers the
        demoted records land in); returns how many records moved."""
        moved = 0
        for user_id in sorted(grown):
            pending = set(grown[user_id])
            for tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.LONG_TERM):  # warm to cold
                if tier in pending and self._enforce_tier(user_id, tier, now):
                    moved += self._last_moved
                    pending.add(COLDER[tier])
        return moved

    def _enforce_tier(self, user_id: str, tier: Tier, now: datetime) -> bool:
        """True when records were demoted (their count is in ``_last_moved``)."""
        capacity = self._settings.capacity.get(tier)
        if capacity is None:
            return False
        where = And(
            all=[
                Cond(field="scope.user_id", op="eq", value=user_id),
                Cond(field="tier", op="eq", value=tier),
            ]
        )
        count = self._index.count(where)
        if count <= capacity:
            return False
        keep = int(capacity * self._settings.demote_to_fraction)
        ranked = sorted(
            self._index.retention_facts(where),
            key=lambda r: (retention(r, now, self._settings), r.id),
        )
        victims = ranked[: count - keep]
        self._index.update_fields({r.id: {"tier": COLDER[tier]} for r in victims})
        self._last_moved = len(victims)
        return True

    def promotions(self, accessed: Iterable[tuple[str, Tier, int]]) -> dict[str, Tier]:
        """Of ``(id, tier, updated access count)``, those that earn LONG_TERM by access."""
        return {
            record_id: Tier.LONG_TERM
            for record_id, tier, count in accessed
            if count >= self._settings.promote_access_count
            and tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.ARCHIVE)
        }
