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

import dataclasses
import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from hivemem.pool.enums import Tier
from hivemem.pool.errors import MemoryNotFound
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import LocalIndex, RetentionFacts
from hivemem.pool.records import MemoryRecord
from hivemem.pool.settings import TierSettings

#: At most this many retention facts are kept between demotions (see TierManager).
_MAX_KNOWN_FACTS = 100_000
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

    The retention facts a demotion reads are kept (up to ``_MAX_KNOWN_FACTS``), with those of
    the records that arrive later through :meth:`enforce` with their ``records``, so that the
    tier's next overflow reads no facts from the index: they are used only while the tier still
    holds as many records as they describe (counted in the index first), and a stale set that
    names a record no longer there is read again. Arrivals reported without their records, and
    access writes (the access tracker asks :meth:`promotions` before each write; an access
    write racing with a demotion can leave counts one write behind until the next one), drop
    them. Without other writers the records demoted are exactly those a fresh read would pick.
    """

    def __init__(self, index: LocalIndex, settings: TierSettings) -> None:
        self._index = index
        self._settings = settings
        self._sizes: dict[tuple[str, Tier], int] = {}
        self._known: dict[tuple[str, Tier], dict[str, RetentionFacts]] = {}
        self._known_count = 0
        self._generation = 0  # bumped whenever the known facts are dropped
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget the followed tier sizes and the known retention facts (thread-safe)."""
        with self._lock:
            self._sizes.clear()
            self._drop_known()

    def _drop_known(self) -> None:
        """Callers hold ``self._lock``."""
        self._known.clear()
        self._known_count = 0
        self._generation += 1

    def enforce(
        self,
        added: Mapping[str, Counter[Tier]],
        now: datetime,
        records: Sequence[MemoryRecord] | None = None,
    ) -> int:
        """Account for records just added (per user, per tier) and demote what overflows, warm
        tiers first so that demoted records are checked where they land; returns how many
        records moved. ``records``, when given, are the records just added (those ``added``
        counts), as written."""
        self._note_arrivals(added, records)
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

    def _note_arrivals(
        self, added: Mapping[str, Counter[Tier]], records: Sequence[MemoryRecord] | None
    ) -> None:
        with self._lock:
            if not self._known:
                return
            if records is None:
                for user_id, tiers in added.items():
                    for tier in tiers:
                        self._known_count -= len(self._known.pop((user_id, tier), {}))
                return
            for record in records:
                known = self._known.get((record.scope.user_id, record.tier))
                if known is not None and record.id not in known:
                    known[record.id] = RetentionFacts(
                        id=record.id,
                        tier=record.tier,
                        importance=record.importance,
                        access_count=record.access_count,
                        last_accessed_at=record.last_accessed_at,
                        recorded_at=record.recorded_at,
                    )
                    self._known_count += 1

    def _facts(self, user_id: str, tier: Tier) -> tuple[list[RetentionFacts], int, bool]:
        """The retention facts of the records in the tier, the generation they belong to, and
        whether they are the known ones (used when the tier holds as many records) rather than
        read from the index."""
        where = _tier_of(user_id, tier)
        with self._lock:
            generation = self._generation
            known = self._known.get((user_id, tier))
            facts = list(known.values()) if known is not None else None
        if facts is not None and self._index.count(where) == len(facts):
            return facts, generation, True
        return self._index.retention_facts(where), generation, False

    def _keep_known(
        self,
        user_id: str,
        tier: Tier,
        generation: int,
        kept: Sequence[RetentionFacts],
        demoted: Sequence[RetentionFacts],
    ) -> None:
        with self._lock:
            if generation != self._generation:  # dropped meanwhile: they may be stale
                return
            self._known_count -= len(self._known.pop((user_id, tier), {}))
            if self._known_count + len(kept) > _MAX_KNOWN_FACTS:
                self._drop_known()
                return
            self._known[(user_id, tier)] = {f.id: f for f in kept}
            self._known_count += len(kept)
            colder = self._known.get((user_id, COLDER[tier])) if demoted else None
            if colder is not None:
                self._known_count += sum(fact.id not in colder for fact in demoted)
                for fact in demoted:
                    colder[fact.id] = dataclasses.replace(fact, tier=COLDER[tier])

    def _enforce_tier(self, user_id: str, tier: Tier, arrived: int, now: datetime) -> int:
        size = self._size(user_id, tier, arrived)
        capacity = self._settings.capacity.get(tier)
        victims: list[RetentionFacts] = []
        if capacity is not None and size > capacity:
            facts, generation, known = self._facts(user_id, tier)
            size = len(facts)  # the followed size may have been stale: measure it
            kept = facts
            if size > capacity:
                keep = int(capacity * self._settings.demote_to_fraction)
                ranked = sorted(facts, key=lambda r: (retention(r, now, self._settings), r.id))
                victims, kept = ranked[: size - keep], ranked[size - keep :]
                try:
                    self._index.update_fields({r.id: {"tier": COLDER[tier]} for r in victims})
                except MemoryNotFound:
                    if not known:
                        raise
                    self.invalidate()  # the known facts named a record no longer there
                    return self._enforce_tier(user_id, tier, arrived, now)
                size -= len(victims)
            self._keep_known(user_id, tier, generation, kept, victims)
        with self._lock:
            self._sizes[(user_id, tier)] = size
        return len(victims)

    def promotions(self, accessed: Iterable[tuple[str, Tier, int]]) -> dict[str, Tier]:
        """Of ``(id, tier, updated access count)``, those that earn LONG_TERM by access. The
        caller is about to write those counts: the known retention facts are dropped."""
        with self._lock:
            if self._known:
                self._drop_known()
        return {
            record_id: Tier.LONG_TERM
            for record_id, tier, count in accessed
            if count >= self._settings.promote_access_count
            and tier in (Tier.WORKING, Tier.SHORT_TERM, Tier.ARCHIVE)
        }
