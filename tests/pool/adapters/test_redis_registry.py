"""The agent registry in Redis: register, list, get, heartbeat, deregister, and conflicts."""

from __future__ import annotations

import time

import pytest
import redis
import structlog

from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import AgentNotFound, InvalidIdentifier, InvalidInput, RegistrationConflict
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


def test_a_departure_keeps_the_entry_and_heads_until_forgotten(registry: AgentRegistry) -> None:
    """Deregistered with its queued writes kept, the agent's entry as it stood and its queues'
    heads stay (covering positions up to the head, in the head's epoch) until the workers
    forget it; deregistered again without, an earlier departure goes."""
    info = registry.register(_info(clearance=Zone.CONFIDENTIAL, compartments=[]))
    registry.deregister("support", kept={"ingest:public:agent:support": ("e1", 7)})
    departure = registry.departure("support")
    assert departure is not None
    assert departure.info == info
    assert registry.departures() == {"support": departure}
    assert registry.queue_owners() == ([], ["support"])
    queue = "ingest:public:agent:support"
    assert [departure.covers(queue, "e1", seq) for seq in (1, 7, 8)] == [True, True, False]
    assert not departure.covers(queue, "e2", 1)
    assert not departure.covers("ingest:internal:agent:support", "e1", 1)
    registry.forget_departed(["support"])
    assert registry.departure("support") is None
    assert registry.queue_owners() == ([], [])

    registry.register(_info(clearance=Zone.PUBLIC))
    registry.deregister("support", kept={})
    registry.register(_info(clearance=Zone.PUBLIC))
    registry.deregister("support")
    assert registry.departures() == {}


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"entry": {}}', b'{"entry": {"agent_id": "x"}, "heads": 3}']
)
def test_a_departure_record_that_does_not_read_is_none(registry: AgentRegistry, raw: bytes) -> None:
    """Only operators and workers write departures; one that does not read is logged and taken
    as none (what the agent queued is then refused), and hides no other."""
    registry.register(_info("other"))
    registry.deregister("other", kept={})
    registry.client.hset("t:registry:departures", "support", raw)
    with structlog.testing.capture_logs() as logs:
        assert registry.departure("support") is None
        assert list(registry.departures()) == ["other"]
    assert [e["event"] for e in logs] == ["agent_departure_unreadable"] * 2


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
