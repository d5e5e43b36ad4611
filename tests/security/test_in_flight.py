"""Counting the writes a zone's ingest queues hold under a data key, on a real Redis: what a
key's retirement waits for (the pool's refusal itself: tests/workers/test_key_rotation.py)."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.adapters.departures import Owners
from hivemem.pool.adapters.redis_bus import RedisBus, ingest_cursor_key, ingest_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.errors import PoolUnavailable
from hivemem.pool.redis_server import free_port
from hivemem.security.in_flight import ingest_queued_under
from hivemem.security.ingest_seal import IngestOpener, IngestSealer
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring

OLD, NEW = "0123456789ab", "ba9876543210"


def publish(bus: RedisBus, topic: str, bodies: list[bytes]) -> None:
    bus.publish(topic, "writer", [(uuid.uuid4().hex, body) for body in bodies])


def frame(key_id: str) -> bytes:
    """A version-2 frame's bytes (its header well formed; nothing here checks the signature)."""
    header = (
        f'{{"v":2,"message_id":"{uuid.uuid4().hex}","sender":"writer","zone":"internal",'
        f'"sent_at":"2026-11-22T10:00:00Z","key_id":"{key_id}","size":40}}'
    )
    return header.encode() + b"\n" + bytes(12) + bytes(40) + bytes(64)


@pytest.fixture
def keyring(client: redis.Redis) -> ZoneKeyring:
    return ZoneKeyring(client, LocalKeyProvider(bytes(range(32))), namespace="t")


@pytest.fixture
def registry(client: redis.Redis) -> AgentRegistry:
    """Agents "writer" and "other" registered, "gone" deregistered (its queue still counts)."""
    registry = AgentRegistry(client, namespace="t", heartbeat_ttl_s=10.0)
    for agent in ("writer", "other", "gone"):
        registry.register(AgentInfo(agent_id=agent, clearance=Zone.SECRET))
    registry.deregister("gone")
    return registry


def test_only_the_messages_under_the_key_count(
    client: redis.Redis, keyring: ZoneKeyring, registry: AgentRegistry
) -> None:
    """Wrapped to the workers or queued before wrapping existed, a message under the key
    counts, over more than one page of a queue, in every agent's queue of the zone (one since
    deregistered included) and the zone's shared queue of earlier versions; a message under
    another key, one whose wrap does not open, a version-1 one and bytes that are no frame do
    not; nor another zone's; nor what the workers stored (their cursor)."""
    bus = RedisBus(client, namespace="t", maxlen=100)
    sealer = IngestSealer(keyring)
    under_old = [sealer.seal(frame(OLD)) for _ in range(300)] + [frame(OLD)]
    broken = bytearray(sealer.seal(frame(OLD)))
    broken[-1] ^= 1
    others = [sealer.seal(frame(NEW)), bytes(broken), b'{"v":1,"records":[]}', b"junk"]
    queue = ingest_topic(Zone.INTERNAL, "writer")
    publish(bus, queue, under_old + others)
    publish(bus, ingest_topic(Zone.INTERNAL), [sealer.seal(frame(OLD))])
    publish(bus, ingest_topic(Zone.INTERNAL, "gone"), [sealer.seal(frame(OLD))])
    publish(bus, ingest_topic(Zone.INTERNAL, "never-registered"), [sealer.seal(frame(OLD))])
    publish(bus, ingest_topic(Zone.PUBLIC, "writer"), [sealer.seal(frame(OLD))])
    opener = IngestOpener(keyring)

    def count(zone: Zone, key_id: str) -> int:
        return ingest_queued_under(bus, registry, opener, zone, key_id)

    assert count(Zone.INTERNAL, OLD) == len(under_old) + 2
    assert count(Zone.INTERNAL, NEW) == 1
    assert count(Zone.CONFIDENTIAL, OLD) == 0

    # The workers stored the first 250 (their cursor; a queue is trimmed approximately).
    epoch = bus.read(queue, 0, limit=1).epoch
    client.set(ingest_cursor_key("t", queue), f"{epoch} 250")
    bus.trim_through(queue, 250)
    assert count(Zone.INTERNAL, OLD) == len(under_old) - 250 + 2
    # A cursor of an older epoch (Redis lost its data since): the workers read it all again.
    client.set(ingest_cursor_key("t", queue), "older-epoch 250")
    assert count(Zone.INTERNAL, NEW) == 1


def test_a_queue_a_deregistration_moves_during_the_count_still_counts(
    client: redis.Redis, keyring: ZoneKeyring, registry: AgentRegistry
) -> None:
    """The agent is deregistered after the count read the registry and before it read the
    queues: its queue, moved to a departure the first read did not know, counts all the same
    (a retirement would otherwise leave those writes unopenable)."""
    bus = RedisBus(client, namespace="t", maxlen=100)
    sealer = IngestSealer(keyring)
    publish(bus, ingest_topic(Zone.INTERNAL, "writer"), [sealer.seal(frame(OLD)) for _ in "ab"])
    first_read = registry.queue_owners

    def read_then_deregistered() -> Owners:
        found = first_read()
        registry.deregister("writer")
        return found

    registry.queue_owners = read_then_deregistered  # type: ignore[method-assign]

    assert ingest_queued_under(bus, registry, IngestOpener(keyring), Zone.INTERNAL, OLD) == 2


def test_without_redis_the_count_says_so(keyring: ZoneKeyring) -> None:
    """Redis away: PoolUnavailable (a retirement then changes nothing)."""
    gone = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    registry = AgentRegistry(gone, namespace="t", heartbeat_ttl_s=10.0)
    with pytest.raises(PoolUnavailable):
        ingest_queued_under(
            RedisBus(gone, namespace="t", maxlen=10), registry, IngestOpener(keyring),
            Zone.PUBLIC, OLD,
        )  # fmt: skip
