"""IngestService in process, on a real Redis and real Qdrant Edge zone shards: what agents write
reaches the zone store exactly once in effect (records, tombstones, versions), the queue is
consumed, a crash between storing and committing loses and duplicates nothing, users become due
once per consolidation, bad messages are skipped, and two drains of one zone do not collide."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import pytest
import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.outbox import Outbox
from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.errors import SecurityMismatch
from hivemem.pool.filters import And
from hivemem.pool.records import MemoryRecord, Scope, SparseVector, Tombstone
from hivemem.pool.settings import HivememSettings, SecuritySettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.ingest import IngestService
from hivemem.workers.ingest_messages import IngestReport
from hivemem.workers.runtime import WorkerRuntime

EVERYTHING = And(all=[])
ZONE = Zone.PUBLIC
WRITER = "writer"
#: The writer's ingest queue in ZONE.
TOPIC = ingest_topic(ZONE, WRITER)


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("agents")


@pytest.fixture
def agent(pool: SharedMemoryPool) -> Agent:
    """An agent cleared for every zone."""
    return pool.register_agent("writer", clearance=Zone.SECRET)


def drain(runtime: WorkerRuntime, zone: Zone = ZONE) -> tuple[IngestReport, list[str]]:
    """One drain; returns its report and the users ``on_due`` was called with, in order."""
    due: list[str] = []
    report = runtime.ingest.drain(zone, on_due=due.append)
    return report, due


def write(agent: Agent, count: int, *, user_id: str = "u1", zone: Zone = ZONE) -> list[str]:
    """``count`` episodes, one message each; returns their ids once they are in the queue."""
    ids = [
        agent.memory.add(f"note {i} for {user_id}", user_id=user_id, zone=zone).id
        for i in range(count)
    ]
    assert agent.flush()
    return ids


def pending(runtime: WorkerRuntime, zone: Zone = ZONE, user_id: str = "u1") -> set[str]:
    members = cast("set[bytes]", runtime.client.smembers(runtime.keys.pending(zone, user_id)))
    return {m.decode() for m in members}


def stored(runtime: WorkerRuntime, zone: Zone = ZONE) -> list[MemoryRecord]:
    """Every live record of the zone, vectors included, in id order."""
    return list(runtime.store.scan(zone, EVERYTHING, with_vectors=True))


def cursor(runtime: WorkerRuntime, zone: Zone = ZONE) -> int | None:
    raw = cast(
        "bytes | None", runtime.client.get(runtime.keys.ingest_cursor(ingest_topic(zone, WRITER)))
    )
    return None if raw is None else int(raw.split(b" ")[1])


def assert_consumed(runtime: WorkerRuntime, zone: Zone = ZONE) -> None:
    """Nothing is left in the writer's queue in the zone, and the cursor is past its last
    message."""
    backlog = runtime.bus.read(ingest_topic(zone, WRITER), 0, limit=1000)
    assert backlog.deliveries == []
    assert backlog.trimmed == (backlog.last_seq > 0)
    assert cursor(runtime, zone) == (backlog.last_seq or None)


# -- records, tombstones, versions --------------------------------------------------------------


def test_records_land_in_their_zone_once_and_the_queue_is_consumed(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Records of every level and zone reach their zone's collection once, with their vectors;
    only the episodes wait for consolidation; a second drain does nothing; the queue is
    trimmed."""
    runtime = make_runtime(consolidation={"threshold": 1000}, ingest_batch=2)
    written = [
        agent.memory.add("I water the tomatoes each morning", user_id="u1", zone=Zone.PUBLIC),
        agent.memory.add("Gardening", user_id="u1", zone=Zone.PUBLIC, level=Level.CATEGORY),
        agent.memory.add("The budget meeting is on Monday", user_id="u1", zone=Zone.INTERNAL),
        agent.memory.add("Budget talks", user_id="u2", zone=Zone.INTERNAL, level=Level.TRACE),
        *agent.memory.add_many(  # one message per zone
            [
                {"content": "Alice earns more than Bob", "zone": Zone.CONFIDENTIAL},
                {"content": "Bob asked for a raise", "zone": Zone.CONFIDENTIAL},
                {"content": "The office opens at nine", "zone": Zone.PUBLIC},
            ],
            user_id="u1",
        ),
    ]
    assert agent.flush()
    by_zone = {zone: [r for r in written if r.zone is zone] for zone in Zone}

    for zone in Zone:
        report, due = drain(runtime, zone)
        assert (report.records, report.tombstones, report.skipped) == (len(by_zone[zone]), 0, 0)
        assert not report.busy
        assert due == []
    for zone, records in by_zone.items():
        expected = {r.id: r for r in records}
        found = stored(runtime, zone)
        assert sorted(r.id for r in found) == sorted(expected)  # each once, none elsewhere
        for record in found:
            mine = agent.memory.get(record.id, with_vectors=True)
            assert (record.content, record.level, record.zone) == (
                mine.content,
                mine.level,
                zone,
            )
            assert record.vector is not None
            assert mine.vector is not None
            assert np.allclose(record.vector, mine.vector, atol=1e-6)
        episodes = {r.id for r in records if r.level is Level.EPISODE}
        assert pending(runtime, zone) == episodes
        assert pending(runtime, zone, "u2") == set()  # a trace is not consolidated again
        assert runtime.consolidation.due(zone) == (["u1"] if episodes else [])
        assert_consumed(runtime, zone)

    before = {zone: stored(runtime, zone) for zone in Zone}
    for zone in Zone:
        report, due = drain(runtime, zone)
        assert report == IngestReport(zone=zone.value)
        assert due == []
        assert stored(runtime, zone) == before[zone]
        assert_consumed(runtime, zone)


