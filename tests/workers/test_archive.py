"""ArchiveService against a real zone store (Qdrant Edge shards): moves, restores, purges,
idempotence and crash recovery."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from hivemem.pool.adapters.edge_zone_store import EdgeZoneStore
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import MemoryRecord, SparseVector, Tombstone
from hivemem.security.zone_store import SecureZoneStore
from hivemem.workers.archive import ArchiveService
from hivemem.workers.runtime import WorkerRuntime

DIM = 8
NOW = datetime(2026, 6, 1, tzinfo=UTC)
EVERYTHING = And(all=[])
ZONE = Zone.INTERNAL
_rng = np.random.default_rng(11)


def make(content: str = "a memory", **fields: Any) -> MemoryRecord:
    """A record of ZONE with a random unit float32 vector (exact after storage)."""
    row = _rng.standard_normal(DIM).astype(np.float32)
    row /= np.linalg.norm(row)
    fields.setdefault("scope", {"user_id": "u1"})
    fields.setdefault("vector", [float(v) for v in row])
    fields.setdefault("zone", ZONE)
    fields.setdefault("recorded_at", NOW - timedelta(days=40))
    fields.setdefault("valid_from", fields["recorded_at"])
    return MemoryRecord(content=content, **fields)


@pytest.fixture
def service(store: EdgeZoneStore) -> ArchiveService:
    return ArchiveService(store, batch=2)


def live_ids(store: EdgeZoneStore) -> set[str]:
    return set(store.ids(ZONE, EVERYTHING))


def archived_ids(store: EdgeZoneStore) -> set[str]:
    return set(store.archive_ids(ZONE, EVERYTHING))


def test_archive_moves_live_records(store: EdgeZoneStore, service: ArchiveService) -> None:
    """Archived records leave the live collection and enter the archive with tier ARCHIVE."""
    records = [make(f"memory {i}") for i in range(5)]
    store.upsert(ZONE, records)
    chosen = [r.id for r in records[:3]]
    assert service.archive(ZONE, chosen) == chosen
    assert live_ids(store) == {r.id for r in records[3:]}
    assert archived_ids(store) == set(chosen)
    assert {r.tier for r in store.archive_get(ZONE, chosen)} == {Tier.ARCHIVE}


def test_round_trip_keeps_content_and_vectors(
    store: EdgeZoneStore, service: ArchiveService
) -> None:
    """Archive then restore gives back the record exactly, tier and last access aside."""
    record = make(
        "ACME prefers email",
        sparse=SparseVector(indices=[3, 17, 900], values=[0.25, 1.5, 0.125]),
        level=Level.TRACE,
        tier=Tier.LONG_TERM,
        category=Category.PREFERENCE,
        importance=0.1,
        access_count=4,
        last_accessed_at=NOW - timedelta(days=35),
        tags=["billing"],
        entities=["acme"],
        metadata={"source": "chat", "flag": True, "n": [1, 2]},
    )
    store.upsert(ZONE, [record])
    before = store.get(ZONE, [record.id], with_vectors=True)[0]
    service.archive(ZONE, [record.id])
    assert service.restore(ZONE, [record.id], now=NOW) == [record.id]
    after = store.get(ZONE, [record.id], with_vectors=True)[0]
    assert after.vector == record.vector
    assert after.content == record.content
    assert (after.tier, after.last_accessed_at) == (Tier.SHORT_TERM, NOW)
    changed = {"tier", "last_accessed_at"}
    assert after.model_dump(exclude=changed) == before.model_dump(exclude=changed)
    assert archived_ids(store) == set()


def test_archive_is_idempotent(store: EdgeZoneStore, service: ArchiveService) -> None:
    """Archiving again (or archiving unknown ids) moves nothing and changes nothing."""
    records = [make(f"memory {i}") for i in range(3)]
    store.upsert(ZONE, records)
    ids = [r.id for r in records]
    service.archive(ZONE, ids)
    stored = store.archive_get(ZONE, ids)
    assert service.archive(ZONE, [*ids, "00000000-0000-4000-8000-00000000abcd"]) == []
    assert store.archive_get(ZONE, ids) == stored
    assert live_ids(store) == set()


def test_archive_rerun_resolves_a_crash_between_put_and_remove(
    store: EdgeZoneStore, service: ArchiveService
) -> None:
    """A record left both live and archived by a crash ends archived once after a re-run."""
    record = make()
    store.upsert(ZONE, [record])
    store.archive_put(ZONE, [record.model_copy(update={"tier": Tier.ARCHIVE})])  # then a crash
    assert service.archive(ZONE, [record.id]) == [record.id]
    assert (live_ids(store), archived_ids(store)) == (set(), {record.id})


def test_archive_skips_tombstones(store: EdgeZoneStore, service: ArchiveService) -> None:
    """A deleted record (a tombstone in the live collection) is never archived."""
    record = make()
    store.upsert(ZONE, [record])
    tombstone = Tombstone(id=record.id, scope=record.scope, level=record.level, zone=ZONE)
    store.put_tombstones(ZONE, [tombstone])
    assert service.archive(ZONE, [record.id]) == []
    assert archived_ids(store) == set()
    assert store.presence(ZONE, [record.id]) == {record.id: True}


def test_restore_by_filter(store: EdgeZoneStore, service: ArchiveService) -> None:
    """Restoring with a filter brings back exactly the archived records that match it."""
    traces = [make(f"trace {i}", level=Level.TRACE) for i in range(3)]
    episodes = [make(f"episode {i}") for i in range(4)]
    store.upsert(ZONE, [*traces, *episodes])
    service.archive(ZONE, [r.id for r in [*traces, *episodes]])
    where = And(all=[Cond(field="level", op="eq", value=Level.TRACE)])
    restored = service.restore(ZONE, where=where, now=NOW)
    assert set(restored) == {r.id for r in traces}
    assert live_ids(store) == {r.id for r in traces}
    assert archived_ids(store) == {r.id for r in episodes}


def test_restore_is_idempotent(store: EdgeZoneStore, service: ArchiveService) -> None:
    """Restoring again finds nothing to restore and leaves the live record as it is."""
    record = make()
    store.upsert(ZONE, [record])
    service.archive(ZONE, [record.id])
    service.restore(ZONE, [record.id], now=NOW)
    live = store.get(ZONE, [record.id], with_vectors=True)
    assert service.restore(ZONE, [record.id], now=NOW + timedelta(days=1)) == []
    assert service.restore(ZONE, where=EVERYTHING) == []
    assert store.get(ZONE, [record.id], with_vectors=True) == live


def test_restore_rerun_resolves_a_crash_between_upsert_and_remove(
    store: EdgeZoneStore, service: ArchiveService
) -> None:
    """A record left both archived and live by a crash ends live once after a re-run, as the
    crashed call wrote it (the re-run only removes the archived copy)."""
    record = make()
    store.upsert(ZONE, [record])
    service.archive(ZONE, [record.id])
    (archived,) = store.archive_get(ZONE, [record.id])
    written = archived.model_copy(update={"tier": Tier.SHORT_TERM, "last_accessed_at": NOW})
    store.upsert(ZONE, [written])  # then a crash
    later = NOW + timedelta(days=1)
    assert service.restore(ZONE, [record.id], now=later) == [record.id]
    assert (live_ids(store), archived_ids(store)) == ({record.id}, set())
    (live,) = store.get(ZONE, [record.id])
    assert (live.tier, live.last_accessed_at) == (Tier.SHORT_TERM, NOW)


def test_restore_never_resurrects_a_deleted_record(
    store: EdgeZoneStore, service: ArchiveService
) -> None:
    """An archived copy of a record whose id is a live tombstone is purged, not restored."""
    record = make()
    store.upsert(ZONE, [record])
    service.archive(ZONE, [record.id])
    archived = store.archive_get(ZONE, [record.id])
    tombstone = Tombstone(id=record.id, scope=record.scope, level=record.level, zone=ZONE)
    store.put_tombstones(ZONE, [tombstone])
    store.archive_put(ZONE, archived)  # a copy the deletion did not reach
    assert service.restore(ZONE, [record.id], now=NOW) == []
    assert archived_ids(store) == set()
    assert store.presence(ZONE, [record.id]) == {record.id: True}


@pytest.mark.parametrize("where", [None, EVERYTHING])
def test_restore_takes_ids_or_where(
    store: EdgeZoneStore, service: ArchiveService, where: And | None
) -> None:
    """Restore with both ids and a filter, or neither, raises InvalidInput and changes nothing."""
    record = make()
    store.upsert(ZONE, [record])
    service.archive(ZONE, [record.id])
    ids = [record.id] if where is not None else None
    with pytest.raises(InvalidInput):
        service.restore(ZONE, ids, where)
    assert archived_ids(store) == {record.id}


def test_purge_deletes_archived_records(store: EdgeZoneStore, service: ArchiveService) -> None:
    """Purge removes archived records for good, ignores other ids, and may run twice."""
    records = [make(f"memory {i}") for i in range(4)]
    store.upsert(ZONE, records)
    service.archive(ZONE, [r.id for r in records[:3]])
    gone = [records[0].id, records[1].id, records[3].id]
    service.purge(ZONE, gone)
    service.purge(ZONE, gone)
    assert archived_ids(store) == {records[2].id}
    assert live_ids(store) == {records[3].id}


def test_batch_must_be_positive(store: EdgeZoneStore) -> None:
    """A batch size below 1 raises InvalidInput."""
    with pytest.raises(InvalidInput):
        ArchiveService(store, batch=0)


def test_the_sealed_store_keeps_each_records_own_vector(
    make_runtime: Callable[..., WorkerRuntime],
) -> None:
    """In a batch where one record has no vector, the others keep theirs, live and archived
    (the sealed store used to drop every vector of such a batch, so a restored record came
    back unsearchable)."""
    store = make_runtime().store
    assert isinstance(store, SecureZoneStore)
    row = _rng.standard_normal(store.dim).astype(np.float32)
    row /= np.linalg.norm(row)
    kept = make("has a vector", vector=[float(v) for v in row])
    bare = make("has none", vector=None)
    store.upsert(ZONE, [kept, bare])
    live = {r.id: r.vector for r in store.get(ZONE, [kept.id, bare.id], with_vectors=True)}
    store.archive_put(ZONE, [kept, bare])
    archived = {r.id: r.vector for r in store.archive_get(ZONE, [kept.id, bare.id])}
    for found in (live, archived):
        assert found[bare.id] is None
        assert found[kept.id] is not None
        assert np.allclose(found[kept.id], row, atol=1e-5)
