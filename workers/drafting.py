"""From a strategy's drafts to the records a consolidation run writes (see
:mod:`hivemem.workers.consolidation`): :class:`Drafting` asks the strategy (the offline one when
another fails or breaks the contract), turns each draft into a record (its derived id, zone,
compartments, labels, vector and BM25 terms) and links changed categories to the versions they
supersede.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
import structlog

from hivemem.agents.sparse import Bm25Encoder
from hivemem.pool.compartments import union
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.workers.clustering import centre
from hivemem.workers.contract import MAX_CONTENT_CHARS, check_drafts, labels
from hivemem.workers.strategy import ConsolidationStrategy, Draft, Sources

log = structlog.get_logger(__name__)

#: Derived ids are UUID5 in this namespace, over "level|zone|user|sorted source ids".
_ID_NAMESPACE = uuid.UUID("5f0c8f6e-2b1d-4c1e-9a57-6d1f0e3b7a21")
#: Ids tried at most for one output whose derived ids name superseded versions.
_MAX_GENERATIONS = 16


def derived_id(level: Level, zone: Zone, user_id: str, sources: Sequence[str]) -> str:
    """The id of a consolidated record: the same sources always give the same id."""
    name = "|".join([level.value, zone.value, user_id, *sorted(sources)])
    return str(uuid.uuid5(_ID_NAMESPACE, name))


class Drafting:
    """A run's strategy and its fallback, and the records their drafts become."""

    def __init__(
        self, store: ZoneStore, strategy: ConsolidationStrategy, fallback: ConsolidationStrategy
    ) -> None:
        self._store = store
        self._strategy = strategy
        self._fallback = fallback
        self._sparse = Bm25Encoder()

    def drafts(
        self,
        step: str,
        records: Sequence[MemoryRecord],
        make: Callable[[ConsolidationStrategy, Sources], list[Draft]],
    ) -> list[Draft]:
        """The strategy's drafts for ``step``, checked against the contract; the offline
        fallback's when another strategy fails or breaks the contract."""
        if not records:
            return []
        sources = _sources(records)
        try:
            drafts = make(self._strategy, sources)
            check_drafts(drafts, sources)
        except Exception as error:  # isolation point: a strategy is user code
            if self._strategy is self._fallback:
                raise
            log.warning(
                "consolidation_strategy_failed",
                strategy=self._strategy.name,
                step=step,
                error=type(error).__name__,
            )
            drafts = make(self._fallback, sources)
            check_drafts(drafts, sources)
        return drafts

    def derive(
        self,
        level: Level,
        *,
        zone: Zone,
        user_id: str,
        draft: Draft,
        pool: Sequence[MemoryRecord],
        now: datetime,
    ) -> MemoryRecord:
        """The record a draft becomes (with its vector: the unit mean of its sources')."""
        by_id = {r.id: r for r in pool}
        sources = [by_id[i] for i in draft.sources]
        row = centre(np.asarray([s.vector for s in sources], dtype=np.float32))
        content = draft.content.strip()[:MAX_CONTENT_CHARS]
        zone = Zone.highest([s.zone for s in sources])
        tags, entities = labels(draft.tags), labels(draft.entities)
        if zone > Zone.PUBLIC:
            # Labels are stored in clear beside the sealed content: words the strategy drew
            # from the sources' sealed content must not become labels; their own labels may.
            carried = {label for s in sources for label in (*s.tags, *s.entities)}
            tags = [t for t in tags if t in carried]
            entities = [e for e in entities if e in carried]
        return MemoryRecord(
            id=derived_id(level, zone, user_id, draft.sources),
            content=content,
            vector=row.tolist(),
            sparse=self._sparse.encode_documents([content])[0],
            level=level,
            scope=Scope(user_id=user_id),
            tier=Tier.LONG_TERM,
            category=draft.category,
            zone=zone,
            compartments=list(union(s.compartments for s in sources)),
            importance=min(1.0, max(0.0, float(draft.importance))),
            tags=tags,
            entities=entities,
            metadata={"strategy": self._strategy.name},
            sources=sorted(draft.sources),
            valid_from=min(s.valid_from for s in sources),
            recorded_at=now,
        )

    @staticmethod
    def with_versions(
        new: list[MemoryRecord], prior_categories: Sequence[MemoryRecord]
    ) -> list[MemoryRecord]:
        """Give each changed category the previous one it supersedes (most shared traces, then
        lowest id), each previous category at most once."""
        prior = {r.id: set(r.sources) for r in prior_categories}
        taken = {r.id for r in new} & set(prior)
        result = []
        for candidate in new:
            record = candidate
            if record.id not in prior:
                mine = set(record.sources)
                overlap = [
                    (len(sources & mine), pid)
                    for pid, sources in prior.items()
                    if pid not in taken and sources & mine
                ]
                if overlap:
                    best = min(overlap, key=lambda item: (-item[0], item[1]))[1]
                    taken.add(best)
                    record = record.model_copy(update={"supersedes": best})
            result.append(record)
        return result

    def derive_new(  # noqa: PLR0917 - the parts _derive takes, each needed
        self,
        level: Level,
        zone: Zone,
        user_id: str,
        drafts: Sequence[Draft],
        pool: Sequence[MemoryRecord],
        now: datetime,
        *,
        spent: frozenset[str] = frozenset(),
    ) -> list[MemoryRecord]:
        """The records ``drafts`` become, each whose derived id names a version already
        superseded, or one of ``spent`` (ids a delete of what they were derived from took),
        given an id of its own: the same sources again (a trace archived, then restored; a
        category made again after its successor was deleted) must make a new record, not bring
        the old one back (as the successor of its successor, a cycle; or as a deleted one,
        left out). The same store gives the same ids: a resumed run writes what the run before
        it did."""
        derived = [
            self.derive(level, zone=zone, user_id=user_id, draft=d, pool=pool, now=now)
            for d in drafts
        ]
        past = {r.id for r in self._store.get(zone, [r.id for r in derived]) if not r.is_current}
        past |= spent
        result = []
        for record in derived:
            chosen = record
            for _ in range(_MAX_GENERATIONS):
                if chosen.id not in past:
                    break
                after = [*record.sources, f"after:{chosen.id}"]
                chosen = chosen.model_copy(update={"id": derived_id(level, zone, user_id, after)})
                past |= {r.id for r in self._store.get(zone, [chosen.id]) if not r.is_current}
            result.append(chosen)
        return result


def by_compartments(records: Sequence[MemoryRecord]) -> list[list[MemoryRecord]]:
    """``records`` grouped by the compartments they carry (order kept within each group), so
    that traces and categories never mix compartments."""
    groups: dict[tuple[str, ...], list[MemoryRecord]] = {}
    for record in records:
        groups.setdefault(tuple(record.compartments), []).append(record)
    return [groups[key] for key in sorted(groups)]


def _sources(records: Sequence[MemoryRecord]) -> Sources:
    vectors = np.asarray([r.vector for r in records], dtype=np.float32)
    return Sources([r.model_copy(update={"vector": None}) for r in records], vectors)
