"""ForgetService in process, on a real Redis and real Qdrant Edge zone shards: a forgotten
user's records leave every zone's live collection and archive (still-queued ones included),
other users stay, every agent drops its copies through the published tombstones, the receipt
counts what went, a second pass finds nothing, the forget is audited, and a consolidation in
progress makes it wait."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit import AuditLog
from hivemem.workers.consolidation import ScopeBusy
from hivemem.workers.locks import held
from hivemem.workers.runtime import WorkerRuntime
from tests.waiting import wait_for


def owned(user_id: str) -> And:
    return And(all=[Cond(field="scope.user_id", op="eq", value=user_id)])


def write(agent: Agent, user_id: str, zone: Zone, count: int) -> list[str]:
    ids = [
        agent.memory.add(f"{user_id} note {i} in {zone.value}", user_id=user_id, zone=zone).id
        for i in range(count)
    ]
    assert agent.flush()
    return ids


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def no_due(zone: Zone, user_id: str) -> None:
    raise AssertionError(f"nobody should become due here ({zone}, {user_id})")


@pytest.fixture
def writer(make_pool: Callable[..., SharedMemoryPool]) -> Agent:
    return make_pool("writer").register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )


@pytest.fixture
def reader(make_pool: Callable[..., SharedMemoryPool]) -> Agent:
    agent = make_pool("reader").register_agent("reader", clearance=Zone.SECRET)
    assert agent.wait_connected()
    return agent


def test_a_user_leaves_every_zone_and_archive_and_others_stay(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """Live records in two zones and archived ones are all removed; bob's records stay."""
    runtime = make_runtime()
    internal = write(writer, "alice", Zone.INTERNAL, 5)
    write(writer, "alice", Zone.SECRET, 3)
    bob = write(writer, "bob", Zone.INTERNAL, 4)
    for zone in (Zone.INTERNAL, Zone.SECRET):
        runtime.ingest.drain(zone, on_due=ignore)
    runtime.archive.archive(Zone.INTERNAL, internal[:2])

    receipt = runtime.forget.forget_user("alice", list(Zone), on_due=no_due)

    assert receipt.zones[Zone.INTERNAL.value].live_records == 3
    assert receipt.zones[Zone.INTERNAL.value].archived_records == 2
    assert receipt.zones[Zone.SECRET.value].live_records == 3
    assert receipt.removed == 8
    for zone in Zone:
        assert runtime.store.ids(zone, owned("alice")) == []
        assert runtime.store.archive_ids(zone, owned("alice")) == []
    assert sorted(runtime.store.ids(Zone.INTERNAL, owned("bob"))) == sorted(bob)


def test_records_still_queued_for_ingest_are_forgotten_too(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """Episodes not yet drained are stored and tombstoned by the forget, and a later drain
    does not bring them back."""
    runtime = make_runtime()
    queued = write(writer, "alice", Zone.PUBLIC, 4)

    receipt = runtime.forget.forget_user("alice", [Zone.PUBLIC], on_due=no_due)
    runtime.ingest.drain(Zone.PUBLIC, on_due=ignore)

    assert receipt.zones[Zone.PUBLIC.value].live_records == len(queued)
    assert runtime.store.ids(Zone.PUBLIC, owned("alice")) == []
    assert all(runtime.store.presence(Zone.PUBLIC, queued).values())  # tombstones stay


def test_every_agent_drops_its_copies(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent, reader: Agent
) -> None:
    """The published tombstones reach an agent that received alice's records, and the writer
    itself; bob's copies stay."""
    runtime = make_runtime()
    write(writer, "alice", Zone.CONFIDENTIAL, 3)
    write(writer, "bob", Zone.CONFIDENTIAL, 2)
    assert wait_for(lambda: reader.memory.stats().current == 5)

    receipt = runtime.forget.forget_user("alice", list(Zone), on_due=no_due)

    assert receipt.zones[Zone.CONFIDENTIAL.value].tombstones_published == 3
    for agent in (reader, writer):
        assert wait_for(lambda a=agent: a.memory.stats(user_id="alice").current == 0)
        assert agent.memory.stats(user_id="bob").current == 2


def test_a_second_pass_finds_nothing_and_both_are_audited(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """Forgetting again removes nothing; each forget appends a `forgotten` entry with counts
    only, and the chain verifies."""
    runtime = make_runtime()
    write(writer, "alice", Zone.PUBLIC, 2)

    first = runtime.forget.forget_user("alice", list(Zone), on_due=no_due)
    second = runtime.forget.forget_user("alice", list(Zone), on_due=no_due)

    assert (first.removed, second.removed) == (2, 0)
    audit = AuditLog(runtime.client, namespace=runtime.settings.pool.namespace)
    forgotten = [e for e in audit.entries() if e.kind == "forgotten"]
    assert [(e.subject, e.details["live_records"]) for e in forgotten] == [
        ("alice", 2),
        ("alice", 0),
    ]
    assert "note" not in str([e.details for e in forgotten])
    assert audit.verify().ok


def test_a_consolidation_in_progress_makes_the_forget_wait(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """While a worker holds alice's consolidation lock in a zone, the forget raises ScopeBusy
    there (the task retries) and removes nothing of that zone."""
    runtime = make_runtime()
    ids = write(writer, "alice", Zone.PUBLIC, 2)
    runtime.ingest.drain(Zone.PUBLIC, on_due=ignore)
    key = runtime.keys.consolidate_lock(Zone.PUBLIC, "alice")

    with held(runtime.client, key, 30) as lock:
        assert lock.acquired
        with pytest.raises(ScopeBusy):
            runtime.forget.forget_user("alice", [Zone.PUBLIC], on_due=no_due)
        assert sorted(runtime.store.ids(Zone.PUBLIC, owned("alice"))) == sorted(ids)


def test_a_drain_in_progress_makes_the_forget_wait(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """While another worker drains the zone (it holds the zone's ingest lock), the user's queued
    writes could be stored after the forget: the forget raises ScopeBusy there (draining) and
    changes nothing; once the drain is over it takes the queued writes too."""
    runtime = make_runtime()
    ids = write(writer, "alice", Zone.PUBLIC, 2)

    with held(runtime.client, runtime.keys.ingest_lock(Zone.PUBLIC), 30) as lock:
        assert lock.acquired
        with pytest.raises(ScopeBusy, match="draining public") as busy:
            runtime.forget.forget_user("alice", [Zone.PUBLIC], on_due=no_due)
        assert busy.value.draining
        assert runtime.store.ids(Zone.PUBLIC, owned("alice")) == []
        assert runtime.store.tombstones(Zone.PUBLIC, owned("alice")) == []

    receipt = runtime.forget.forget_user("alice", [Zone.PUBLIC], on_due=no_due)
    assert receipt.zones[Zone.PUBLIC.value].live_records == len(ids)
    runtime.ingest.drain(Zone.PUBLIC, on_due=ignore)
    assert runtime.store.ids(Zone.PUBLIC, owned("alice")) == []
