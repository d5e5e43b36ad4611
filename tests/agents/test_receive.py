"""HierarchicalMemory.receive: applying records other agents sent is idempotent, respects
deletions, and merges concurrent versions into the same chain whatever the arrival order."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Level
from hivemem.pool.records import MemoryRecord, Scope, Tombstone

Memories = Callable[..., HierarchicalMemory]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _versions(origin: HierarchicalMemory) -> tuple[MemoryRecord, list[MemoryRecord]]:
    """A base record (with its vector) and three versions superseding it concurrently."""
    base = origin.add("the office opens at 9", user_id="u1", agent_id="a", level=Level.CATEGORY)
    base = origin.get(base.id, with_vectors=True).model_copy(update={"received_from": "a"})
    versions = [
        MemoryRecord(
            content=f"the office opens at {hour}",
            vector=base.vector,
            scope=Scope(user_id="u1", agent_id=agent),
            level=Level.CATEGORY,
            supersedes=base.id,
            recorded_at=T0 + timedelta(seconds=offset),
            valid_from=T0 + timedelta(seconds=offset),
            received_from=agent,
        )
        for hour, agent, offset in [(8, "b", 5), (10, "c", 2), (11, "d", 5)]
    ]
    return base, versions


def test_concurrent_versions_converge_whatever_the_arrival_order(make_memory: Memories) -> None:
    """Every permutation of arrivals ends with one chain, ordered by (recorded_at, id)."""
    base, versions = _versions(make_memory("origin"))
    expected = [base.id, *[v.id for v in sorted(versions, key=lambda v: (v.recorded_at, v.id))]]
    outcomes = set()
    for n, order in enumerate(itertools.permutations(versions)):
        memory = make_memory(f"replica-{n}")
        memory.receive([base])
        for version in order:
            memory.receive([version])
        history = memory.get_history(base.id)
        assert [r.id for r in history] == expected
        assert [r.id for r in history if r.is_current] == [expected[-1]]
        outcomes.add(tuple((r.id, r.superseded_by, r.superseded_at, r.valid_until)
                           for r in history))  # fmt: skip
    assert len(outcomes) == 1


def test_receiving_twice_stores_once(make_memory: Memories) -> None:
    """A record applied again is skipped and reported as not new."""
    base, _ = _versions(make_memory("origin"))
    memory = make_memory("replica")
    assert [r.id for r in memory.receive([base])] == [base.id]
    assert memory.receive([base, base]) == []
    assert memory.stats().total == 1


def test_a_deleted_record_is_never_resurrected(make_memory: Memories) -> None:
    """A tombstone replaces the record, and a late copy of it is ignored."""
    base, _ = _versions(make_memory("origin"))
    memory = make_memory("replica")
    memory.receive([base])
    tombstone = Tombstone(id=base.id, scope=base.scope, level=base.level, zone=base.zone)
    memory.receive([], [tombstone])
    assert memory.receive([base]) == []
    assert memory.list_memories(user_id="u1") == []
