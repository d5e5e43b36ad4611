"""SharedMemoryPool in one process: several pools on one real Redis stand for several processes
(each agent keeps its own directory, outbox and receiver thread). The multi-process and fault
tests are in test_sync_processes.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.adapters.redis_bus import ingest_topic, zone_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.errors import (
    AgentNotFound,
    ClearanceDenied,
    InvalidIdentifier,
    InvalidInput,
    MemoryNotFound,
    RegistrationConflict,
    StoreLocked,
    SupersessionConflict,
)
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.redis_server import EmbeddedRedis, free_port
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]


def received(agent: Agent, user_id: str = "u1") -> dict[str, MemoryRecord]:
    """The records other agents shared with ``agent`` (by content)."""
    found = agent.memory.list_memories(user_id=user_id, limit=100_000, include_superseded=True)
    return {r.content: r for r in found if r.received_from is not None}


def add(agent: Agent, content: str, level: Level, zone: Zone, **fields: Any) -> MemoryRecord:
    return agent.memory.add(
        content, user_id="u1", agent_id=agent.agent_id, level=level, zone=zone, **fields
    )


class CountingEmbedder:
    """The real embedder, counting the documents it embeds."""

    def __init__(self, inner: FastEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.documents = 0

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        return self.inner.embed_query(text)


def test_shared_levels_reach_cleared_agents_and_nothing_else(make_pool: Pools) -> None:
    """Only share_levels leave a sender; a receiver takes its levels at or below its clearance."""
    support = make_pool("p1").register_agent(
        "support", clearance=Zone.CONFIDENTIAL, share_levels=[Level.CATEGORY, Level.DOMAIN]
    )
    tech = make_pool("p2").register_agent(
        "tech", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    picky = make_pool("p3").register_agent(
        "picky", clearance=Zone.SECRET, receive_levels=[Level.DOMAIN]
    )
    assert all(a.wait_connected() for a in (support, tech, picky))
    add(support, "customer prefers email", Level.CATEGORY, Zone.INTERNAL)
    add(support, "escalation contacts", Level.CATEGORY, Zone.CONFIDENTIAL)
    add(support, "support domain profile", Level.DOMAIN, Zone.PUBLIC)
    add(support, "raw chat turn", Level.EPISODE, Zone.PUBLIC)
    add(tech, "tech category note", Level.CATEGORY, Zone.PUBLIC)
    add(tech, "tech domain note", Level.DOMAIN, Zone.PUBLIC)

    assert wait_for(lambda: len(received(picky)) == 1 and len(received(tech)) == 2)
    assert wait_for(lambda: len(received(support)) == 1)
    time.sleep(0.3)  # anything wrongly sent would have arrived by now
    assert set(received(tech)) == {"customer prefers email", "support domain profile"}
    assert set(received(picky)) == {"support domain profile"}
    assert set(received(support)) == {"tech category note"}


def test_a_receiver_finds_shared_records_in_search_without_re_embedding(
    make_pool: Pools, pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> None:
    """Shared records arrive with their vectors and are found by the receiver's search."""
    counting = CountingEmbedder(embedder)
    receiver_pool = SharedMemoryPool.connect(pool_settings("p2"), embedder=counting)
    try:
        support = make_pool("p1").register_agent(
            "support", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
        )
        tech = receiver_pool.register_agent("tech", clearance=Zone.INTERNAL)
        assert tech.wait_connected()
        sent = add(support, "The customer wants invoices by post", Level.CATEGORY, Zone.INTERNAL)
        assert wait_for(lambda: "The customer wants invoices by post" in received(tech))
        hits = tech.memory.search("how does the customer want invoices", user_id="u1",
                                  agent_id="tech")  # fmt: skip
        assert hits[0].record.id == sent.id
        assert hits[0].record.received_from == "support"
        original = support.memory.get(sent.id, with_vectors=True)
        copy = tech.memory.get(sent.id, with_vectors=True)
        assert np.allclose(copy.vector or [], original.vector or [], atol=1e-6)
        assert copy.sparse == original.sparse
        assert counting.documents == 0
    finally:
        receiver_pool.close()


