"""ArchiveService beside other workers, on a real Redis and real Qdrant Edge zone shards:
archival and restore take each user's scope lock and read again inside it, so a forget that
runs during them waits (ScopeBusy, its task retries) and one that ran just before is seen; a
lifecycle pass leaves a busy user for the next pass; a redelivered restore keeps the live
version. Another worker's task runs at a chosen moment through :class:`Interleave`, which
wraps the real store (nothing is mocked)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Tier, Zone
from hivemem.pool.filters import And, Cond
from hivemem.pool.records import utc_now
from hivemem.pool.shared import SharedMemoryPool
from hivemem.workers.archive import ArchiveService
from hivemem.workers.consolidation import ScopeBusy, scope_locked
from hivemem.workers.forget import ForgetReceipt
from hivemem.workers.lifecycle import LifecycleService
from hivemem.workers.policies import DEFAULT_POLICIES, Action, Policy, When
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.interleave import Interleave

ZONE = Zone.PUBLIC


class WorkerKilled(BaseException):
    """The restore's worker dies (SIGKILL): nothing after it runs."""


def owned(user_id: str) -> And:
    return And(all=[Cond(field="scope.user_id", op="eq", value=user_id)])


def ignore(user_id: str) -> None:
    """An ``on_due`` for drains whose consolidations do not matter here."""


def archival(runtime: WorkerRuntime, store: Any = None) -> ArchiveService:
    """The runtime's archive service on ``store`` (default: the runtime's), with scope locks."""
    return ArchiveService(
        runtime.store if store is None else store,
        requeue=runtime._requeue,
        client=runtime.client,
        keys=runtime.keys,
        lock_ttl_s=runtime.settings.workers.lock_ttl_s,
    )


class Forget:
    """Worker A's ``hivemem.forget_user`` of a user: each call is one attempt of the task,
    which retries on ScopeBusy."""

    def __init__(self, runtime: WorkerRuntime, user_id: str) -> None:
        self._runtime = runtime
        self._user_id = user_id
        self.receipts: list[ForgetReceipt] = []
        self.busy: list[ScopeBusy] = []

    def __call__(self) -> None:
        try:
            receipt = self._runtime.forget.forget_user(
                self._user_id, list(Zone), on_due=lambda _zone, _user: None
            )
        except ScopeBusy as busy:
            self.busy.append(busy)
        else:
            self.receipts.append(receipt)


@pytest.fixture
def writer(make_pool: Callable[..., SharedMemoryPool]) -> Agent:
    return make_pool("writer").register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )


def stored(runtime: WorkerRuntime, writer: Agent, user_id: str, count: int) -> list[str]:
    """``count`` unimportant episodes of ``user_id``, in the zone store."""
    ids = [
        writer.memory.add(f"{user_id} secret {i}", user_id=user_id, zone=ZONE, importance=0.1).id
        for i in range(count)
    ]
    assert writer.flush()
    runtime.ingest.drain(ZONE, on_due=ignore)
    assert sorted(runtime.store.ids(ZONE, owned(user_id))) == sorted(ids)
    return ids


def forgotten(runtime: WorkerRuntime, ids: list[str]) -> bool:
    """Nothing of ``ids`` is live or archived: each is a tombstone."""
    return runtime.store.archive_ids(ZONE, owned("alice")) == [] and runtime.store.presence(
        ZONE, ids
    ) == dict.fromkeys(ids, True)


