"""Keeping an agent's local store sealed under its zones' active keys, after key rotations.

:class:`LocalReseal` runs when the agent attaches and at each of its heartbeats: for every zone
the agent is cleared for whose active key it has not re-sealed under yet (as recorded in Redis
by :class:`~hivemem.security.key_rotation.KeyRotation`), it re-seals the local records sealed
under older keys (writes held off meanwhile), then records the zone's key as done — what lets
the old key be retired. Not while its outbox still holds a message of the zone sealed under an
older key: retired, that key would leave the message unreadable to every receiver, so the zone
is recorded at a later heartbeat, once the outbox sent it. Nothing to do costs one Redis read of
the active key id per zone (fresh, not the keyring's 1 s cache: a re-seal must not record a key
older than a rotation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import structlog

from hivemem.pool.adapters.redis_errors import REDIS_DOWN
from hivemem.pool.enums import Zone
from hivemem.pool.errors import HivememError, InvalidMessage, MessageRejected
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.sealed_index import SealedIndex
from hivemem.security.wire import Frame

log = structlog.get_logger(__name__)


class LocalReseal:
    """Re-seals one agent's local store after rotations (see the module docstring)."""

    def __init__(
        self,
        agent_id: str,
        zones: list[Zone],
        index: SealedIndex,
        writes: threading.RLock,
        rotation: KeyRotation,
        *,
        waiting: Callable[[], Iterable[bytes]] = tuple,
    ) -> None:
        """``zones``: those the agent is cleared for; ``writes``: the lock its memory's writes
        hold; ``waiting``: the messages in its outbox, not yet sent."""
        self._agent_id = agent_id
        self._zones = zones
        self._index = index
        self._writes = writes
        self._rotation = rotation
        self._waiting = waiting
        self._done: dict[Zone, str] = {}

    def run(self) -> int:
        """Re-seal what needs it; returns how many records were. Failures (Redis away, a key
        unavailable) are logged and retried at the next call."""
        try:
            return self._run()
        except (HivememError, *REDIS_DOWN) as error:
            log.warning("local_reseal_failed", agent_id=self._agent_id, error=str(error)[:200])
            return 0

    def _run(self) -> int:
        due: dict[Zone, str] = {}
        for zone in self._zones:
            active = self._rotation.keyring.active(zone, fresh=True).key_id
            if self._done.get(zone) == active:
                continue
            if self._rotation.resealed_under(zone, self._agent_id) == active:
                self._done[zone] = active
                continue
            due[zone] = active
        if not due:
            return 0
        with self._writes:
            moved = self._index.reseal(due)
        held_back = self._stale_in_outbox(due)
        if held_back:
            log.info("local_reseal_waits_for_outbox", agent_id=self._agent_id,
                     zones=sorted(zone.value for zone in held_back))  # fmt: skip
        for zone, key_id in due.items():
            if zone in held_back:
                continue
            self._rotation.record_resealed(zone, self._agent_id, key_id)
            self._done[zone] = key_id
        log.info("local_store_resealed", agent_id=self._agent_id, records=moved,
                 zones=[zone.value for zone in due])  # fmt: skip
        return moved

    def _stale_in_outbox(self, active: dict[Zone, str]) -> set[Zone]:
        """The zones of ``active`` (zone: its active key) with a waiting message sealed under
        another key."""
        stale: set[Zone] = set()
        for data in self._waiting():
            try:
                header = Frame.parse(data).header
            except (InvalidMessage, MessageRejected):  # not sealed: no key to wait for
                continue
            if header.zone in active and header.key_id != active[header.zone]:
                stale.add(header.zone)
        return stale
