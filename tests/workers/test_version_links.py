"""Version links made by the ingest whatever the order and the crashes, on a real Redis and
zone store: a round stored but not linked is linked when read again; a version that came first
is noted, with every other version naming the same record, and the record is stored superseded
by the earliest that may act on it; notes of records deleted or lost do not stay."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.records import MemoryRecord, Scope, Tombstone
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.runtime import WorkerRuntime
from hivemem.workers.version_links import NOTE_TTL_S, VersionLinks
from tests.workers.test_ingest import ZONE, WorkerDied, drain, hostile, pending, stored


class CrashingLinks(VersionLinks):
    """Dies in its first ``link``: the round is stored, its versions not linked."""

    crashed = False

    def link(self, zone: Zone, records: Sequence[MemoryRecord]) -> list[MemoryRecord]:
        if not self.crashed:
            self.crashed = True
            raise WorkerDied
        return super().link(zone, records)


def crash_next_link(runtime: WorkerRuntime) -> None:
    runtime.ingest._versions = CrashingLinks(runtime.store, runtime.client, runtime.keys)


def notes(runtime: WorkerRuntime) -> dict[str, list[str]]:
    """The zone's awaiting notes: replaced id → successor ids."""
    raw = runtime.client.hgetall(runtime.keys.awaiting(ZONE))
    return {k.decode(): json.loads(v)["s"] for k, v in raw.items()}


def version_before_its_record(pool: SharedMemoryPool) -> tuple[Agent, MemoryRecord, MemoryRecord]:
    """Agent "slow" writes a record that stays in its outbox (it sends every 8 s); agent
    "quick" receives it and queues a new version of it at once. Returns slow, the record and
    the new version."""
    slow = pool.register_agent("slow", clearance=Zone.SECRET, sync_interval=8.0)
    quick = pool.register_agent("quick", clearance=Zone.SECRET)
    first = slow.memory.add("I live in Lyon", user_id="u1")
    quick.memory.receive([slow.memory.get(first.id, with_vectors=True)], senders=["slow"])
    second = quick.memory.supersede(first.id, "I live in Porto")
    assert quick.flush()
    return slow, first, second


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("agents")


def test_a_round_stored_but_not_linked_is_linked_when_read_again(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A worker dies after storing a new version and before linking it: the round is read
    again, and the old version is marked then and leaves the consolidation queue."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    first = agent.memory.add("I live in Lyon", user_id="u1")
    assert agent.flush()
    drain(runtime)
    second = agent.memory.supersede(first.id, "I live in Porto")
    assert agent.flush()
    crash_next_link(runtime)
    with pytest.raises(WorkerDied):
        drain(runtime)
    [old] = runtime.store.get(ZONE, [first.id])
    assert old.is_current  # what the crash left

    drain(runtime)

    [old, new] = runtime.store.get(ZONE, [first.id, second.id])
    assert (old.superseded_by, new.is_current) == (second.id, True)
    assert pending(runtime) == {second.id}


def test_a_version_stored_before_the_one_it_replaces_marks_it_when_it_comes(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """Another agent's new version reaches the workers first (the writer's outbox still holds
    the old one): the old one, when it comes, is stored superseded by it and does not wait
    for consolidation. Before, it was stored as a second current version."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    slow, first, second = version_before_its_record(pool)
    drain(runtime)
    assert [r.id for r in stored(runtime)] == [second.id]
    assert pending(runtime) == {second.id}

    assert slow.flush(timeout_s=30.0)  # it sends every 8 s
    report, _ = drain(runtime)

    assert report.records == 1
    [old, new] = runtime.store.get(ZONE, [first.id, second.id])
    assert (old.superseded_by, old.superseded_at) == (second.id, second.recorded_at)
    assert new.is_current
    assert pending(runtime) == {second.id}
    assert runtime.client.hlen(runtime.keys.awaiting(ZONE)) == 0


def test_a_version_that_came_first_is_noted_through_a_crash_and_beside_others(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """The new version comes first and the worker dies before noting it: read again, it is
    noted. Another agent's version of another user naming the same record is noted beside it
    (it does not replace the note), and the record, when it comes, is superseded by the one
    that may act on it."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    slow, first, second = version_before_its_record(pool)
    mallory = pool.register_agent("mallory", clearance=Zone.SECRET)
    crash_next_link(runtime)
    with pytest.raises(WorkerDied):
        drain(runtime)
    drain(runtime)
    assert notes(runtime) == {first.id: [second.id]}
    rogue = hostile("not your record", scope=Scope(user_id="u9"), supersedes=first.id)
    envelope = make_envelope(sender="mallory", zone=ZONE, records=[rogue])
    runtime.bus.publish(
        ingest_topic(ZONE, "mallory"),
        "mallory",
        [(envelope.message_id, mallory.identity.codec.encode(envelope))],
    )
    drain(runtime)
    assert notes(runtime) == {first.id: [second.id, rogue.id]}

    assert slow.flush(timeout_s=30.0)  # it sends every 8 s
    drain(runtime)

    [old] = runtime.store.get(ZONE, [first.id])
    assert old.superseded_by == second.id
    assert notes(runtime) == {}
    assert pending(runtime) == {second.id}


def test_notes_of_records_deleted_or_never_coming_do_not_stay(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A note goes when the record it waits for is deleted (its tombstone came), and a note
    older than its time to live is pruned (its record went elsewhere or never came)."""
    runtime = make_runtime(consolidation={"threshold": 1000})
    agent = pool.register_agent("writer", clearance=Zone.SECRET)
    gone, lost = str(uuid.uuid4()), str(uuid.uuid4())
    versions = [hostile("v2 of a deleted note", supersedes=gone), hostile("v2", supersedes=lost)]
    envelope = make_envelope(sender="writer", zone=ZONE, records=versions)
    topic = ingest_topic(ZONE, "writer")
    runtime.bus.publish(
        topic, "writer", [(envelope.message_id, agent.identity.codec.encode(envelope))]
    )
    drain(runtime)
    assert set(notes(runtime)) == {gone, lost}
    deleted = Tombstone(id=gone, scope=Scope(user_id="u1"), zone=ZONE, level=versions[0].level)
    envelope = make_envelope(sender="writer", zone=ZONE, tombstones=[deleted])
    runtime.bus.publish(
        topic, "writer", [(envelope.message_id, agent.identity.codec.encode(envelope))]
    )
    drain(runtime)
    assert set(notes(runtime)) == {lost}
    links = VersionLinks(runtime.store, runtime.client, runtime.keys)

    assert links.prune(ZONE) == 0
    assert links.prune(ZONE, now=time.time() + NOTE_TTL_S + 1) == 1

    assert notes(runtime) == {}
    assert sorted(r.id for r in stored(runtime)) == sorted(v.id for v in versions)
