"""Messages still on their way under a data key: what a key's retirement waits for.

Every record an agent writes goes to its ingest queue in the record's zone, where it waits until
the workers store it in the zone store and move their cursor past it. A message there under a
retired key could never be opened: the workers would reject it (``unknown_key``) and the write,
acknowledged to the agent long ago, would never reach the zone store. :func:`ingest_queued_under`
counts such messages, for :meth:`~hivemem.security.key_rotation.KeyRotation.retire` to refuse
meanwhile; :func:`ingest_queued_to` counts those sealed to one of the workers' ingest keys, for
its retirement (:mod:`hivemem.security.ingest_rotation`).

Reading a message's data key id takes opening its wrap to the workers (the frame's header names the
key in clear inside it, see :mod:`hivemem.security.wire`), so only a process holding the
workers' ingest key (one with the master key: the operator's) can count. Nothing of the content
is opened. Entries that do not open or are no version-2 frame name no key and are not counted:
the workers reject them anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from hivemem.pool.adapters.redis_bus import RedisBus
from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidMessage
from hivemem.security.ingest_seal import IngestOpener, sealed_to
from hivemem.security.wire import Frame

#: Queue entries read per round trip.
_PAGE = 256


def _key_id(opener: IngestOpener, data: bytes) -> str | None:
    """The data key the queued message's content is sealed under (None: it names none)."""
    try:
        return Frame.parse(opener.open(data)).header.key_id
    except InvalidMessage:  # MessageRejected is one; the keys unreadable (SealBroken) raise
        return None


def ingest_queued_under(
    bus: RedisBus, registry: AgentRegistry, opener: IngestOpener, zone: Zone, key_id: str
) -> int:
    """How many messages of ``zone``'s ingest queues (one per agent, the departures' and the
    shared one of earlier versions) that the workers have not stored yet are sealed under
    ``key_id`` (those they stored may linger until a queue is trimmed). Raises PoolUnavailable
    when Redis cannot be reached, SealBroken when the workers' ingest key cannot be read."""
    return _queued(bus, registry, [zone], lambda data: _key_id(opener, data) == key_id)


def ingest_queued_to(bus: RedisBus, registry: AgentRegistry, key_id: str) -> int:
    """How many messages of every zone's ingest queues that the workers have not stored yet are
    sealed to their ingest key ``key_id`` (read from each wrap's clear head: nothing is
    opened). Raises PoolUnavailable when Redis cannot be reached."""
    return _queued(bus, registry, list(Zone), lambda data: sealed_to(data) == key_id)


def _queued(
    bus: RedisBus, registry: AgentRegistry, zones: list[Zone], counted: Callable[[bytes], bool]
) -> int:
    """How many unread messages of ``zones``' ingest queues are ``counted``."""
    with redis_errors():
        owners = registry.queue_owners()
        unread = bus.unread_queues([t for zone in zones for t in owners.queues(zone)])
    count = sum(_queued_in(bus, topic, after, counted) for topic, after in unread)
    # A deregistration meanwhile may have moved a queue not read yet to a departure the first
    # read did not see: count the departures made since too (a queue counted before it moved
    # counts twice, which only holds the retirement off longer). Departures never change.
    seen = set(owners.departures)
    while True:
        with redis_errors():
            new = [d for n, d in registry.departures.all().items() if n not in seen]
            unread = bus.unread_queues([d.topic(zone) for d in new for zone in zones])
        if not new:
            return count
        seen.update(d.number for d in new)
        count += sum(_queued_in(bus, topic, after, counted) for topic, after in unread)


def _queued_in(bus: RedisBus, topic: str, after: int, counted: Callable[[bytes], bool]) -> int:
    """:func:`_queued` in one queue, after the seq ``after``."""
    count = 0
    while True:
        with redis_errors():
            backlog = bus.read(topic, after, limit=_PAGE)
        if not backlog.deliveries:
            return count
        count += sum(1 for d in backlog.deliveries if counted(d.data))
        after = backlog.deliveries[-1].seq
