"""HierarchicalMemory.receive: applying records other agents sent is idempotent, respects
deletions, and merges concurrent versions into the same chain whatever the arrival order."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.enums import Level
from hivemem.pool.errors import InvalidInput
from hivemem.pool.records import MemoryRecord, Scope, Tombstone

Memories = Callable[..., HierarchicalMemory]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _versions(origin: HierarchicalMemory) -> tuple[MemoryRecord, list[MemoryRecord]]:
    """A base record (with its vector) and three versions superseding it concurrently."""
    base = origin.add("the office opens at 9", user_id="u1", agent_id="a", level=Level.CATEGORY)
    base = origin.get(base.id, with_vectors=True)
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
        memory.receive([base], senders=["a"])
        for version in order:
            memory.receive([version], senders=[version.received_from or ""])
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
    assert [r.id for r in memory.receive([base], senders=["a"])] == [base.id]
    assert memory.receive([base, base], senders=["a", "a"]) == []
    assert memory.stats().total == 1


def test_a_deleted_record_is_never_resurrected(make_memory: Memories) -> None:
    """A tombstone replaces the record, and a late copy of it is ignored."""
    base, _ = _versions(make_memory("origin"))
    memory = make_memory("replica")
    memory.receive([base], senders=["a"])
    tombstone = Tombstone(id=base.id, scope=base.scope, level=base.level, zone=base.zone)
    memory.receive([], [tombstone], senders=[])
    assert memory.receive([base], senders=["a"]) == []
    assert memory.list_memories(user_id="u1") == []


def test_received_records_say_who_sent_them_and_land_in_short_term(make_memory: Memories) -> None:
    """The stored copy names its sender; it is not this agent's working set (important ones go
    to LONG_TERM, as local adds do)."""
    origin = make_memory("origin")
    plain = origin.add("plain fact", user_id="u1", importance=0.2)
    key = origin.add("key fact", user_id="u1", importance=0.9)
    memory = make_memory("replica")
    sent = origin.get(plain.id, with_vectors=True), origin.get(key.id, with_vectors=True)
    memory.receive(list(sent), senders=["ops", "lead"])
    copies = {r.content: r for r in memory.list_memories(user_id="u1")}
    assert (copies["plain fact"].received_from, copies["plain fact"].tier.value) == (
        "ops",
        "short_term",
    )
    assert (copies["key fact"].received_from, copies["key fact"].tier.value) == (
        "lead",
        "long_term",
    )


def test_a_version_or_tombstone_of_another_user_leaves_the_record_alone(
    make_memory: Memories,
) -> None:
    """Any agent that may write the zone can name any record id: a version for user u2 that
    claims to supersede u1's record, and u2's tombstone carrying u1's record id, are refused.
    u1's record stays, current; the version is kept as a chain of its own (it is u2's)."""
    base, _ = _versions(make_memory("origin"))
    memory = make_memory("replica")
    memory.receive([base], senders=["a"])
    hijack = MemoryRecord(
        content="u2's version",
        vector=base.vector,
        scope=Scope(user_id="u2"),
        level=Level.CATEGORY,
        supersedes=base.id,
    )
    erase = Tombstone(id=base.id, scope=Scope(user_id="u2"), level=Level.CATEGORY, zone=base.zone)
    memory.receive([hijack], [erase], senders=["mallory"])
    kept = memory.get(base.id)
    assert kept.is_current
    assert [r.id for r in memory.get_history(base.id)] == [base.id]
    assert memory.get(hijack.id).supersedes == base.id  # stored, but linked to nothing here
    same_user = Tombstone.of(base)
    memory.receive([], [same_user], senders=[])
    assert memory.list_memories(user_id="u1") == []


def test_bad_arguments_to_receive_store_nothing(make_memory: Memories) -> None:
    """One sender per record, one dense row per record when rows are given, senders that are
    agent ids, and vectors of the embedder's dimension (rows: finite floats): else InvalidInput,
    and nothing is stored."""
    base, _ = _versions(make_memory("origin"))
    memory = make_memory("replica")
    assert base.vector is not None
    dim = len(base.vector)
    short = base.model_copy(update={"vector": base.vector[:-1]})
    for call in (
        lambda: memory.receive([base], senders=[]),
        lambda: memory.receive([base], senders=["a"], dense=[None, None]),
        lambda: memory.receive([base], senders=["bad id; *"]),
        lambda: memory.receive([base], senders=["a"], dense=[np.full(dim, np.nan, "<f4")]),
        lambda: memory.receive([base], senders=["a"], dense=[np.full(dim, np.inf, "<f4")]),
        lambda: memory.receive([base], senders=["a"], dense=[np.zeros(dim + 1, "<f4")]),
        lambda: memory.receive([base], senders=["a"], dense=[np.zeros((1, dim), "<f4")]),
        lambda: memory.receive([base], senders=["a"], dense=[np.zeros(dim, "<i4")]),
        lambda: memory.receive([short], senders=["a"]),
        # The record was stored before the tombstones failed.
        lambda: memory.receive([base], 5, senders=["a"]),  # type: ignore[arg-type]
        lambda: memory.receive([base], [base], senders=["a"]),  # type: ignore[list-item]
        lambda: memory.receive(base, senders=["a"]),  # type: ignore[arg-type]
        lambda: memory.receive([base], senders="a"),
    ):
        with pytest.raises(InvalidInput):
            call()
    assert memory.list_memories(user_id="u1") == []
