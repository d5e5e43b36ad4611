"""Key rotations and retirements made in Redis whose audit entry is not written yet.

The step that rotates a zone's data key or the workers' ingest key, or retires an ingest key,
also notes the change, in ``<ns>:keys:unaudited``, a hash: ``<event> <zone> <key id>``
(``key_rotated`` or ``key_retired``; the zone's name, or ``workers-ingest``) → the details of
its audit entry (JSON). The caller claims the note (``<ns>:keys:unaudited:claim:<note>``,
``SET NX`` with a TTL), writes the audit entry, then deletes the note. A caller whose
reply was lost, or whose process stopped, before that leaves the note behind, and the next
rotation or retirement of the same keys audits it (``resumed``). Agents cannot write under
``<ns>:keys:`` (:mod:`hivemem.security.redis_acl`). (A zone's data key is retired under WATCH
and audited whatever that finds: it needs no note.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import cast

import redis
import structlog

from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.key_store import stored_bytes

log = structlog.get_logger(__name__)

#: Tries at a rotation while other rotations of the same keys land first (each of those made
#: its key current after this one read which key was).
ROTATE_ATTEMPTS = 20
#: How long a call that audits a noted change keeps others from auditing it too (it writes
#: the entry meanwhile); the claim of a call that stopped lapses, and a later call audits it.
_CLAIM_TTL_S = 30
#: The audit events a note may stand for.
_NOTED = (AuditEvent.KEY_ROTATED, AuditEvent.KEY_RETIRED)
#: What a note's details may not name: the audit entry's own fields.
_FIELDS = frozenset({"kind", "actor", "subject", "zone", "resumed"})


@dataclass(frozen=True)
class KeyChange:
    """A rotation (``key_id``: the new key) or a retirement of a key of ``zone``, and the
    details its audit entry carries."""

    event: AuditEvent
    zone: str
    key_id: str
    details: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The note's field in the hash."""
        return f"{self.event.value} {self.zone} {self.key_id}"

    @property
    def note(self) -> str:
        """The note's value: the details, as JSON."""
        return json.dumps(self.details, sort_keys=True)


def _parsed(name: bytes | str, value: bytes | str) -> KeyChange | None:
    """The change a stored note stands for; None (logged) when it is not one."""
    try:
        event, zone, key_id = stored_bytes(name).decode().split(" ")
        details = json.loads(stored_bytes(value))
        if event in _NOTED and isinstance(details, dict) and not _FIELDS & details.keys():
            return KeyChange(AuditEvent(event), zone, key_id, details)
    except (ValueError, RecursionError):  # not UTF-8, not three words, not JSON
        pass
    shown = stored_bytes(name)[:120].decode("ascii", "replace")
    log.warning("key_change_note_unreadable", note=shown)
    return None


class KeyChanges:
    """The notes of one namespace's key changes not audited yet (see the module docstring).
    Redis errors raise PoolUnavailable."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        """``prefix``: ``<ns>:keys:``."""
        self.client = client
        self.key = f"{prefix}unaudited"

    def pending(self, zone: str) -> list[KeyChange]:
        """The changes of ``zone``'s keys noted and not audited, rotations first. A note that
        does not read is logged and skipped."""
        with redis_errors():
            raw = cast("dict[bytes, bytes]", self.client.hgetall(self.key))
        changes = [change for name, value in raw.items() if (change := _parsed(name, value))]
        # A key is retired only after a rotation replaced it: rotations are audited first.
        ordered = sorted(changes, key=lambda c: (c.event is AuditEvent.KEY_RETIRED, c.name))
        return [change for change in ordered if change.zone == zone]

    def noted(self, event: AuditEvent, zone: str, key_id: str) -> KeyChange | None:
        """The change to ``key_id`` noted and not audited (None: audited, or never made)."""
        name = KeyChange(event, zone, key_id).name
        with redis_errors():
            value = cast("bytes | None", self.client.hget(self.key, name))
        return None if value is None else _parsed(name, value)

    def audit(self, audit: AuditLog, change: KeyChange, *, actor: str, resumed: bool) -> None:
        """Write ``change``'s audit entry (``resumed``: for an earlier call than this one), then
        delete its note; nothing when another call holds the note's claim or deleted the note
        (that call audits it: two rotations at once audited each other's change too). When this
        raises, the note stays for a later call, once the claim lapses (``_CLAIM_TTL_S``)."""
        claim = f"{self.key}:claim:{change.name}"
        with redis_errors():
            if not self.client.set(claim, actor, nx=True, ex=_CLAIM_TTL_S):
                return
            if not self.client.hexists(self.key, change.name):
                self.client.delete(claim)
                return  # audited by the call that held the claim before
        extra = {"resumed": True} if resumed else {}
        audit.record(
            change.event, actor=actor, subject=change.key_id, zone=change.zone,
            **change.details, **extra,
        )  # fmt: skip
        with redis_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, change.name)
            pipe.delete(claim)
            pipe.execute()
        if resumed:
            log.warning("key_change_audited_late", kind=change.event.value, zone=change.zone,
                        key_id=change.key_id)  # fmt: skip

    def audit_pending(self, audit: AuditLog, zone: str, *, actor: str) -> list[KeyChange]:
        """Audit, ``resumed``, every change of ``zone``'s keys that earlier calls left; returns
        them."""
        changes = self.pending(zone)
        for change in changes:
            self.audit(audit, change, actor=actor, resumed=True)
        return changes

    def audit_made(
        self, audit: AuditLog, event: AuditEvent, zone: str, key_id: str, *, actor: str
    ) -> None:
        """Audit the change this call just made to ``key_id``, unless its note is gone (another
        call audited it meanwhile)."""
        change = self.noted(event, zone, key_id)
        if change is not None:
            self.audit(audit, change, actor=actor, resumed=False)
