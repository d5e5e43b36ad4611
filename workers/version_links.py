"""Linking versions in the zone store as the ingest stores them, in whichever order they come.

A new version names the record it replaces (``supersedes``). When the ingest stores it, it marks
that record superseded (``superseded_by``, ``superseded_at``), live or archived. Nothing orders
the writes of two agents on their way to the workers (each agent has its own ingest queue, and
an agent may supersede a record it received before its writer's queue reached the workers), so
a new version may come first. The ingest then notes it in ``ns:versions:<zone>:awaiting``
(replaced id → the ids of the stored versions that name it, and when the first was noted), and
stores the replaced record, when it comes, as superseded by the earliest of them that may act
on it (:func:`~hivemem.pool.records.acts_on`: its user, zone and compartments), as
:meth:`VersionLinks.link` does for a record already stored.

Crash safety: the ingest links the versions of every record of a round, those it stored before
a crash included (marking is idempotent), so a worker dying between storing a round and linking
it leaves nothing unlinked. A note is dropped when its record is stored or deleted, and pruned
after :data:`NOTE_TTL_S` (its record went to another zone, or never reached the workers).
"""

from __future__ import annotations

import json
import time
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
#: A note whose record has not come for this long (seconds) is dropped.
NOTE_TTL_S = 7 * 24 * 3600


def _note(raw: bytes | None) -> tuple[list[str], float]:
    """A note's successor ids and when it was made (([], 0) for none or a malformed one)."""
    try:
        note = json.loads(raw) if raw is not None else {}
        return [str(i) for i in note["s"]], float(note["t"])
    except (ValueError, KeyError, TypeError):
        return [], 0.0


class VersionLinks:
    """The ingest's version links in one pool's zone stores (one worker per zone at a time:
    the ingest lock)."""

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
        waiting = {i: _note(r)[0] for i, r in zip(ids, raw, strict=True) if r is not None}
        named = sorted({s for successors in waiting.values() for s in successors})
        if not named:
            return list(pairs)
        live = self._store.get(zone, named)
        stored = {r.id: r for r in [*live, *self._store.archive_get(zone, named)]}
        settled = []
        for record, row in pairs:
            candidates = [stored[s] for s in waiting.get(record.id, []) if s in stored]
            valid = [s for s in candidates if acts_on(s, record)]
            if valid and record.is_current:
                first = min(valid, key=lambda s: (s.recorded_at, s.id))
                change = {"superseded_at": first.recorded_at, "superseded_by": first.id}
                settled.append((record.model_copy(update=change), row))
            else:
                settled.append((record, row))
        return settled

    def link(self, zone: Zone, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        """Mark the versions that ``records`` (every record of a round, now in the store)
        supersede, when stored; note those not stored yet; drop the notes the records answer.
        Returns the records marked, or found marked by the same successor (a round read again
        after a crash: they may still wait for consolidation)."""
        successors = {r.supersedes: r for r in records if r.supersedes is not None}
        marked, found = self._mark(zone, successors) if successors else ([], set())
        early = {p: s.id for p, s in successors.items() if p not in found}
        key = self._keys.awaiting(zone)
        notes: dict[str, str] = {}
        if early:
            prior = cast("list[bytes | None]", self._client.hmget(key, list(early)))
            for (replaced, successor), raw in zip(early.items(), prior, strict=True):
                known, since = _note(raw)
                if successor not in known:
                    notes[replaced] = json.dumps(
                        {"s": [*known, successor], "t": since or time.time()}
                    )
        with self._client.pipeline(transaction=False) as pipe:
            if records:
                pipe.hdel(key, *[r.id for r in records])
            if notes:
                pipe.hset(key, mapping=notes)
            pipe.execute()
        return marked

    def forget(self, zone: Zone, ids: Sequence[str]) -> None:
        """Drop the notes of records that will never be stored (deleted)."""
        if ids:
            self._client.hdel(self._keys.awaiting(zone), *ids)

    def prune(self, zone: Zone, *, now: float | None = None) -> int:
        """Drop the notes older than :data:`NOTE_TTL_S`; returns how many. Costs one HLEN
        when there are none."""
        key = self._keys.awaiting(zone)
        if not self._client.hlen(key):
            return 0
        cutoff = (time.time() if now is None else now) - NOTE_TTL_S
        old = [
            name.decode()
            for name, raw in cast("dict[bytes, bytes]", self._client.hgetall(key)).items()
            if _note(raw)[1] < cutoff
        ]
        if old:
            self._client.hdel(key, *old)
            log.info("ingest_version_notes_pruned", zone=zone.value, notes=len(old))
        return len(old)

    def _mark(
        self, zone: Zone, successors: dict[str, MemoryRecord]
    ) -> tuple[list[MemoryRecord], set[str]]:
        """Mark the stored versions ``successors`` replace (by id); returns those marked (or
        marked already by that successor), and the ids of every one stored, live or archived."""
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
            elif previous.superseded_by == successor.id:
                marked.append(previous)
        self._store.update_fields(zone, updates)
        if rearchived:
            self._store.archive_put(zone, rearchived)
        return marked, {r.id for r in [*live, *archived]}
