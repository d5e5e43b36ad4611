"""Forgetting a user in the shared stores: every zone's live collection and archive, the
workers' Redis state, and (through tombstones on each zone channel) every agent's copy.

One zone at a time, under that zone's consolidation lock for the user (so no run recreates
what is being forgotten): note the user's live records, drain the zone's ingest queue (a record
still queued would otherwise be stored afterwards), note their tombstones in the forget's
journal, then replace every live record of the user (before and after the drain) by a tombstone
(the store destroys content and vectors; the tombstone keeps a late copy from being stored
again), remove the archived ones, drop the user's pending/plan state, and publish the
tombstones as ``hivemem-workers`` so every agent tombstones its copies, whoever wrote them. A
receipt says what was removed where, and the audit log records the forget (counts only).

A forget that stops anywhere after it began removing is finished by the next call of the same
forget (the task's retry, or the operator's): the journal (forget_journal.py), kept until the
forget is audited, has it publish the tombstones no agent may have received yet (agents take a
tombstone they already applied as the same delete), and count what the earlier call removed,
marked ``resumed``. Re-running a forget that ended is harmless: it finds nothing left.

One forget of a user runs at a time: a call holds the user's forget lock (keys.py) from its
first zone to the deletion of its journals, after its audit entry, and a call that finds it
held raises ScopeBusy before reading anything (the task retries), so that no second call counts
again what a running one removed. The lock renews itself; a worker that dies loses it
``lock_ttl_s`` later, and the next call finishes its forget from the journals, counting once,
``resumed``. A call whose lock lapses (its worker stalled, or Redis out of reach, for a whole
TTL) goes on, as a consolidation does: a second call may then run beside it and count its
removals again.

With security on, a forget of every zone ends by shredding the user's subject secret
(crypto-shredding): every copy of the user's content was sealed under it — in the zone streams
and their envelopes, in agents' local stores and outboxes, in the zone store and its archives,
wherever the bytes linger (deleted segments, backups) — so none of it can be opened any more.
The tombstones are sealed without it, so a late receiver still deletes its copies. Without
security, the zone streams keep the envelopes agents published (up to ``pool.stream_maxlen``
each) until trimmed.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
import structlog
from pydantic import BaseModel, Field

from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import EnvelopeCodec
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import ZoneStore
from hivemem.pool.records import UtcDatetime, utc_now
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.pool_security import WORKER_SENDER
from hivemem.workers.consolidation import ScopeBusy, scope_locked
from hivemem.workers.forget_journal import ForgetJournal, ZoneJournal
from hivemem.workers.ingest import IngestService
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.locks import held
from hivemem.workers.publishing import publish_as_workers


class ZoneReceipt(BaseModel):
    """What one zone held of the user, and what became of it: counts of the whole forget,
    those of an earlier call it finished included."""

    live_records: int = 0
    archived_records: int = 0
    tombstones_published: int = 0
    redis_keys_deleted: int = 0
    #: True when this call finished what an earlier call of the forget began in the zone.
    resumed: bool = False


class ForgetReceipt(BaseModel):
    """The proof of a forget: per zone, what was removed."""

    user_id: str
    zones: dict[str, ZoneReceipt] = Field(default_factory=dict)
    #: True when the user's subject secret was destroyed (security on, every zone forgotten):
    #: every sealed copy of their content, anywhere, is unreadable from now on. False when
    #: there was none to destroy (an earlier forget did, or nothing was ever sealed for them).
    subject_key_shredded: bool = False
    #: True when Redis was asked to rewrite its append-only file after the shred: until it is
    #: rewritten, the file still holds the wrapped secret (an operator without that
    #: permission for the workers runs BGREWRITEAOF, or waits for Redis's own rewrite).
    persistence_rewrite_started: bool = False
    finished_at: UtcDatetime = Field(default_factory=utc_now)

    @property
    def removed(self) -> int:
        return sum(z.live_records + z.archived_records for z in self.zones.values())

    @property
    def resumed(self) -> bool:
        return any(z.resumed for z in self.zones.values())


log = structlog.get_logger(__name__)


class ForgetService:
    """Forgets users in the zone store and tells every agent (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        bus: RedisBus,
        store: ZoneStore,
        keys: WorkerKeys,
        ingest: IngestService,
        *,
        audit: AuditLog,
        lock_ttl_s: float,
        send_batch: int,
        message_max_bytes: int,
        codec: EnvelopeCodec | None = None,
        keyring: ZoneKeyring | None = None,
    ) -> None:
        self._client = client
        self._bus = bus
        self._codec = codec
        self._keyring = keyring
        self._store = store
        self._keys = keys
        self._ingest = ingest
        self._journal = ForgetJournal(client, keys)
        self._audit = audit
        self._lock_ttl_s = lock_ttl_s
        self._send_batch = send_batch
        self._max_bytes = message_max_bytes

    def forget_user(
        self, user_id: str, zones: list[Zone], *, on_due: Callable[[Zone, str], None]
    ) -> ForgetReceipt:
        """Forget ``user_id`` in ``zones``; ``on_due(zone, other_user)`` is called for users
        whose episodes, drained on the way, passed the consolidation threshold. Raises
        ScopeBusy (``zone`` None), nothing changed, while another forget of the user runs;
        ScopeBusy while a consolidation of the user runs in one of the zones (the task
        retries; zones already done stay done, and the retry counts them, ``resumed``)."""
        with held(self._client, self._keys.forget_lock(user_id), self._lock_ttl_s) as lock:
            if not lock.acquired:
                raise ScopeBusy(None, user_id)
            receipt = self._forget_all(user_id, zones, on_due)
        log.info(
            "user_forgotten", user_id=user_id, removed=receipt.removed, resumed=receipt.resumed
        )
        return receipt

    def _forget_all(
        self, user_id: str, zones: list[Zone], on_due: Callable[[Zone, str], None]
    ) -> ForgetReceipt:
        """:meth:`forget_user`, under the user's forget lock."""
        receipt = ForgetReceipt(user_id=user_id)
        for zone in zones:
            receipt.zones[zone.value] = self._forget_in(zone, user_id, on_due)
        if self._keyring is not None and set(zones) >= set(Zone):
            receipt.subject_key_shredded = self._keyring.shred(user_id)
            if receipt.subject_key_shredded:
                receipt.persistence_rewrite_started = self._rewrite_persistence()
        self._audit.record(
            AuditEvent.FORGOTTEN,
            actor=WORKER_SENDER,
            subject=user_id,
            zones=[zone.value for zone in zones],
            live_records=sum(z.live_records for z in receipt.zones.values()),
            archived_records=sum(z.archived_records for z in receipt.zones.values()),
            subject_key_shredded=receipt.subject_key_shredded,
            resumed=receipt.resumed,
        )
        self._journal.done(user_id, zones)
        return receipt

    def _rewrite_persistence(self) -> bool:
        """Ask Redis to rewrite its append-only file, so that the shredded secret leaves it
        too; False (logged) when it cannot (no permission, persistence off, one running)."""
        try:
            self._client.bgrewriteaof()  # type: ignore[no-untyped-call]
        except redis.RedisError as error:
            log.warning("forget_rewrite_not_started", error=type(error).__name__)
            return False
        return True

    def _forget_in(
        self, zone: Zone, user_id: str, on_due: Callable[[Zone, str], None]
    ) -> ZoneReceipt:
        with scope_locked(self._client, self._keys, zone, user_id, self._lock_ttl_s):
            earlier = self._journal.read(zone, user_id)
            owned = And(all=[Cond(field="scope.user_id", op="eq", value=user_id)])
            # Before the drain too: tombstones queued by an agent's own forget would otherwise
            # hide records that other agents still hold.
            # Archived records are tombstoned too: agents hold copies of them, and the store
            # must refuse a late copy. Records whose key is retired too: made without content.
            found = {t.id: t for t in self._store.tombstones(zone, owned)}
            drained = self._ingest.drain(
                zone, on_due=lambda due: None if due == user_id else on_due(zone, due)
            )
            if drained.busy:  # the user's queued writes would be stored after the forget
                raise ScopeBusy(zone, user_id, draining=True)
            found |= {t.id: t for t in self._store.tombstones(zone, owned)}
            archived = self._store.archive_ids(zone, owned)
            journal = (earlier or ZoneJournal()).adding(list(found.values()), archived)
            self._journal.write(zone, user_id, journal, earlier)  # before anything is removed
            self._store.put_tombstones(zone, [journal.tombstones[i] for i in found])
            self._store.archive_remove(zone, archived)
            keys_deleted = self._journal.drop_state(zone, user_id)
            publish_as_workers(
                self._bus,
                zone,
                [],
                journal.unpublished_after(earlier),
                batch=self._send_batch,
                max_bytes=self._max_bytes,
                codec=self._codec,
            )
            self._journal.published(zone, user_id)
        return ZoneReceipt(
            live_records=journal.live_records,
            archived_records=len(journal.archived),
            tombstones_published=len(journal.tombstones),
            redis_keys_deleted=keys_deleted,
            resumed=earlier is not None,
        )