def test_deletions_of_shared_records_propagate(make_pool: Pools) -> None:
    """A tombstone replaces the receiver's copy, content and vectors included."""
    support = make_pool("p1").register_agent("support", share_levels=[Level.CATEGORY])
    tech = make_pool("p2").register_agent("tech")
    assert tech.wait_connected()
    record = add(support, "temporary workaround", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: "temporary workaround" in received(tech))
    support.memory.delete(record.id)
    assert wait_for(lambda: "temporary workaround" not in received(tech))
    assert tech.memory._index.presence([record.id]) == {record.id: True}


def test_applying_the_same_record_twice_stores_it_once(
    make_pool: Pools, redis_server: EmbeddedRedis
) -> None:
    """A record that arrives again (another message id, same record) changes nothing."""
    support = make_pool("p1").register_agent("support", share_levels=[Level.CATEGORY])
    tech = make_pool("p2").register_agent("tech")
    assert tech.wait_connected()
    record = add(support, "stable fact", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: "stable fact" in received(tech))
    full = support.memory.get(record.id, with_vectors=True)
    again = make_envelope(sender="support", zone=Zone.PUBLIC, records=[full])
    body = support.identity.codec.encode(again)
    support._sharing._send([(zone_topic(Zone.PUBLIC), again.message_id, body)])
    assert support.flush()
    time.sleep(0.3)
    copies = [r for r in tech.memory.list_memories(user_id="u1") if r.content == "stable fact"]
    assert len(copies) == 1


def test_concurrent_supersessions_converge_on_every_agent(make_pool: Pools) -> None:
    """Two agents superseding the same record at once end with the same current version and
    keep both versions in the history."""
    alice = make_pool("p1").register_agent(
        "alice", share_levels=[Level.CATEGORY], sync_interval=1.0
    )
    bob = make_pool("p2").register_agent("bob", share_levels=[Level.CATEGORY], sync_interval=1.0)
    assert alice.wait_connected()
    assert bob.wait_connected()
    base = add(alice, "the office opens at 9", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: base.id in {r.id for r in received(bob).values()})
    # Both supersede before either hears of the other (each sends once per second).
    mine = alice.memory.supersede(base.id, "the office opens at 8")
    theirs = bob.memory.supersede(base.id, "the office opens at 10")

    def history(agent: Agent) -> list[str]:
        return [r.id for r in agent.memory.get_history(base.id)]

    assert wait_for(lambda: len(history(alice)) == 3 and len(history(bob)) == 3)
    assert history(alice) == history(bob)
    winner = max([mine, theirs], key=lambda r: (r.recorded_at, r.id))
    for agent in (alice, bob):
        current = [r.id for r in agent.memory.get_history(base.id) if r.is_current]
        assert current == [winner.id]
        hits = agent.memory.search("when does the office open", user_id="u1",
                                   agent_id=agent.agent_id)  # fmt: skip
        assert {h.record.id for h in hits} & {base.id, mine.id, theirs.id} == {winner.id}


def test_share_knowledge_hands_a_record_over_with_provenance(make_pool: Pools) -> None:
    """A direct hand-over reaches one agent, whatever the levels, marked received_from."""
    pool = make_pool("p1")
    support = pool.register_agent("support", clearance=Zone.SECRET)  # shares no level
    tech = make_pool("p2").register_agent("tech", clearance=Zone.INTERNAL, receive_levels=[])
    other = make_pool("p3").register_agent("other", clearance=Zone.SECRET)
    assert tech.wait_connected()
    assert other.wait_connected()
    record = add(support, "reset the router twice", Level.EPISODE, Zone.INTERNAL)
    pool.share_knowledge("support", "tech", record.id)
    assert wait_for(lambda: "reset the router twice" in received(tech))
    assert received(tech)["reset the router twice"].received_from == "support"
    time.sleep(0.2)
    assert received(other) == {}


