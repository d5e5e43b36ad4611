"""Compaction of an EdgeIndex (hivemem.pool.adapters.edge_index): same answers, faster segments,
and removed records' bytes erased from the immutable segments once purged.

The index here has the real 384 dimensions, so that a few hundred records pass the size at which
compaction turns the appendable segment into an immutable one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from hivemem.pool.adapters.edge_index import EdgeIndex
from hivemem.pool.enums import Category
from hivemem.pool.filters import And, Cond
from hivemem.pool.ports import NearestRequest
from hivemem.pool.records import MemoryRecord, SparseVector, Tombstone
from tests.disk import vector_on_disk

DIM = 384
COUNT = 900  # 900 x 1.5 KB of vectors: past the 1,000 KB at which a segment is compacted
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def corpus(seed: int) -> tuple[list[MemoryRecord], np.ndarray]:
    """COUNT records of three users and four categories, with random unit vectors and sparse
    terms drawn from a vocabulary of 50."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((COUNT, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    categories = list(Category)[:4]
    records = []
    for i in range(COUNT):
        terms = sorted({int(t) for t in rng.integers(0, 50, size=4)})
        records.append(
            MemoryRecord(
                content=f"memory {i}",
                scope={"user_id": f"u{i % 3}"},
                category=categories[i % 4],
                importance=float(rng.random()),
                sparse=SparseVector(indices=terms, values=[1.0] * len(terms)),
                recorded_at=T0,
                valid_from=T0,
            )
        )
    return records, dense


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[EdgeIndex, list[MemoryRecord], np.ndarray]]:
    index = EdgeIndex(tmp_path / "index", dim=DIM)
    records, dense = corpus(seed=5)
    index.upsert(records, dense)
    yield index, records, dense
    index.close()


LIMIT = 20


def lookups(index: EdgeIndex, dense: np.ndarray) -> list[list[tuple[float, str]]]:
    """Filtered dense and sparse lookups of several users, as (rounded score, id) lists. The
    engine orders equal scores by its internal layout, which compaction changes: each list is
    ordered by score then id, and a full list leaves out the ids tied with its last score (which
    of them made the cut is the layout's choice)."""
    answers = []
    for i in range(6):
        where = And(
            all=[
                Cond(field="scope.user_id", op="eq", value=f"u{i % 3}"),
                Cond(field="category", op="in", value=["fact", "event"]),
                Cond(field="importance", op="gte", value=0.3),
                Cond(field="superseded_at", op="eq", value=None),
            ]
        )
        terms = SparseVector(indices=[i, i + 7, i + 20], values=[1.0, 1.0, 1.0])
        found = index.nearest(
            [
                NearestRequest("dense", dense[i * 11], where, LIMIT),
                NearestRequest("sparse", terms, where, LIMIT),
            ]
        )
        for hits in found:
            ranked = sorted((-round(hit.score, 4), hit.id) for hit in hits)
            if len(ranked) == LIMIT:
                ranked = [(score, i) for score, i in ranked if score != ranked[-1][0]]
            answers.append([(-score, i) for score, i in ranked])
    return answers


def test_compaction_changes_no_answer(
    filled: tuple[EdgeIndex, list[MemoryRecord], np.ndarray],
) -> None:
    """Lookups, counts and reads give the same answers before and after compaction, which
    happens once: a second compaction finds nothing to do."""
    index, records, dense = filled
    everything = And(all=[])
    before = (lookups(index, dense), index.count(everything), index.get([records[3].id]))
    assert any(before[0]), "the lookups must find something for the comparison to mean anything"

    assert index.compact() is True
    assert index.compact() is False
    assert (lookups(index, dense), index.count(everything), index.get([records[3].id])) == before


def test_writes_after_compaction_are_read_back(
    filled: tuple[EdgeIndex, list[MemoryRecord], np.ndarray], tmp_path: Path
) -> None:
    """Field updates, new records and tombstones on a compacted index read back, also after a
    reopen."""
    index, records, _ = filled
    index.compact()
    index.update_fields({records[0].id: {"importance": 0.99, "access_count": 4}})
    extra, extra_dense = corpus(seed=9)
    index.upsert(extra[:5], extra_dense[:5])
    index.put_tombstones([Tombstone.of(r, T0) for r in records[1:3]])
    index.purge()
    index.close()

    reopened = EdgeIndex(tmp_path / "index", dim=DIM)
    try:
        (first,) = reopened.get([records[0].id])
        assert (first.importance, first.access_count) == (0.99, 4)
        assert [r.id for r in reopened.get([r.id for r in extra[:5]])] == [r.id for r in extra[:5]]
        assert reopened.get([r.id for r in records[1:3]]) == []
        assert reopened.count(And(all=[])) == COUNT - 2 + 5
    finally:
        reopened.close()


def test_purge_erases_removed_vectors_from_compacted_segments(
    filled: tuple[EdgeIndex, list[MemoryRecord], np.ndarray], tmp_path: Path
) -> None:
    """In an immutable segment a replaced or deleted point keeps its bytes until the segment is
    rewritten: after a tombstone or a removal the vector is still on disk, and purge erases
    it. Closing the index purges too."""
    index, records, dense = filled
    index.compact()
    path = tmp_path / "index"
    assert vector_on_disk(path, dense[0])
    assert vector_on_disk(path, dense[1])

    doomed = records[0]
    index.put_tombstones([Tombstone.of(doomed, T0)])
    index.remove([records[1].id])
    assert vector_on_disk(path, dense[0])
    assert vector_on_disk(path, dense[1])
    index.purge()
    assert not vector_on_disk(path, dense[0])
    assert not vector_on_disk(path, dense[1])
    assert vector_on_disk(path, dense[2])  # a record kept keeps its vector

    index.remove([records[2].id])
    index.close()
    assert not vector_on_disk(path, dense[2])
