"""Sending what the workers made or deleted to the agents: :func:`publish_as_workers`."""

from __future__ import annotations

from collections.abc import Sequence

from hivemem.pool.adapters.redis_bus import RedisBus, zone_topic
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import EnvelopeCodec, PlainCodec, make_envelope
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.security.pool_security import WORKER_SENDER


def publish_as_workers(
    bus: RedisBus,
    zone: Zone,
    records: Sequence[MemoryRecord],
    tombstones: Sequence[Tombstone],
    *,
    batch: int,
    codec: EnvelopeCodec | None = None,
) -> None:
    """Publish ``records`` and ``tombstones`` as ``hivemem-workers``: on the zone's channel, or
    the channel of their compartments when they carry any; one user per envelope (sealed under
    that user's key with security on) and at most ``batch`` of each, in one round trip per
    topic."""
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
            envelope = make_envelope(
                sender=WORKER_SENDER,
                zone=zone,
                records=mine[start : start + batch],
                tombstones=gone[start : start + batch],
            )
            messages.append((envelope.message_id, codec.encode(envelope)))
    for topic, messages in by_topic.items():
        bus.register_topic(topic)
        bus.publish(topic, WORKER_SENDER, messages)
