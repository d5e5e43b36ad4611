"""Consolidation of one scope — a (zone, user) — into the next levels: episodes → traces →
categories → a domain profile.

A run holds the scope's lock (two workers never consolidate the same scope at once) and works
from a *plan* kept in Redis: the pending episode ids, taken atomically (take_plan.lua), then
*finalised* with what the run starts from (the episodes still unconsolidated, the user's current
categories and domain profile). A run that dies is resumed from its plan by the next one, which
therefore computes the same outputs. Every output's id is derived from its level, zone, user and
sources, so a resumed run writes the same records again (idempotent upserts), never new ones.

What a run writes, in this order (each step idempotent; the zone store's writes of steps 1-3
are :func:`~hivemem.workers.consolidation_outputs.write_outputs`):

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
and time, and one deleted since stays deleted (:mod:`hivemem.workers.consolidation_outputs`).

Every output carries the highest zone among its sources and the union of their compartments ("no
write down"); traces and categories are drawn within one set of compartments at a time, so only
the domain profile mixes them (an agent sees it only when it holds all). Outputs also carry the
user-level scope (visible in all the user's sessions), tier LONG_TERM, the strategy's name in
``metadata.strategy``, ``valid_from`` of its earliest source, and a vector: the unit mean of its
sources' vectors (so no model runs in the workers), plus BM25 terms of its own text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import redis
import structlog

from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import EnvelopeCodec, PlainCodec
from hivemem.pool.errors import HivememError
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, utc_now
from hivemem.workers.consolidation_outputs import as_stored, live, write_outputs
from hivemem.workers.derived import delete_derived
from hivemem.workers.drafting import Drafting, by_compartments
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.locks import held
from hivemem.workers.publishing import publish_as_workers
from hivemem.workers.strategy import ConsolidationStrategy

log = structlog.get_logger(__name__)

_LUA = Path(__file__).parent / "lua"


class ScopeBusy(HivememError):
    """Raised when another worker holds a lock the work needs (the task retries): a scope's
    consolidation lock (``zone`` set; or its store lock, held that long: see
    :func:`store_locked`), a user's forget lock (``zone`` None: another forget of the user
    runs, see forget.py), or a zone's ingest lock (``draining``: a forget must drain the zone's
    queues first). Its arguments are the zone's name (or None), the user id and
    ``draining``, so that Celery rebuilds it for the caller of a task whose retries ran out."""

    def __init__(self, zone: Zone | str | None, user_id: str, draining: bool = False) -> None:
        self.zone = None if zone is None else Zone(zone)
        self.user_id = user_id
        self.draining = draining
        super().__init__(None if self.zone is None else self.zone.value, user_id, draining)

    def __str__(self) -> str:
        if self.zone is None:
            return f"another worker is forgetting {self.user_id}"
        if self.draining:
            return f"another worker is draining {self.zone.value}'s ingest queues"
        return (
            f"another worker holds {self.zone.value}/{self.user_id} (a consolidation, or a move"
            " to or from the archive)"
        )


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


@contextmanager
def store_locked(
    client: redis.Redis, keys: WorkerKeys, zone: Zone, user_ids: Iterable[str], ttl_s: float
) -> Iterator[None]:
    """Hold the store locks of ``user_ids`` in the zone for the ``with`` block, taken in sorted
    order, waiting for each up to ``ttl_s``. A worker takes a user's store lock while it
    rewrites a batch of that user's stored records from what it read of them (a move between
    the live collection and the archive, under the scope lock; the ingest's deletes and version
    links, which take no scope lock): a second or so, so that the ingest never waits behind a
    whole consolidation, only behind one batch. Raises ScopeBusy when a lock stays taken for
    ``ttl_s`` (its holder stalled; one that died lets it go by then)."""
    with ExitStack() as stack:
        for user_id in sorted(set(user_ids)):
            key = keys.store_lock(zone, user_id)
            lock = stack.enter_context(held(client, key, ttl_s, wait_s=ttl_s))
            if not lock.acquired:
                raise ScopeBusy(zone, user_id)
        yield


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
        message_max_bytes: int,
        codec: EnvelopeCodec | None = None,
        max_plan: int = 5_000,
    ) -> None:
        """``send_batch``, ``message_max_bytes``: the pool's limits of a message (records, and
        bytes). ``max_plan``: the most pending episodes one run takes."""
        self._client = client
        self._max_plan = max_plan
        self._bus = bus
        self._codec = codec or PlainCodec()
        self._store = store
        self._keys = keys
        self._strategy = strategy
        self._lock_ttl_s = lock_ttl_s
        self._send_batch = send_batch
        self._max_bytes = message_max_bytes
        self._drafting = Drafting(store, strategy, fallback)
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
                keys=[
                    self._keys.pending(zone, user_id),
                    self._keys.plan(zone, user_id),
                    self._keys.rebuild(zone, user_id),
                ],
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
                keys=[
                    self._keys.pending(zone, user_id),
                    self._keys.users(zone),
                    self._keys.rebuild(zone, user_id),
                ],
                args=[user_id],
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
            self._drafting.derive(
                Level.TRACE, zone=zone, user_id=user_id, draft=draft, pool=episodes, now=now
            )
            for group in by_compartments(episodes)
            for draft in self._drafting.drafts("traces", group, lambda s, x: s.traces(x))
        ]
        current = self._current(user_id, Level.TRACE)
        by_id = {r.id: r for r in self._store.scan(zone, current, with_vectors=True) if r.vector}
        by_id.update((r.id, r) for r in live(self._store, zone, new_traces))
        traces = sorted(by_id.values(), key=lambda r: r.id)
        if not traces:
            return
        prior_categories = self._store.get(zone, plan.prior_categories)
        drafts = [
            draft
            for group in by_compartments(traces)
            for draft in self._drafting.drafts("categories", group, lambda s, x: s.categories(x))
        ]
        spent = self._spent(zone, user_id)
        made = self._drafting.derive_new(
            Level.CATEGORY, zone, user_id, drafts, traces, now, spent=spent
        )
        categories = live(self._store, zone, self._drafting.with_versions(made, prior_categories))
        domain = (
            self._domain(zone, user_id, categories, plan, now, spent=spent) if categories else None
        )
        outputs = [*new_traces, *categories, *([domain] if domain else [])]
        # Read again, not taken from live(): a delete may have landed while the strategy ran.
        held = self._store.presence(zone, [r.id for r in outputs])
        retired = write_outputs(
            self._store,
            zone,
            prior_categories,
            fresh=[r for r in outputs if r.id not in held],
            traces=new_traces,
            categories=categories,
            domain_record=domain,
            episodes=episodes,
            now=now,
        )
        undone = self._undo_deleted(zone, [*episodes, *traces], [*new_traces, *categories])
        publish_as_workers(
            self._bus,
            zone,
            [r for r in as_stored(self._store, zone, outputs, held) if r.id not in undone],
            retired,
            batch=self._send_batch,
            max_bytes=self._max_bytes,
            codec=self._codec,
        )
        report.traces = [r.id for r in new_traces]
        report.categories = [r.id for r in categories]
        report.domain = domain.id if domain else None
        report.retired = [t.id for t in retired]

    def _spent(self, zone: Zone, user_id: str) -> frozenset[str]:
        """The ids of the user's derived records that deletes of their sources took."""
        members = cast("set[bytes]", self._client.smembers(self._keys.spent(zone, user_id)))
        return frozenset(m.decode() for m in members)

    def _domain(
        self,
        zone: Zone,
        user_id: str,
        categories: Sequence[MemoryRecord],
        plan: _Plan,
        now: datetime,
        *,
        spent: frozenset[str],
    ) -> MemoryRecord:
        """The user's profile over ``categories`` (a new version of the plan's, if it
        changed)."""
        drafting = self._drafting
        [draft] = drafting.drafts("domain", categories, lambda s, x: [s.domain(user_id, x)])
        [domain] = drafting.derive_new(
            Level.DOMAIN, zone, user_id, [draft], categories, now, spent=spent
        )
        if plan.prior_domain is not None and plan.prior_domain != domain.id:
            domain = domain.model_copy(update={"supersedes": plan.prior_domain})
        return domain

    def _undo_deleted(
        self, zone: Zone, sources: Sequence[MemoryRecord], outputs: Sequence[MemoryRecord]
    ) -> set[str]:
        """Sources deleted while the run read them (the episodes, or the traces its categories
        were made from; the ingest takes no scope lock): delete what this run derived from
        them, as the ingest does, and queue what remains (an episode's trace-mates; a user left
        without categories is made due for a rebuild). Checked after the outputs were written:
        a tombstone stored after this look is followed by the ingest's own look for traces
        naming the episode (:func:`~hivemem.workers.derived.derived_from`, ``unlinked``).
        Returns the ids deleted."""
        alive = self._store.presence(zone, [s.id for s in sources])
        gone = {s.id for s in sources if alive.get(s.id) is True}
        if not gone:
            return set()
        into: dict[str, list[str]] = {}
        for output in outputs:
            for source_id in output.sources:
                into.setdefault(source_id, []).append(output.id)
        deleted = [s.model_copy(update={"consolidated_into": into[s.id]}) for s in sources
                   if s.id in gone and s.id in into]  # fmt: skip
        doomed, queued = delete_derived(
            self._store, zone, deleted, client=self._client, keys=self._keys, bus=self._bus,
            codec=self._codec, batch=self._send_batch, max_bytes=self._max_bytes,
        )  # fmt: skip
        log.warning("consolidation_source_deleted", zone=zone.value, sources=len(gone),
                    deleted=len(doomed), requeued=len(queued))  # fmt: skip
        return {r.id for r in doomed}
