"""Which ingest queues the workers read and in what order, on a real Redis: a busy agent's
queue holds back no other; a deregistered agent still running is read until it stops; what an
agent queued before its deregistration is stored, unless it was deregistered discarding it."""

from __future__ import annotations

from collections.abc import Callable

from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.settings import HivememSettings, SecuritySettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for
from tests.workers.test_ingest import ZONE, hostile, stored


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
        assert runtime.registry.queue_owners() == ([], ["stray"])
        running.close()
        assert wait_for(lambda: runtime.registry.last_seen("stray") is None, timeout_s=5.0)
        runtime.ingest.drain(ZONE, on_due=ignore)
        assert runtime.registry.queue_owners() == ([], [])
    finally:
        runtime.close()


def test_writes_queued_before_a_deregistration_are_stored_and_later_ones_refused(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """An agent's acknowledged writes still in its queue when it is deregistered reach the
    store: the workers check them against its entry as it stood. A message signed with its key
    and put in its queue afterwards (by whoever may still write there) is refused as a revoked
    sender's, and audited; once read through, the departure is forgotten."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    pool = make_pool("agents")
    leaving = pool.register_agent("leaving", clearance=Zone.SECRET)
    queued = [leaving.memory.add(f"queued note {i}", user_id="u1").id for i in range(3)]
    assert leaving.flush()
    late = make_envelope(sender="leaving", zone=ZONE, records=[hostile("after it left")])
    forged = leaving.identity.codec.encode(late)
    pool.deregister("leaving")
    topic = ingest_topic(ZONE, "leaving")
    runtime.bus.publish(topic, "leaving", [(late.message_id, forged)])

    report = runtime.ingest.drain(ZONE, on_due=ignore)

    assert (report.records, report.skipped) == (3, 1)
    assert sorted(r.id for r in stored(runtime)) == sorted(queued)
    refused = [e for e in runtime.audit.entries() if e.kind == AuditEvent.REJECTED_MESSAGE]
    assert [(e.subject, e.details["reason"], e.details["seq"]) for e in refused] == [
        (topic, "revoked", 4)
    ]
    assert runtime.registry.queue_owners()[1] == []
    assert runtime.registry.departures() == {}


def test_a_deregistration_that_discards_refuses_what_was_queued(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """``keep_queued=False`` (a compromised agent): what it queued and the workers had not
    stored is refused, as a revoked sender's."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    pool = make_pool("agents")
    suspect = pool.register_agent("suspect", clearance=Zone.SECRET)
    suspect.memory.add("written by whoever held its key", user_id="u1")
    assert suspect.flush()
    pool.deregister("suspect", keep_queued=False)

    report = runtime.ingest.drain(ZONE, on_due=ignore)

    assert (report.records, report.skipped) == (0, 1)
    assert stored(runtime) == []
    refused = [e for e in runtime.audit.entries() if e.kind == AuditEvent.REJECTED_MESSAGE]
    assert [e.details["reason"] for e in refused] == ["revoked"]
    deregistered = [e for e in runtime.audit.entries() if e.kind == AuditEvent.DEREGISTERED]
    assert [e.details["kept_queued"] for e in deregistered] == [False]


def test_an_agent_registered_again_keeps_what_it_queued_before(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Deregistered and registered again (with another clearance) before the workers drained:
    what it queued before is checked against its entry of then, what it queues after against
    its new one; both are stored, and the departure is forgotten once read through (its queues
    are a registered agent's again)."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    pool = make_pool("agents")
    agent = pool.register_agent("back", clearance=Zone.SECRET)
    before = agent.memory.add("queued while cleared for secret", user_id="u1", zone=Zone.SECRET)
    assert agent.flush()
    pool.deregister("back")
    again = pool.register_agent("back", clearance=Zone.PUBLIC)
    after = again.memory.add("queued once back", user_id="u1")
    assert again.flush()

    for zone in (Zone.SECRET, ZONE):
        assert runtime.ingest.drain(zone, on_due=ignore).skipped == 0
    assert [r.id for r in stored(runtime, Zone.SECRET)] == [before.id]
    assert [r.id for r in stored(runtime)] == [after.id]
    assert runtime.registry.queue_owners()[1] == []
    assert runtime.registry.departures() == {}
