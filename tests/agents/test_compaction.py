"""Compaction of a memory's index: a large batch compacts it, and forgetting on a compacted
memory still takes the forgotten records' vectors off the disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hivemem.agents.memory import HierarchicalMemory
from hivemem.pool.settings import HivememSettings
from tests.disk import vector_on_disk

BATCH = 800  # past the ~650 records at which a segment is compacted


def with_compact_after(settings: HivememSettings, records: int) -> HivememSettings:
    return settings.model_copy(
        update={"memory": settings.memory.model_copy(update={"compact_after": records})}
    )


def batch(users: int) -> list[dict[str, object]]:
    return [
        {"content": f"note {i} about topic {i % 17}", "scope": {"user_id": f"user-{i % users}"}}
        for i in range(BATCH)
    ]


def test_a_batch_of_compact_after_records_compacts_the_index(
    make_memory: Callable[..., HierarchicalMemory], settings: HivememSettings
) -> None:
    """add_many of memory.compact_after records or more leaves nothing to compact; with
    compaction off (0) the same batch leaves the index to compact."""
    compacting = make_memory("compacting", settings=with_compact_after(settings, BATCH))
    compacting.add_many(batch(users=2))
    assert compacting.compact() is False

    plain = make_memory("plain", settings=with_compact_after(settings, 0))
    plain.add_many(batch(users=2))
    assert plain.compact() is True
    assert plain.compact() is False


def test_forgetting_on_a_compacted_memory_erases_the_vectors(
    make_memory: Callable[..., HierarchicalMemory], settings: HivememSettings, tmp_path: Path
) -> None:
    """The forgotten user's dense vectors are in the compacted segment before the forget and
    on no file after it; the other user's stay."""
    memory = make_memory("agent", settings=with_compact_after(settings, BATCH))
    added = memory.add_many(batch(users=2))
    forgotten = [memory.get(r.id, with_vectors=True).vector for r in added[:6:2]]
    kept = memory.get(added[1].id, with_vectors=True).vector
    assert all(vector_on_disk(tmp_path / "agent", v) for v in forgotten)

    assert memory.forget(user_id="user-0") == BATCH // 2
    assert not any(vector_on_disk(tmp_path / "agent", v) for v in forgotten)
    assert vector_on_disk(tmp_path / "agent", kept)
