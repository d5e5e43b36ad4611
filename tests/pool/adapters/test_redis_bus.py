"""The Redis bus: one Lua script appends to the stream and publishes, with contiguous sequence
numbers, deduplication by message id, epochs, and trimming that readers can detect."""

from __future__ import annotations

import time

import pytest
import redis

from hivemem.pool.adapters.redis_bus import RedisBus, inbox_topic, ingest_topic, zone_topic
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidIdentifier, InvalidMessage
from hivemem.pool.redis_server import EmbeddedRedis

TOPIC = zone_topic(Zone.INTERNAL)


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def bus(client: redis.Redis) -> RedisBus:
    return RedisBus(client, namespace="t", maxlen=1000)


def test_publish_assigns_contiguous_sequence_numbers(bus: RedisBus) -> None:
    """Each message of a topic gets the next sequence number, across calls."""
    first = bus.publish(TOPIC, "w", [("a" * 32, b"one"), ("b" * 32, b"two")])
    second = bus.publish(TOPIC, "w", [("c" * 32, b"three")])
    assert first + second == [1, 2, 3]
    backlog = bus.read(TOPIC, 0, limit=10)
    assert [d.seq for d in backlog.deliveries] == [1, 2, 3]
    assert [d.data for d in backlog.deliveries] == [b"one", b"two", b"three"]
    assert backlog.last_seq == 3
    assert not backlog.trimmed


def test_a_resent_message_id_is_appended_once(bus: RedisBus) -> None:
    """An outbox resending after a lost acknowledgement duplicates nothing in the stream."""
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == [1]
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one"), ("b" * 32, b"two")]) == [1, 2]
    assert [d.data for d in bus.read(TOPIC, 0, limit=10).deliveries] == [b"one", b"two"]


def test_a_message_resent_after_its_topic_started_over_is_appended_again(
    bus: RedisBus, client: redis.Redis
) -> None:
    """The topic's keys were damaged (a counter that is no number): the script started it over
    and deleted its stream. A message appended before must land in the new stream when its
    sender resends it, instead of being taken for a duplicate of a number that names nothing."""
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == [1]
    client.set("t:zone:internal:seq", "junk")
    assert bus.publish(TOPIC, "w", [("b" * 32, b"two")]) == [1]  # a new epoch
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == [2]
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == [2]  # and once only, again
    assert [d.data for d in bus.read(TOPIC, 0, limit=10).deliveries] == [b"two", b"one"]


@pytest.mark.parametrize("prior", [b"7", b"not:a number", b"other-epoch:1"])
def test_the_dedupe_mark_is_read_as_written_or_ignored(
    bus: RedisBus, client: redis.Redis, prior: bytes
) -> None:
    """A bare number (as written before marks named their epoch) still counts as a prior
    append; a mark of another epoch, or one that is no mark (an agent's user may write the
    topic's keys), does not."""
    assert bus.publish(TOPIC, "w", [("b" * 32, b"first")]) == [1]
    client.set(f"t:zone:internal:msg:{'a' * 32}", prior)
    expected = [7] if prior == b"7" else [2]
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == expected


def test_publish_fans_out_the_same_entry_live(bus: RedisBus) -> None:
    """Subscribers hear every appended message with its epoch and sequence number."""
    pubsub = bus.subscribe([TOPIC])
    try:
        bus.publish(TOPIC, "w", [("a" * 32, b"payload with spaces")])
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.1)
        assert message is not None
        delivery = bus.parse_live(message["channel"], message["data"])
        backlog = bus.read(TOPIC, 0, limit=1)
        assert (delivery.topic, delivery.seq, delivery.sender, delivery.data) == (
            TOPIC,
            1,
            "w",
            b"payload with spaces",
        )
        assert delivery.epoch == backlog.epoch
    finally:
        pubsub.close()


def test_read_after_a_position_returns_only_later_entries(bus: RedisBus) -> None:
    """Catch-up reads start after the cursor and honour the limit."""
    bus.publish(TOPIC, "w", [(f"{i:032x}", str(i).encode()) for i in range(10)])
    backlog = bus.read(TOPIC, 4, limit=3)
    assert [d.seq for d in backlog.deliveries] == [5, 6, 7]
    assert backlog.last_seq == 10


def test_an_empty_topic_has_no_epoch(bus: RedisBus) -> None:
    """Reading a topic nobody wrote to yet returns nothing and no epoch."""
    backlog = bus.read(TOPIC, 0, limit=10)
    assert (backlog.epoch, backlog.last_seq, backlog.deliveries) == (None, 0, [])


def test_trimming_past_a_cursor_is_detected(client: redis.Redis) -> None:
    """With a bounded stream, a reader far behind learns that entries after its cursor are gone."""
    small = RedisBus(client, namespace="t", maxlen=10)
    for start in range(0, 300, 50):
        small.publish(TOPIC, "w", [(f"{i:032x}", b"x") for i in range(start, start + 50)])
    assert client.xlen("t:zone:internal:stream") < 300
    behind = small.read(TOPIC, 5, limit=1000)
    assert behind.trimmed
    assert behind.deliveries[-1].seq == 300
    recent = small.read(TOPIC, 299, limit=10)
    assert not recent.trimmed


