"""Archival: moving records between a zone's live collection and its archive, and purging.

Every move writes the destination before it removes the source, so a crash in between leaves a
record in both places (never in neither); running the same call again finishes the move. All
three operations are idempotent and work in batches of ``batch`` records.

Given a Redis client and the workers' keys, each operation acts on one user's records at a time
under that user's scope lock (:func:`~hivemem.workers.consolidation.scope_locked`), the lock
every writer of a user's records takes (a forget, a consolidation, a re-seal), and reads again,
inside the lock, what it acts on: a forget that ran before it took the lock has left tombstones
and no archived copies, so nothing it forgot is archived or restored, and none runs while the
move is half done. Each user's batch is moved under the user's store lock too
(:func:`~hivemem.workers.consolidation.store_locked`), which the ingest takes while it links
versions and stores deletes (it takes no scope lock): its write lands where the move left the
record, never on a copy the move read before. Without a client, nothing is locked: for a store
no other worker writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import redis
import structlog

from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import MemoryRecord, Tombstone, utc_now
from hivemem.workers.consolidation import ScopeBusy, scope_locked, store_locked
from hivemem.workers.keys import WorkerKeys

log = structlog.get_logger(__name__)


def batches(ids: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``ids`` in consecutive slices of at most ``size``."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def by_user(records: Sequence[MemoryRecord]) -> dict[str, list[str]]:
    """The ids of ``records`` per user, users and ids in the order of ``records``."""
    owned: dict[str, list[str]] = {}
    for record in records:
        owned.setdefault(record.scope.user_id, []).append(record.id)
    return owned


class ArchiveService:
    """Archives, restores and purges the records of a :class:`ZoneStore`."""

    def __init__(
        self,
        store: ZoneStore,
        *,
        batch: int = 256,
        requeue: Callable[[Zone, Sequence[MemoryRecord]], None] | None = None,
        client: redis.Redis | None = None,
        keys: WorkerKeys | None = None,
        lock_ttl_s: float = 30.0,
    ) -> None:
        """``requeue(zone, episodes)``: queue restored episodes for consolidation (the
        workers' pending sets), told of every current, unconsolidated episode restored.
        ``client`` and ``keys`` (both or neither): take the users' scope locks, of
        ``lock_ttl_s`` seconds (see the module docstring). Raises InvalidInput for a
        ``batch`` below 1 or only one of ``client`` and ``keys``."""
        if batch < 1:
            raise InvalidInput("batch must be at least 1", field="batch")
        if (client is None) != (keys is None):
            raise InvalidInput("scope locks need both client and keys", field="client")
        self._store = store
        self._batch = batch
        self._requeue = requeue
        self._client = client
        self._keys = keys
        self._lock_ttl_s = lock_ttl_s

    @contextmanager
    def _locked(self, zone: Zone, user_id: str) -> Iterator[None]:
        """The user's scope lock and store lock for the block (nothing without a client);
        ScopeBusy when another worker holds the scope lock, or the store lock for a whole
        ``lock_ttl_s``."""
        if self._client is None or self._keys is None:
            yield
            return
        ttl_s = self._lock_ttl_s
        with (
            scope_locked(self._client, self._keys, zone, user_id, ttl_s),
            store_locked(self._client, self._keys, zone, [user_id], ttl_s),
        ):
            yield

    def _each_user(
        self,
        zone: Zone,
        records: Sequence[MemoryRecord],
        act: Callable[[str, list[str]], object],
        *,
        busy: set[str] | None = None,
        event: str = "",
    ) -> None:
        """``act(user_id, ids)`` for each user's ids among ``records``, under that user's scope
        lock. A user another worker holds raises ScopeBusy, unless ``busy`` is given: the user
        is then added to it (``event`` logged) and skipped, here and in later calls with the
        same set."""
        for user_id, mine in by_user(records).items():
            if busy is not None and user_id in busy:
                continue
            try:
                with self._locked(zone, user_id):
                    act(user_id, mine)
            except ScopeBusy:
                if busy is None:
                    raise
                busy.add(user_id)
                log.info(event, zone=zone.value, user_id=user_id)

    def archive(self, zone: Zone, ids: Sequence[str], *, skip_busy: bool = False) -> list[str]:
        """Move the live records among ``ids`` to the zone's archive, vectors included, with
        tier ARCHIVE. Returns the ids moved (live ones, in the order of ``ids``); ids not live
        (already archived, unknown, tombstones) are skipped.

        Raises ScopeBusy while another worker holds the scope lock of a user among the
        records (those of the users before it are moved: a retry finishes); with
        ``skip_busy``, that user's records are left live instead (logged), for the next call."""
        moved: set[str] = set()
        busy: set[str] = set()
        for chunk in batches(ids, self._batch):
            self._each_user(
                zone,
                self._store.get(zone, chunk),
                lambda user_id, mine: moved.update(self._archive_own(zone, user_id, mine)),
                busy=busy if skip_busy else None,
                event="archive_scope_busy",
            )
        log.info("records_archived", zone=zone.value, count=len(moved), users_busy=len(busy))
        return [i for i in dict.fromkeys(ids) if i in moved]

    def _archive_own(self, zone: Zone, user_id: str, ids: Sequence[str]) -> list[str]:
        """:meth:`archive` of ``user_id``'s records among ``ids``, under their scope lock:
        read again there, so that what a forget tombstoned meanwhile is not archived."""
        records = [
            r for r in self._store.get(zone, ids, with_vectors=True) if r.scope.user_id == user_id
        ]
        if not records:
            return []
        self._store.archive_put(
            zone, [r.model_copy(update={"tier": Tier.ARCHIVE}) for r in records]
        )
        done = [r.id for r in records]
        self._store.remove(zone, done)
        return done

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
        that archived a record does not send it straight back. Returns the ids restored, in
        the order chosen.

        A record whose id is a tombstone in the live collection was deleted: it is never
        brought back, and its archived copy is purged. A record whose id is live (an earlier
        restore wrote it and stopped before removing the archived copy; the live one may have
        changed since) keeps its live version: only the archived copy is removed, and the id
        counts as restored. Raises InvalidInput unless exactly one of ``ids`` and ``where`` is
        given; ScopeBusy while another worker holds the scope lock of a user among the
        records (those of the users before it are restored: the task's retry finishes)."""
        if (ids is None) == (where is None):
            raise InvalidInput("restore takes ids or where, not both or neither", field="ids")
        if now is None:
            now = utc_now()
        elif now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        chosen = (
            list(ids) if ids is not None else self._store.archive_ids(zone, where or And(all=[]))
        )
        restored: set[str] = set()
        for chunk in batches(chosen, self._batch):
            self._each_user(
                zone,
                self._store.archive_get(zone, chunk),
                lambda user_id, mine: restored.update(self._restore_own(zone, user_id, mine, now)),
            )
        log.info("records_restored", zone=zone.value, count=len(restored))
        return [i for i in dict.fromkeys(chosen) if i in restored]

    def _restore_own(
        self, zone: Zone, user_id: str, ids: Sequence[str], now: datetime
    ) -> list[str]:
        """:meth:`restore` of ``user_id``'s archived records among ``ids``, under their scope
        lock: read again there, so that what a forget removed or tombstoned meanwhile stays
        gone."""
        records = [r for r in self._store.archive_get(zone, ids) if r.scope.user_id == user_id]
        if not records:
            return []
        present = self._store.presence(zone, [r.id for r in records])  # id -> tombstone
        fresh = [
            r.model_copy(update={"tier": Tier.SHORT_TERM, "last_accessed_at": now})
            for r in records
            if r.id not in present
        ]
        # Archived while waiting for consolidation, an episode was skipped by the run: it
        # waits again (first: an id queued but not restored is skipped by the next run).
        waiting = [
            r
            for r in fresh
            if r.level is Level.EPISODE and r.is_current and not r.consolidated_into
        ]
        if waiting and self._requeue is not None:
            self._requeue(zone, waiting)
        if fresh:
            self._store.upsert(zone, fresh)
        self._store.archive_remove(zone, [r.id for r in records])
        return [r.id for r in records if not present.get(r.id, False)]

    def purge(self, zone: Zone, ids: Sequence[str], *, skip_busy: bool = False) -> None:
        """Delete the archived records among ``ids`` for good; other ids are ignored. Each
        becomes a tombstone in the zone's live collection (which also removes it from the
        archive), so that a copy of its message sent to the ingest queue again finds it
        deleted. Raises ScopeBusy as :meth:`archive` does; with ``skip_busy``, a busy user's
        records stay archived (logged), for the next call."""
        now = utc_now()
        busy: set[str] = set()

        def tombstone(user_id: str, mine: list[str]) -> None:
            del user_id  # the records read again are the user's: archive_get by their ids
            doomed = self._store.archive_get(zone, mine)
            self._store.put_tombstones(zone, [Tombstone.of(r, now) for r in doomed])

        for chunk in batches(ids, self._batch * 8):
            self._each_user(
                zone,
                self._store.archive_get(zone, chunk),
                tombstone,
                busy=busy if skip_busy else None,
                event="purge_scope_busy",
            )
        log.info("archive_purged", zone=zone.value, count=len(ids), users_busy=len(busy))