def test_an_agents_hand_over_sends_its_stored_copy_with_vectors(make_pool: Pools) -> None:
    """Agent.hand_over sends the record as the sender's memory holds it, vectors included,
    whatever copy it was given (here one read without vectors): the receiver's copy is found
    by search. A record the sender does not hold, or a receiver nobody registered, raises and
    sends nothing."""
    pool = make_pool("p1")
    support = pool.register_agent("support", clearance=Zone.INTERNAL)
    tech = make_pool("p2").register_agent("tech", clearance=Zone.INTERNAL, receive_levels=[])
    assert tech.wait_connected()
    record = add(support, "the harbour opens at six", Level.EPISODE, Zone.INTERNAL)
    assert support.flush()
    support.hand_over("tech", support.memory.get(record.id))  # read without vectors
    assert wait_for(lambda: "the harbour opens at six" in received(tech))
    hits = tech.memory.search("harbour", user_id="u1", config="semantic")
    assert [h.record.id for h in hits] == [record.id]
    never = MemoryRecord(content="never stored", scope=Scope(user_id="u1"), zone=Zone.INTERNAL)
    with pytest.raises(MemoryNotFound):
        support.hand_over("tech", never)
    with pytest.raises(AgentNotFound):
        support.hand_over("nobody", record.id)
    assert support.pending == 0


def test_share_knowledge_refuses_records_above_the_receivers_clearance(make_pool: Pools) -> None:
    """No read up: a hand-over of a higher zone raises ClearanceDenied and sends nothing."""
    pool = make_pool("p1")
    support = pool.register_agent("support", clearance=Zone.SECRET)
    tech = make_pool("p2").register_agent("tech", clearance=Zone.INTERNAL)
    assert tech.wait_connected()
    record = add(support, "the vault code", Level.CATEGORY, Zone.SECRET)
    assert support.flush()  # the write's own ingest message
    with pytest.raises(ClearanceDenied) as caught:
        pool.share_knowledge("support", "tech", record)
    assert (caught.value.agent_id, caught.value.zone) == ("tech", "secret")
    assert support.pending == 0
    with pytest.raises(AgentNotFound):
        pool.share_knowledge("support", "nobody", record)
    with pytest.raises(AgentNotFound):
        pool.share_knowledge("tech", "support", record)  # tech is not attached to this pool


def test_sync_interval_batches_writes(make_pool: Pools) -> None:
    """With a positive interval, writes wait and go out together; with 0 they go at once."""
    batched = make_pool("p1").register_agent(
        "batched", share_levels=[Level.CATEGORY], sync_interval=1.5
    )
    prompt = make_pool("p2").register_agent("prompt", share_levels=[Level.CATEGORY])
    tech = make_pool("p3").register_agent("tech")
    assert tech.wait_connected()
    assert batched.wait_connected()
    arrivals: dict[str, float] = {}
    tech.on_receive(lambda rs: arrivals.update({r.content: time.monotonic() for r in rs}))
    # The sender sends every 1.5 s: a write just before its turn would go out at once. Writing
    # right after a batch arrived starts a full interval (the test's timing no longer depends
    # on how long the set-up above took).
    add(batched, "warm-up note", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: "warm-up note" in arrivals)
    arrivals.clear()
    start = time.monotonic()
    for i in range(3):
        add(batched, f"batched note {i}", Level.CATEGORY, Zone.PUBLIC)
    add(prompt, "prompt note", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: len(arrivals) == 4)
    batch_times = [arrivals[f"batched note {i}"] - start for i in range(3)]
    assert arrivals["prompt note"] - start < min(batch_times)
    assert max(batch_times) - min(batch_times) < 0.5  # together
    assert min(batch_times) > 0.3


