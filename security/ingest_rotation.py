"""Rotating the workers' ingest key, and retiring an old one once nothing queued is sealed to it.

The steps, each audited:

1. :meth:`IngestRotation.rotate` makes a new current key (audited ``key_rotated``, zone
   ``workers-ingest``). Agents seal to it within the keyring's ``ttl_s`` (1 s); the workers
   open messages sealed to any key not retired, and read the keys again when a message names
   one they do not hold.
2. :meth:`IngestRotation.retire` deletes an old key's material (audited ``key_retired``). It
   refuses (IngestKeyStillInUse, nothing changes) until ``grace_s`` has passed since the key
   stopped being current (an agent may have sealed a message to it just before it read the new
   key, and not appended it yet: the grace covers that and more), and while the ingest queues
   hold messages sealed to it that the workers have not stored. Forced, it makes those messages
   unreadable for good: the workers reject them (``unknown_key``) and their writes never reach
   the zone store.

A rotation or retirement whose caller did not audit it (its reply lost, its process stopped) is
audited by the next rotation or retirement (``resumed``, :mod:`hivemem.security.key_changes`).

The count reads each queued message's clear head (:func:`~hivemem.security.in_flight.
ingest_queued_to`): an agent can hold a retirement off by queuing frames that name the old key
(each is gone at the next drain; ``force`` overrides).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from hivemem.pool.errors import INGEST_QUEUE, InvalidInput, KeyStillInUse, KeyUnavailable
from hivemem.security.audit import AuditLog
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.ingest_keys import INGEST_KEYS, IngestKeyInfo, check_ingest_id
from hivemem.security.key_changes import KeyChange
from hivemem.security.keyring import ZoneKeyring

#: How a retirement names the agents that may still seal to a key replaced less than the grace
#: ago (agent ids hold no space, so no agent has this name).
AGENTS_SEALING = "agents sealing"


class IngestKeyStillInUse(KeyStillInUse):
    """Raised when a workers' ingest key is to be retired while ``holders`` (:data:`AGENTS_SEALING`,
    :data:`INGEST_QUEUE`) may still need it. Nothing changed."""

    def __init__(self, key_id: str, holders: list[str], until: datetime) -> None:
        super().__init__(INGEST_KEYS, key_id, holders)
        reasons = []
        if AGENTS_SEALING in holders:
            reasons.append(f"agents may seal to it until {until.isoformat(timespec='seconds')}")
        if INGEST_QUEUE in holders:
            reasons.append("the ingest queues hold messages sealed to it (let the workers store)")
        shown = "; ".join(reasons)
        self.args = (f"workers' ingest key {key_id} is still in use: {shown}; wait, or force it",)


class IngestRotation:
    """Rotation and retirement of one pool's workers' ingest keys (see the module docstring)."""

    def __init__(
        self,
        keyring: ZoneKeyring,
        *,
        audit: AuditLog,
        queued: Callable[[str], int],
        grace_s: float,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``queued(key_id)``: how many messages of the ingest queues that the workers have not
        stored are sealed to the key; ``grace_s``: how long after a key stopped being current it
        may be retired; ``clock``: now (None: Redis's clock, which stamped the replacement)."""
        self._keys = keyring.ingest
        self._changes = keyring.changes
        self._audit = audit
        self._queued = queued
        self._grace = timedelta(seconds=grace_s)
        self._clock = clock or self._keys.now

    def listing(self) -> list[IngestKeyInfo]:
        """Every workers' ingest key, retired ones included, oldest first."""
        return self._keys.listing()

    def rotate(self, *, actor: str) -> IngestKeyInfo:
        """Make a new current key; the previous one still opens what was sealed to it. Audited
        ``key_rotated`` (the new and previous id). A rotation an earlier call made and did not
        audit is audited first (``resumed``); this call still makes its own key (a retry after
        PoolUnavailable may thus make two, both audited). Raises PoolUnavailable when Redis
        cannot say whether the key was made (call again: that call audits this one's
        rotation), KeyRotationConflict."""
        self._audit_earlier(actor)
        self._keys.current()  # the first key exists before a rotation
        key_id = self._keys.rotate()[0]
        self._changes.audit_made(
            self._audit, AuditEvent.KEY_ROTATED, INGEST_KEYS, key_id, actor=actor
        )
        return next(info for info in self._keys.listing() if info.key_id == key_id)

    def _audit_earlier(self, actor: str) -> list[KeyChange]:
        """Audit the rotations and retirements that earlier calls made and did not audit;
        returns them."""
        return self._changes.audit_pending(self._audit, INGEST_KEYS, actor=actor)

    def behind(self, key_id: str) -> list[str]:
        """What may still need the old key ``key_id`` (empty for the current one):
        :data:`AGENTS_SEALING` within the grace after it was replaced, then
        :data:`INGEST_QUEUE` if messages queued to it wait. Raises KeyUnavailable for an
        unknown or retired key."""
        replaced = self._keys.replaced_at(check_ingest_id(key_id))
        return [] if replaced is None else self._late(key_id, replaced)

    def retire(self, key_id: str, *, actor: str, force: bool = False) -> list[str]:
        """Delete the material of an old key. Raises IngestKeyStillInUse (nothing changes)
        while it is :meth:`behind`, unless ``force``; InvalidInput for the current key;
        KeyUnavailable for an unknown one; InvalidIdentifier for a malformed id. Returns what
        was behind (empty unless forced). Retiring a retired key does nothing (not audited),
        unless an earlier call retired it and did not audit it: that is audited now
        (``resumed``) and what was behind then returned. Raises PoolUnavailable when Redis
        cannot say whether the key was retired (call again: that call ends this one's)."""
        key_id = check_ingest_id(key_id)
        for change in self._audit_earlier(actor):
            if change.event is AuditEvent.KEY_RETIRED and change.key_id == key_id:
                return _behind(change)
        try:
            replaced = self._keys.replaced_at(key_id)
        except KeyUnavailable:
            if self._retired(key_id):  # by now, perhaps by another process meanwhile
                return []
            raise
        if replaced is None:
            raise InvalidInput(f"ingest key {key_id} is the current one", field="key_id")
        late = self._late(key_id, replaced)
        if late and not force:
            raise IngestKeyStillInUse(key_id, late, replaced + self._grace)
        if self._keys.retire(key_id, details={"forced": bool(late), "behind": late}):
            self._changes.audit_made(
                self._audit, AuditEvent.KEY_RETIRED, INGEST_KEYS, key_id, actor=actor
            )
        return late

    def _retired(self, key_id: str) -> bool:
        return any(info.key_id == key_id and info.retired for info in self._keys.listing())

    def _late(self, key_id: str, replaced: datetime) -> list[str]:
        late = []
        if self._clock() < replaced + self._grace:
            late.append(AGENTS_SEALING)
        if self._queued(key_id):
            late.append(INGEST_QUEUE)
        return late


def _behind(change: KeyChange) -> list[str]:
    """What was behind the key when the retirement ``change`` was made."""
    behind = change.details.get("behind")
    return [str(holder) for holder in behind] if isinstance(behind, list) else []