def test_a_redis_that_lost_its_data_starts_a_new_epoch(bus: RedisBus, client: redis.Redis) -> None:
    """After FLUSHALL the topic restarts at sequence 1 under a different epoch."""
    bus.publish(TOPIC, "w", [("a" * 32, b"one")])
    before = bus.read(TOPIC, 0, limit=1).epoch
    client.flushall()
    assert bus.publish(TOPIC, "w", [("b" * 32, b"two")]) == [1]
    after = bus.read(TOPIC, 0, limit=1).epoch
    assert before is not None
    assert after is not None
    assert before != after


def test_an_entry_numbered_beyond_the_counter_is_not_read(
    bus: RedisBus, client: redis.Redis
) -> None:
    """Only the script numbers entries: one an agent's user added with a higher id is no
    message, so a reader neither applies it nor moves past it."""
    assert bus.publish(TOPIC, "w", [("a" * 32, b"one")]) == [1]
    client.xadd("t:zone:internal:stream", {"d": "junk", "s": "w"}, id="999999999-0")
    backlog = bus.read(TOPIC, 0, limit=10)
    assert [(d.seq, d.data) for d in backlog.deliveries] == [(1, b"one")]
    assert backlog.last_seq == 1


@pytest.mark.parametrize("epoch", [b"a b", b"x" * 65, b"\xff"])
def test_an_epoch_the_script_never_writes_reads_as_none(
    bus: RedisBus, client: redis.Redis, epoch: bytes
) -> None:
    """Nothing is read under it (a reader keeping ``<epoch> <seq>`` could not parse it back);
    the next publish starts the topic over, and it is read from there."""
    bus.publish(TOPIC, "w", [("a" * 32, b"one")])
    client.set("t:zone:internal:epoch", epoch)
    assert bus.read(TOPIC, 0, limit=10).epoch is None
    assert bus.publish(TOPIC, "w", [("b" * 32, b"two")]) == [1]
    backlog = bus.read(TOPIC, 0, limit=10)
    assert backlog.epoch is not None
    assert [d.data for d in backlog.deliveries] == [b"two"]


def test_ids_beyond_the_counter_start_the_topic_over_even_once_trimmed(
    bus: RedisBus, client: redis.Redis
) -> None:
    """XADD with MAXLEN 0 leaves an empty stream whose last id is beyond the counter: every
    later XADD of the script would fail. The script sees the stream's last id and starts over."""
    bus.publish(TOPIC, "w", [("a" * 32, b"one")])
    before = bus.read(TOPIC, 0, limit=1).epoch
    client.xadd("t:zone:internal:stream", {"d": "x"}, id="999999999-0", maxlen=0, approximate=False)
    assert client.xlen("t:zone:internal:stream") == 0
    assert bus.publish(TOPIC, "w", [("b" * 32, b"two")]) == [1]
    backlog = bus.read(TOPIC, 0, limit=10)
    assert backlog.epoch != before
    assert [d.data for d in backlog.deliveries] == [b"two"]


def test_topics_are_separate(bus: RedisBus) -> None:
    """Each zone and inbox counts its own sequence numbers."""
    bus.publish(TOPIC, "w", [("a" * 32, b"one")])
    assert bus.publish(zone_topic(Zone.SECRET), "w", [("b" * 32, b"two")]) == [1]
    assert bus.read(zone_topic(Zone.SECRET), 0, limit=5).deliveries[0].data == b"two"


@pytest.mark.parametrize("data", [b"", b"garbage", b"abc def", b"e 1 {}", b"e -1 w {}", "text"])
def test_foreign_live_messages_are_rejected(bus: RedisBus, data: bytes) -> None:
    """A pub/sub message without epoch and sequence number raises InvalidMessage."""
    with pytest.raises(InvalidMessage):
        bus.parse_live(b"t:zone:internal", data)  # type: ignore[arg-type]


@pytest.mark.parametrize("agent_id", ["a:b", "a*", "x y", "", "ns:zone:secret", "a\nb"])
def test_inbox_topics_refuse_ids_that_could_escape_their_keys(agent_id: str) -> None:
    """Agent ids reaching key names are validated again in the adapter."""
    with pytest.raises(InvalidIdentifier):
        inbox_topic(agent_id)


def test_dropping_a_topic_removes_its_stream_and_counters(
    bus: RedisBus, client: redis.Redis
) -> None:
    """A deregistered agent's inbox leaves nothing behind but expiring dedupe marks."""
    topic = inbox_topic("gone")
    bus.publish(topic, "w", [("a" * 32, b"one")])
    bus.drop_topic(topic)
    assert client.exists("t:agent:gone:inbox:stream", "t:agent:gone:inbox:seq") == 0


def test_an_ingest_queue_is_never_trimmed_by_writers_nor_published(client: redis.Redis) -> None:
    """Ingest queues keep every entry past maxlen and send nothing live; trim_through drops the
    consumed entries only."""
    bus = RedisBus(client, namespace="t", maxlen=10)
    queue = ingest_topic(Zone.SECRET)
    pubsub = bus.subscribe([queue])
    try:
        seqs = bus.publish(queue, "w", [(f"{i:032x}", b"x%d" % i) for i in range(200)])
        assert seqs == list(range(1, 201))
        assert len(bus.read(queue, 0, limit=1000).deliveries) == 200
        assert pubsub.get_message(timeout=0.3) is None
    finally:
        pubsub.close()
    bus.trim_through(queue, 150)
    backlog = bus.read(queue, 150, limit=1000)
    assert [d.seq for d in backlog.deliveries] == list(range(151, 201))
    assert not backlog.trimmed
    assert bus.read(queue, 0, limit=1000).trimmed
