"""A forget that stops after it began removing, finished by the next call, on a real Redis
(behind a real TCP relay where a reply is lost), real agents and real Qdrant Edge zone shards:
the agents drop every record of the user, with security on and off, the retry's receipt and
audit count what the first call removed, and the forget's journal leaves Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from hivemem.agents.agent import Agent
from hivemem.pool.enums import Level, Zone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEntry, AuditEvent
from hivemem.workers.consolidation import ScopeBusy
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


def spread(agents: tuple[Agent, Agent], runtime: WorkerRuntime) -> None:
    """alice's records (3 confidential) and bob's (2) at both agents and in the zone store;
    then a forget of nobody, so that the forget's scripts are loaded in Redis and the first
    call relayed is the one that runs them."""
    writer, reader = agents
    write(writer, "alice", Zone.CONFIDENTIAL, 3)
    write(writer, "bob", Zone.CONFIDENTIAL, 2)
    assert wait_for(lambda: reader.memory.stats().current == 5)
    runtime.ingest.drain(Zone.CONFIDENTIAL, on_due=ignore)
    runtime.forget.forget_user("nobody", list(Zone), on_due=anyone_due)


def forgotten(runtime: WorkerRuntime, user_id: str = "alice") -> list[AuditEntry]:
    return [
        e
        for e in runtime.audit.entries()
        if e.kind == AuditEvent.FORGOTTEN and e.subject == user_id
    ]


def journals(runtime: WorkerRuntime) -> list[bytes]:
    namespace = runtime.settings.pool.namespace
    return list(runtime.client.scan_iter(match=f"{namespace}:forget:*"))


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
    spread(agents, relayed)
    relay.drop_reply_to = b"confidential:alice:spent"

    with pytest.raises(redis.ConnectionError):
        relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)
    assert relayed.store.ids(Zone.CONFIDENTIAL, owned("alice")) == []
    assert agents[1].memory.stats(user_id="alice").current == 3

    receipt = relayed.forget.forget_user("alice", list(Zone), on_due=anyone_due)

    assert_alice_gone_at(agents)
    part = receipt.zones[Zone.CONFIDENTIAL.value]
    assert (part.live_records, part.tombstones_published, part.redis_keys_deleted) == (3, 3, 1)
    assert part.resumed
    assert receipt.removed == 3
    [entry] = forgotten(relayed)
    assert (entry.details["live_records"], entry.details["resumed"]) == (3, True)
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
