"""Compartments (``HivememSettings.compartments``): need-to-know tags on top of zones. A record
that carries compartments reaches only the agents cleared for its zone that hold every one of
them: the broker keeps the others off its channel and stream, the receivers and the pool check
it again, derived records carry the union, and bad names are refused without changing
anything."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from hivemem.agents.embedding import MINILM_DIM, FastEmbedder
from hivemem.pool.adapters.redis_bus import RedisBus, topic_compartments, zone_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.compartments import (
    compartment_names,
    configure_compartments,
    from_mask,
    mask,
    mask_pattern,
    union,
)
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.errors import (
    ClearanceDenied,
    CompartmentDenied,
    InvalidInput,
    InvalidMessage,
    MessageRejected,
    RegistrationConflict,
    ZoneLadderMismatch,
)
from hivemem.pool.records import MemoryRecord, Tombstone
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.redis_acl import AgentAcl, agent_rules
from hivemem.security.signing import AdminSigner, SigningKey
from hivemem.workers.runtime import WorkerRuntime
from tests.security.conftest import ATTEMPTS, received, refused_all, rejections, subscribed
from tests.waiting import wait_for

COMPARTMENTS = ("apollo", "hr", "legal")


@pytest.fixture
def comp_settings(
    pool_settings: Callable[..., HivememSettings],
) -> Callable[..., HivememSettings]:
    """``comp_settings(name, compartments=COMPARTMENTS, secure=True)``: a pool process's
    settings on the test's Redis with those compartments (installed when they are built)."""

    def make(
        name: str, compartments: tuple[str, ...] = COMPARTMENTS, *, secure: bool = True
    ) -> HivememSettings:
        return pool_settings(name, secure=secure, compartments=compartments)

    return make


@pytest.fixture
def pools(make_pool: Callable[..., SharedMemoryPool]) -> Callable[..., SharedMemoryPool]:
    def make(name: str, *, secure: bool = True) -> SharedMemoryPool:
        return make_pool(name, secure=secure, compartments=COMPARTMENTS)

    return make


def record(content: str, **fields: Any) -> MemoryRecord:
    return MemoryRecord(content=content, scope={"user_id": "u1"}, **fields)


# -- the vocabulary -------------------------------------------------------------------------


def test_settings_install_the_compartments_and_records_keep_them_canonical(
    comp_settings: Callable[..., HivememSettings],
) -> None:
    """Compartments are configured names; a record keeps its set in configured order without
    repeats, refuses unknown names, and masks and globs follow the configured order."""
    settings = comp_settings("p")
    assert compartment_names() == COMPARTMENTS == settings.compartments
    kept = record("x", compartments=["legal", "apollo", "legal"])
    assert kept.compartments == ["apollo", "legal"]
    assert mask(kept.compartments) == "101"
    assert mask_pattern(["hr"]) == "0[01]0"
    assert from_mask("101") == ("apollo", "legal")
    assert from_mask("10") is None
    assert from_mask("1x1") is None
    assert union([["hr"], ["legal", "apollo"], []]) == ("apollo", "hr", "legal")
    assert zone_topic(Zone.SECRET, ["hr"]) == "comp:secret:010"
    assert zone_topic(Zone.SECRET) == "zone:secret"
    assert topic_compartments("comp:secret:010") == (Zone.SECRET, ("hr",))
    for not_one in ("zone:secret", "comp:nowhere:010", "comp:secret:000", "comp:secret:01"):
        assert topic_compartments(not_one) is None
    assert settings.environment()["HIVEMEM_COMPARTMENTS"] == '["apollo", "hr", "legal"]'
    for bad in (["nuclear"], ["Apollo"], "apollo", [3]):
        with pytest.raises(InvalidInput, match="compartment"):
            record("x", compartments=bad)

    HivememSettings(data_dir=settings.data_dir)
    assert compartment_names() == ()
    with pytest.raises(InvalidInput, match="unknown compartment"):
        record("x", compartments=["apollo"])


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (("apollo", "apollo"), "named twice"),
        (("Apollo",), "must be 1-32"),
        (("a:b",), "must be 1-32"),
        (("[01]",), "must be 1-32"),
        (("x" * 33,), "must be 1-32"),
        (tuple(f"c{i}" for i in range(65)), "more than 64"),
    ],
)
def test_bad_compartments_are_refused_and_change_nothing(
    comp_settings: Callable[..., HivememSettings], names: tuple[str, ...], why: str
) -> None:
    comp_settings("p")
    with pytest.raises(InvalidInput, match=why):
        configure_compartments(names)
    with pytest.raises(ValueError, match=why):
        comp_settings("q", names)
    assert compartment_names() == COMPARTMENTS


