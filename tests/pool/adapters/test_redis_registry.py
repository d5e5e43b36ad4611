"""The agent registry in Redis: register, list, get, heartbeat, deregister, and conflicts."""

from __future__ import annotations

import time

import pytest
import redis
import structlog

from hivemem.pool.adapters.departures import queue_keys
from hivemem.pool.adapters.redis_bus import RedisBus, ingest_cursor_key, ingest_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import (
    AgentNotFound,
    InvalidIdentifier,
    InvalidInput,
    PoolUnavailable,
    RegistrationConflict,
)
from hivemem.pool.redis_server import EmbeddedRedis


@pytest.fixture
def registry(redis_server: EmbeddedRedis) -> AgentRegistry:
    return AgentRegistry(redis.Redis.from_url(redis_server.url), namespace="t", heartbeat_ttl_s=0.5)


def _info(agent_id: str = "support", **fields: object) -> AgentInfo:
    return AgentInfo(agent_id=agent_id, **fields)  # type: ignore[arg-type]


def test_registered_agents_can_be_listed_and_read_back(registry: AgentRegistry) -> None:
    """Every registration field round-trips through Redis."""
    info = _info(
        display_name="Support bot",
        capabilities=["billing", "email"],
        clearance=Zone.CONFIDENTIAL,
        share_levels=[Level.DOMAIN, Level.CATEGORY],
        receive_levels=[Level.CATEGORY],
        sync_interval=0.5,
    )
    registry.register(info)
    registry.register(_info("tech", clearance=Zone.INTERNAL))
    assert registry.get("support") == info
    assert [a.agent_id for a in registry.list()] == ["support", "tech"]
    assert info.share_levels == [Level.CATEGORY, Level.DOMAIN]


def test_re_registering_with_the_same_clearance_updates_and_keeps_the_first_time(
    registry: AgentRegistry,
) -> None:
    """A restarted agent re-registers; its other settings may change, its history stays."""
    first = registry.register(_info(clearance=Zone.INTERNAL, share_levels=[Level.DOMAIN]))
    second = registry.register(_info(clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]))
    stored = registry.get("support")
    assert stored.share_levels == [Level.CATEGORY]
    assert stored.registered_at == first.registered_at == second.registered_at


def test_re_registering_with_another_clearance_is_an_error(registry: AgentRegistry) -> None:
    """Clearance never changes by re-registration; the stored one stays."""
    registry.register(_info(clearance=Zone.PUBLIC))
    with pytest.raises(RegistrationConflict, match="public"):
        registry.register(_info(clearance=Zone.SECRET))
    assert registry.get("support").clearance is Zone.PUBLIC


def test_heartbeats_expire(registry: AgentRegistry) -> None:
    """An agent is alive while its last heartbeat is younger than the TTL."""
    registry.register(_info())
    assert not registry.is_alive("support")
    registry.heartbeat("support")
    assert registry.is_alive("support")
    seen = registry.last_seen("support")
    assert seen is not None
    assert seen.tzinfo is not None
    time.sleep(0.7)
    assert not registry.is_alive("support")


@pytest.mark.parametrize("written", [b"junk", b"nan", b"1e308", b"-1e300", "hash"])
def test_a_heartbeat_key_that_holds_no_time_reads_as_no_heartbeat(
    registry: AgentRegistry, written: bytes | str
) -> None:
    """An agent's Redis user may write its own heartbeat key: whatever it put there, the
    operator's listing goes on (the agent is not seen alive; it is logged), and the agent's
    next heartbeat counts again."""
    registry.register(_info())
    key = "t:agent:support:alive"
    if written == "hash":
        registry.client.hset(key, "x", "y")
    else:
        registry.client.set(key, written)
    with structlog.testing.capture_logs() as logs:
        assert registry.last_seen("support") is None
        assert not registry.is_alive("support")
    assert [e["agent_id"] for e in logs if e["event"] == "agent_heartbeat_unreadable"]
    registry.heartbeat("support")
    assert registry.is_alive("support")


