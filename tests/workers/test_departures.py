"""What a deregistered agent queued for the workers, on a real Redis with real pools and zone
stores: stored whatever happens to its id afterwards (a drain under way, a registration again
with another clearance or key, another deregistration), each departure judged by the agent's
entry of then; nothing added afterwards is taken; discarded on demand; nothing left in Redis
once read through."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from hivemem.pool.adapters.redis_bus import ingest_topic
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.errors import QueuesBusy, RegistrationConflict
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.workers.locks import held
from hivemem.workers.runtime import WorkerRuntime
from tests.workers.test_ingest import ZONE, hostile, stored
from tests.workers.test_ingest_queues import ignore


@pytest.fixture
def runtime(make_runtime: Callable[..., WorkerRuntime]) -> WorkerRuntime:
    return make_runtime(consolidation={"threshold": 1000})


@pytest.fixture
def pool(make_pool: Callable[..., SharedMemoryPool]) -> SharedMemoryPool:
    return make_pool("agents")


def queue(pool: SharedMemoryPool, agent_id: str, *notes: str, zone: Zone = ZONE) -> list[str]:
    """Register ``agent_id`` (cleared for every zone), have it queue ``notes`` for the
    workers; returns their ids."""
    agent = pool.register_agent(agent_id, clearance=Zone.SECRET)
    ids = [agent.memory.add(note, user_id="u1", zone=zone).id for note in notes]
    assert agent.flush()
    return ids


def refused(runtime: WorkerRuntime) -> list[tuple[str, str, object]]:
    """The audited refusals of the workers: (queue, reason, seq)."""
    return [
        (e.subject, str(e.details["reason"]), e.details["seq"])
        for e in runtime.audit.entries()
        if e.kind == AuditEvent.REJECTED_MESSAGE
    ]


def drain_all(runtime: WorkerRuntime) -> None:
    for zone in Zone:
        runtime.ingest.drain(zone, on_due=ignore)


def test_what_an_agent_queued_is_stored_and_what_comes_after_refused(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """Its acknowledged writes still queued when it is deregistered reach the store. A message
    signed with its key and queued afterwards (by whoever may still write there) is refused as
    a revoked sender's, and audited; once read through, nothing of the agent is left in Redis
    but the publishing script's expiring marks."""
    queued = queue(pool, "leaving", "note one", "note two", "note three")
    late = make_envelope(sender="leaving", zone=ZONE, records=[hostile("after it left")])
    forged = pool.agent("leaving").identity.codec.encode(late)
    pool.deregister("leaving")
    topic = ingest_topic(ZONE, "leaving")
    runtime.bus.publish(topic, "leaving", [(late.message_id, forged)])

    drain_all(runtime)

    assert sorted(r.id for r in stored(runtime)) == sorted(queued)
    assert refused(runtime) == [(topic, "revoked", 1)]
    owners = runtime.registry.queue_owners()
    assert (owners.departed, dict(owners.departures)) == ([], {})
    left = runtime.client.keys("*leaving*")
    assert all(runtime.client.ttl(key) > 0 for key in left)


