"""Linking versions in the zone store as the ingest stores them, in whichever order they come.

A new version names the record it replaces (``supersedes``). When the ingest stores it, it marks
that record superseded (``superseded_by``, ``superseded_at``), live or archived. Nothing orders
the writes of two agents on their way to the workers (each agent has its own ingest queue, and
an agent may supersede a record it received before its writer's queue reached the workers), so
a new version may come first. The ingest then notes it in ``ns:versions:<zone>:awaiting``
(replaced id → successor id), and stores the replaced record as superseded when it comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis
import structlog

from hivemem.pool.enums import Zone
from hivemem.pool.ports import Vector, ZoneStore
from hivemem.pool.records import MemoryRecord, acts_on
from hivemem.workers.keys import WorkerKeys

log = structlog.get_logger(__name__)

Pair = tuple[MemoryRecord, Vector | None]


class VersionLinks:
    """The ingest's version links in one pool's zone stores."""

    def __init__(self, store: ZoneStore, client: redis.Redis, keys: WorkerKeys) -> None:
        self._store = store
        self._client = client
        self._keys = keys

    def settle(self, zone: Zone, pairs: Sequence[Pair]) -> list[Pair]:
        """The records about to be stored, each that a stored version already replaced marked
        superseded by it (see the module docstring)."""
        ids = [record.id for record, _ in pairs]
        if not ids:
            return []
        raw = cast("list[bytes | None]", self._client.hmget(self._keys.awaiting(zone), ids))
        waiting = {i: s.decode() for i, s in zip(ids, raw, strict=True) if s is not None}
        if not waiting:
            return list(pairs)
        named = sorted(set(waiting.values()))
        live = self._store.get(zone, named)
        stored = {r.id: r for r in [*live, *self._store.archive_get(zone, named)]}
        settled = []
        for record, row in pairs:
            successor = stored.get(waiting.get(record.id, ""))
            if successor is not None and record.is_current and acts_on(successor, record):
                change = {"superseded_at": successor.recorded_at, "superseded_by": successor.id}
                settled.append((record.model_copy(update=change), row))
            else:
                settled.append((record, row))
        return settled

    def link(self, zone: Zone, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Mark the versions the just stored ``records`` supersede (when stored and still
        current), note those not stored yet, and drop the notes the records answered. Returns
        the records marked."""
        successors = {r.supersedes: r for r in records if r.supersedes is not None}
        marked, found = self._mark(zone, successors) if successors else ([], set())
        with self._client.pipeline(transaction=False) as pipe:
            if records:
                pipe.hdel(self._keys.awaiting(zone), *[r.id for r in records])
            early = {p: s.id for p, s in successors.items() if p not in found}
            if early:
                pipe.hset(self._keys.awaiting(zone), mapping=early)
            pipe.execute()
        return marked

    def _mark(
        self, zone: Zone, successors: dict[str, MemoryRecord]
    ) -> tuple[list[MemoryRecord], set[str]]:
        """Mark the stored versions ``successors`` replace (by id); returns those marked, and
        the ids of every one stored (live or archived)."""
        updates: dict[str, dict[str, object]] = {}
        marked: list[MemoryRecord] = []
        live = self._store.get(zone, list(successors))
        seen = {r.id for r in live}
        unseen = [i for i in successors if i not in seen]
        # An archived version is marked too, in the archive: restored, it must not come back
        # as a second current version.
        archived = self._store.archive_get(zone, unseen) if unseen else []
        rearchived: list[MemoryRecord] = []
        for previous in [*live, *archived]:
            successor = successors[previous.id]
            if not acts_on(successor, previous):
                log.warning("ingest_version_refused", zone=zone.value, record_id=successor.id,
                            reason="it names another user's or compartments' record")  # fmt: skip
                continue
            if previous.superseded_by is None:
                change = {"superseded_at": successor.recorded_at, "superseded_by": successor.id}
                if previous.id not in seen:  # archived
                    rearchived.append(previous.model_copy(update=change))
                else:
                    updates[previous.id] = change
                marked.append(previous)
        self._store.update_fields(zone, updates)
        if rearchived:
            self._store.archive_put(zone, rearchived)
        return marked, {r.id for r in [*live, *archived]}