def test_deregistering_removes_the_agent_and_frees_its_id(registry: AgentRegistry) -> None:
    """After deregistration the id is unknown and may register with another clearance."""
    registry.register(_info(clearance=Zone.SECRET))
    registry.heartbeat("support")
    registry.deregister("support")
    with pytest.raises(AgentNotFound):
        registry.get("support")
    assert not registry.is_alive("support")
    registry.register(_info(clearance=Zone.PUBLIC))
    assert registry.get("support").clearance is Zone.PUBLIC


def test_a_deregistration_moves_the_agents_queues_to_a_departure(
    registry: AgentRegistry,
) -> None:
    """Kept, the agent's ingest queues (stream, counter, epoch, the workers' cursor) move in
    one step to a departure of their own, with its entry as it stood; deregistering it again
    fails and changes nothing; registered again, it starts new queues, and its next departure
    is another one. An agent that queued nothing leaves no departure."""
    bus = RedisBus(registry.client, namespace="t", maxlen=100)
    info = registry.register(_info(clearance=Zone.CONFIDENTIAL))
    queue = ingest_topic(Zone.INTERNAL, "support")
    bus.publish(queue, "support", [("a" * 32, b"one"), ("b" * 32, b"two")])
    registry.client.set(ingest_cursor_key("t", queue), "e 1")

    assert registry.deregister("support") == 1
    with pytest.raises(AgentNotFound):
        registry.deregister("support")

    [departure] = registry.departures.all().values()
    assert departure.info == info
    moved = departure.topic(Zone.INTERNAL)
    assert [d.data for d in bus.read(moved, 0, limit=10).deliveries] == [b"one", b"two"]
    assert registry.client.get(ingest_cursor_key("t", moved)) == b"e 1"
    assert not registry.client.exists(*queue_keys("t", queue))
    owners = registry.queue_owners()
    assert (owners.registered, owners.departed) == ([], ["support"])
    assert moved in owners.queues(Zone.INTERNAL)
    assert owners.departure_of(moved) == departure

    registry.register(_info(clearance=Zone.PUBLIC))
    bus.publish(queue, "support", [("c" * 32, b"three")])
    registry.deregister("support")
    later = registry.departures.of("support")
    assert [d.info.clearance for d in later] == [Zone.CONFIDENTIAL, Zone.PUBLIC]
    assert [d.data for d in bus.read(later[1].topic(Zone.INTERNAL), 0, limit=9).deliveries] == [
        b"three"
    ]
    registry.register(_info("idle"))
    assert registry.deregister("idle") == 0
    assert len(registry.departures.all()) == 2


def test_a_deregistration_that_discards_deletes_every_queue_it_left(
    registry: AgentRegistry,
) -> None:
    """``keep_queued=False`` deletes the agent's queues, and those of its earlier departures;
    another agent's stay."""
    bus = RedisBus(registry.client, namespace="t", maxlen=100)
    for agent in ("support", "other"):
        registry.register(_info(agent))
        bus.publish(ingest_topic(Zone.PUBLIC, agent), agent, [("a" * 32, b"queued")])
        registry.deregister(agent)
    registry.register(_info())
    bus.publish(ingest_topic(Zone.PUBLIC, "support"), "support", [("b" * 32, b"again")])

    assert registry.deregister("support", keep_queued=False) == 1

    assert [d.info.agent_id for d in registry.departures.all().values()] == ["other"]
    left = registry.client.keys("t:*support*")  # but the publishing script's expiring marks
    assert left
    assert all(registry.client.ttl(key) > 0 for key in left)