def test_a_deregistration_during_a_drain_loses_nothing(
    make_pool: Callable[..., SharedMemoryPool], make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """A drain that started before the deregistration and reads on past the registry cache
    (one message per round here) stores every write (the queue moved under it: the rest is
    read from the departure)."""
    runtime = make_runtime(consolidation={"threshold": 1000}, ingest_batch=1)
    pool = make_pool("agents")
    queued = queue(pool, "leaving", "note one", "note two", "note three")
    service = runtime.ingest
    first_round = service._round
    rounds: list[str] = []

    def deregistered_after_the_first_round(*args: object) -> bool:
        done = first_round(*args)  # type: ignore[arg-type]
        if not rounds:
            make_pool("admin").deregister("leaving")
            time.sleep(runtime.settings.security.registry_cache_s + 0.2)
        rounds.append(str(args[1]))
        return done

    service._round = deregistered_after_the_first_round  # type: ignore[method-assign]
    service.drain(ZONE, on_due=ignore)
    service._round = first_round  # type: ignore[method-assign]
    service.drain(ZONE, on_due=ignore)

    assert sorted(r.id for r in stored(runtime)) == sorted(queued)
    assert refused(runtime) == []


def drained_with(runtime: WorkerRuntime, meanwhile: Callable[[], object]) -> None:
    """One drain of the zone, with ``meanwhile()`` run once as its first round opens its
    messages (a real method wrapped, so that another real pool acts at that moment)."""
    messages = runtime.ingest._messages
    first_open = messages.opened
    done: list[bool] = []

    def opened(*args: object, **kwargs: object) -> object:
        if not done:
            meanwhile()
            done.append(True)
        return first_open(*args, **kwargs)  # type: ignore[arg-type]

    messages.opened = opened  # type: ignore[method-assign]
    try:
        runtime.ingest.drain(ZONE, on_due=ignore)
    finally:
        messages.opened = first_open  # type: ignore[method-assign]


def test_a_deregistration_mid_round_leaves_no_false_refusal(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """The deregistration lands while a round is being opened, and the workers' cached entry
    expires before the rest of it: those messages fail as a revoked sender's, but the queue
    moved, so the round is abandoned (no cursor, no audit) and they are stored from the
    departure."""
    queued = queue(pool, "leaving", "note one", "note two", "note three")

    def deregistered() -> None:
        pool.deregister("leaving")
        time.sleep(runtime.settings.security.registry_cache_s + 0.2)

    drained_with(runtime, deregistered)
    runtime.ingest.drain(ZONE, on_due=ignore)

    assert sorted(r.id for r in stored(runtime)) == sorted(queued)
    assert refused(runtime) == []


def test_a_queue_begun_again_mid_round_keeps_its_new_entries(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """While a round is opened, the agent is deregistered (its queue moves to a departure),
    registered again and queues a new write, which starts its queue over at number 1. The
    round's commit, with its trim, happens only in the epoch it read: the round is abandoned,
    the new write is not trimmed with the old ones, and every write is stored."""
    queued = queue(pool, "back", "note one", "note two", "note three")
    again: list[str] = []

    def begun_again() -> None:
        pool.deregister("back")
        again.extend(queue(pool, "back", "written after coming back"))

    drained_with(runtime, begun_again)
    drain_all(runtime)

    assert sorted(r.id for r in stored(runtime)) == sorted([*queued, *again])
    assert refused(runtime) == []


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-key", "another-key"])
def test_each_registration_is_judged_by_its_own_entry(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime, *, elsewhere: bool
) -> None:
    """Registered, deregistered, registered again with a lower clearance (from the same data
    directory, or another one: another key), deregistered again, all before the workers
    drained: what each registration queued is stored, each checked against its own entry."""
    first = make_pool("host1")
    before = first.register_agent("back", clearance=Zone.SECRET)
    secret = before.memory.add("queued while cleared for secret", user_id="u1", zone=Zone.SECRET)
    assert before.flush()
    first.deregister("back")
    second = make_pool("host2") if elsewhere else first
    again = second.register_agent("back", clearance=Zone.PUBLIC)
    public = again.memory.add("queued once back", user_id="u1")
    assert again.flush()
    second.deregister("back")

    drain_all(runtime)

    assert [r.id for r in stored(runtime, Zone.SECRET)] == [secret.id]
    assert [r.id for r in stored(runtime)] == [public.id]
    assert refused(runtime) == []
    assert runtime.registry.departures.all() == {}


def test_discarding_deletes_what_was_queued_at_or_after_the_deregistration(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """``keep_queued=False`` (an agent whose key or host is compromised) deletes what it
    queued; ``discard_queued`` does the same later, for an agent deregistered the default way
    and found compromised since. Nothing is stored; both are audited."""
    queue(pool, "suspect", "written by whoever held its key")
    pool.deregister("suspect", keep_queued=False)
    queue(pool, "later", "queued before its deregistration")
    pool.deregister("later")

    assert pool.discard_queued("later") == 1
    assert pool.discard_queued("later") == 0
    drain_all(runtime)

    assert stored(runtime) == []
    assert refused(runtime) == []
    entries = list(runtime.audit.entries())
    kept = [e.details["kept_queued"] for e in entries if e.kind == AuditEvent.DEREGISTERED]
    assert kept == [False, True]
    discarded = [(e.subject, e.details["departures"]) for e in entries
                 if e.kind == AuditEvent.QUEUED_DISCARDED]  # fmt: skip
    assert discarded == [("later", 1), ("later", 0)]


def test_the_workers_forget_departures_only_once_read_through(
    pool: SharedMemoryPool, make_runtime: Callable[..., WorkerRuntime]
) -> None:
    """With room for one message per drain, the departure stays until its last message is
    stored."""
    runtime = make_runtime(consolidation={"threshold": 1000}, ingest_batch=1)
    queue(pool, "slow", "one", "two")
    pool.deregister("slow")

    first = runtime.ingest.drain(ZONE, max_messages=1, on_due=ignore)
    assert first.messages == 1
    assert len(runtime.registry.departures.all()) == 1
    runtime.ingest.drain(ZONE, on_due=ignore)

    assert len(stored(runtime)) == 2
    assert runtime.registry.departures.all() == {}


@pytest.mark.parametrize("how", ["register", "attach"])
def test_an_agent_attached_with_another_key_keeps_what_it_queued_under_the_old(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime, how: str
) -> None:
    """An agent that moves to another directory (another key) while its writes wait, whether
    registered or attached there: the old key's registration ends as a deregistration that
    keeps them, so they are checked against the key that signed them, and stored."""
    first = make_pool("host1")
    before = first.register_agent("mover", clearance=Zone.SECRET)
    queued = before.memory.add("queued from host 1", user_id="u1")
    assert before.flush()
    first.close()
    host2 = make_pool("host2")
    moved = (
        host2.register_agent("mover", clearance=Zone.SECRET)
        if how == "register"
        else (host2.attach("mover"))
    )
    later = moved.memory.add("queued from host 2", user_id="u1")
    assert moved.flush()

    drain_all(runtime)

    assert sorted(r.id for r in stored(runtime)) == sorted([queued.id, later.id])
    assert refused(runtime) == []
    entries = list(runtime.audit.entries())
    assert [e.details.get("reason") for e in entries if e.kind == AuditEvent.DEREGISTERED] == [
        "new_key"
    ]


def test_another_key_with_another_clearance_is_a_conflict(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime
) -> None:
    """Registering an agent from another directory (another key) at another clearance is the
    RegistrationConflict it is from the same directory: nothing changes, nothing departs."""
    first = make_pool("host1")
    info = first.register_agent("fixed", clearance=Zone.PUBLIC).info
    with pytest.raises(RegistrationConflict):
        make_pool("host2").register_agent("fixed", clearance=Zone.SECRET)
    assert runtime.registry.get("fixed") == info
    assert runtime.registry.queue_owners().departed == []


def test_a_new_keys_first_writes_pass_an_entry_the_workers_cached(
    make_pool: Callable[..., SharedMemoryPool], worker_settings: Callable[..., HivememSettings]
) -> None:
    """The workers cache an agent's entry (``registry_cache_s``, 5 s here); the agent comes back
    with another key within that time: its first writes, refused against the cached entry, are
    judged again against a fresh one, and stored."""
    settings = worker_settings(consolidation={"threshold": 1000})
    caching = settings.security.model_copy(update={"registry_cache_s": 5.0})
    runtime = WorkerRuntime(settings.model_copy(update={"security": caching}))
    try:
        first = make_pool("host1")
        agent = first.register_agent("mover", clearance=Zone.PUBLIC)
        agent.memory.add("from host 1", user_id="u1")
        assert agent.flush()
        first.close()
        runtime.ingest.drain(ZONE, on_due=ignore)  # its entry is cached now
        again = make_pool("host2").register_agent("mover", clearance=Zone.PUBLIC)
        later = again.memory.add("from its new key", user_id="u1")
        assert again.flush()

        runtime.ingest.drain(ZONE, on_due=ignore)

        assert later.id in {r.id for r in stored(runtime)}
        assert refused(runtime) == []
    finally:
        runtime.close()


def test_a_discard_waits_for_the_drains_and_deletes_only_what_is_there(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """A discard holds every zone's ingest lock, so no drain stores what it deletes: while a
    worker drains a zone past the wait, it refuses (QueuesBusy) and changes nothing. It counts
    only the departures it removed (not one the workers forgot meanwhile)."""
    queue(pool, "suspect", "queued by whoever held its key")
    pool.deregister("suspect")
    departures = runtime.registry.departures
    busy = held(runtime.client, runtime.keys.ingest_lock(Zone.SECRET), 5.0)
    with busy, pytest.raises(QueuesBusy):
        departures.discard("suspect", wait_s=0.2)
    [departure] = departures.of("suspect")
    assert departures.forget(departure)
    assert not departures.forget(departure)
    assert departures.discard("suspect") == 0


def test_a_discard_keeps_the_zones_it_holds_while_it_waits_for_the_others(
    pool: SharedMemoryPool, runtime: WorkerRuntime
) -> None:
    """A zone stays taken longer than the discard's lock TTL (1 s here): the locks it already
    holds are renewed while it waits, so no worker takes one of them meanwhile, and once the
    zone is free the discard goes ahead."""
    queue(pool, "suspect", "queued by whoever held its key")
    pool.deregister("suspect")
    departures = runtime.registry.departures
    draining = runtime.client.lock(runtime.keys.ingest_lock(Zone.INTERNAL), timeout=1.5)
    assert draining.acquire()
    taken: list[bool] = []

    def a_worker_tries_the_first_zone() -> None:
        time.sleep(1.2)  # past the TTL of the discard's lock on PUBLIC
        worker = runtime.client.lock(runtime.keys.ingest_lock(Zone.PUBLIC), timeout=5)
        taken.append(worker.acquire(blocking=False))

    worker = threading.Thread(target=a_worker_tries_the_first_zone)
    worker.start()
    with departures.quiet(wait_s=5.0, ttl_s=1.0):
        gone = departures.discard_now("suspect")
    worker.join()

    assert taken == [False]
    assert gone == 1
    assert departures.of("suspect") == []


def test_a_new_key_replaces_the_entry_it_read_or_looks_again(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime
) -> None:
    """Two directories attach one agent at once. Between the first's read of the entry and its
    replacement, another registers: at another clearance it is refused (the entry it finds is
    the first one's), at the same one it replaces the entry, and the first looks again and
    replaces that one. The entry ends with the first's key; every key's queued write is kept."""
    first = make_pool("host0")
    old = first.register_agent("x", clearance=Zone.SECRET)
    queued = [old.memory.add("queued under the first key", user_id="u1").id]
    assert old.flush()
    first.close()
    host1, host2, host3 = make_pool("host1"), make_pool("host2"), make_pool("host3")
    replace = host1.registry._departed_now
    raced: list[str] = []

    def another_registers_first(*args: object, **kwargs: object) -> int:
        if not raced:
            with pytest.raises(RegistrationConflict):
                host2.register_agent("x", clearance=Zone.PUBLIC)
            other = host3.register_agent("x", clearance=Zone.SECRET)
            queued.append(other.memory.add("queued under the third key", user_id="u1").id)
            assert other.flush()
            raced.append("x")
        return replace(*args, **kwargs)  # type: ignore[arg-type]

    host1.registry._departed_now = another_registers_first  # type: ignore[method-assign]
    winner = host1.register_agent("x", clearance=Zone.SECRET)
    drain_all(runtime)

    assert runtime.registry.get("x").public_key == winner.info.public_key
    assert sorted(r.id for r in stored(runtime)) == sorted(queued)
    assert refused(runtime) == []


@pytest.mark.parametrize("read", ["same-key", "no-entry"])
def test_a_registration_that_read_a_stale_entry_looks_again(
    make_pool: Callable[..., SharedMemoryPool], runtime: WorkerRuntime, read: str
) -> None:
    """A registration that read the entry (with its own key) or read none, while another
    directory registers the agent with another key and queues a write before the first one
    writes: the first writes only if the entry is still what it read, else it looks again
    and replaces the other key's entry as a new key, audited as such. Nothing queued is
    lost."""
    host1, host3 = make_pool("host1"), make_pool("host3")
    if read == "same-key":
        host1.register_agent("x", clearance=Zone.SECRET)
    put = host1.registry._put
    queued: list[str] = []

    def another_registers_meanwhile(*args: object, **kwargs: object) -> object:
        if not queued:
            other = host3.register_agent("x", clearance=Zone.SECRET)
            queued.append(other.memory.add("queued under the other key", user_id="u1").id)
            assert other.flush()
        return put(*args, **kwargs)  # type: ignore[arg-type]

    host1.registry._put = another_registers_meanwhile  # type: ignore[method-assign]
    again, _ = host1.register(AgentInfo(agent_id="x", clearance=Zone.SECRET))
    drain_all(runtime)

    assert runtime.registry.get("x").public_key == again.public_key
    assert [r.id for r in stored(runtime)] == queued
    assert refused(runtime) == []
    # Each key's end is audited where it happened: host3's over host1's, host1's over host3's.
    ended = [e for e in runtime.audit.entries() if e.kind == AuditEvent.DEREGISTERED]
    assert [e.details["reason"] for e in ended] == ["new_key"] * (2 if read == "same-key" else 1)
