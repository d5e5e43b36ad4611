"""What leaves an agent: a batch too large for one sync message goes as several, each within
``pool.message_max_bytes``, and an item that fits in no message is refused with nothing sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hivemem.agents.identity import Identity
from hivemem.agents.outbox import Outbox
from hivemem.agents.sending import ShareObserver
from hivemem.pool.adapters.redis_bus import ingest_topic, zone_topic
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import PlainCodec
from hivemem.pool.errors import MessageTooLarge
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.settings import PoolSettings
from hivemem.pool.shared import SharedMemoryPool
from tests.waiting import wait_for

#: The smallest message_max_bytes the settings take.
LIMIT = 4 * 1024 * 1024


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
def test_a_batch_too_large_for_one_message_reaches_a_peer_in_several(
    make_pool: Callable[..., SharedMemoryPool], *, secure: bool
) -> None:
    """100 records of ~95 KB (~9.5 MB, one message before) go as several messages of at most
    message_max_bytes, on the zone topic and the ingest queue, in order; the peer gets all."""
    pool = make_pool("writer", secure=secure, message_max_bytes=LIMIT)
    writer = pool.register_agent("writer", share_levels=[Level.EPISODE])
    reader = make_pool("reader", secure=secure).register_agent("reader")
    assert reader.wait_connected()
    items = [
        {"content": f"note {i}", "metadata": {"blob": f"{i:03d}" + "x" * 95_000}}
        for i in range(100)
    ]
    stored = writer.memory.add_many(items, user_id="u1")
    assert writer.flush()

    for topic in (zone_topic(Zone.PUBLIC), ingest_topic(Zone.PUBLIC, "writer")):
        deliveries = pool.bus.read(topic, 0, limit=100).deliveries
        assert 2 < len(deliveries) < 10, topic
        assert all(len(d.data) <= LIMIT for d in deliveries), topic
    assert wait_for(lambda: len(reader.memory.list_memories(user_id="u1", limit=1000)) == 100)
    got = reader.memory.list_memories(user_id="u1", limit=1000)
    assert {r.id for r in got} == {r.id for r in stored}
    assert all(r.metadata == stored[0].metadata for r in got if r.id == stored[0].id)


def test_an_item_that_fits_in_no_message_is_refused_and_nothing_is_queued(
    tmp_path: Path,
) -> None:
    """A record too large for any message (only one stored before metadata was bounded can be)
    raises MessageTooLarge naming it, and its small batch mates are not queued either: the
    outbox takes a write whole or not at all."""
    outbox = Outbox(tmp_path)
    info = AgentInfo(agent_id="writer", share_levels=[Level.EPISODE])
    observer = ShareObserver(
        info,
        outbox,
        lambda: None,
        PoolSettings(message_max_bytes=LIMIT),
        Identity(info, PlainCodec()),
    )
    small = MemoryRecord(content="small", scope=Scope(user_id="u1"))
    large = small.model_copy(update={"id": "big", "metadata": {"blob": "x" * (LIMIT + 1)}})
    with pytest.raises(MessageTooLarge) as caught:
        observer.records_written([small, large], None)
    assert caught.value.item_ids == ("big",)
    assert caught.value.limit_bytes == LIMIT
    assert len(outbox) == 0
    observer.records_written([small], None)
    assert len(outbox) == 2  # the zone topic and the ingest queue
    outbox.close()
