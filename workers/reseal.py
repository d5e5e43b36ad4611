"""Re-sealing a zone's store and archive under the zone's active key, after a key rotation.

Task ``hivemem.reseal`` (:meth:`hivemem.workers.fleet.Fleet.reseal`, ``hivemem zones
rotate-keys``). For one zone:

1. wait until the active key is older than every process's cache of it (``ACTIVE_TTL_S``
   plus a margin), so no writer still seals under the old one;
2. drain the zone's ingest queue (messages sealed under the old key are stored under the new);
3. user by user, under that user's consolidation lock (busy → ScopeBusy, the task retries;
   users done stay done), re-seal the live and archived records not under the active key,
   each on condition that it is still as read (the ingest takes no such lock:
   :meth:`~hivemem.security.zone_store.SecureZoneStore.reseal`);
4. record that the workers keep the zone under that key, which lets the old key be retired
   (:meth:`hivemem.security.key_rotation.KeyRotation.retire`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis
import structlog
from pydantic import BaseModel

from hivemem.pool.enums import Zone
from hivemem.pool.filters import And, Cond
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.keyring import ACTIVE_TTL_S
from hivemem.security.pool_security import WORKER_SENDER
from hivemem.security.zone_store import SecureZoneStore
from hivemem.workers.consolidation import scope_locked
from hivemem.workers.ingest import IngestService
from hivemem.workers.keys import WorkerKeys

log = structlog.get_logger(__name__)

#: How old (seconds) the active key must be before the store is re-sealed under it.
SETTLE_S = ACTIVE_TTL_S + 1.0
_EVERYTHING = And(all=[])


class ResealReceipt(BaseModel):
    """What one zone's re-seal did."""

    zone: str
    key_id: str
    users: int
    records: int


class ResealService:
    """Re-seals zones of the zone store (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        store: SecureZoneStore,
        keys: WorkerKeys,
        ingest: IngestService,
        rotation: KeyRotation,
        *,
        lock_ttl_s: float,
    ) -> None:
        self._client = client
        self._store = store
        self._keys = keys
        self._ingest = ingest
        self._rotation = rotation
        self._lock_ttl_s = lock_ttl_s

    def reseal(self, zone: Zone, *, on_due: Callable[[str], None]) -> ResealReceipt:
        """Re-seal ``zone``; ``on_due(user_id)`` is called for users whose episodes, drained
        on the way, passed the consolidation threshold. Raises ScopeBusy while a
        consolidation of one of its users runs."""
        key = self._rotation.keyring.active(zone, fresh=True)  # not a cache older than a rotation
        made = self._rotation.info(zone, key.key_id)
        wait_s = SETTLE_S - (datetime.now(UTC) - made.created_at).total_seconds()
        if wait_s > 0:
            time.sleep(wait_s)
        self._ingest.drain(zone, on_due=on_due)
        users = self._users(zone)
        moved = 0
        for user in users:
            with scope_locked(self._client, self._keys, zone, user, self._lock_ttl_s):
                owned = And(all=[Cond(field="scope.user_id", op="eq", value=user)])
                moved += self._store.reseal(zone, owned)
        self._rotation.record_resealed(zone, WORKER_SENDER, key.key_id)
        log.info("zone_resealed", zone=zone.value, key_id=key.key_id, records=moved)
        return ResealReceipt(zone=zone.value, key_id=key.key_id, users=len(users), records=moved)

    def _users(self, zone: Zone) -> list[str]:
        """Every user with live or archived records in ``zone`` (counted by the stores'
        indexes: no record is read)."""
        live = self._store.facet(zone, "scope.user_id", _EVERYTHING)
        return sorted(live.keys() | self._store.archive_facet(zone, "scope.user_id", _EVERYTHING))
