"""Rotating a zone's data key without downtime, and retiring the old one once nothing needs it.

The steps, each audited or recorded:

1. :meth:`KeyRotation.rotate` makes a new active key (audited ``key_rotated``). New content is
   sealed under it at once in this process, and within ``active_ttl_s`` in every other; content
   sealed under older keys stays readable. A rotation whose caller did not audit it (its reply
   lost, its process stopped) is audited by the zone's next rotation or retirement
   (:mod:`hivemem.security.key_changes`).
2. Every holder of sealed content re-seals it under the active key and records that it did
   (:meth:`KeyRotation.record_resealed`): each agent cleared for the zone (its local store, at
   its next heartbeat or attach) and the workers (the zone store and its archive, task
   ``hivemem.reseal``).
3. :meth:`KeyRotation.retire` deletes the old key's material (audited ``key_retired``). It
   refuses (KeyStillInUse, nothing changes) while a holder has not re-sealed since that key
   stopped being active, or while the zone's ingest queues still hold messages sealed under
   it (:mod:`hivemem.security.in_flight`: the workers have not stored those writes yet),
   unless forced: a forced retirement makes what that holder still has under the old key
   unreadable, for good, and the queued writes with it.

Redis layout: ``<ns>:keys:resealed:<zone>``, a hash: holder (an agent id, or
``hivemem-workers``) → the id of the key it last re-sealed everything of the zone under.
Pool messages sealed under a retired key that a receiver has not read yet are rejected
(audited): retire after agents have caught up with the zone's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import redis
import structlog

from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import INGEST_QUEUE, InvalidInput, KeyStillInUse, KeyUnavailable
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.data_keys import KeyInfo, check_key_id
from hivemem.security.keyring import ZoneKeyring

log = structlog.get_logger(__name__)


class KeyRotation:
    """Rotation, re-seal bookkeeping and retirement of one pool's zone keys."""

    def __init__(
        self,
        keyring: ZoneKeyring,
        client: redis.Redis,
        *,
        namespace: str,
        audit: AuditLog,
        queued: Callable[[Zone, str], int] | None = None,
    ) -> None:
        """``queued(zone, key_id)``: how many messages of the zone's ingest queues are sealed
        under the key (None: not looked at, for a process that only re-seals)."""
        self.keyring = keyring
        self._client = client
        self._prefix = f"{namespace}:keys:resealed:"
        self._audit = audit
        self._queued = queued

    def rotate(self, zone: Zone | str, *, actor: str) -> KeyInfo:
        """Make a new active key for ``zone``; older keys stay readable. Audited
        ``key_rotated`` (zone, new and previous key id). A rotation of the zone that an earlier
        call made and did not audit is audited first (``resumed``); this call still makes its
        own key (whoever asks for a rotation, perhaps because a key may have leaked, gets a key
        no one had: a retry after PoolUnavailable may thus make two, both audited). Raises
        PoolUnavailable when Redis cannot say whether the key was made (call again: that call
        audits this one's rotation), KeyRotationConflict."""
        zone = checked_zone(zone)
        self._audit_earlier(zone, actor)
        self.keyring.active(zone, fresh=True)  # the first key exists before a rotation
        key_id = self.keyring.rotate(zone).key_id
        self.keyring.changes.audit_made(
            self._audit, AuditEvent.KEY_ROTATED, zone.value, key_id, actor=actor
        )
        return self.info(zone, key_id)

    def _audit_earlier(self, zone: Zone, actor: str) -> None:
        """Audit the changes to ``zone``'s keys that earlier calls made and did not audit."""
        self.keyring.changes.audit_pending(self._audit, zone.value, actor=actor)

    def record_resealed(self, zone: Zone, holder: str, key_id: str) -> None:
        """Note that ``holder`` now keeps everything of ``zone`` under ``key_id``."""
        with redis_errors():
            self._client.hset(f"{self._prefix}{zone.value}", holder, check_key_id(key_id))

    def resealed_under(self, zone: Zone, holder: str) -> str | None:
        """The key ``holder`` last re-sealed ``zone`` under (None: never)."""
        with redis_errors():
            raw = cast("bytes | None", self._client.hget(f"{self._prefix}{zone.value}", holder))
        return None if raw is None else raw.decode()

    def recorded_holders(self, zone: Zone) -> list[str]:
        """Every holder that ever recorded a re-seal of ``zone`` (:meth:`record_resealed`)."""
        with redis_errors():
            names = cast("list[bytes]", self._client.hkeys(f"{self._prefix}{zone.value}"))
        return sorted(name.decode() for name in names)

    def behind(self, zone: Zone | str, key_id: str, holders: Iterable[str]) -> list[str]:
        """The ``holders`` that may still keep content of ``zone`` under ``key_id``: they have
        not re-sealed under a key made after it; then :data:`INGEST_QUEUE` if the zone's ingest
        queue holds writes under it that the workers have not stored. Raises KeyUnavailable
        for an unknown key."""
        zone = checked_zone(zone)
        made = {info.key_id: info.created_at for info in self.keyring.keys(zone)}
        if check_key_id(key_id) not in made:
            raise KeyUnavailable(zone, key_id, "unknown")
        names = sorted(set(holders))
        with redis_errors():
            recorded = cast(
                "list[bytes | None]", self._client.hmget(f"{self._prefix}{zone.value}", names)
            )
        late = []
        for name, raw in zip(names, recorded, strict=True):
            under = None if raw is None else made.get(raw.decode())
            if under is None or under <= made[key_id]:
                late.append(name)
        if self._queued is not None and self._queued(zone, key_id):
            late.append(INGEST_QUEUE)
        return late

    def retire(
        self, zone: Zone | str, key_id: str, *, holders: Iterable[str], actor: str,
        force: bool = False,
    ) -> list[str]:  # fmt: skip
        """Delete ``key_id``'s material. Raises KeyStillInUse (nothing changes) while one of
        ``holders`` is :meth:`behind` or the zone's ingest queues hold messages under the key
        (named :data:`INGEST_QUEUE`), unless ``force``; InvalidInput for the active key;
        KeyUnavailable for an unknown key. Returns the holders that were behind (empty unless
        forced). Audited ``key_retired``."""
        zone = checked_zone(zone)
        self._audit_earlier(zone, actor)  # a rotation's entry before the retirement's
        if self.keyring.active(zone).key_id == check_key_id(key_id):
            raise InvalidInput(f"key {key_id} is the active key of {zone}", field="key_id")
        late = self.behind(zone, key_id, holders)
        if late and not force:
            raise KeyStillInUse(zone.value, key_id, late)
        self.keyring.retire(zone, key_id)
        self._audit.record(
            AuditEvent.KEY_RETIRED, actor=actor, subject=key_id, zone=zone.value,
            forced=bool(late), behind=late[:50],
        )  # fmt: skip
        log.info("data_key_retired_audited", zone=zone.value, key_id=key_id, behind=len(late))
        return late

    def info(self, zone: Zone, key_id: str) -> KeyInfo:
        """What the keyring says of ``key_id`` (a key of ``zone`` it holds)."""
        return next(info for info in self.keyring.keys(zone) if info.key_id == key_id)
