"""Which ingest queues the workers read and in what order, on a real Redis: a busy agent's
queue holds back no other; a deregistered agent still running is read until it stops (what
deregistered agents queued before: test_departures.py)."""

from __future__ import annotations

from collections.abc import Callable

from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Zone
from hivemem.pool.settings import HivememSettings, SecuritySettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for
from tests.workers.test_ingest import ZONE, stored


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def test_a_busy_queue_holds_back_no_other(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """One round per waiting queue in turn: with room for two rounds of one message, the
    quiet agent's write is stored in the first drain, however much the busy one queued (and
    it sorts first). Before, a queue was read to its end before the next."""
    runtime = make_runtime(consolidation={"threshold": 1000}, ingest_batch=1)
    pool = make_pool("agents")
    busy = pool.register_agent("aaa-busy", clearance=Zone.SECRET)
    quiet = pool.register_agent("zzz-quiet", clearance=Zone.SECRET)
    for i in range(6):
        busy.memory.add(f"busy note {i}", user_id="u1")
    assert busy.flush()
    waiting = quiet.memory.add("the quiet agent's one note", user_id="u2")
    assert quiet.flush()

    report = runtime.ingest.drain(ZONE, max_messages=2, on_due=ignore)

    assert report.messages == 2
    assert waiting.id in {r.id for r in stored(runtime)}


def test_a_deregistered_agent_still_running_is_read_until_it_stops(
    make_pool: Callable[..., SharedMemoryPool], worker_settings: Callable[..., HivememSettings]
) -> None:
    """With security off nothing stops the process of an agent deregistered elsewhere, and it
    may queue more writes: the workers read its queues while it still beats, and forget it
    once it stopped and they read them through."""
    plain = worker_settings().model_copy(update={"security": SecuritySettings(enabled=False)})
    runtime = WorkerRuntime(plain)
    try:
        running = make_pool("running", secure=False, heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0)
        stray = running.register_agent("stray", clearance=Zone.SECRET)
        make_pool("admin", secure=False).deregister("stray")
        assert wait_for(lambda: runtime.registry.last_seen("stray") is not None)  # it beats on
        later = stray.memory.add("written after its deregistration", user_id="u1")
        assert stray.flush()

        runtime.ingest.drain(ZONE, on_due=ignore)

        assert later.id in {r.id for r in stored(runtime)}
        assert runtime.registry.queue_owners().departed == ["stray"]
        running.close()
        assert wait_for(lambda: runtime.registry.last_seen("stray") is None, timeout_s=5.0)
        runtime.ingest.drain(ZONE, on_due=ignore)
        assert runtime.registry.queue_owners().departed == []
    finally:
        runtime.close()


def test_numbers_with_no_message_at_a_queues_end_are_passed(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A counter past the queue's last message (an append that failed in the publishing
    script, or an agent moving its own counter): the drain moves its cursor there, and the
    queue no longer counts as waiting."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = make_pool("agents").register_agent("gappy", clearance=Zone.SECRET)
    agent.memory.add("a note", user_id="u1")
    assert agent.flush()
    topic = ingest_topic(ZONE, "gappy")
    runtime.client.incrby(f"{runtime.bus.namespace}:{topic}:seq", 3)
    # And a queue that has only an epoch (its agent set it): nothing to read there either.
    runtime.client.set(f"{runtime.bus.namespace}:{ingest_topic(ZONE, 'blank')}:epoch", "e1")
    make_pool("other").register_agent("blank", clearance=Zone.SECRET)
    queues = runtime.ingest._queues

    runtime.ingest.drain(ZONE, on_due=ignore)

    assert queues.waiting(ZONE, queues.owners()) == []
    assert len(stored(runtime)) == 1