def test_an_envelope_holds_one_set_of_compartments(
    comp_settings: Callable[..., HivememSettings],
) -> None:
    comp_settings("p")
    one, other = record("a", compartments=["hr"]), record("b", compartments=["apollo"])
    envelope = make_envelope(sender="s1", zone=Zone.PUBLIC, records=[one])
    assert envelope.compartments == ["hr"]
    gone = Tombstone.of(one)
    assert gone.compartments == ["hr"]
    assert make_envelope(sender="s1", zone=Zone.PUBLIC, tombstones=[gone]).compartments == ["hr"]
    with pytest.raises(InvalidMessage, match="other compartments"):
        make_envelope(sender="s1", zone=Zone.PUBLIC, records=[one, other])
    with pytest.raises(InvalidMessage, match="other compartments"):
        make_envelope(sender="s1", zone=Zone.PUBLIC, records=[one, record("c")])


def test_the_registry_signature_covers_the_compartments(
    comp_settings: Callable[..., HivememSettings], tmp_path: Path
) -> None:
    """An entry signed for some compartments does not verify for others: a registry writer
    cannot hand an agent compartments the administrator did not sign."""
    comp_settings("p")
    admin = AdminSigner(SigningKey.generate())
    key = SigningKey.generate().public_key
    signature = admin.sign_entry("a1", Zone.SECRET, key, compartments=["hr"])
    assert admin.verify_entry("a1", Zone.SECRET, key, signature, compartments=["hr"])
    assert not admin.verify_entry("a1", Zone.SECRET, key, signature)
    assert not admin.verify_entry("a1", Zone.SECRET, key, signature, compartments=["hr", "legal"])
    plain = admin.sign_entry("a1", Zone.SECRET, key)
    assert not admin.verify_entry("a1", Zone.SECRET, key, plain, compartments=["hr"])


