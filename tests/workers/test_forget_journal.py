"""A forget that stops after it began removing, finished by the next call, on a real Redis
(behind a real TCP relay where a reply is lost or held), real agents and real Qdrant Edge zone
shards: the agents drop every record of the user, with security on and off, the retry's receipt
and audit count what the first call removed, and the forget's journal leaves Redis. A forget
of a user that another one is running is busy; the journal keeps a field per record."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis
from pydantic import TypeAdapter

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.ids import new_record_id
from hivemem.pool.records import Scope, Tombstone, utc_now
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEntry, AuditEvent
from hivemem.workers.consolidation import ScopeBusy
from hivemem.workers.forget import ForgetReceipt
from hivemem.workers.forget_journal import CHUNK, ForgetJournal, ZoneJournal
from hivemem.workers.keys import WorkerKeys
from hivemem.workers.locks import held
from hivemem.workers.runtime import WorkerRuntime
from tests.relay import Relay
from tests.waiting import wait_for
from tests.workers.test_forget import ignore, owned, write

Pools = Callable[..., SharedMemoryPool]


def anyone_due(zone: Zone, user_id: str) -> None:
    """An ``on_due`` for forgets whose drains queue no consolidation worth checking here."""


@pytest.fixture(params=[True, False], ids=["secure", "plain"])
def secure(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def relayed(
    worker_settings: Callable[..., HivememSettings],
    relay: Relay,
    redis_server: EmbeddedRedis,
    secure: bool,
) -> Iterator[WorkerRuntime]:
    """A worker runtime (security on or off) whose Redis connection goes through ``relay``;
    consolidation never becomes due."""
    base = worker_settings(consolidation={"threshold": 1000})
    settings = base.model_copy(
        update={
            "redis_url": relay.url(redis_server),
            "security": base.security.model_copy(update={"enabled": secure}),
        }
    )
    runtime = WorkerRuntime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def agents(make_pool: Pools, secure: bool) -> tuple[Agent, Agent]:
    """A writer sharing its episodes and a reader, both cleared for every zone."""
    writer = make_pool("writer", secure=secure).register_agent(
        "writer", clearance=Zone.SECRET, share_levels=[Level.EPISODE]
    )
    reader = make_pool("reader", secure=secure).register_agent("reader", clearance=Zone.SECRET)
    assert reader.wait_connected()
    return writer, reader


def spread(agents: tuple[Agent, Agent], runtime: WorkerRuntime) -> list[str]:
    """alice's records (3 confidential) and bob's (2) at both agents and in the zone store;
    then a forget of nobody, so that the forget's scripts are loaded in Redis and the first
    call relayed is the one that runs them. Returns alice's ids."""
    writer, reader = agents
    alice = write(writer, "alice", Zone.CONFIDENTIAL, 3)
    write(writer, "bob", Zone.CONFIDENTIAL, 2)
    assert wait_for(lambda: reader.memory.stats().current == 5)
    runtime.ingest.drain(Zone.CONFIDENTIAL, on_due=ignore)
    runtime.forget.forget_user("nobody", list(Zone), on_due=anyone_due)
    return alice


def forgotten(runtime: WorkerRuntime, user_id: str = "alice") -> list[AuditEntry]:
    return [
        e
        for e in runtime.audit.entries()
        if e.kind == AuditEvent.FORGOTTEN and e.subject == user_id
    ]


def journals(runtime: WorkerRuntime) -> list[bytes]:
    namespace = runtime.settings.pool.namespace
    return list(runtime.client.scan_iter(match=f"{namespace}:forget:*"))


def noted(runtime: WorkerRuntime, user_id: str = "alice") -> list[bytes]:
    """The fields of the user's confidential journal, sorted."""
    key = runtime.keys.forget_journal(Zone.CONFIDENTIAL, user_id)
    return sorted(cast("list[bytes]", runtime.client.hkeys(key)))


def per_record(ids: list[str]) -> list[bytes]:
    """The fields of a journal that noted the live records ``ids``, none published yet."""
    return sorted([b"published", *(f"t:{i}".encode() for i in ids)])


def assert_alice_gone_at(agents: tuple[Agent, Agent]) -> None:
    """No agent holds a record of alice any more (readable or not); bob's stay."""
    for agent in agents:
        assert wait_for(lambda a=agent: a.memory.stats(user_id="alice").current == 0)
        assert agent.memory.list_memories(user_id="alice", include_superseded=True) == []
        assert agent.memory.stats(user_id="bob").current == 2


