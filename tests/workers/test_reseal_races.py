"""The re-seal after a key rotation beside the ingest, on a real Redis and real Qdrant Edge zone
shards: a delete or a new version the ingest stores while the re-seal holds what it read of the
same records stays in effect (the re-seal writes the sealed fields of the records still as it
read them, nothing else). The ingest runs between the re-seal's read and its write through
:class:`~tests.workers.interleave.Interleave`, as a second worker on a Qdrant server could."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.zone_store import SecureZoneStore
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.interleave import Interleave

ZONE = Zone.INTERNAL


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def owned(user_id: str) -> And:
    return And(all=[Cond(field="scope.user_id", op="eq", value=user_id)])


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("rotating")


@pytest.fixture
def writer(pool: SharedMemoryPool) -> Agent:
    return pool.register_agent("writer", clearance=Zone.CONFIDENTIAL, share_levels=[Level.EPISODE])


@pytest.fixture
def runtime(make_runtime: Callable[..., WorkerRuntime]) -> WorkerRuntime:
    made = make_runtime()
    assert isinstance(made.store, SecureZoneStore)
    return made


def stored(runtime: WorkerRuntime, writer: Agent, texts: list[str]) -> list[str]:
    """Alice's records ``texts``, in the zone store; returns their ids."""
    ids = [writer.memory.add(text, user_id="alice", zone=ZONE).id for text in texts]
    assert writer.flush()
    runtime.ingest.drain(ZONE, on_due=ignore)
    return ids


def reseal_with(runtime: WorkerRuntime, method: str, hook: Callable[[], None]) -> Interleave:
    """Re-seal the zone with ``hook`` run right after the re-seal's first ``method`` call on
    the zone store under the sealing layer (its read of the records it re-seals)."""
    store = runtime.store
    assert isinstance(store, SecureZoneStore)
    inner = store.inner
    between = Interleave(inner, method, hook, after=True)
    store.inner = between  # type: ignore[assignment]
    try:
        runtime.reseal.reseal(ZONE, on_due=ignore)
    finally:
        store.inner = inner
    return between


def test_a_delete_stored_during_a_reseal_stays(
    pool: SharedMemoryPool, writer: Agent, runtime: WorkerRuntime
) -> None:
    """A record the ingest deletes while the re-seal holds the copy it read stays deleted
    (before, the re-seal wrote that copy back over the tombstone: the record lived again)."""
    [gone, kept] = stored(runtime, writer, ["alice's old address", "alice likes tea"])
    pool.rotate_key(ZONE)

    def delete() -> None:
        writer.memory.delete(gone)
        assert writer.flush()
        runtime.ingest.drain(ZONE, on_due=ignore)

    assert reseal_with(runtime, "get", delete).fired
    assert runtime.store.presence(ZONE, [gone, kept]) == {gone: True, kept: False}
    assert [r.content for r in runtime.store.get(ZONE, [kept])] == ["alice likes tea"]


def test_a_new_version_stored_during_a_reseal_stays_the_only_current_one(
    pool: SharedMemoryPool, writer: Agent, runtime: WorkerRuntime
) -> None:
    """A new version the ingest stores while the re-seal holds the copy it read of the old one
    leaves the old one superseded, now sealed under the new key (before, the re-seal wrote the
    copy back without its link: two current versions)."""
    [old] = stored(runtime, writer, ["alice lives in Lyon"])
    key = pool.rotate_key(ZONE)
    new: list[str] = []

    def supersede() -> None:
        new.append(writer.memory.supersede(old, "alice lives in Porto").id)
        assert writer.flush()
        runtime.ingest.drain(ZONE, on_due=ignore)

    assert reseal_with(runtime, "get", supersede).fired
    both = runtime.store.get(ZONE, [old, *new])
    assert [r.content for r in both if r.is_current] == ["alice lives in Porto"]
    assert both[0].superseded_by == new[0]
    store = runtime.store
    assert isinstance(store, SecureZoneStore)
    assert store.inner.get(ZONE, [old])[0].content.startswith("hm:sealed:")
    assert store.reseal(ZONE, owned("alice")) == 0  # every record under the new key
    assert key.active


def test_a_new_version_of_an_archived_record_during_a_reseal_stays_linked(
    pool: SharedMemoryPool, writer: Agent, runtime: WorkerRuntime
) -> None:
    """An archived record the ingest marks superseded while the re-seal holds the archived
    copy it read stays superseded, restored or not (before, the re-seal wrote the copy back
    without its link: restored, it was a second current version)."""
    [old] = stored(runtime, writer, ["alice works at Acme"])
    runtime.archive.archive(ZONE, [old])
    pool.rotate_key(ZONE)
    new: list[str] = []

    def supersede() -> None:
        new.append(writer.memory.supersede(old, "alice works at Initech").id)
        assert writer.flush()
        runtime.ingest.drain(ZONE, on_due=ignore)

    assert reseal_with(runtime, "archive_get", supersede).fired
    assert runtime.store.archive_get(ZONE, [old])[0].superseded_by == new[0]
    assert runtime.archive.restore(ZONE, ids=[old]) == [old]
    both = runtime.store.get(ZONE, [old, *new])
    assert [r.content for r in both if r.is_current] == ["alice works at Initech"]


def test_a_delete_of_an_archived_record_during_a_reseal_stays(
    pool: SharedMemoryPool, writer: Agent, runtime: WorkerRuntime
) -> None:
    """An archived record the ingest deletes while the re-seal holds the archived copy it read
    stays deleted: no archived copy comes back beside its tombstone."""
    [gone] = stored(runtime, writer, ["alice's card number"])
    runtime.archive.archive(ZONE, [gone])
    pool.rotate_key(ZONE)

    def delete() -> None:
        writer.memory.delete(gone)
        assert writer.flush()
        runtime.ingest.drain(ZONE, on_due=ignore)

    assert reseal_with(runtime, "archive_get", delete).fired
    assert runtime.store.presence(ZONE, [gone]) == {gone: True}
    assert runtime.store.archive_ids(ZONE, owned("alice")) == []
