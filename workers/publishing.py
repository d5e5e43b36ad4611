"""Sending what the workers made or deleted to the agents: :func:`publish_as_workers`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from hivemem.pool.adapters.redis_bus import RedisBus, zone_topic
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import Envelope, EnvelopeCodec, PlainCodec, fitted, make_envelope
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.security.pool_security import WORKER_SENDER

Item = MemoryRecord | Tombstone


def publish_as_workers(
    bus: RedisBus,
    zone: Zone,
    records: Sequence[MemoryRecord],
    tombstones: Sequence[Tombstone],
    *,
    batch: int,
    max_bytes: int,
    codec: EnvelopeCodec | None = None,
) -> None:
    """Publish ``records`` and ``tombstones`` as ``hivemem-workers``: on the zone's channel, or
    the channel of their compartments when they carry any; one user per envelope (sealed under
    that user's key with security on), at most ``batch`` of each and ``max_bytes`` encoded
    (``pool.send_batch`` and ``pool.message_max_bytes``, as the agents send: see
    :func:`~hivemem.pool.envelope.fitted`), in round trips of at most ``batch`` messages and
    ``max_bytes`` per topic (but one message). Raises MessageTooLarge for a record that fits in
    no message alone (the pool's validation keeps every record an agent writes below that; a
    domain profile naming every category of its user is not bound by it)."""
    codec = codec or PlainCodec()
    groups: dict[tuple[str, tuple[str, ...]], tuple[list[MemoryRecord], list[Tombstone]]] = {}
    for record in records:
        key = (record.scope.user_id, tuple(record.compartments))
        groups.setdefault(key, ([], []))[0].append(record)
    for tombstone in tombstones:
        key = (tombstone.scope.user_id, tuple(tombstone.compartments))
        groups.setdefault(key, ([], []))[1].append(tombstone)
    by_topic: dict[str, list[tuple[str, bytes]]] = {}
    for (_user, compartments), (mine, gone) in groups.items():
        messages = by_topic.setdefault(zone_topic(zone, compartments), [])
        for start in range(0, max(len(mine), len(gone)), batch):
            part: list[Item] = [*mine[start : start + batch], *gone[start : start + batch]]
            for envelope, body in fitted(part, _envelope_of(zone), codec, max_bytes):
                messages.append((envelope.message_id, body))
    for topic, messages in by_topic.items():
        bus.register_topic(topic)
        for trip in _round_trips(messages, batch, max_bytes):
            bus.publish(topic, WORKER_SENDER, trip)


def _envelope_of(zone: Zone) -> Callable[[list[Item]], Envelope]:
    """What makes the workers' envelope of a part of one group, in ``zone``."""

    def envelope_of(part: list[Item]) -> Envelope:
        return make_envelope(
            sender=WORKER_SENDER,
            zone=zone,
            records=[item for item in part if isinstance(item, MemoryRecord)],
            tombstones=[item for item in part if isinstance(item, Tombstone)],
        )

    return envelope_of


def _round_trips(
    messages: list[tuple[str, bytes]], batch: int, max_bytes: int
) -> Iterator[list[tuple[str, bytes]]]:
    """``messages`` in consecutive runs of at most ``batch`` messages and ``max_bytes`` of
    bodies (but one message), as the agents' senders send theirs."""
    trip: list[tuple[str, bytes]] = []
    size = 0
    for message in messages:
        if trip and (len(trip) >= batch or size + len(message[1]) > max_bytes):
            yield trip
            trip, size = [], 0
        trip.append(message)
        size += len(message[1])
    if trip:
        yield trip