def test_a_deletion_becomes_a_tombstone_and_is_never_undone(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A deleted record becomes a tombstone in the store and leaves the pending set; a late
    copy of the record (its original message sent again) is not stored again."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    kept = agent.memory.add("I water the tomatoes each morning", user_id="u1")
    doomed = agent.memory.add("My bank PIN is on a note in the drawer", user_id="u1")
    assert agent.flush()
    originals = runtime.bus.read(TOPIC, 0, limit=10).deliveries
    drain(runtime)
    assert pending(runtime) == {kept.id, doomed.id}

    assert agent.memory.delete(doomed.id) == [doomed.id]
    assert agent.flush()
    report, _ = drain(runtime)
    assert (report.records, report.tombstones) == (0, 1)
    assert runtime.store.get(ZONE, [doomed.id]) == []
    assert runtime.store.presence(ZONE, [kept.id, doomed.id]) == {kept.id: False, doomed.id: True}
    assert pending(runtime) == {kept.id}

    resent = [(uuid.uuid4().hex, d.data) for d in originals]
    runtime.bus.publish(TOPIC, "resender", resent)
    report, _ = drain(runtime)
    assert (report.messages, report.records, report.skipped) == (2, 2, 0)
    assert runtime.store.get(ZONE, [doomed.id]) == []
    assert runtime.store.presence(ZONE, [doomed.id]) == {doomed.id: True}
    assert [r.id for r in stored(runtime)] == [kept.id]
    assert pending(runtime) == {kept.id}
    assert_consumed(runtime)


def test_a_record_deleted_before_it_was_drained_is_never_stored(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A record and its tombstone drained together leave only the tombstone, nothing pending."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    doomed = agent.memory.add("A passing thought", user_id="u1")
    agent.memory.delete(doomed.id)
    assert agent.flush()
    report, _ = drain(runtime)
    assert (report.records, report.tombstones) == (1, 1)
    assert runtime.store.get(ZONE, [doomed.id]) == []
    assert runtime.store.presence(ZONE, [doomed.id]) == {doomed.id: True}
    assert pending(runtime) == set()


@pytest.mark.parametrize("drained_between", [True, False], ids=["apart", "same-drain"])
def test_a_new_version_links_the_old_one_and_replaces_it_in_pending(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime], drained_between: bool
) -> None:
    """A superseding version marks the stored old one (superseded_by/at) and only the current
    version waits for consolidation, whether or not both arrive in one drain."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    first = agent.memory.add("I live in Lyon", user_id="u1")
    assert agent.flush()
    if drained_between:
        drain(runtime)
        assert pending(runtime) == {first.id}
    second = agent.memory.supersede(first.id, "I live in Porto")
    assert agent.flush()
    drain(runtime)

    [old, new] = runtime.store.get(ZONE, [first.id, second.id])
    assert old.superseded_by == second.id
    assert old.superseded_at == second.recorded_at
    assert not old.is_current
    assert new.supersedes == first.id
    assert new.is_current
    assert new.content == "I live in Porto"
    assert pending(runtime) == {second.id}


def test_each_agents_queue_and_the_shared_one_reach_the_store(
    pool: SharedMemoryPool, agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Each agent queues its writes in a queue of its own (its Redis user may touch no other):
    the workers drain every registered agent's; the zone's shared queue that earlier versions
    wrote (nothing queued before the upgrade is lost); and a deregistered agent's until they
    read it through (what it queued before its deregistration is stored), then forget it. An
    envelope of another agent in an agent's queue is skipped: a queue holds its agent's
    writes only."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    other = pool.register_agent("other", clearance=Zone.SECRET)
    gone = pool.register_agent("gone", clearance=Zone.SECRET)
    mine = write(agent, 2)
    theirs = write(other, 1, user_id="u2")
    departed = write(gone, 1, user_id="u3")
    pool.deregister("gone")
    signed = agent.identity.codec.encode
    earlier = make_envelope(sender=WRITER, zone=ZONE, records=[hostile("queued long ago")])
    runtime.bus.publish(ingest_topic(ZONE), WRITER, [(earlier.message_id, signed(earlier))])
    foreign = make_envelope(sender=WRITER, zone=ZONE, records=[hostile("in another's queue")])
    misplaced = ingest_topic(ZONE, "other")
    [seq] = runtime.bus.publish(misplaced, WRITER, [(foreign.message_id, signed(foreign))])
    assert runtime.registry.queue_owners().departed == ["gone"]

    with structlog.testing.capture_logs() as logs:
        report, _ = drain(runtime)

    assert (report.records, report.skipped) == (5, 1)
    found = sorted(r.id for r in stored(runtime))
    assert found == sorted([*mine, *theirs, *departed, earlier.records[0].id])
    skipped = [e for e in logs if e["event"] == "ingest_message_skipped"]
    assert [(e["topic"], e["seq"]) for e in skipped] == [(misplaced, seq)]
    assert not [e for e in logs if e["event"] == "ingest_message_rejected"]
    assert runtime.registry.queue_owners().departed == []  # read through: forgotten
    assert runtime.registry.departures.all() == {}


def test_a_write_left_for_the_shared_queue_goes_to_the_agents_own(
    pool: SharedMemoryPool,
    agent: Agent,
    make_pool: Callable[..., SharedMemoryPool],
    make_runtime: Callable[..., WorkerRuntime],
) -> None:
    """A message an earlier version left in the outbox names the zone's shared queue, which the
    agent's Redis user may no longer write: when the agent comes back, it goes to the agent's
    own queue (rather than being refused and dropped), and reaches the zone store."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    left = make_envelope(sender=WRITER, zone=ZONE, records=[hostile("left for the old queue")])
    body = agent.identity.codec.encode(left)
    path = agent.memory.path
    pool.close()
    outbox = Outbox(path)
    outbox.put([(ingest_topic(ZONE), left.message_id, body)])
    outbox.close()

    again = make_pool("agents").attach(WRITER)

    assert again.flush()
    assert runtime.bus.read(ingest_topic(ZONE), 0, limit=10).epoch is None
    assert len(runtime.bus.read(TOPIC, 0, limit=10).deliveries) == 1
    assert drain(runtime)[0].records == 1
    assert [r.id for r in stored(runtime)] == [left.records[0].id]


# -- crash safety -------------------------------------------------------------------------------


class WorkerDied(Exception):
    """Stands for the worker's process dying."""


class CrashingIngest(IngestService):
    """Dies in its ``crash_on``-th commit: that round is stored but neither queued nor passed."""

    def __init__(self, *args: Any, crash_on: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash_on = crash_on
        self.commits = 0

    def _commit(
        self,
        zone: Zone,
        queued: Sequence[MemoryRecord],
        tombstones: Sequence[Tombstone],
        topic: str,
        cursor: str,
    ) -> list[str]:
        self.commits += 1
        if self.commits == self.crash_on:
            raise WorkerDied
        return super()._commit(zone, queued, tombstones, topic, cursor)


@pytest.mark.parametrize("crash_on", [1, 2])
def test_a_worker_dying_before_its_commit_loses_and_duplicates_nothing(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime], crash_on: int
) -> None:
    """A round stored but not committed is read again by the next drain: every episode ends
    up stored and pending once, the cursor moves past everything, the queue is emptied."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    ids = write(agent, 5)
    crashing = CrashingIngest(
        runtime.client,
        runtime.bus,
        runtime.store,
        runtime.keys,
        batch=2,
        threshold=1000,
        lock_ttl_s=3.0,
        message_max_bytes=runtime.settings.pool.message_max_bytes,
        crash_on=crash_on,
        registry=runtime.registry,
        codec=runtime.ingest_codec,
    )
    with pytest.raises(WorkerDied):
        crashing.drain(ZONE, on_due=lambda _: None)
    committed = ids[: 2 * (crash_on - 1)]
    assert sorted(r.id for r in stored(runtime)) == sorted(ids[: 2 * crash_on])
    assert pending(runtime) == set(committed)
    assert cursor(runtime) == (len(committed) or None)
    assert len(runtime.bus.read(TOPIC, 0, limit=10).deliveries) == 5 - len(committed)

    report, _ = drain(runtime)
    assert report.messages == 5 - len(committed)
    assert sorted(r.id for r in stored(runtime)) == sorted(ids)
    assert pending(runtime) == set(ids)
    assert_consumed(runtime)
    again, _ = drain(runtime)
    assert again.messages == 0
    assert pending(runtime) == set(ids)


# -- the threshold ------------------------------------------------------------------------------


def test_a_user_is_due_once_until_a_consolidation_starts(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Reaching the threshold makes a user due once, over rounds and drains, until a
    consolidation of the user starts; a user below the threshold is never due."""
    runtime = make_runtime(consolidation={"threshold": 3}, ingest_batch=1)
    write(agent, 2)
    write(agent, 2, user_id="u2")
    assert drain(runtime)[1] == []
    write(agent, 2)  # two rounds, both at or above the threshold
    report, due = drain(runtime)
    assert due == ["u1"]
    assert report.due == ["u1"]
    write(agent, 1)
    assert drain(runtime)[1] == []
    assert len(pending(runtime)) == 5

    consolidated = runtime.consolidation.consolidate(ZONE, "u1")
    assert consolidated.episodes == 5
    assert pending(runtime) == set()
    write(agent, 2)
    assert drain(runtime)[1] == []
    write(agent, 1)
    assert drain(runtime)[1] == ["u1"]
    assert len(pending(runtime, user_id="u2")) == 2


# -- bad messages -------------------------------------------------------------------------------


def test_bad_messages_are_skipped_logged_and_do_not_stop_the_rest(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A malformed message, an envelope of another zone and a direct hand-over in the queue are
    skipped and logged; the records around them are stored."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    [before] = write(agent, 1)
    misplaced = MemoryRecord(content="misrouted", scope=Scope(user_id="u1"), zone=Zone.INTERNAL)
    directed = MemoryRecord(content="for one agent", scope=Scope(user_id="u1"), zone=ZONE)
    signed = agent.identity.codec.encode  # well-formed, sealed and signed: only misplaced
    bad = [
        b"\x00 this is not an envelope",
        signed(make_envelope(sender="writer", zone=Zone.INTERNAL, records=[misplaced])),
        signed(make_envelope(sender="writer", zone=ZONE, records=[directed], to="writer")),
    ]
    bad_seqs = runtime.bus.publish(TOPIC, "intruder", [(uuid.uuid4().hex, b) for b in bad])
    [after] = write(agent, 1)

    with structlog.testing.capture_logs() as logs:
        report, _ = drain(runtime)
    assert (report.messages, report.records, report.skipped) == (5, 2, 3)
    skipped = [e for e in logs if e["event"] == "ingest_message_skipped"]
    assert [(e["zone"], e["seq"]) for e in skipped] == [(ZONE.value, s) for s in bad_seqs]
    assert all(e["log_level"] == "warning" and e["reason"] for e in skipped)
    assert sorted(r.id for r in stored(runtime)) == sorted([before, after])
    assert runtime.store.presence(Zone.INTERNAL, [misplaced.id]) == {}
    assert pending(runtime) == {before, after}
    assert_consumed(runtime)


def hostile(content: str, **fields: object) -> MemoryRecord:
    record = MemoryRecord(content=content, scope=Scope(user_id="u1"), zone=ZONE)
    return record.model_copy(update=fields)  # not validated again: what a hostile sender writes


def test_signed_messages_the_store_cannot_take_are_skipped_and_do_not_block_the_queue(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Well-formed, sealed and signed by a registered agent, but not storable: a dense entry
    that is no float32 vector, a vector of another dimension, a record whose own vector is of
    another dimension, a sparse vector with mismatched indices and values. Each is skipped
    and logged; the records around them are stored and the queue is consumed (before, one such
    message failed every drain of the zone)."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    [before] = write(agent, 1)
    signed = agent.identity.codec.encode
    one = MemoryRecord(content="fits", scope=Scope(user_id="u1"), zone=ZONE)
    bad = [
        make_envelope(sender="writer", zone=ZONE, records=[one]).model_copy(
            update={"dense": ["abc"]}
        ),
        make_envelope(sender="writer", zone=ZONE, records=[hostile("short")], dense=[[0.1] * 10]),
        make_envelope(sender="writer", zone=ZONE, records=[hostile("own", vector=[0.1] * 10)]),
        make_envelope(
            sender="writer",
            zone=ZONE,
            records=[
                hostile("sparse", sparse=SparseVector.model_construct(indices=[1, 2], values=[0.5]))
            ],
            dense=[[0.1] * 384],
        ),
    ]
    bad_seqs = runtime.bus.publish(TOPIC, "writer", [(e.message_id, signed(e)) for e in bad])
    [after] = write(agent, 1)

    with structlog.testing.capture_logs() as logs:
        report, _ = drain(runtime)
    assert report.skipped == len(bad)
    skipped = [e for e in logs if e["event"] == "ingest_message_skipped"]
    assert sorted(e["seq"] for e in skipped) == bad_seqs
    # Vectors of another dimension are found before the store is asked: a store whose error
    # for them is no ValueError (Qdrant's server) skips them all the same.
    assert sum("is not 384-d" in e["reason"] for e in skipped) == 2
    assert sorted(r.id for r in stored(runtime)) == sorted([before, after])
    assert pending(runtime) == {before, after}
    assert_consumed(runtime)


@pytest.mark.parametrize("damage", ["epoch_with_a_space", "id_beyond_the_counter"])
def test_queue_keys_an_agent_damaged_do_not_block_the_zones_ingest(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime], damage: str
) -> None:
    """An agent's Redis user may write its zones' queue keys. An epoch with a space (kept in
    the workers' cursor, ``<epoch> <seq>``, it could not be parsed back) or an entry numbered
    far beyond the counter (the workers would move past it and trim: every later append would
    then fail; here the entry is trimmed away at once, so that only the stream's last id shows
    it) must not stop the zone's ingest: drains go on, and what is written next is
    stored."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    [first] = write(agent, 1)
    assert drain(runtime)[0].records == 1
    keys = f"{runtime.bus.namespace}:{TOPIC}"
    if damage == "epoch_with_a_space":
        runtime.client.set(f"{keys}:epoch", "a b")
    junk = {"d": "junk", "s": "writer"}
    runtime.client.xadd(f"{keys}:stream", junk, id="999999999-0", maxlen=0, approximate=False)
    drain(runtime)
    [second] = write(agent, 1)  # the script starts the damaged queue over
    drain(runtime)
    assert sorted(r.id for r in stored(runtime)) == sorted([first, second])
    assert_consumed(runtime)


def test_a_version_or_tombstone_of_another_user_leaves_the_record_alone(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Any agent that may write the zone can name any record id. A new version for user u2
    that claims to supersede u1's record, and u2's tombstone carrying the id of another u1
    record, are refused (logged): u1's records stay current and stored, and pending."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    first, second = write(agent, 2)
    drain(runtime)
    signed = agent.identity.codec.encode
    hijack = MemoryRecord(content="u2's version", scope=Scope(user_id="u2"), zone=ZONE)
    hijack = hijack.model_copy(update={"supersedes": first})
    erase = Tombstone(id=second, scope=Scope(user_id="u2"), level=Level.EPISODE, zone=ZONE)
    bad = [
        make_envelope(sender="writer", zone=ZONE, records=[hijack], dense=[[0.1] * 384]),
        make_envelope(sender="writer", zone=ZONE, tombstones=[erase]),
    ]
    runtime.bus.publish(TOPIC, "writer", [(e.message_id, signed(e)) for e in bad])
    with structlog.testing.capture_logs() as logs:
        drain(runtime)
    events = {e["event"] for e in logs}
    assert {"ingest_version_refused", "ingest_tombstone_refused"} <= events
    kept = {r.id: r for r in runtime.store.get(ZONE, [first, second])}
    assert set(kept) == {first, second}
    assert kept[first].superseded_by is None
    assert pending(runtime) == {first, second}


def test_a_record_sent_again_with_an_archived_id_leaves_the_archive_alone(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A record whose id is archived counts as stored: a copy under that id (sent again, or
    forged) neither comes back live nor replaces the archived one at the next archival."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    [archived] = write(agent, 1)
    drain(runtime)
    runtime.archive.archive(ZONE, [archived])
    original = runtime.store.archive_get(ZONE, [archived])[0]
    forged = MemoryRecord(content="forged", scope=Scope(user_id="u1"), zone=ZONE)
    forged = forged.model_copy(update={"id": archived, "importance": 0.0})
    envelope = make_envelope(sender="writer", zone=ZONE, records=[forged], dense=[[0.1] * 384])
    runtime.bus.publish(
        TOPIC, "writer", [(envelope.message_id, agent.identity.codec.encode(envelope))]
    )
    drain(runtime)
    assert runtime.store.get(ZONE, [archived]) == []
    assert runtime.store.archive_get(ZONE, [archived])[0].content == original.content


# -- concurrency --------------------------------------------------------------------------------


def test_two_drains_of_one_zone_at_once_store_everything_once(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Two drains started together: one finds the zone busy (or runs after the other), and
    every record is stored and queued once."""
    runtime = make_runtime(consolidation={"threshold": 1000}, ingest_batch=2)
    ids = write(agent, 12)
    start = threading.Barrier(2)
    reports: list[IngestReport] = []

    def run() -> None:
        start.wait()
        reports.append(drain(runtime)[0])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(reports) == 2
    assert sum(r.records for r in reports) == 12  # no message read twice
    assert sum(r.messages for r in reports) == 12
    assert all(r.records == 0 for r in reports if r.busy)
    assert sorted(r.id for r in stored(runtime)) == sorted(ids)
    assert pending(runtime) == set(ids)
    assert_consumed(runtime)


def test_a_worker_with_security_off_stops_at_sealed_messages_and_loses_nothing(
    agent: Agent,
    make_runtime: Callable[..., WorkerRuntime],
    worker_settings: Callable[..., HivememSettings],
) -> None:
    """A worker whose security is off, facing a secure agent's sealed queue, raises
    SecurityMismatch without moving its cursor or storing anything; a worker configured like
    the agents then stores every record."""
    ids = write(agent, 3)
    plain = WorkerRuntime(
        worker_settings().model_copy(update={"security": SecuritySettings(enabled=False)})
    )
    try:
        with pytest.raises(SecurityMismatch, match="HIVEMEM_SECURITY__ENABLED"):
            drain(plain)
        assert cursor(plain) is None
        assert plain.store.ids(ZONE, EVERYTHING) == []
    finally:
        plain.close()

    secure = make_runtime()
    drain(secure)

    assert sorted(r.id for r in stored(secure)) == sorted(ids)


def test_a_version_of_an_archived_record_marks_the_archived_copy(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A new version whose predecessor is archived marks the archived copy superseded: once
    restored, the old version is history, not a second current version beside the new one."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    old = agent.memory.add("Ada lives in Lisbon", user_id="u1", zone=ZONE)
    assert agent.flush()
    drain(runtime)
    runtime.archive.archive(ZONE, [old.id])
    new = agent.memory.supersede(old.id, "Ada lives in Berlin")
    assert agent.flush()
    drain(runtime)
    assert runtime.archive.restore(ZONE, [old.id]) == [old.id]
    [restored, current] = runtime.store.get(ZONE, [old.id, new.id])
    assert (restored.superseded_by, restored.is_current) == (new.id, False)
    assert current.is_current


def test_an_episode_archived_while_pending_waits_again_once_restored(
    agent: Agent, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """An episode archived before its consolidation ran is skipped by the run; restored, it is
    queued again (it stayed unconsolidated for good before)."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    ids = write(agent, 4)
    drain(runtime)
    runtime.archive.archive(ZONE, ids[:1])
    assert runtime.consolidation.consolidate(ZONE, "u1").episodes == 3
    assert pending(runtime) == set()
    runtime.archive.restore(ZONE, ids[:1])
    assert pending(runtime) == {ids[0]}
    assert runtime.consolidation.due(ZONE) == ["u1"]
    assert runtime.consolidation.consolidate(ZONE, "u1").episodes == 1
    [episode] = runtime.store.get(ZONE, ids[:1])
    assert episode.consolidated_into