def test_processes_of_one_pool_must_agree_on_the_compartments(
    comp_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> None:
    with SharedMemoryPool.connect(comp_settings("p1"), embedder=embedder):
        pass
    with pytest.raises(ZoneLadderMismatch, match="compartments"):
        SharedMemoryPool.connect(comp_settings("p2", ("apollo", "hr")), embedder=embedder)
    with pytest.raises(ZoneLadderMismatch, match="compartments"):
        SharedMemoryPool.connect(comp_settings("p3", ("hr", "apollo", "legal")), embedder=embedder)


# -- who receives what ----------------------------------------------------------------------


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
def test_a_compartmented_record_reaches_only_the_agents_holding_all_its_compartments(
    pools: Callable[..., SharedMemoryPool], secure: bool
) -> None:
    """A SECRET record in {apollo, hr} reaches the SECRET agent holding both, not the one
    holding apollo alone nor the CONFIDENTIAL one holding both; an {apollo} record reaches
    both apollo holders; an uncompartmented record reaches every cleared agent."""
    sender_pool = pools("p1", secure=secure)
    sender = sender_pool.register_agent(
        "sender", clearance=Zone.SECRET, compartments=COMPARTMENTS, share_levels=[Level.EPISODE]
    )
    both = pools("p2", secure=secure).register_agent(
        "both", clearance=Zone.SECRET, compartments=["hr", "apollo"]
    )
    apollo = pools("p3", secure=secure).register_agent(
        "apollo", clearance=Zone.SECRET, compartments=["apollo"]
    )
    lower = pools("p4", secure=secure).register_agent(
        "lower", clearance=Zone.CONFIDENTIAL, compartments=["apollo", "hr"]
    )
    none = pools("p5", secure=secure).register_agent("none", clearance=Zone.SECRET)
    agents = (sender, both, apollo, lower, none)
    assert all(a.wait_connected() for a in agents)
    for content, zone, compartments in (
        ("plain secret", Zone.SECRET, []),
        ("apollo secret", Zone.SECRET, ["apollo"]),
        ("apollo and hr secret", Zone.SECRET, ["apollo", "hr"]),
        ("hr confidential", Zone.CONFIDENTIAL, ["hr"]),
        ("legal secret", Zone.SECRET, ["legal"]),
    ):
        sender.memory.add(content, user_id="u1", zone=zone, compartments=compartments)
    assert wait_for(lambda: len(received(both)) == 4)
    assert wait_for(lambda: len(received(apollo)) == 2 and len(received(lower)) == 1)
    assert wait_for(lambda: len(received(none)) == 1)
    time.sleep(0.3)  # anything wrongly sent would have arrived by now
    assert received(both) == {
        "plain secret", "apollo secret", "apollo and hr secret", "hr confidential"
    }  # fmt: skip
    assert received(apollo) == {"plain secret", "apollo secret"}
    assert received(lower) == {"hr confidential"}
    assert received(none) == {"plain secret"}
    kept = both.memory.list_memories(user_id="u1", filter={"zones": ["secret"]}, limit=100)
    assert {tuple(r.compartments) for r in kept} == {(), ("apollo",), ("apollo", "hr")}


def test_an_agent_receiving_later_catches_up_on_its_compartment_topics(
    pools: Callable[..., SharedMemoryPool],
) -> None:
    """Compartment topics written while an agent was away (or before it existed) are found in
    the pool's topic set when it connects, and caught up from their streams."""
    sender = pools("p1").register_agent(
        "sender", clearance=Zone.SECRET, compartments=["legal"], share_levels=[Level.EPISODE]
    )
    sender.memory.add("legal memo", user_id="u1", zone=Zone.INTERNAL, compartments=["legal"])
    assert sender.flush()
    late_pool = pools("p2")
    late = late_pool.register_agent("late", clearance=Zone.SECRET, compartments=["legal"])
    assert wait_for(lambda: received(late) == {"legal memo"})
    # Its connections drop (as when Redis restarts): it subscribes again, followed topics too.
    late_pool.bus.client.client_kill_filter(user="hivemem:agent:late")
    assert wait_for(late.wait_connected)
    sender.memory.add("second memo", user_id="u1", zone=Zone.INTERNAL, compartments=["legal"])
    assert wait_for(lambda: received(late) == {"legal memo", "second memo"})


def test_handing_over_and_writing_outside_held_compartments_are_refused(
    pools: Callable[..., SharedMemoryPool],
) -> None:
    pool = pools("p1")
    sender = pool.register_agent("sender", clearance=Zone.SECRET, compartments=["hr"])
    pool.register_agent("other", clearance=Zone.SECRET, compartments=["apollo"])
    hr = sender.memory.add("salary review", user_id="u1", compartments=["hr"])
    with pytest.raises(CompartmentDenied, match="hr") as denied:
        pool.share_knowledge("sender", "other", hr.id)
    assert denied.value.missing == ("hr",)
    entries = [e for e in pool.audit.entries() if e.kind == AuditEvent.DENIED_READ]
    assert entries[-1].details["compartments"] == ["hr"]
    before = sender.memory.stats().total
    with pytest.raises(CompartmentDenied, match="legal"):
        sender.memory.add("contract", user_id="u1", compartments=["legal"])
    with pytest.raises(CompartmentDenied):
        sender.memory.add_many(
            ["fine", {"content": "contract", "compartments": ["legal"]}], user_id="u1"
        )
    assert sender.memory.stats().total == before
    newer = sender.memory.supersede(hr.id, "salary review, round two")
    assert newer.compartments == ["hr"]
    # A new version keeps the compartments (it inherits the record's labels): dropping one is
    # refused, and nothing is written.
    before = sender.memory.stats().total
    with pytest.raises(InvalidInput, match="compartments \\(hr\\)") as dropped:
        sender.memory.supersede(newer.id, "salary review, final", compartments=[])
    assert dropped.value.field == "compartments"
    assert sender.memory.stats().total == before
    assert sender.memory.get(newer.id).is_current


def test_re_registering_with_other_compartments_is_a_conflict(
    pools: Callable[..., SharedMemoryPool],
) -> None:
    pool = pools("p1")
    pool.register(AgentInfo(agent_id="a1", clearance=Zone.SECRET, compartments=["hr"]))
    pool.register(AgentInfo(agent_id="a1", clearance=Zone.SECRET, compartments=["hr"]))
    with pytest.raises(RegistrationConflict, match="secret\\+hr"):
        pool.register(AgentInfo(agent_id="a1", clearance=Zone.SECRET))
    assert pool.get_agent("a1").compartments == ["hr"]


def test_granting_and_revoking_compartments_is_audited_and_reaches_the_broker(
    pools: Callable[..., SharedMemoryPool], redis_server: EmbeddedRedis
) -> None:
    """``set_compartments`` re-signs the entry, audits what was granted and revoked, and the
    agent's Redis user follows: it gets records of a granted compartment and, once revoked,
    NOPERM on that compartment's stream."""
    pool = pools("p1")
    sender = pool.register_agent(
        "sender", clearance=Zone.SECRET, compartments=COMPARTMENTS, share_levels=[Level.EPISODE]
    )
    reader = pools("p2").register_agent("reader", clearance=Zone.SECRET, compartments=["hr"])
    assert sender.wait_connected()
    assert reader.wait_connected()
    with pytest.raises(InvalidInput, match="unknown compartment"):
        pool.set_compartments("reader", ["nuclear"])
    assert pool.get_agent("reader").compartments == ["hr"]

    info = pool.set_compartments("reader", ["apollo"])
    assert info.compartments == ["apollo"]
    assert pool.security is not None
    assert pool.security.admin.verify_entry(
        "reader", Zone.SECRET, info.public_key, info.registry_signature, compartments=["apollo"]
    )
    changes = [
        (e.kind, e.details.get("compartments"))
        for e in pool.audit.entries()
        if e.subject == "reader" and e.kind in (AuditEvent.GRANTED, AuditEvent.REVOKED)
    ]
    assert changes == [(AuditEvent.GRANTED, ["apollo"]), (AuditEvent.REVOKED, ["hr"])]
    sender.memory.add("apollo launch window", user_id="u1", compartments=["apollo"])
    sender.memory.add("hr reorg", user_id="u1", compartments=["hr"])
    assert wait_for(lambda: "apollo launch window" in received(reader))
    time.sleep(0.3)
    assert "hr reorg" not in received(reader)


# -- the broker -----------------------------------------------------------------------------


def test_the_broker_keeps_an_agent_off_compartments_it_does_not_hold(
    comp_settings: Callable[..., HivememSettings],
    client: redis.Redis,
    redis_server: EmbeddedRedis,
) -> None:
    """Connected as an agent holding {hr} at INTERNAL: it may subscribe to its own compartment
    glob and read the streams of {hr}; subscribing to, globbing or reading {apollo}, {apollo,
    hr}, or {hr} in a higher zone fails with NOPERM, and so does a wider glob."""
    comp_settings("p")
    rules = agent_rules("t", "a1", Zone.INTERNAL, ["hr"])
    assert {"&t:comp:public:0[01]0", "&t:comp:internal:0[01]0", "+psubscribe"} <= set(rules)
    assert "~t:comp:internal:0[01]0:*" in rules
    assert not any(":comp:confidential" in rule for rule in rules)
    assert "+psubscribe" not in agent_rules("t", "a1", Zone.INTERNAL)
    acl = AgentAcl(client, namespace="t")
    agent = redis.Redis.from_url(
        acl.provision("a1", Zone.INTERNAL, compartments=["hr"]).url(redis_server.url)
    )
    admin_bus = RedisBus(client, namespace="t", maxlen=100)
    for zone, held in ((Zone.INTERNAL, ["apollo"]), (Zone.SECRET, ["hr"])):
        admin_bus.publish(zone_topic(zone, held), "admin", [("m1", b"x")])
    try:
        assert subscribed(agent, "t:comp:internal:0[01]0", glob=True)["type"] == "psubscribe"
        assert subscribed(agent, "t:comp:internal:010")["type"] == "subscribe"
        assert agent.xrange("t:comp:internal:010:stream") == []
        attempts = (
            lambda: agent.xrange("t:comp:internal:100:stream"),
            lambda: agent.xrange("t:comp:internal:110:stream"),
            lambda: agent.xrange("t:comp:secret:010:stream"),
            lambda: agent.xrange("t:comp:confidential:010:stream"),
            lambda: subscribed(agent, "t:comp:internal:100"),
            lambda: subscribed(agent, "t:comp:internal:*", glob=True),
            lambda: subscribed(agent, "t:comp:internal:010", glob=True),
            lambda: subscribed(agent, "t:comp:secret:0[01]0", glob=True),
        )
        assert refused_all(attempts) == 8
    finally:
        agent.close()


# -- the workers ----------------------------------------------------------------------------


def test_consolidation_keeps_compartments_apart_and_the_profile_carries_the_union(
    pools: Callable[..., SharedMemoryPool], comp_settings: Callable[..., HivememSettings]
) -> None:
    """Traces and categories are drawn within one set of compartments; the domain profile,
    derived from all of them, carries their union; the outputs reach the agents on their
    compartments' topics."""
    writer = pools("p1").register_agent("diary", clearance=Zone.SECRET, compartments=COMPARTMENTS)
    reader = pools("p2").register_agent("reader", clearance=Zone.SECRET, compartments=["hr"])
    assert writer.wait_connected()
    assert reader.wait_connected()
    for text, compartments in (
        ("Ada ran 10 km by the river", ["hr"]),
        ("Ada runs every morning before work", ["hr"]),
        ("Ada ran 12 km by the river", ["apollo"]),
        ("Ada runs every evening after work", ["apollo"]),
    ):
        writer.memory.add(text, user_id="ada", compartments=compartments)
    assert writer.flush()
    runtime = WorkerRuntime(comp_settings("worker"))
    try:
        due: list[str] = []
        runtime.ingest.drain(Zone.PUBLIC, on_due=due.append)
        report = runtime.consolidation.consolidate(Zone.PUBLIC, "ada")
        assert report.domain is not None
        traces = runtime.store.get(Zone.PUBLIC, report.traces)
        categories = runtime.store.get(Zone.PUBLIC, report.categories)
        (domain,) = runtime.store.get(Zone.PUBLIC, [report.domain])
    finally:
        runtime.close()
    assert {tuple(t.compartments) for t in traces} == {("hr",), ("apollo",)}
    assert {tuple(c.compartments) for c in categories} == {("hr",), ("apollo",)}
    assert domain.compartments == ["apollo", "hr"]

    def levels(agent: Any) -> dict[Level, set[tuple[str, ...]]]:
        found: dict[Level, set[tuple[str, ...]]] = {}
        for r in agent.memory.list_memories(user_id="ada", limit=100):
            if r.received_from == "hivemem-workers":
                found.setdefault(r.level, set()).add(tuple(r.compartments))
        return found

    assert wait_for(lambda: Level.DOMAIN in levels(writer))
    assert wait_for(lambda: Level.CATEGORY in levels(reader))
    time.sleep(0.3)
    assert levels(reader) == {Level.TRACE: {("hr",)}, Level.CATEGORY: {("hr",)}}


def test_an_agent_entry_with_compartments_reads_back(
    comp_settings: Callable[..., HivememSettings], client: redis.Redis
) -> None:
    comp_settings("p")
    registry = AgentRegistry(client, namespace="t", heartbeat_ttl_s=5)
    registry.register(AgentInfo(agent_id="a1", compartments=["legal", "hr"]))
    assert registry.get("a1").compartments == ["hr", "legal"]
    info, prior = registry.update_access("a1", {"compartments": []}, None)
    assert (info.compartments, prior.compartments) == ([], ["hr", "legal"])
    with pytest.raises(InvalidInput):
        registry.update_access("a1", {"compartments": ["nope"]}, None)
    assert registry.get("a1").compartments == []


# -- attacks --------------------------------------------------------------------------------


def test_forged_compartments_and_misrouted_envelopes_are_refused_unopened(
    pools: Callable[..., SharedMemoryPool],
) -> None:
    """Written straight to Redis with the pool's own connection: a correctly signed message
    whose sender does not hold the compartments it claims is refused (``over_clearance``); a
    genuine compartmented message moved onto the zone's channel is refused by an agent outside
    the compartment before its body is opened (``outside_compartments``) and skipped by the
    holder (wrong topic). Both refusals are audited; nothing is stored."""
    pool = pools("p1")
    pool.register(AgentInfo(agent_id="pete", clearance=Zone.SECRET))
    hank = pool.register_agent(
        "hank", clearance=Zone.SECRET, compartments=["hr"], share_levels=[Level.EPISODE]
    )
    reader = pools("p2").register_agent("reader", clearance=Zone.SECRET, compartments=["hr"])
    outsider = pools("p3").register_agent("outsider", clearance=Zone.SECRET)
    assert reader.wait_connected()
    assert outsider.wait_connected()
    assert pool.security is not None
    # An insider with the master key seals as if pete held hr; the registry says he does not.
    pete_key = SigningKey.load(pool.agent_dir("pete") / "signing.key")
    insider = pool.security.agent_codec(
        AgentInfo(agent_id="pete", clearance=Zone.SECRET, compartments=["hr"]), pete_key
    )

    def envelope(sender: str, content: str) -> Any:
        claimed = record(content, zone=Zone.SECRET, compartments=["hr"], vector=[0.05] * 384)
        return make_envelope(sender=sender, zone=Zone.SECRET, records=[claimed])

    hr_topic = zone_topic(Zone.SECRET, ["hr"])
    pool.bus.register_topic(hr_topic)
    pool.bus.publish(
        hr_topic, "pete", [(uuid.uuid4().hex, insider.encode(envelope("pete", "forged memo")))]
    )
    moved = hank.identity.codec.encode(envelope("hank", "moved memo"))
    pool.bus.publish(zone_topic(Zone.SECRET), "hank", [(uuid.uuid4().hex, moved)])
    ATTEMPTS["forged compartments"] += 1
    ATTEMPTS["compartmented message on a zone channel"] += 1

    assert wait_for(lambda: rejections(pool, "reader") == ["over_clearance"])
    assert wait_for(lambda: rejections(pool, "outsider") == ["outside_compartments"])
    hank.memory.add("genuine memo", user_id="u1", zone=Zone.SECRET, compartments=["hr"])
    assert wait_for(lambda: "genuine memo" in received(reader))
    assert received(reader) == {"genuine memo"}
    assert received(outsider) == set()


def test_the_ingest_queue_opens_for_the_workers_alone(
    pools: Callable[..., SharedMemoryPool], redis_server: EmbeddedRedis
) -> None:
    """Every write goes to the writer's ingest queue in the zone, unshared levels and every
    compartment set alike. Another agent of the zone may not read it (its Redis user is
    refused); what it holds opens with no agent's keys, not even the writer's own (it holds the
    zone's key and every compartment, and its user may read the queue): only the workers'
    ingest key opens it."""
    pool = pools("p1")
    lead = pool.register_agent("lead", clearance=Zone.SECRET, compartments=COMPARTMENTS)
    engineer = pool.register_agent("engineer", clearance=Zone.SECRET, compartments=["apollo"])
    assert lead.wait_connected()
    assert engineer.wait_connected()
    salary = "Ada's salary review: 120k from March"
    lead.memory.add(salary, user_id="u1", zone=Zone.SECRET, compartments=["hr"])
    lead.memory.add("launch slips a week", user_id="u1", zone=Zone.SECRET)  # unshared level
    assert lead.flush()
    assert pool.security is not None
    assert pool.security.acl is not None
    eve = pool.security.acl.provision("eve", Zone.SECRET, compartments=["apollo"])
    stream = f"{pool.settings.pool.namespace}:ingest:secret:agent:lead:stream"
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(eve.url(redis_server.url)).xrange(stream)
    ATTEMPTS["another agent's ingest queue read"] += 1
    queued = [fields[b"d"] for _, fields in redis.Redis.from_url(redis_server.url).xrange(stream)]
    assert len(queued) == 2
    for body in queued:
        assert salary.encode() not in body
        for agent in (engineer, lead):
            with pytest.raises((InvalidMessage, MessageRejected)):
                agent.identity.codec.decode(body)
    ATTEMPTS["ingest queue read with a zone agent's keys"] += 2 * len(queued)
    workers = pool.security.workers_ingest_codec(pool.security.workers_codec())
    opened = [workers.decode(body) for body in queued]
    assert sorted(r.content for e in opened for r in e.records) == sorted(
        [salary, "launch slips a week"]
    )


def test_receive_refuses_what_the_agent_may_not_hold(
    pools: Callable[..., SharedMemoryPool],
) -> None:
    """``memory.receive`` called directly (an integration bypassing the pool's receiver) holds
    the same line as the receiver: a record above the agent's clearance or in a compartment it
    lacks is refused (ClearanceDenied, CompartmentDenied) and nothing of the batch is stored."""
    engineer = pools("p1").register_agent(
        "engineer", clearance=Zone.INTERNAL, compartments=["apollo"]
    )
    unit = [1.0] + [0.0] * (MINILM_DIM - 1)
    fine = record("launch window", compartments=["apollo"], zone=Zone.INTERNAL, vector=unit)
    above = record("the merger", zone=Zone.CONFIDENTIAL, vector=unit)
    outside = record("salary review", compartments=["hr"], vector=unit)
    for bad, refused in ((above, ClearanceDenied), (outside, CompartmentDenied)):
        with pytest.raises(refused):
            engineer.memory.receive([fine, bad], senders=["lead", "lead"])
        assert engineer.memory.list_memories(user_id="u1") == []
    assert [r.id for r in engineer.memory.receive([fine], senders=["lead"])] == [fine.id]
