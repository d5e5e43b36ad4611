"""Consolidation of one scope — a (zone, user) — into the next levels: episodes → traces →
categories → a domain profile.

A run holds the scope's lock (two workers never consolidate the same scope at once) and works
from a *plan* kept in Redis: the pending episode ids, taken atomically (take_plan.lua), then
*finalised* with what the run starts from (the episodes still unconsolidated, the user's current
categories and domain profile). A run that dies is resumed from its plan by the next one, which
therefore computes the same outputs. Every output's id is derived from its level, zone, user and
sources, so a resumed run writes the same records again (idempotent upserts), never new ones.

What a run writes, in this order (each step idempotent):

1. new traces from the plan's episodes (the strategy's groups), then categories over all the
   user's current traces, then the domain profile over all categories;
2. provenance both ways: each output lists its ``sources``; each source gets ``consolidated_into``.
   Consolidated episodes are demoted (to SHORT_TERM), never deleted;
3. versions: a category that changed supersedes the previous category sharing most of its traces
   (a previous category with no successor is retired: ``superseded_at`` set in the zone store,
   and a tombstone to the agents, as its traces now belong to other categories); a new profile
   supersedes the previous one;
4. the outputs go out through the pool on the zone's channel, or their compartments' (sender
   ``hivemem-workers``), so the agents cleared for them receive them;
5. the plan is deleted.

An output whose id the store already holds is not written again: a live one keeps its content
and time (the same sources; a resumed run, or a later run over the same group), and one deleted
since (a tombstone: its user deleted it) stays deleted.

Every output carries the highest zone among its sources and the union of their compartments ("no
write down"); traces and categories are drawn within one set of compartments at a time, so only
the domain profile mixes them (an agent sees it only when it holds all). Outputs also carry the
user-level scope (visible in all the user's sessions), tier LONG_TERM, the strategy's name in
``metadata.strategy``, ``valid_from`` of its earliest source, and a vector: the unit mean of its
sources' vectors (so no model runs in the workers), plus BM25 terms of its own text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np
import redis
import structlog

from hivemem.agents.sparse import Bm25Encoder
from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.compartments import union
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.envelope import EnvelopeCodec, PlainCodec
from hivemem.pool.errors import HivememError
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Scope, Tombstone, utc_now
from hivemem.workers.clustering import centre
from hivemem.workers.contract import MAX_CONTENT_CHARS, check_drafts, labels
from hivemem.workers.derived import delete_derived
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.locks import held
from hivemem.workers.publishing import publish_as_workers
from hivemem.workers.strategy import ConsolidationStrategy, Draft, Sources

log = structlog.get_logger(__name__)

#: The sender id of everything the workers publish.
#: Derived ids are UUID5 in this namespace, over "level|zone|user|sorted source ids".
_ID_NAMESPACE = uuid.UUID("5f0c8f6e-2b1d-4c1e-9a57-6d1f0e3b7a21")
_LUA = Path(__file__).parent / "lua"


class ScopeBusy(HivememError):
    """Raised when another worker holds the scope's consolidation lock (the task retries)."""

    def __init__(self, zone: Zone, user_id: str) -> None:
        super().__init__(f"another worker is consolidating {zone.value}/{user_id}")
        self.zone = zone
        self.user_id = user_id


@contextmanager
def scope_locked(
    client: redis.Redis, keys: WorkerKeys, zone: Zone, user_id: str, ttl_s: float
) -> Iterator[None]:
    """Hold the scope's consolidation lock (without waiting) for the ``with`` block: every
    writer of a user's records in the zone store takes it. Raises ScopeBusy when another worker
    holds it."""
    with held(client, keys.consolidate_lock(zone, user_id), ttl_s) as lock:
        if not lock.acquired:
            raise ScopeBusy(zone, user_id)
        yield


#: New ids tried for a derived record whose id names superseded versions (see _not_past).
_MAX_GENERATIONS = 16


def derived_id(level: Level, zone: Zone, user_id: str, sources: Sequence[str]) -> str:
    """The id of a consolidated record: the same sources always give the same id."""
    name = "|".join([level.value, zone.value, user_id, *sorted(sources)])
    return str(uuid.uuid5(_ID_NAMESPACE, name))