def test_a_departed_agent_is_forgotten_only_when_nothing_of_its_own_queues_is_owed(
    registry: AgentRegistry,
) -> None:
    """Checked where it is forgotten, in one step: a deregistered agent whose own queue holds
    something the workers did not store (a process running on after the deregistration, with
    security off) or that beats stays; once read through and silent, it goes with what is
    left of its queue; registered again (and writing), it goes, its queue kept."""
    bus = RedisBus(registry.client, namespace="t", maxlen=100)
    queue = ingest_topic(Zone.PUBLIC, "support")
    registry.register(_info())
    registry.deregister("support")
    [seq] = bus.publish(queue, "support", [("a" * 32, b"after")])
    assert registry.forget_departed(["support"]) == []
    epoch = bus.read(queue, 0, limit=1).epoch
    registry.client.set(ingest_cursor_key("t", queue), f"{epoch} {seq}")
    registry.heartbeat("support")
    assert registry.forget_departed(["support"]) == []
    registry.client.delete("t:agent:support:alive")

    assert registry.forget_departed(["support"]) == ["support"]
    assert registry.queue_owners().departed == []
    assert not registry.client.exists(*queue_keys("t", queue))

    registry.register(_info())
    registry.deregister("support")
    registry.register(_info())
    bus.publish(queue, "support", [("b" * 32, b"as registered again")])
    assert registry.forget_departed(["support"]) == ["support"]
    assert len(bus.read(queue, 0, limit=10).deliveries) == 1


def test_a_departure_that_does_not_read_is_logged_and_left_out(registry: AgentRegistry) -> None:
    """Only operators and workers write departures; one that does not read is logged, and
    hides no other."""
    bus = RedisBus(registry.client, namespace="t", maxlen=100)
    registry.register(_info("other"))
    bus.publish(ingest_topic(Zone.PUBLIC, "other"), "other", [("a" * 32, b"queued")])
    registry.deregister("other")
    for field, raw in (("7", b"not json"), ("8", b"{}"), ("x", _info().model_dump_json())):
        registry.client.hset("t:registry:departures", field, raw)
    with structlog.testing.capture_logs() as logs:
        found = registry.departures.all()
    assert [d.info.agent_id for d in found.values()] == ["other"]
    assert [e["event"] for e in logs] == ["agent_departure_unreadable"] * 3


def test_unknown_agents_raise_agent_not_found(registry: AgentRegistry) -> None:
    """Looking up or deregistering an unregistered id is a typed error."""
    with pytest.raises(AgentNotFound):
        registry.get("nobody")
    with pytest.raises(AgentNotFound):
        registry.deregister("nobody")


@pytest.mark.parametrize(
    "agent_id", ["", "a:b", "*", "a b", "x" * 65, "-lead", "a\r\nFLUSHALL", "agent@host"]
)
def test_malformed_agent_ids_are_refused_everywhere(registry: AgentRegistry, agent_id: str) -> None:
    """Ids that could escape their Redis keys raise InvalidIdentifier and store nothing."""
    with pytest.raises(InvalidIdentifier):
        _info(agent_id)
    with pytest.raises(InvalidIdentifier):
        registry.get(agent_id)
    with pytest.raises(InvalidIdentifier):
        registry.heartbeat(agent_id)
    assert registry.list() == []


@pytest.mark.parametrize(
    "fields",
    [
        {"clearance": "top"},
        {"share_levels": ["chapter"]},
        {"sync_interval": -1},
        {"capabilities": ["bad\nlabel"]},
        {"unknown": 1},
    ],
)
def test_malformed_registrations_raise_invalid_input(fields: dict[str, object]) -> None:
    """Every registration field is validated before anything reaches Redis."""
    with pytest.raises(InvalidInput):
        _info(**fields)


def test_an_access_change_with_redis_away_raises_pool_unavailable(
    registry: AgentRegistry, redis_server: EmbeddedRedis
) -> None:
    """Redis out of reach before the transaction is written raises PoolUnavailable, not an
    error of the code that checks whether a lost reply's change landed (it raised
    UnboundLocalError); the entry is as it was once Redis is back."""
    registry.register(_info(clearance=Zone.INTERNAL))
    redis_server.stop()
    with pytest.raises(PoolUnavailable):
        registry.update_access("support", {"clearance": Zone.SECRET}, None)
    redis_server.start()
    assert registry.get("support").clearance is Zone.INTERNAL