def test_malformed_and_foreign_messages_are_logged_and_skipped(
    make_pool: Pools, redis_server: EmbeddedRedis
) -> None:
    """Garbage on a channel or stream, wrong zones and over-clearance envelopes are skipped with
    a log line; the receiver keeps applying what follows. (Plain version-1 messages: security
    off; tests/security covers what a secure pool rejects.)"""
    pool = make_pool("p1", secure=False)
    tech = pool.register_agent("tech", clearance=Zone.INTERNAL)
    support = make_pool("p2", secure=False).register_agent("support", share_levels=[Level.CATEGORY])
    assert tech.wait_connected()
    raw = redis.Redis.from_url(redis_server.url)
    secret = make_envelope(sender="mallory", zone=Zone.SECRET)
    misplaced = make_envelope(sender="mallory", zone=Zone.INTERNAL)
    good = MemoryRecord(content="fine record", scope=Scope(user_id="u1"), level=Level.CATEGORY)
    bad = MemoryRecord(content="bad vector", scope=Scope(user_id="u1"), level=Level.CATEGORY)
    mixed = make_envelope(sender="mallory", zone=Zone.PUBLIC, records=[bad, good],
                          dense=[[0.1, 0.2, 0.3], [0.0] * 384])  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        raw.publish("hivemem:zone:public", b"not a pool message")
        raw.publish("hivemem:zone:public", b"abc 1 {}")
        pool.bus.publish(zone_topic(Zone.PUBLIC), "mallory", [("a" * 32, b"{not json"),
                                                   ("b" * 32, b'{"v": 99}')])  # fmt: skip
        pool.bus.publish(
            zone_topic(Zone.INTERNAL), "mallory", [(secret.message_id, secret.encode())]
        )
        pool.bus.publish(
            zone_topic(Zone.PUBLIC), "mallory", [(misplaced.message_id, misplaced.encode())]
        )
        pool.bus.publish(zone_topic(Zone.PUBLIC), "mallory", [(mixed.message_id, mixed.encode())])
        add(support, "still flowing", Level.CATEGORY, Zone.PUBLIC)
        assert wait_for(lambda: "still flowing" in received(tech))
    skipped = [e for e in logs if e["event"] == "pool_message_skipped"]
    assert len(skipped) >= 5
    assert "fine record" in received(tech)
    assert "bad vector" not in received(tech)
    skipped_records = [
        e["record_id"]
        for e in logs
        if e["event"] == "pool_record_skipped" and e["agent_id"] == "tech"
    ]
    assert skipped_records == [bad.id]
    assert all("not a pool message" not in str(e) for e in skipped)
    assert tech._receiver.is_alive()


def test_a_receiver_behind_a_trimmed_stream_rebootstraps_and_says_so(make_pool: Pools) -> None:
    """When entries after its cursor were trimmed, the receiver logs a re-bootstrap and applies
    what the stream still holds."""
    writer = make_pool("p1", stream_maxlen=10, send_batch=1).register_agent(
        "writer", share_levels=[Level.CATEGORY]
    )
    reader_pool = make_pool("p2", stream_maxlen=10)
    reader = reader_pool.register_agent("reader")
    assert reader.wait_connected()
    add(writer, "seen while online", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: len(received(reader)) == 1)
    reader_pool.deregister("reader")  # offline; its directory and cursor stay
    writer.memory.add_many(
        [{"content": f"written while away {i}", "level": Level.CATEGORY} for i in range(300)],
        user_id="u1",
        agent_id="writer",
        progress=False,
    )
    assert writer.flush()
    with structlog.testing.capture_logs() as logs:
        back = reader_pool.register_agent("reader")
        assert back.wait_connected()
    events = [e for e in logs if e["event"] == "pool_rebootstrap"]
    assert events
    assert events[0]["reason"] == "stream trimmed past the cursor"
    assert "written while away 299" in received(back)