def test_a_forget_whose_redis_step_lost_its_reply_is_finished_by_the_retry(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent], relay: Relay
) -> None:
    """The reply to the step that drops alice's consolidation state is lost after her records
    left the zone store, before any tombstone was published: the agents still hold them. The
    retry publishes the tombstones, so that both agents drop their copies (in clear, with
    security off); its receipt and its audit entry count what the first call removed."""
    alice = spread(agents, relayed)
    relay.drop_reply_to = b"confidential:alice:spent"

    with pytest.raises(redis.ConnectionError):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    assert relayed.store.ids(Zone.CONFIDENTIAL, owned("alice")) == []
    assert agents[1].memory.stats(user_id="alice").current == 3
    assert noted(relayed) == sorted([*per_record(alice), b"redis_keys_deleted"])

    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    part = receipt.zones[Zone.CONFIDENTIAL.value]
    assert (part.live_records, part.tombstones_published, part.redis_keys_deleted) == (3, 3, 1)
    assert part.resumed
    assert receipt.removed == 3
    [entry] = forgotten(relayed)
    assert (entry.details["live_records"], entry.details["resumed"]) == (3, True)
    assert journals(relayed) == []


def test_a_forget_whose_journal_write_lost_its_reply_is_finished_by_the_retry(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent], relay: Relay
) -> None:
    """The reply to the journal's write is lost: the forget stops before the zone store is
    touched, its journal holds a field per record, and the retry (which notes none again)
    removes them, publishes their tombstones and counts them once."""
    alice = spread(agents, relayed)
    relay.drop_reply_to = f"t:{alice[0]}".encode()

    with pytest.raises(redis.ConnectionError):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    assert noted(relayed) == per_record(alice)
    assert len(relayed.store.ids(Zone.CONFIDENTIAL, owned("alice"))) == 3

    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    part = receipt.zones[Zone.CONFIDENTIAL.value]
    assert (part.live_records, part.tombstones_published, part.resumed) == (3, 3, True)
    assert [e.details["live_records"] for e in forgotten(relayed)] == [3]
    assert journals(relayed) == []


def test_a_forget_whose_publish_lost_its_reply_publishes_again_harmlessly(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent], relay: Relay
) -> None:
    """The tombstones went out but the reply was lost: the retry publishes them again, which
    the agents take as the same deletes; its receipt counts them, audited once."""
    spread(agents, relayed)
    relay.drop_reply_to = b"zone:confidential:stream"

    with pytest.raises(redis.ConnectionError):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    part = receipt.zones[Zone.CONFIDENTIAL.value]
    assert (part.live_records, part.tombstones_published) == (3, 3)
    assert [e.details["live_records"] for e in forgotten(relayed)] == [3]
    assert part.resumed
    assert journals(relayed) == []


@pytest.mark.parametrize("secure", [True], ids=["secure"])
def test_zones_done_before_a_busy_one_are_counted_by_the_retry(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent]
) -> None:
    """The forget raises ScopeBusy in the confidential zone after it forgot alice in the public
    one; the retry (the task's) reports both zones, the public one as resumed, in one audit
    entry."""
    writer, reader = agents
    spread(agents, relayed)
    write(writer, "alice", Zone.PUBLIC, 2)
    assert wait_for(lambda: reader.memory.stats(user_id="alice").current == 5)
    key = relayed.keys.consolidate_lock(Zone.CONFIDENTIAL, "alice")

    with held(relayed.client, key, 30) as lock:
        assert lock.acquired
        with pytest.raises(ScopeBusy):
            relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    public, confidential = (receipt.zones[z.value] for z in (Zone.PUBLIC, Zone.CONFIDENTIAL))
    assert (public.live_records, confidential.live_records) == (2, 3)
    assert [e.details["live_records"] for e in forgotten(relayed)] == [5]
    assert (public.resumed, confidential.resumed) == (True, False)
    assert journals(relayed) == []


def state(runtime: WorkerRuntime) -> tuple[object, ...]:
    """What a forget of alice changes in Redis: her journals, the audit log's forgets, and
    the confidential zone's stream."""
    client = runtime.client
    notes = {key: client.hgetall(key) for key in sorted(journals(runtime))}
    stream = f"{runtime.settings.pool.namespace}:zone:{Zone.CONFIDENTIAL.value}:stream"
    return notes, len(forgotten(runtime)), client.xlen(stream)


def test_a_forget_started_while_another_runs_is_busy_and_counts_nothing_again(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent], relay: Relay
) -> None:
    """A second forget of alice that starts while the first has forgotten every zone but not
    yet written its audit entry (the window where it read the first's journals and counted
    them again, resumed) raises ScopeBusy and changes nothing; run again once the first
    ended, it counts nothing: the audit log counts alice's records once."""
    spread(agents, relayed)
    relay.hold_request_with = (b":audit:head", 2.0)  # the first's audit entry waits
    first: list[ForgetReceipt] = []
    running = threading.Thread(
        target=lambda: first.append(
            relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
        )
    )
    running.start()
    try:
        assert wait_for(lambda: relay.hold_request_with is None)
        before = state(relayed)
        with pytest.raises(ScopeBusy, match="another worker is forgetting alice") as busy:
            relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
        assert (busy.value.zone, busy.value.user_id) == (None, "alice")
        assert state(relayed) == before
    finally:
        running.join()

    second = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    assert (first[0].removed, first[0].resumed) == (3, False)
    assert (second.removed, second.resumed) == (0, False)
    assert [e.details["live_records"] for e in forgotten(relayed)] == [3, 0]
    assert journals(relayed) == []


