"""Archival: moving records between a zone's live collection and its archive, and purging.

Every move writes the destination before it removes the source, so a crash in between leaves a
record in both places (never in neither); running the same call again finishes the move. All
three operations are idempotent and work in batches of ``batch`` records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import structlog

from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Tombstone, utc_now

log = structlog.get_logger(__name__)


def batches(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``ids`` in consecutive slices of at most ``size``."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class ArchiveService:
    """Archives, restores and purges the records of a :class:`ZoneStore`."""

    def __init__(
        self,
        store: ZoneStore,
        *,
        batch: int = 256,
        requeue: Callable[[Zone, Sequence[MemoryRecord]], None] | None = None,
    ) -> None:
        """``requeue(zone, episodes)``: queue restored episodes for consolidation (the
        workers' pending sets), told of every current, unconsolidated episode restored."""
        if batch < 1:
            raise InvalidInput("batch must be at least 1", field="batch")
        self._store = store
        self._batch = batch
        self._requeue = requeue

    def archive(self, zone: Zone, ids: Sequence[str]) -> list[str]:
        """Move the live records among ``ids`` to the zone's archive, vectors included, with
        tier ARCHIVE. Returns the ids moved (live ones, in the order of ``ids``); ids not live
        (already archived, unknown, tombstones) are skipped."""
        moved: list[str] = []
        for chunk in batches(ids, self._batch):
            records = self._store.get(zone, chunk, with_vectors=True)
            if not records:
                continue
            archived = [r.model_copy(update={"tier": Tier.ARCHIVE}) for r in records]
            self._store.archive_put(zone, archived)
            done = [r.id for r in records]
            self._store.remove(zone, done)
            moved.extend(done)
        log.info("records_archived", zone=str(zone), count=len(moved))
        return moved

    def restore(
        self,
        zone: Zone,
        ids: Sequence[str] | None = None,
        where: And | None = None,
        *,
        now: datetime | None = None,
    ) -> list[str]:
        """Bring archived records back to the live collection, chosen by ``ids`` or by the
        filter ``where`` (exactly one of them), vectors included, with tier SHORT_TERM and
        ``last_accessed_at`` set to ``now`` (default: the current time), so that the policy
        that archived a record does not send it straight back. Returns the ids restored.

        A record whose id is a tombstone in the live collection was deleted: it is never
        brought back, and its archived copy is purged. Raises InvalidInput unless exactly one
        of ``ids`` and ``where`` is given."""
        if (ids is None) == (where is None):
            raise InvalidInput("restore takes ids or where, not both or neither", field="ids")
        if now is None:
            now = utc_now()
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        chosen = (
            list(ids) if ids is not None else self._store.archive_ids(zone, where or And(all=[]))
        )
        restored: list[str] = []
        for chunk in batches(chosen, self._batch):
            records = self._store.archive_get(zone, chunk)
            if not records:
                continue
            deleted = {
                i for i, dead in self._store.presence(zone, [r.id for r in records]).items() if dead
            }
            live = [
                r.model_copy(update={"tier": Tier.SHORT_TERM, "last_accessed_at": now})
                for r in records
                if r.id not in deleted
            ]
            # Archived while waiting for consolidation, an episode was skipped by the run: it
            # waits again (first: an id queued but not restored is skipped by the next run).
            waiting = [
                r
                for r in live
                if r.level is Level.EPISODE and r.is_current and not r.consolidated_into
            ]
            if waiting and self._requeue is not None:
                self._requeue(zone, waiting)
            self._store.upsert(zone, live)
            self._store.archive_remove(zone, [r.id for r in records])
            restored.extend(r.id for r in live)
        log.info("records_restored", zone=str(zone), count=len(restored))
        return restored

    def purge(self, zone: Zone, ids: Sequence[str]) -> None:
        """Delete the archived records among ``ids`` for good; other ids are ignored. Each
        becomes a tombstone in the zone's live collection (which also removes it from the
        archive), so that a copy of its message sent to the ingest queue again finds it
        deleted."""
        now = utc_now()
        for chunk in batches(ids, self._batch * 8):
            doomed = self._store.archive_get(zone, chunk)
            self._store.put_tombstones(zone, [Tombstone.of(r, now) for r in doomed])
        log.info("archive_purged", zone=str(zone), count=len(ids))