def test_a_receiver_that_cannot_fetch_a_key_backs_off_and_applies_the_message_later(
    make_pool: Pools,
) -> None:
    """The keyring raises PoolUnavailable when Redis cannot give it a key it never fetched
    (here the zone key and the secret of a user bob has not seen, both first needed to open a
    message). The receiver backs off as for any lost connection and, once the keys can be had,
    applies the message: nothing is lost. (Before, the error stopped the receiving thread.)"""
    alice = make_pool("p1").register_agent(
        "alice", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    bob_pool = make_pool("p2")
    bob = bob_pool.register_agent("bob", clearance=Zone.INTERNAL)
    assert alice.wait_connected()
    assert bob.wait_connected()
    assert bob_pool.security is not None
    keyring = bob_pool.security.keyring
    reachable = keyring._store.client  # cut the keyring's connection only: nothing listens there
    keyring._store.client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with structlog.testing.capture_logs() as logs:
        add(alice, "a first message for u1", Level.CATEGORY, Zone.INTERNAL)
        assert wait_for(lambda: any(e["event"] == "pool_receive_disconnected" for e in logs))
    assert "a first message for u1" not in received(bob)
    keyring._store.client = reachable
    assert wait_for(lambda: "a first message for u1" in received(bob))


def test_registration_rules(make_pool: Pools) -> None:
    """Conflicting clearance, double attach and bad ids are typed errors that change nothing."""
    pool = make_pool("p1")
    agent = pool.register_agent("support", clearance=Zone.INTERNAL, capabilities=["billing"])
    other = make_pool("p2")
    with pytest.raises(RegistrationConflict):
        other.register_agent("support", clearance=Zone.SECRET)
    with pytest.raises(InvalidInput):
        pool.register_agent("support", clearance=Zone.INTERNAL)
    with pytest.raises(InvalidIdentifier):
        pool.register_agent("bad:id")
    with pytest.raises(InvalidInput):
        pool.register_agent("fine", share_levels=["nonsense"])
    with pytest.raises(InvalidInput):
        pool.register_agent("fine", clearance="top")
    # Lists given as None, one string or a number; an id given as bytes (no silent decoding).
    for bad in ({"share_levels": None}, {"share_levels": "category"}, {"capabilities": None},
                {"compartments": None}, {"receive_levels": 5}):  # fmt: skip
        with pytest.raises(InvalidInput) as caught:
            pool.register_agent("fine", **bad)  # type: ignore[arg-type]
        assert caught.value.field == next(iter(bad))
    with pytest.raises(InvalidIdentifier):
        pool.register_agent(b"fine")  # type: ignore[arg-type]
    for compartments in (None, "hr"):
        with pytest.raises(InvalidInput, match="must be a list"):
            pool.set_compartments("support", compartments)  # type: ignore[arg-type]
    record = agent.memory.add("billing runs on Fridays", user_id="u1", zone=Zone.INTERNAL)
    with pytest.raises(InvalidInput, match="memory record or its id") as shared:
        pool.share_knowledge("support", "support", 5)  # type: ignore[arg-type]
    assert shared.value.field == "record"
    with pytest.raises(InvalidInput, match="memory record or its id"):
        agent.hand_over("support", 5)  # type: ignore[arg-type]
    for timeout in ("5", -1, float("nan")):
        with pytest.raises(InvalidInput):
            agent.flush(timeout)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            agent.wait_connected(timeout)  # type: ignore[arg-type]
    assert agent.memory.get(record.id).content == "billing runs on Fridays"
    assert [a.agent_id for a in other.agents()] == ["support"]
    assert other.get_agent("support").capabilities == ["billing"]
    assert agent.wait_connected()
    assert other.is_alive("support")
    pool.deregister("support")
    assert other.agents() == []
    assert not other.is_alive("support")
    with pytest.raises(AgentNotFound):
        pool.agent("support")


def test_without_a_redis_url_the_pool_runs_its_own_server(
    tmp_path: Any, settings: HivememSettings, embedder: FastEmbedder
) -> None:
    """connect() starts a redis-server when no URL is set, and close() stops it."""
    own = HivememSettings(data_dir=tmp_path / "own", embedding=settings.embedding)
    pool = SharedMemoryPool.connect(own, embedder=embedder)
    assert pool.server is not None
    url = pool.server.url
    assert redis.Redis.from_url(url).ping()
    pool.register_agent("solo").memory.add("kept", user_id="u1")
    pool.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_a_missed_live_message_is_filled_from_the_stream(
    make_pool: Pools, redis_server: EmbeddedRedis
) -> None:
    """A message that reached the stream but not the subscriber (a lost pub/sub delivery) is
    read from the stream as soon as the next live message shows the gap."""
    support = make_pool("p1").register_agent("support", share_levels=[Level.CATEGORY])
    tech = make_pool("p2").register_agent("tech")
    assert tech.wait_connected()
    add(support, "first, heard live", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: "first, heard live" in received(tech))
    # Append the next message to the stream only, as if its publish never reached tech.
    raw = redis.Redis.from_url(redis_server.url)
    lost = MemoryRecord(content="second, only in the stream", scope=Scope(user_id="u1"),
                        level=Level.CATEGORY)  # fmt: skip
    envelope = make_envelope(sender="support", zone=Zone.PUBLIC, records=[lost],
                             dense=[[0.05] * 384])  # fmt: skip
    seq = raw.incr("hivemem:zone:public:seq")
    body = support.identity.codec.encode(envelope)  # sealed and signed as support's
    raw.xadd("hivemem:zone:public:stream", {"d": body, "s": "support"}, id=f"{seq}-0")
    time.sleep(0.3)
    assert "second, only in the stream" not in received(tech)  # nothing told tech yet
    add(support, "third, heard live", Level.CATEGORY, Zone.PUBLIC)
    assert wait_for(lambda: "third, heard live" in received(tech))
    assert "second, only in the stream" in received(tech)


def test_every_write_goes_to_its_zones_ingest_queue(make_pool: Pools) -> None:
    """All levels reach the workers' ingest queue, shared or not, tombstones too; with
    ``pool.ingest`` off nothing does."""
    pool = make_pool("p1")
    writer = pool.register_agent(
        "writer", clearance=Zone.CONFIDENTIAL, share_levels=[Level.CATEGORY]
    )
    episode = add(writer, "an unshared episode", Level.EPISODE, Zone.INTERNAL)
    category = add(writer, "a shared category", Level.CATEGORY, Zone.CONFIDENTIAL)
    writer.memory.delete(episode.id)
    assert writer.flush()

    def queued(zone: Zone) -> tuple[list[str], list[str]]:
        deliveries = pool.bus.read(ingest_topic(zone, "writer"), 0, limit=100).deliveries
        assert pool.security is not None  # what the workers open the queues with:
        opener = pool.security.workers_ingest_codec(pool.security.workers_codec())
        envelopes = [opener.decode(d.data) for d in deliveries]
        return (
            [r.id for e in envelopes for r in e.records],
            [t.id for e in envelopes for t in e.tombstones],
        )

    assert queued(Zone.INTERNAL) == ([episode.id], [episode.id])
    assert queued(Zone.CONFIDENTIAL) == ([category.id], [])
    quiet_pool = make_pool("p2", namespace="quiet", ingest=False)
    quiet = quiet_pool.register_agent("quiet", share_levels=[Level.CATEGORY])
    add(quiet, "kept to the agent and its peers", Level.CATEGORY, Zone.PUBLIC)
    assert quiet.flush()
    assert quiet_pool.bus.read(ingest_topic(Zone.PUBLIC, "quiet"), 0, limit=10).epoch is None
    assert quiet_pool.bus.read(zone_topic(Zone.PUBLIC), 0, limit=10).last_seq == 1


def test_registering_an_agent_attached_elsewhere_changes_nothing(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """register_agent for an agent another process has attached (its memory's directory
    locked) raises StoreLocked before the registry changes: the entry keeps the share levels
    the running agent uses. It was rewritten first before."""
    make_pool("p1").register_agent("writer", share_levels=[Level.EPISODE])
    elsewhere = make_pool("p1")  # another process on the same data directory
    with pytest.raises(StoreLocked):
        elsewhere.register_agent("writer", share_levels=[])
    assert elsewhere.get_agent("writer").share_levels == [Level.EPISODE]


def test_an_outdated_version_is_not_handed_over(make_pool: Callable[..., SharedMemoryPool]) -> None:
    """share_knowledge of a version that is no longer current raises SupersessionConflict
    naming the current one, and sends nothing: it arrived current, and the receiver had no
    later version to tell it otherwise."""
    pool = make_pool()
    lead = pool.register_agent("lead")
    intern = pool.register_agent("intern")
    assert intern.wait_connected()
    old = lead.memory.add("The release is rel-1", user_id="u1")
    new = lead.memory.supersede(old.id, "The release is rel-2")
    with pytest.raises(SupersessionConflict) as caught:
        pool.share_knowledge("lead", "intern", old.id)
    assert caught.value.current_id == new.id
    pool.share_knowledge("lead", "intern", new.id)
    assert wait_for(lambda: "The release is rel-2" in received(intern))
    assert "The release is rel-1" not in received(intern)


def test_a_closed_agent_can_be_attached_again(make_pool: Callable[..., SharedMemoryPool]) -> None:
    """Agent.close() ends its attachment here: it is no longer alive at once, pool.agent()
    no longer returns it, and the same pool attaches it again. Before, the pool kept the
    closed handle ('already attached here') and the heartbeat lived on for its TTL."""
    pool = make_pool()
    agent = pool.register_agent("a1")
    assert agent.wait_connected()
    assert wait_for(lambda: pool.is_alive("a1"))
    agent.close()
    assert not pool.is_alive("a1")
    with pytest.raises(AgentNotFound):
        pool.agent("a1")
    again = pool.attach("a1")
    assert again.wait_connected()
    assert pool.agent("a1") is again


def test_a_handed_over_record_follows_its_versions_and_deletion(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """A record handed over (whatever the levels either agent shares or receives) is kept in
    step with the sender: its new version reaches the receiver's inbox too, the copy there is
    superseded by it, and its deletion deletes the copy. A receiver that does not receive a
    level still applies a tombstone of a copy it holds. Before, the copies stayed current and
    searchable for good."""
    pool = make_pool()
    lead = pool.register_agent("lead", share_levels=[])  # shares nothing by itself
    intern = pool.register_agent("intern")
    a = pool.register_agent("a", share_levels=[Level.EPISODE, Level.CATEGORY])
    b = pool.register_agent("b", receive_levels=[Level.CATEGORY])
    assert intern.wait_connected()
    assert b.wait_connected()
    tip = lead.memory.add("Restart the build agent before a release", user_id="u1")
    pool.share_knowledge("lead", "intern", tip)
    assert wait_for(lambda: "Restart the build agent before a release" in received(intern))
    new = lead.memory.supersede(tip.id, "Restart the build agent and clear caches")
    assert wait_for(lambda: "Restart the build agent and clear caches" in received(intern))
    held = received(intern)
    assert held["Restart the build agent before a release"].superseded_by == new.id
    current = intern.memory.search("build agent release", user_id="u1")
    assert [h.record.id for h in current] == [new.id]
    episode = add(a, "raw chat: printer broken", Level.EPISODE, Zone.PUBLIC)
    pool.share_knowledge("a", "b", episode)
    assert wait_for(lambda: "raw chat: printer broken" in received(b))
    lead.memory.delete(new.id)
    a.memory.delete(episode.id)
    assert wait_for(lambda: received(intern) == {})
    assert wait_for(lambda: received(b) == {})
    assert lead._outbox.handed_to([tip.id, new.id]) == {}  # deleted: nothing more follows


def test_flush_and_close_send_at_once_whatever_the_sync_interval(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """An agent that sends once per 30 s sends at once when flushed, and what it queued when
    it is closed goes before the close returns. flush() waited out the interval before (and
    timed out), and close() stopped the sender with the messages still queued."""
    pool = make_pool()
    slow = pool.register_agent("slow", share_levels=[Level.CATEGORY], sync_interval=30)
    peer = pool.register_agent("peer")
    assert slow.wait_connected()
    assert peer.wait_connected()
    add(slow, "flushed at once", Level.CATEGORY, Zone.PUBLIC)
    started = time.monotonic()
    assert slow.flush(5.0)
    assert time.monotonic() - started < 5.0
    assert wait_for(lambda: "flushed at once" in received(peer))
    add(slow, "sent by the close", Level.CATEGORY, Zone.PUBLIC)
    slow.close()
    assert wait_for(lambda: "sent by the close" in received(peer))


@pytest.mark.parametrize("write", ["delete", "supersede"])
def test_a_write_racing_a_hand_over_still_follows_it(
    make_pool: Callable[..., SharedMemoryPool], write: str
) -> None:
    """Another thread of the sender deletes or supersedes the record while it is being handed
    over (after the hand-over read it, before it noted it): that write waits for the
    hand-over, finds its note, and follows it to the receiver. Before, it ran in between, found
    no note, and the receiver's copy stayed alive and current for good."""
    pool = make_pool()
    sender = pool.register_agent("sender", share_levels=[])
    receiver = pool.register_agent("receiver")
    assert receiver.wait_connected()
    record = sender.memory.add("the harbour opens at six", user_id="u1")
    queue_hand_over = sender._sharing.hand_over
    racing: list[threading.Thread] = []

    def other_thread_writes(to_agent: str, stored: MemoryRecord) -> None:
        if write == "delete":
            other = threading.Thread(target=sender.memory.delete, args=(record.id,))
        else:
            other = threading.Thread(
                target=sender.memory.supersede, args=(record.id, "the harbour opens at seven")
            )
        other.start()
        racing.append(other)
        time.sleep(0.3)  # the other write runs now, unless the hand-over holds it off
        queue_hand_over(to_agent, stored)

    sender._sharing.hand_over = other_thread_writes  # type: ignore[method-assign]
    pool.share_knowledge("sender", "receiver", record.id)
    racing[0].join()
    if write == "delete":
        assert wait_for(lambda: received(receiver) == {} and sender.pending == 0)
        assert receiver.memory.holds([record.id]) == []
    else:
        assert wait_for(lambda: "the harbour opens at seven" in received(receiver))
        assert not received(receiver)["the harbour opens at six"].is_current
