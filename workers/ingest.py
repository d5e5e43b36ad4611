"""Ingest: from a zone's ingest queue (every record and tombstone agents write) into the zone
store, exactly once in effect.

One worker drains a zone at a time (the zone's ingest lock). Per round it reads up to ``batch``
messages after its cursor and:

1. stores the records it has not stored before (records are immutable: a record already in the
   store keeps the workers' bookkeeping, such as consolidation links and tier), links each new
   version to the version it supersedes, whichever came first (version_links.py), and writes
   tombstones (a deleted record's content is destroyed; a late copy is never stored again);
   the links and tombstones under their users' store locks
   (:func:`~hivemem.workers.consolidation.store_locked`: behind a batch of a move to or from
   the archive, never behind a consolidation);
2. in one Redis transaction, queues the new current episodes for consolidation (the user's
   *pending* set) and moves the cursor past the round, unless the queue moved or started over
   since it was read (its epoch changed: then the round is abandoned, and read where the
   messages are now);
3. deletes the consumed entries from the queue.

A worker that dies before step 2 leaves the cursor where it was: the next drain reads the round
again, finds its records stored, and queues any unconsolidated episode among them (step 2 never
ran, so none was queued). After step 2 nothing of the round is read again. Users whose pending
episodes reach ``threshold`` are reported as due, once until their consolidation starts.

Which queues a drain reads, and in what order: :mod:`hivemem.workers.ingest_queues`; how each
message is opened or skipped: :mod:`hivemem.workers.ingest_messages`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import redis
import structlog

from hivemem.pool.adapters.departures import Departure, queue_owner
from hivemem.pool.adapters.redis_bus import (
    Delivery,
    RedisBus,
    ingest_cursor,
)
from hivemem.pool.adapters.redis_errors import REDIS_DOWN
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import EnvelopeCodec, PlainCodec
from hivemem.pool.errors import MessageRejected
from hivemem.pool.ports import Vector, ZoneStore
from hivemem.pool.records import MemoryRecord, Tombstone, split_tombstones
from hivemem.workers.consolidation import store_locked
from hivemem.workers.derived import delete_derived
from hivemem.workers.ingest_messages import IngestReport, QueuedMessages, Round, skipped
from hivemem.workers.ingest_queues import IngestQueues
from hivemem.workers.keys import WorkerKeys, add_pending
from hivemem.workers.locks import held
from hivemem.workers.version_links import VersionLinks

log = structlog.get_logger(__name__)
#: A consolidation queued for a user is not queued again for this long (seconds), unless it
#: starts earlier (it clears the mark).
_QUEUED_TTL_S = 600


class IngestService:
    """Drains ingest queues into the zone store (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        bus: RedisBus,
        store: ZoneStore,
        keys: WorkerKeys,
        *,
        batch: int,
        threshold: int,
        lock_ttl_s: float,
        message_max_bytes: int,
        registry: AgentRegistry,
        codec: EnvelopeCodec | None = None,
        departed_codec: Callable[[AgentInfo], EnvelopeCodec] | None = None,
        on_rejected: Callable[[MessageRejected, Delivery, Zone], None] | None = None,
    ) -> None:
        """``message_max_bytes``: the size a message the workers publish (the tombstones of
        what a delete took with it) stays within. ``registry``: whose ingest queues there are
        (the agents registered, and those deregistered whose queues still hold messages).
        ``departed_codec(info)``: what opens the messages of a departure (what an agent queued
        before its deregistration, checked against its entry ``info`` as it stood then; by
        default ``codec``)."""
        self._client = client
        self._bus = bus
        self._codec = codec or PlainCodec()
        self._messages = QueuedMessages(
            self._codec,
            departed_codec or (lambda _info: self._codec),
            dim=store.dim,
        )
        self._on_rejected = on_rejected
        self._store = store
        self._keys = keys
        self._batch = batch
        self._threshold = threshold
        self._lock_ttl_s = lock_ttl_s
        self._max_bytes = message_max_bytes
        self._versions = VersionLinks(store, client, keys)
        self._queues = IngestQueues(bus, registry)

    def drain(
        self, zone: Zone, *, max_messages: int | None = None, on_due: Callable[[str], None]
    ) -> IngestReport:
        """Store what the zone's queue holds (up to ``max_messages``); ``on_due(user_id)`` is
        called for each user whose pending episodes passed the threshold."""
        report = IngestReport(zone=zone.value)
        with held(self._client, self._keys.ingest_lock(zone), self._lock_ttl_s) as lock:
            if not lock.acquired:
                report.busy = True
                return report
            owners = self._queues.owners()
            waiting = self._queues.waiting(zone, owners)
            # One round per waiting queue in turn: a busy queue holds back no other.
            while waiting and (max_messages is None or report.messages < max_messages):
                waiting = [
                    topic
                    for topic in waiting
                    if (max_messages is None or report.messages < max_messages)
                    and self._round(zone, topic, report, owners.departure_of(topic))
                ]
            self._queues.read_through(owners)
            self._versions.prune(zone)
        for user_id in report.due:
            on_due(user_id)
        return report

    def _round(
        self, zone: Zone, topic: str, report: IngestReport, departure: Departure | None
    ) -> bool:
        """One read-store-commit round; False when the queue had nothing after the cursor.
        ``departure``: the queue is one of a departure's (its messages are checked against
        the agent's entry as it stood then)."""
        raw = cast("bytes | None", self._client.get(self._keys.ingest_cursor(topic)))
        epoch, seq = ingest_cursor(raw)
        backlog = self._bus.read(topic, seq, limit=self._batch)
        if backlog.epoch is None:
            return False
        if backlog.epoch != epoch:
            if epoch is not None:
                log.warning("ingest_new_epoch", zone=zone.value, topic=topic,
                            reason="Redis lost its data")  # fmt: skip
            epoch, seq = backlog.epoch, 0
            backlog = self._bus.read(topic, 0, limit=self._batch)
        elif backlog.trimmed:
            log.error("ingest_gap", zone=zone.value, topic=topic, cursor=seq)
        if not backlog.deliveries:
            # Nothing to read, yet the cursor is not where the queue stands: numbers with no
            # message at its end (an append that failed in the publishing script, or an agent
            # moving its own counter or epoch). A cursor left there would have the queue read
            # as waiting forever.
            at = f"{epoch} {backlog.last_seq}"
            if raw is None or raw.decode(errors="replace") != at:
                log.warning("ingest_gap", zone=zone.value, topic=topic, cursor=seq,
                            last_seq=backlog.last_seq)  # fmt: skip
                self._client.set(self._keys.ingest_cursor(topic), at)
            return False
        codec = self._messages.codec(departure)
        owner = queue_owner(topic) if departure is None else departure.info.agent_id
        rejected: list[tuple[MessageRejected, Delivery]] = []
        opened = [
            self._messages.opened(zone, d, report, codec, owner, rejected=rejected)
            for d in backlog.deliveries
        ]
        parts = [part for part in opened if part is not None]
        batch = Round()
        for part in parts:
            batch.extend(part)
        try:
            queued = self._store_round(zone, batch)
        except ValueError:  # a message the store cannot take (InvalidInput is one)
            batch, queued = self._store_one_by_one(zone, topic, parts, report)
        last = backlog.deliveries[-1].seq
        due = self._commit(zone, queued, batch.tombstones, topic, (epoch, last))
        if due is None:
            # The queue moved (a deregistration took it to a departure) or started over since
            # it was read: what the round stored stays stored (records are immutable), and the
            # rest, its refusals included, is judged where the messages are now.
            log.info("ingest_round_abandoned", zone=zone.value, topic=topic, epoch=epoch)
            return False
        for error, delivery in rejected:
            if self._on_rejected is not None:
                self._on_rejected(error, delivery, zone)
        report.messages += len(backlog.deliveries)
        report.records += len(batch.records)
        report.tombstones += len(batch.tombstones)
        report.due.extend(u for u in due if u not in report.due)
        return True

    def _store_one_by_one(
        self, zone: Zone, topic: str, parts: list[Round], report: IngestReport
    ) -> tuple[Round, list[MemoryRecord]]:
        """After a round failed to store: store it message by message, skipping (and logging)
        those the store refuses. Returns what was stored and the episodes to queue (none that
        a stored message deleted or replaced: the round's rules, over what was stored)."""
        stored = Round()
        queued: list[MemoryRecord] = []
        for part in parts:
            try:
                queued += self._store_round(zone, part)
            except ValueError as error:
                skipped(zone, (topic, part.seqs[0]), f"the store refused it: {error}", report)
                continue
            stored.extend(part)
        gone = {t.id for t in stored.tombstones}
        gone |= {r.supersedes for r in stored.records if r.supersedes is not None}
        return stored, [r for r in queued if r.id not in gone]

    def _store_round(self, zone: Zone, batch: Round) -> list[MemoryRecord]:
        """Write the round to the store; returns the episodes to queue for consolidation."""
        batch.tombstones, targets = self._rightful(zone, batch.tombstones)
        unique: dict[str, tuple[MemoryRecord, Vector | None]] = {}
        for record, row in zip(batch.records, batch.rows, strict=True):
            unique.setdefault(record.id, (record, row))
        presence = self._store.presence(zone, list(unique))
        unseen = [record_id for record_id in unique if record_id not in presence]
        # An id already archived is stored too: a copy sent again must not replace it.
        archived = {r.id for r in self._store.archive_get(zone, unseen)} if unseen else set()
        new = [unique[record_id] for record_id in unseen if record_id not in archived]
        new = self._versions.settle(zone, new)
        self._upsert(zone, new)
        # Read again after a crash: stored then, perhaps never linked nor queued (the commit
        # did not happen). Linking them again is idempotent.
        stored_before = [i for i, tombstone in presence.items() if not tombstone]
        earlier = self._store.get(zone, stored_before) if stored_before else []
        linked = [*(record for record, _ in new), *earlier]
        # What follows rewrites records stored before (links, deletes): under their users'
        # store locks, so that no move to or from the archive holds a copy read before.
        users = {r.scope.user_id for r in linked if r.supersedes is not None}
        users |= {t.scope.user_id for t in batch.tombstones}
        with store_locked(self._client, self._keys, zone, users, self._lock_ttl_s):
            marked = self._versions.link(zone, linked)
            self._drop_pending(zone, marked)
            if batch.tombstones:
                self._delete(zone, batch.tombstones, targets)
        deleted = {t.id for t in batch.tombstones}
        # A version and its successor in one round: the old one was sent while still current.
        replaced = {r.supersedes for r, _ in unique.values() if r.supersedes is not None}
        replaced |= {r.id for r in marked}
        queued = [
            record
            for record, _ in new
            if record.level is Level.EPISODE
            and record.is_current
            and record.id not in deleted
            and record.id not in replaced
        ]
        queued += [
            r
            for r in earlier
            if r.level is Level.EPISODE
            and r.is_current
            and not r.consolidated_into
            and r.id not in deleted
            and r.id not in replaced
        ]
        return queued

    def _delete(
        self, zone: Zone, tombstones: list[Tombstone], targets: dict[str, MemoryRecord]
    ) -> None:
        """Store ``tombstones`` (``targets``: the stored records they name, by id), and delete
        what consolidation derived from those."""
        named = [targets[t.id] for t in tombstones if t.id in targets]
        self._delete_derived(zone, named)
        self._store.put_tombstones(zone, tombstones)
        # A run may have derived from a deleted episode after ``targets`` were read, and
        # looked for deletes before the tombstone above was stored: find its outputs now.
        self._delete_derived(zone, named, unlinked=True)
        self._versions.forget(zone, [t.id for t in tombstones])

    def _delete_derived(
        self, zone: Zone, deleted: Sequence[MemoryRecord], *, unlinked: bool = False
    ) -> None:
        """Delete what consolidation derived from the stored records ``deleted``, before those
        (see :func:`~hivemem.workers.derived.delete_derived`): a worker dying midway leaves the
        deleted records live, so the next drain does it all again."""
        doomed, episodes = delete_derived(
            self._store, zone, deleted, client=self._client, keys=self._keys, bus=self._bus,
            codec=self._codec, batch=self._batch, max_bytes=self._max_bytes, unlinked=unlinked,
        )  # fmt: skip
        if doomed:
            log.info("ingest_derived_deleted", zone=zone.value, records=len(doomed),
                     requeued=len(episodes))  # fmt: skip

    def _rightful(
        self, zone: Zone, tombstones: list[Tombstone]
    ) -> tuple[list[Tombstone], dict[str, MemoryRecord]]:
        """The tombstones that may delete what they name: of records not stored (they keep a
        late copy out), or of the same user and compartments as the stored (or archived)
        record. The others are logged and dropped. Also returns the stored records named,
        by id."""
        if not tombstones:
            return tombstones, {}
        ids = [t.id for t in tombstones]
        stored = {r.id: r for r in self._store.get(zone, ids)}
        unseen = [i for i in ids if i not in stored]
        stored |= {r.id: r for r in self._store.archive_get(zone, unseen)} if unseen else {}
        kept, refused = split_tombstones(tombstones, stored)
        for tombstone in refused:
            log.warning("ingest_tombstone_refused", zone=zone.value, record_id=tombstone.id,
                        reason="it names another user's or compartments' record")  # fmt: skip
        return kept, stored

    def _upsert(self, zone: Zone, pairs: Sequence[tuple[MemoryRecord, Vector | None]]) -> None:
        with_rows = [(r, row) for r, row in pairs if row is not None]
        if with_rows:
            dense = np.stack([row for _, row in with_rows]).astype(np.float32, copy=False)
            self._store.upsert(zone, [r for r, _ in with_rows], dense)
        self._store.upsert(zone, [r for r, row in pairs if row is None])

    def _drop_pending(self, zone: Zone, records: Sequence[MemoryRecord | Tombstone]) -> None:
        if records:
            with self._client.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.srem(self._keys.pending(zone, record.scope.user_id), record.id)
                pipe.execute()

    def _cursor_at(self, topic: str, at: tuple[str, int]) -> bool:
        """Whether the queue's cursor is at ``at`` (epoch, seq)."""
        raw = cast("bytes | None", self._client.get(self._keys.ingest_cursor(topic)))
        return raw == f"{at[0]} {at[1]}".encode()

    def _pending_sizes(self, zone: Zone, user_ids: Sequence[str]) -> list[int]:
        """How many episodes wait for consolidation of each of ``user_ids``."""
        with self._client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.scard(self._keys.pending(zone, user_id))
            return [int(size) for size in pipe.execute()]

    def _commit(
        self,
        zone: Zone,
        queued: Sequence[MemoryRecord],
        tombstones: Sequence[Tombstone],
        topic: str,
        at: tuple[str, int],
    ) -> list[str] | None:
        """Queue the episodes, move the queue's cursor to ``at`` (epoch, seq) and trim the
        queue through it, in one transaction, while the queue is still in that epoch (a queue
        begun again since keeps its new entries); returns the due users, or None (nothing done)
        when the queue moved or started over since it was read."""
        epoch, seq = at
        by_user: list[str] = []
        with self._client.pipeline(transaction=True) as pipe:
            try:
                epoch_key = self._bus.epoch_key(topic)
                pipe.watch(epoch_key)  # type: ignore[no-untyped-call]
                if pipe.get(epoch_key) != epoch.encode():
                    return None
                pipe.multi()
                by_user = add_pending(pipe, self._keys, zone, queued)
                for tombstone in tombstones:
                    pipe.srem(self._keys.pending(zone, tombstone.scope.user_id), tombstone.id)
                pipe.set(self._keys.ingest_cursor(topic), f"{epoch} {seq}")
                stream, minid = self._bus.trim_args(topic, seq)
                pipe.xtrim(stream, minid=minid)  # what was read, gone with the cursor's move
                for user_id in by_user:
                    pipe.scard(self._keys.pending(zone, user_id))
                results = pipe.execute()
                sizes = results[len(results) - len(by_user) :]
            except (redis.WatchError, *REDIS_DOWN) as error:
                # A reply lost on the way comes as either (WatchError while watching): the
                # cursor says whether the transaction ran. If it did, the round is done, and
                # its refusals must still be audited.
                if not self._cursor_at(topic, at):
                    if isinstance(error, redis.WatchError):
                        return None
                    raise
                log.warning("ingest_commit_reply_lost", zone=zone.value, topic=topic)
                sizes = self._pending_sizes(zone, by_user)
        full = [u for u, size in zip(by_user, sizes, strict=True) if size >= self._threshold]
        if not full:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for user_id in full:
                pipe.set(self._keys.queued(zone, user_id), 1, nx=True, ex=_QUEUED_TTL_S)
            marked = pipe.execute()
        return [user_id for user_id, fresh in zip(full, marked, strict=True) if fresh]