@dataclass
class ConsolidationReport:
    """What one run did (ids of what it wrote)."""

    zone: str
    user_id: str
    strategy: str
    episodes: int = 0
    traces: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    domain: str | None = None
    retired: list[str] = field(default_factory=list)
    resumed: bool = False
    #: Episodes still pending after the run (beyond the plan's cap, or queued meanwhile).
    remaining: int = 0


@dataclass
class _Plan:
    episodes: list[str]
    finalized: bool = False
    prior_categories: list[str] = field(default_factory=list)
    prior_domain: str | None = None

    def encode(self) -> str:
        return json.dumps(self.__dict__)


class ConsolidationService:
    """Runs consolidations (see the module docstring). Thread-safe; the lock is per scope."""

    def __init__(  # noqa: PLR0917 - the parts a run joins, each needed
        self,
        client: redis.Redis,
        bus: RedisBus,
        store: ZoneStore,
        keys: WorkerKeys,
        strategy: ConsolidationStrategy,
        fallback: ConsolidationStrategy,
        *,
        lock_ttl_s: float,
        send_batch: int,
        codec: EnvelopeCodec | None = None,
        max_plan: int = 5_000,
    ) -> None:
        """``max_plan``: the most pending episodes one run takes."""
        self._client = client
        self._max_plan = max_plan
        self._bus = bus
        self._codec = codec or PlainCodec()
        self._store = store
        self._keys = keys
        self._strategy = strategy
        self._fallback = fallback
        self._lock_ttl_s = lock_ttl_s
        self._send_batch = send_batch
        self._sparse = Bm25Encoder()
        self._take_plan = client.register_script((_LUA / "take_plan.lua").read_text())
        self._forget_user = client.register_script((_LUA / "forget_user.lua").read_text())

    # -- entry points ---------------------------------------------------------------------------

    def due(self, zone: Zone) -> list[str]:
        """Users of ``zone`` with episodes waiting (or a run to resume), sorted."""
        users = cast("set[bytes]", self._client.smembers(self._keys.users(zone)))
        return sorted(u.decode() for u in users)

    def consolidate(self, zone: Zone, user_id: str) -> ConsolidationReport:
        """Consolidate the scope's pending episodes (or finish an interrupted run). Raises
        ScopeBusy when another worker holds the scope."""
        report = ConsolidationReport(zone=zone.value, user_id=user_id, strategy=self._strategy.name)
        with scope_locked(self._client, self._keys, zone, user_id, self._lock_ttl_s):
            self._client.delete(self._keys.queued(zone, user_id))
            raw = self._take_plan(
                keys=[self._keys.pending(zone, user_id), self._keys.plan(zone, user_id)],
                args=[self._max_plan],
            )
            if raw:
                plan = _Plan(**json.loads(raw))
                report.resumed = plan.finalized
                if not plan.finalized:
                    plan = self._finalize(zone, user_id, plan)
                self._run(zone, user_id, plan, report)
                self._client.delete(self._keys.plan(zone, user_id))
            self._forget_user(
                keys=[self._keys.pending(zone, user_id), self._keys.users(zone)], args=[user_id]
            )
            report.remaining = cast("int", self._client.scard(self._keys.pending(zone, user_id)))
        log.info(
            "consolidation_done",
            zone=zone.value,
            user_id=user_id,
            episodes=report.episodes,
            traces=len(report.traces),
            categories=len(report.categories),
            resumed=report.resumed,
            remaining=report.remaining,
        )
        return report

    # -- the plan -------------------------------------------------------------------------------

    @staticmethod
    def _current(user_id: str, level: Level) -> And:
        """The user's current (not superseded) records of ``level``."""
        return And(
            all=[
                Cond(field="scope.user_id", op="eq", value=user_id),
                Cond(field="level", op="eq", value=level),
                Cond(field="superseded_at", op="eq", value=None),
            ]
        )

    def _finalize(self, zone: Zone, user_id: str, plan: _Plan) -> _Plan:
        """Fix what the run starts from; nothing has been written for this plan yet."""
        episodes = [
            r.id
            for r in self._store.get(zone, plan.episodes)
            if r.level is Level.EPISODE
            and r.scope.user_id == user_id
            and r.is_current
            and not r.consolidated_into
        ]
        categories = self._store.ids(zone, self._current(user_id, Level.CATEGORY))
        domains = self._store.ids(zone, self._current(user_id, Level.DOMAIN))
        final = _Plan(
            episodes=episodes,
            finalized=True,
            prior_categories=categories,
            prior_domain=domains[0] if domains else None,
        )
        self._client.set(self._keys.plan(zone, user_id), final.encode())
        return final

    # -- the run --------------------------------------------------------------------------------

    def _run(self, zone: Zone, user_id: str, plan: _Plan, report: ConsolidationReport) -> None:
        now = utc_now()
        episodes = self._store.get(zone, plan.episodes, with_vectors=True)
        episodes = [r for r in episodes if r.vector is not None]
        report.episodes = len(episodes)
        new_traces = [
            self._derive(
                Level.TRACE, zone=zone, user_id=user_id, draft=draft, pool=episodes, now=now
            )
            for group in _by_compartments(episodes)
            for draft in self._drafts("traces", group, lambda s, x: s.traces(x))
        ]
        current = self._current(user_id, Level.TRACE)
        by_id = {r.id: r for r in self._store.scan(zone, current, with_vectors=True) if r.vector}
        by_id.update((r.id, r) for r in new_traces)
        traces = sorted(by_id.values(), key=lambda r: r.id)
        if not traces:
            return
        prior_categories = self._store.get(zone, plan.prior_categories)
        drafts = [
            draft
            for group in _by_compartments(traces)
            for draft in self._drafts("categories", group, lambda s, x: s.categories(x))
        ]
        categories = self._with_versions(
            self._derive_new(Level.CATEGORY, zone, user_id, drafts, traces, now),
            prior_categories,
        )
        [domain_draft] = self._drafts("domain", categories, lambda s, x: [s.domain(user_id, x)])
        [domain] = self._derive_new(Level.DOMAIN, zone, user_id, [domain_draft], categories, now)
        if plan.prior_domain is not None and plan.prior_domain != domain.id:
            domain = domain.model_copy(update={"supersedes": plan.prior_domain})
        outputs = [*new_traces, *categories, domain]
        held = self._store.presence(zone, [r.id for r in outputs])
        retired = self._write(
            zone,
            prior_categories,
            fresh=[r for r in outputs if r.id not in held],
            traces=new_traces,
            categories=categories,
            domain_record=domain,
            episodes=episodes,
            now=now,
        )
        undone = self._undo_deleted(zone, episodes, new_traces)
        publish_as_workers(
            self._bus,
            zone,
            [r for r in self._as_stored(zone, outputs, held) if r.id not in undone],
            retired,
            batch=self._send_batch,
            codec=self._codec,
        )
        report.traces = [r.id for r in new_traces]
        report.categories = [r.id for r in categories]
        report.domain = domain.id
        report.retired = [t.id for t in retired]

    def _drafts(
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

    def _derive(
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
    def _with_versions(
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

    def _derive_new(  # noqa: PLR0917 - the parts _derive takes, each needed
        self,
        level: Level,
        zone: Zone,
        user_id: str,
        drafts: Sequence[Draft],
        pool: Sequence[MemoryRecord],
        now: datetime,
    ) -> list[MemoryRecord]:
        """The records ``drafts`` become, each whose derived id names a version already
        superseded given an id of its own: the same sources again (a trace archived, then
        restored) must make a new version, not bring the old one back as the successor of its
        successor (a cycle). The same store gives the same ids: a resumed run writes what the
        run before it did."""
        derived = [
            self._derive(level, zone=zone, user_id=user_id, draft=d, pool=pool, now=now)
            for d in drafts
        ]
        past = {r.id for r in self._store.get(zone, [r.id for r in derived]) if not r.is_current}
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

    def _as_stored(
        self, zone: Zone, outputs: Sequence[MemoryRecord], held: dict[str, bool]
    ) -> list[MemoryRecord]:
        """The outputs as the store holds them, for the agents: an output the store already
        held keeps its stored copy (the same sources, so the same record; a resumed run, or a
        later run over the same group), and one deleted since (a tombstone) is not sent."""
        live = [i for i, tombstone in held.items() if not tombstone]
        stored = {r.id: r for r in self._store.get(zone, live, with_vectors=True)} if live else {}
        return [stored.get(r.id, r) for r in outputs if not held.get(r.id, False)]

    def _write(
        self,
        zone: Zone,
        prior_categories: Sequence[MemoryRecord],
        *,
        fresh: Sequence[MemoryRecord],
        traces: Sequence[MemoryRecord],
        categories: Sequence[MemoryRecord],
        domain_record: MemoryRecord,
        episodes: Sequence[MemoryRecord],
        now: datetime,
    ) -> list[Tombstone]:
        """Store the ``fresh`` outputs (those the store does not hold yet: one it holds, live
        or deleted, is never written again, so that a deleted output does not come back and a
        stored one keeps its content and time) and the links (each step idempotent); returns
        the tombstones of retired categories, for the agents."""
        if fresh:
            self._store.upsert(zone, fresh)
        updates: dict[str, dict[str, object]] = {}
        into_trace = {s: t.id for t in traces for s in t.sources}
        for episode in episodes:
            tier = Tier.SHORT_TERM if episode.tier is not Tier.ARCHIVE else episode.tier
            updates[episode.id] = {"consolidated_into": [into_trace[episode.id]], "tier": tier}
        for category in categories:
            for trace_id in category.sources:
                updates[trace_id] = {"consolidated_into": [category.id]}
            updates[category.id] = {"consolidated_into": [domain_record.id]}
        successors = {r.supersedes: r.id for r in categories if r.supersedes}
        current = {r.id for r in categories}
        retired: list[Tombstone] = []
        for prior in prior_categories:
            if prior.id in current:
                continue
            updates[prior.id] = {"superseded_at": now, "superseded_by": successors.get(prior.id)}
            if prior.id not in successors:
                retired.append(Tombstone.of(prior))
        if domain_record.supersedes is not None:
            updates[domain_record.supersedes] = {
                "superseded_at": now,
                "superseded_by": domain_record.id,
            }
        present = self._store.presence(zone, list(updates))
        self._store.update_fields(
            zone, {k: v for k, v in updates.items() if present.get(k) is False}
        )
        return retired

    def _undo_deleted(
        self, zone: Zone, episodes: Sequence[MemoryRecord], traces: Sequence[MemoryRecord]
    ) -> set[str]:
        """Episodes deleted while the run read them (the ingest takes no scope lock): delete
        what this run derived from them, as the ingest does, and queue their trace-mates again.
        Checked after the outputs and links were written, so a delete the ingest applies later
        finds the links and deletes the outputs itself (a delete read before the links and
        applied after this check still escapes both: a window of one ingest round, not of a
        run). Returns the ids deleted."""
        alive = self._store.presence(zone, [e.id for e in episodes])
        gone = {e.id for e in episodes if alive.get(e.id) is True}
        if not gone:
            return set()
        into = {s: t.id for t in traces for s in t.sources}
        deleted = [e.model_copy(update={"consolidated_into": [into[e.id]]}) for e in episodes
                   if e.id in gone and e.id in into]  # fmt: skip
        doomed, queued = delete_derived(
            self._store, zone, deleted, client=self._client, keys=self._keys, bus=self._bus,
            codec=self._codec, batch=self._send_batch,
        )  # fmt: skip
        log.warning("consolidation_source_deleted", zone=zone.value, episodes=len(gone),
                    deleted=len(doomed), requeued=len(queued))  # fmt: skip
        return {r.id for r in doomed}


def _by_compartments(records: Sequence[MemoryRecord]) -> list[list[MemoryRecord]]:
    """``records`` grouped by the compartments they carry (order kept within each group), so
    that traces and categories never mix compartments."""
    groups: dict[tuple[str, ...], list[MemoryRecord]] = {}
    for record in records:
        groups.setdefault(tuple(record.compartments), []).append(record)
    return [groups[key] for key in sorted(groups)]


def _sources(records: Sequence[MemoryRecord]) -> Sources:
    vectors = np.asarray([r.vector for r in records], dtype=np.float32)
    return Sources([r.model_copy(update={"vector": None}) for r in records], vectors)