def test_a_forget_during_a_lifecycle_archive_waits_and_then_takes_the_archive_too(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A forget of alice started while the lifecycle pass writes her records into the archive
    finds her scope locked (its task retries); its retry forgets the archived copies too
    (before, the archive wrote the copies it had read over the forget and removed its
    tombstones: her records survived in the archive)."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 3)
    forget = Forget(runtime, "alice")
    other = Interleave(runtime.store, "archive_put", forget)

    lifecycle = LifecycleService(other, archival(runtime, other))  # type: ignore[arg-type]
    report = lifecycle.run([ZONE], DEFAULT_POLICIES, now=utc_now() + timedelta(days=40))
    assert sorted(report.ids("archive_unaccessed", ZONE)) == sorted(ids)
    assert (other.fired, len(forget.busy), forget.receipts) == (True, 1, [])
    assert sorted(runtime.store.archive_ids(ZONE, owned("alice"))) == sorted(ids)

    forget()  # the task's retry
    assert forget.receipts[0].zones[ZONE.value].archived_records == len(ids)
    assert forgotten(runtime, ids)


@pytest.mark.parametrize("action", [Action.REFRESH, Action.PROMOTE])
def test_a_forget_during_a_lifecycle_update_stays(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent, action: Action
) -> None:
    """A forget that lands between a lifecycle pass's selection and its tier or access change
    (which take no lock) is not undone: the change skips the records now deleted, and the
    tombstones stay (a change the engine applied to a tombstone would not revive it either:
    tombstones are told by their kind)."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 2)
    forget = Forget(runtime, "alice")
    other = Interleave(runtime.store, "update_fields", forget)
    tiers = [Tier.WORKING, Tier.SHORT_TERM] if action is Action.PROMOTE else None
    policy = Policy(name="change", when=When(older_than_days=0, tiers=tiers), action=action)

    report = LifecycleService(other, archival(runtime)).run(  # type: ignore[arg-type]
        [ZONE], [policy], now=utc_now() + timedelta(days=1)
    )
    assert sorted(report.ids("change", ZONE)) == sorted(ids)
    assert (other.fired, forget.busy, len(forget.receipts)) == (True, [], 1)
    assert forgotten(runtime, ids)


def test_an_archive_just_after_a_forget_archives_none_of_its_records(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A forget that runs between the archive's first read and its lock is seen: the archive
    reads again under the lock, finds tombstones, and moves nothing."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 3)
    forget = Forget(runtime, "alice")
    other = Interleave(runtime.store, "get", forget)

    assert archival(runtime, other).archive(ZONE, ids) == []
    assert (other.fired, forget.busy, len(forget.receipts)) == (True, [], 1)
    assert forgotten(runtime, ids)


def test_a_forget_during_a_restore_waits_and_then_takes_the_restored_records(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A forget of alice started while a restore writes her records back finds her scope
    locked (its task retries); its retry forgets the restored records (before, the restore
    wrote the copies it had read over the forget's tombstones: her records lived again)."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 3)
    archival(runtime).archive(ZONE, ids)
    forget = Forget(runtime, "alice")
    other = Interleave(runtime.store, "upsert", forget)

    assert sorted(archival(runtime, other).restore(ZONE, ids=ids)) == sorted(ids)
    assert (other.fired, len(forget.busy), forget.receipts) == (True, 1, [])

    forget()  # the task's retry
    assert forget.receipts[0].zones[ZONE.value].live_records == len(ids)
    assert forgotten(runtime, ids)
    assert runtime.store.inner.get(ZONE, ids, with_vectors=True) == []  # type: ignore[attr-defined]


def test_a_restore_just_after_a_forget_restores_none_of_its_records(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A forget that runs between the restore's first read and its lock is seen: the restore
    reads again under the lock, finds no archived copy, and brings nothing back."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 3)
    archival(runtime).archive(ZONE, ids)
    forget = Forget(runtime, "alice")
    other = Interleave(runtime.store, "archive_get", forget)

    assert archival(runtime, other).restore(ZONE, ids=ids) == []
    assert (other.fired, forget.busy, len(forget.receipts)) == (True, [], 1)
    assert forgotten(runtime, ids)


def test_a_redelivered_restore_keeps_the_newer_live_version(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """A restore that died between its upsert and its archive removal, redelivered after the
    agent superseded the record, only removes the archived copy (before, it wrote the old
    version over the live one: two current versions)."""
    runtime = make_runtime()
    old = writer.memory.add("alice prefers tea", user_id="alice", zone=ZONE).id
    assert writer.flush()
    runtime.ingest.drain(ZONE, on_due=ignore)
    runtime.consolidation.consolidate(ZONE, "alice")
    archival(runtime).archive(ZONE, [old])

    def die() -> None:
        raise WorkerKilled

    dying = Interleave(runtime.store, "archive_remove", die)
    with pytest.raises(WorkerKilled):
        archival(runtime, dying).restore(ZONE, ids=[old])
    new = writer.memory.supersede(old, "alice prefers coffee now").id
    assert writer.flush()
    runtime.ingest.drain(ZONE, on_due=ignore)
    assert runtime.store.get(ZONE, [old])[0].superseded_by == new

    assert archival(runtime).restore(ZONE, ids=[old]) == [old]  # Celery redelivers it
    both = runtime.store.get(ZONE, [old, new])
    assert [r.content for r in both if r.is_current] == ["alice prefers coffee now"]
    assert runtime.store.archive_ids(ZONE, owned("alice")) == []


def test_the_lifecycle_pass_leaves_a_busy_user_for_the_next_pass(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """While another worker holds alice's scope lock, the lifecycle pass archives bob's records
    and leaves alice's live (the pass does not fail); the next pass archives them."""
    runtime = make_runtime()
    alice = stored(runtime, writer, "alice", 2)
    bob = stored(runtime, writer, "bob", 2)
    lifecycle = LifecycleService(runtime.store, archival(runtime))
    later = utc_now() + timedelta(days=40)
    ttl_s = runtime.settings.workers.lock_ttl_s

    with scope_locked(runtime.client, runtime.keys, ZONE, "alice", ttl_s):
        lifecycle.run([ZONE], DEFAULT_POLICIES, now=later)
        assert sorted(runtime.store.ids(ZONE, owned("alice"))) == sorted(alice)
        assert sorted(runtime.store.archive_ids(ZONE, owned("bob"))) == sorted(bob)

    lifecycle.run([ZONE], DEFAULT_POLICIES, now=later)
    assert sorted(runtime.store.archive_ids(ZONE, owned("alice"))) == sorted(alice)


def test_a_restore_of_a_busy_user_raises_scope_busy(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """While another worker holds alice's scope lock, a restore of her records raises ScopeBusy
    (the task retries) and changes nothing; afterwards it restores them."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 2)
    archival(runtime).archive(ZONE, ids)
    ttl_s = runtime.settings.workers.lock_ttl_s

    with scope_locked(runtime.client, runtime.keys, ZONE, "alice", ttl_s):
        with pytest.raises(ScopeBusy):
            archival(runtime).restore(ZONE, ids=ids)
        assert sorted(runtime.store.archive_ids(ZONE, owned("alice"))) == sorted(ids)
        assert runtime.store.ids(ZONE, owned("alice")) == []

    assert sorted(archival(runtime).restore(ZONE, ids=ids)) == sorted(ids)


def test_the_workers_archive_service_takes_scope_locks(
    make_runtime: Callable[..., WorkerRuntime], writer: Agent
) -> None:
    """The runtime's archive service (the tasks' and the lifecycle pass's) takes the scope
    lock: a restore of a user another worker holds raises ScopeBusy."""
    runtime = make_runtime()
    ids = stored(runtime, writer, "alice", 1)
    runtime.archive.archive(ZONE, ids)
    ttl_s = runtime.settings.workers.lock_ttl_s

    busy = pytest.raises(ScopeBusy)
    with scope_locked(runtime.client, runtime.keys, ZONE, "alice", ttl_s), busy:
        runtime.archive.restore(ZONE, ids=ids)
    assert runtime.archive.restore(ZONE, ids=ids) == ids
