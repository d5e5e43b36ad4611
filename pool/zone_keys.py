"""The zones' data keys as the pool administers them: listed, rotated, and retired once every
holder has re-sealed (the steps are in :mod:`hivemem.security.key_rotation`); and the workers'
ingest keys, retired once nothing queued is sealed to them
(:mod:`hivemem.security.ingest_rotation`).

These keys exist only with security on: every call here raises InvalidInput with it off.
"""

from __future__ import annotations

from functools import partial

import redis

from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import InvalidInput
from hivemem.security.audit import AuditLog
from hivemem.security.data_keys import KeyInfo
from hivemem.security.in_flight import ingest_queued_to, ingest_queued_under
from hivemem.security.ingest_keys import IngestKeyInfo
from hivemem.security.ingest_rotation import IngestRotation
from hivemem.security.ingest_seal import IngestOpener
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.pool_security import WORKER_SENDER, PoolSecurity


def key_rotation(
    security: PoolSecurity,
    client: redis.Redis,
    bus: RedisBus,
    registry: AgentRegistry,
    audit: AuditLog,
    *,
    namespace: str,
) -> KeyRotation:
    """The key rotation of the pool on ``client``: its retirements count the writes in each
    zone's ingest queues (read through ``bus`` for the agents of ``registry``)."""
    return KeyRotation(
        security.keyring,
        client,
        namespace=namespace,
        audit=audit,
        # The writes in a zone's ingest queues under a key hold its retirement.
        queued=partial(ingest_queued_under, bus, registry, IngestOpener(security.keyring)),
    )


def ingest_rotation(
    security: PoolSecurity, bus: RedisBus, registry: AgentRegistry, audit: AuditLog
) -> IngestRotation:
    """The rotation of the workers' ingest keys of the pool: its retirements count the messages
    sealed to a key in every zone's ingest queues (read through ``bus`` for the agents of
    ``registry``)."""
    return IngestRotation(
        security.keyring,
        audit=audit,
        queued=partial(ingest_queued_to, bus, registry),
        grace_s=security.options.ingest_retire_grace_s,
    )


class ZoneKeys:
    """The zone-key calls of :class:`hivemem.pool.shared.SharedMemoryPool`, which documents
    each; rotations and retirements are audited with ``actor``."""

    def __init__(
        self,
        rotation: KeyRotation | None,
        registry: AgentRegistry,
        *,
        actor: str,
        ingest: IngestRotation | None = None,
    ) -> None:
        """``rotation`` and ``ingest`` (the workers' ingest keys): None with security off."""
        self._rotation = rotation
        self._registry = registry
        self._actor = actor
        self._ingest = ingest

    def _required(self) -> KeyRotation:
        if self._rotation is None:
            raise InvalidInput("zone keys exist only with security on", field="security.enabled")
        return self._rotation

    def _ingest_required(self) -> IngestRotation:
        if self._ingest is None:
            raise InvalidInput("ingest keys exist only with security on", field="security.enabled")
        return self._ingest

    def ingest_keys(self) -> list[IngestKeyInfo]:
        """Every workers' ingest key, retired ones included, oldest first."""
        return self._ingest_required().listing()

    def ingest_behind(self, key_id: str) -> list[str]:
        """What may still need the old ingest key ``key_id`` (IngestRotation.behind)."""
        return self._ingest_required().behind(key_id)

    def rotate_ingest(self) -> IngestKeyInfo:
        """A new current workers' ingest key (audited ``key_rotated``)."""
        return self._ingest_required().rotate(actor=self._actor)

    def retire_ingest(self, key_id: str, *, force: bool = False) -> list[str]:
        """Delete an old workers' ingest key for good (audited ``key_retired``)."""
        return self._ingest_required().retire(key_id, actor=self._actor, force=force)

    def keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        return self._required().keyring.keys(zone)

    def rotate(self, zone: Zone | str) -> KeyInfo:
        """A new active data key for ``zone`` (audited ``key_rotated``)."""
        return self._required().rotate(zone, actor=self._actor)

    def holders(self, zone: Zone | str) -> list[str]:
        """Who may keep content of ``zone`` sealed: the agents cleared for it, the registered
        agents that held it once (a lowered clearance leaves what they stored of the zone on
        their disk, sealed under its keys: they re-seal it once cleared again), and the
        workers."""
        zone = checked_zone(zone)
        once = set(self._required().recorded_holders(zone))
        kept = [
            info.agent_id
            for info in self._registry.list()
            if info.clearance >= zone or info.agent_id in once
        ]
        return [*kept, WORKER_SENDER]

    def retire(self, zone: Zone | str, key_id: str, *, force: bool = False) -> list[str]:
        """Delete an old data key of ``zone`` for good (audited ``key_retired``); the holders
        that still keep content under it (empty unless ``force``). Raises KeyStillInUse,
        InvalidInput, KeyUnavailable."""
        rotation = self._required()
        return rotation.retire(
            zone, key_id, holders=self.holders(zone), actor=self._actor, force=force
        )