def test_a_forget_whose_worker_died_is_finished_once_its_lock_expires(
    relayed: WorkerRuntime, agents: tuple[Agent, Agent], relay: Relay
) -> None:
    """The first forget stops after alice's records left the zone store, and its worker
    dies holding her forget lock (its key, with its TTL): a forget meanwhile raises
    ScopeBusy; once the lock expired, one publishes the tombstones and counts the records
    once, resumed."""
    spread(agents, relayed)
    relay.drop_reply_to = b"confidential:alice:spent"
    with pytest.raises(redis.ConnectionError):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    lock = relayed.keys.forget_lock("alice")
    ttl_ms = int(relayed.settings.workers.lock_ttl_s * 1000)
    assert relayed.client.set(lock, "a-dead-worker", px=ttl_ms)
    before = state(relayed)

    with pytest.raises(ScopeBusy):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    assert state(relayed) == before
    assert wait_for(lambda: not relayed.client.exists(lock), timeout_s=ttl_ms / 1000 + 5)
    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    assert (receipt.removed, receipt.resumed) == (3, True)
    assert [e.details["live_records"] for e in forgotten(relayed)] == [3]
    assert journals(relayed) == []


# -- the journal's layout -----------------------------------------------------------------------


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def tombstones(count: int) -> list[Tombstone]:
    """``count`` tombstones of alice's confidential episodes."""
    return [
        Tombstone(
            id=new_record_id(),
            scope=Scope(user_id="alice"),
            level=Level.EPISODE,
            zone=Zone.CONFIDENTIAL,
        )
        for _ in range(count)
    ]


def calls(client: redis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` since its statistics were reset."""
    stats = cast("dict[str, dict[str, int]]", client.info("commandstats"))
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_thousands_of_tombstones_are_written_in_chunks_and_read_back_exactly(
    client: redis.Redis,
) -> None:
    """2,500 tombstones, 700 of them archived: one field per record, CHUNK fields a command
    (the first also un-publishing the journal), read back with HSCAN page by page, equal to
    what was written; a later call writes only the records not noted yet, and a record noted
    before keeps its tombstone."""
    keys = WorkerKeys("hm")
    journals = ForgetJournal(client, keys)
    found = tombstones(2_500)
    first = ZoneJournal().adding(found, [t.id for t in found[:700]])
    client.config_resetstat()

    journals.write(Zone.CONFIDENTIAL, "alice", first, None)
    read = journals.read(Zone.CONFIDENTIAL, "alice")

    assert calls(client, "hset") == math.ceil(3_200 / CHUNK) == 4
    assert calls(client, "hscan") >= 3
    assert client.hlen(keys.forget_journal(Zone.CONFIDENTIAL, "alice")) == 3_201
    assert read == first
    assert read is not None
    assert (read.live_records, read.published) == (1_800, False)

    journals.published(Zone.CONFIDENTIAL, "alice")
    earlier = journals.read(Zone.CONFIDENTIAL, "alice")
    assert earlier is not None
    assert earlier.published
    again = [found[0].model_copy(update={"deleted_at": utc_now()}), *tombstones(10)]
    second = earlier.adding(again, [])
    client.config_resetstat()

    journals.write(Zone.CONFIDENTIAL, "alice", second, earlier)

    assert calls(client, "hset") == 1
    assert journals.read(Zone.CONFIDENTIAL, "alice") == second
    assert second.tombstones[found[0].id] == found[0]
    assert second.unpublished_after(earlier) == again[1:]


def test_a_journal_of_the_earlier_layout_is_read(client: redis.Redis) -> None:
    """A journal an earlier version left (its tombstones and archived ids as two JSON lists)
    reads as it was written, and a call adds to it the records not in it, per record, without
    losing it."""
    keys = WorkerKeys("hm")
    journals = ForgetJournal(client, keys)
    old = tombstones(3)
    key = keys.forget_journal(Zone.CONFIDENTIAL, "alice")
    client.hset(
        key,
        mapping={
            "tombstones": TypeAdapter(list[Tombstone]).dump_json(old),
            "archived": json.dumps([old[0].id]),
            "redis_keys_deleted": 2,
            "published": 1,
        },
    )

    earlier = journals.read(Zone.CONFIDENTIAL, "alice")

    assert earlier == ZoneJournal(
        tombstones={t.id: t for t in old},
        archived=frozenset([old[0].id]),
        redis_keys_deleted=2,
        published=True,
    )
    new = tombstones(1)
    journals.write(Zone.CONFIDENTIAL, "alice", earlier.adding([*old, *new], []), earlier)
    now = journals.read(Zone.CONFIDENTIAL, "alice")
    assert now is not None
    assert not now.published
    assert now.tombstones == {t.id: t for t in [*old, *new]}
    assert client.hlen(key) == 5  # the old lists, the count, published, and the new record
