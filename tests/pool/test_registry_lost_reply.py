"""A registration or deregistration whose reply is lost, or that stops after its step in Redis,
on a real Redis behind a real TCP relay: it is audited once, whether the same call ends it or a
later one (a deregistration also drops the agent's inbox)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import structlog

import hivemem.pool.adapters.redis_registry as registry_module
from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.adapters.redis_bus import inbox_topic, ingest_topic, topic_keys
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.errors import AgentNotFound, PoolUnavailable
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEntry, AuditEvent
from tests.relay import Relay
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]


@pytest.fixture
def home(make_pool: Pools) -> SharedMemoryPool:
    """A pool on the test's Redis directly: it registers the agent and checks the outcome."""
    return make_pool("home")


@pytest.fixture
def admin(
    pool_settings: Callable[..., HivememSettings],
    relay: Relay,
    redis_server: EmbeddedRedis,
    embedder: FastEmbedder,
) -> object:
    """A pool whose connection goes through ``relay`` and waits 0.3 s for a reply."""
    settings = pool_settings("admin", command_timeout_s=0.3)
    settings = settings.model_copy(update={"redis_url": relay.url(redis_server)})
    pool = SharedMemoryPool.connect(settings, embedder=embedder)
    yield pool
    pool.close()


def script_sha(redis_server: EmbeddedRedis, name: str) -> bytes:
    """The SHA of the registry's script ``name``, loaded in Redis (so that its first call is
    the one relayed)."""
    text = (Path(registry_module.__file__).parent / "lua" / f"{name}.lua").read_text()
    return str(redis.Redis.from_url(redis_server.url).script_load(text)).encode()


def leaving(home: SharedMemoryPool) -> None:
    """Register the agent ``leaving`` (not attached) and put a message in its inbox."""
    home.register(AgentInfo(agent_id="leaving", clearance=Zone.INTERNAL))
    home.bus.publish(inbox_topic("leaving"), "someone", [("a" * 32, b"for leaving")])


def audited(
    home: SharedMemoryPool, kind: AuditEvent, agent_id: str = "leaving"
) -> list[AuditEntry]:
    return [e for e in home.audit.entries() if e.kind == kind and e.subject == agent_id]


def deregistrations(home: SharedMemoryPool) -> list[AuditEntry]:
    return audited(home, AuditEvent.DEREGISTERED)


def ended(home: SharedMemoryPool) -> bool:
    """The agent is out of the registry, its inbox gone and no deregistration of it pending."""
    return (
        not home.registry.exists("leaving")
        and not home.bus.client.exists(*topic_keys(home.bus.namespace, inbox_topic("leaving")))
        and home.registry.pending("leaving") is None
    )


def test_a_deregistration_whose_reply_is_lost_ends_in_the_same_call(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The script ran, its reply came too late: the registry asks Redis again, finds the
    deregistration's note, and the call goes on as if the reply had come (one audit entry, the
    inbox dropped); deregistering again raises AgentNotFound."""
    leaving(home)
    relay.hold_reply_to = (script_sha(redis_server, "depart"), 0.6)
    with structlog.testing.capture_logs() as logs:
        admin.deregister("leaving")

    assert "agent_departure_reply_lost" in [e["event"] for e in logs]
    assert ended(home)
    [entry] = deregistrations(home)
    assert entry.details["kept_queued"] is True
    assert entry.details["resumed"] is False
    with pytest.raises(AgentNotFound):
        admin.deregister("leaving")
    assert len(deregistrations(home)) == 1


def test_a_deregistration_that_runs_after_its_error_is_ended_by_the_next_call(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The request was held up: the caller is told PoolUnavailable, then the script runs after
    all. Deregistering again ends it as it began (discarding what the agent queued, also
    before an earlier deregistration, though the second call asks to keep it)."""
    home.register(AgentInfo(agent_id="leaving", clearance=Zone.INTERNAL))
    home.bus.publish(ingest_topic(Zone.INTERNAL, "leaving"), "leaving", [("b" * 32, b"w")])
    home.deregister("leaving")  # an earlier departure, kept
    assert len(home.registry.departures.of("leaving")) == 1
    leaving(home)
    relay.hold_request_with = (script_sha(redis_server, "depart"), 0.6)

    with pytest.raises(PoolUnavailable):
        admin.deregister("leaving", keep_queued=False)
    assert wait_for(lambda: not home.registry.exists("leaving"))  # the held script ran
    assert home.registry.pending("leaving") is not None
    assert len(deregistrations(home)) == 1  # the earlier one only

    admin.deregister("leaving")

    assert ended(home)
    entry = deregistrations(home)[-1]
    assert (entry.details["kept_queued"], entry.details["resumed"]) == (False, True)
    assert home.registry.departures.of("leaving") == []


def test_registering_an_agent_again_ends_its_unfinished_deregistration_first(
    home: SharedMemoryPool,
) -> None:
    """A process that stopped after the step in Redis (the registry's ``depart`` alone): the
    next registration of the agent ends that deregistration, audited before the registration,
    and the agent starts with an empty inbox."""
    leaving(home)
    departing = home.registry.depart("leaving")
    assert home.registry.pending("leaving") == departing

    home.register(AgentInfo(agent_id="leaving", clearance=Zone.SECRET))

    kinds = [
        (e.kind, e.details.get("resumed")) for e in home.audit.entries() if e.subject == "leaving"
    ]
    assert kinds[-2:] == [(AuditEvent.DEREGISTERED, True), (AuditEvent.REGISTERED, None)]
    assert home.registry.get("leaving").clearance is Zone.SECRET
    assert home.registry.pending("leaving") is None
    assert not home.bus.client.exists(*topic_keys(home.bus.namespace, inbox_topic("leaving")))


def test_a_registration_whose_reply_is_lost_is_audited_in_the_same_call(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The script ran, its reply came too late: the registry reads the entry again, finds it,
    and the call counts the agent as new (audited ``registered`` once)."""
    relay.hold_reply_to = (script_sha(redis_server, "register"), 0.6)
    info, created = admin.register(AgentInfo(agent_id="joining", clearance=Zone.INTERNAL))

    assert created
    assert home.get_agent("joining").public_key == info.public_key
    assert len(audited(home, AuditEvent.REGISTERED, "joining")) == 1
    assert home.registry.pending("joining") is None


def test_a_registration_that_runs_after_its_error_is_audited_by_the_retry(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The request was held up: the caller is told PoolUnavailable, then the script runs after
    all. Registering again (what looks like an update) audits it, ``resumed``; once only."""
    joining = AgentInfo(agent_id="joining", clearance=Zone.INTERNAL)
    relay.hold_request_with = (script_sha(redis_server, "register"), 0.6)
    with pytest.raises(PoolUnavailable):
        admin.register(joining)
    assert wait_for(lambda: home.registry.exists("joining"))
    assert audited(home, AuditEvent.REGISTERED, "joining") == []

    _, created = admin.register(joining)
    _, again = admin.register(joining)

    assert (created, again) == (True, False)
    [entry] = audited(home, AuditEvent.REGISTERED, "joining")
    assert entry.details["resumed"] is True
    assert home.registry.pending("joining") is None


def test_a_grant_whose_reply_is_lost_is_audited_in_the_same_call(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay
) -> None:
    """The transaction ran, its reply came too late (redis-py then raises WatchError, which
    otherwise means "try again"): the registry reads the entry, finds it written, and the
    grant is audited once, from the clearance held before."""
    home.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))
    relay.hold_reply_to = (b"HSETNX", 0.6)
    admin.set_clearance("a1", Zone.SECRET)

    [entry] = audited(home, AuditEvent.GRANTED, "a1")
    assert (entry.zone, entry.details["previous"], entry.details["resumed"]) == (
        "secret",
        "internal",
        False,
    )
    assert home.get_agent("a1").clearance is Zone.SECRET
    assert home.registry.pending("a1") is None


def test_a_revocation_held_up_on_its_way_is_done_once_and_audited_once(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay
) -> None:
    """The transaction is held up past the timeout: the registry tries again on a new
    connection (the entry is not written yet), which commits; the held one then finds its
    watched entry changed and does nothing. One revocation, audited once."""
    home.register(AgentInfo(agent_id="a1", clearance=Zone.SECRET))
    relay.hold_request_with = (b"HSETNX", 0.6)
    admin.set_clearance("a1", Zone.PUBLIC)
    time.sleep(0.8)  # the held transaction has reached Redis

    [entry] = audited(home, AuditEvent.REVOKED, "a1")
    assert (entry.zone, entry.details["previous"]) == ("public", "secret")
    assert home.get_agent("a1").clearance is Zone.PUBLIC
    assert home.registry.pending("a1") is None


def test_an_access_change_left_unaudited_is_audited_by_the_next_one(
    home: SharedMemoryPool, admin: SharedMemoryPool
) -> None:
    """A process that stopped after the registry's step (``update_access`` alone): asking
    again for the same access changes nothing but audits the change, ``resumed``, from the
    access held before it; asking once more audits nothing."""
    assert home.security is not None
    home.register(AgentInfo(agent_id="a1", clearance=Zone.SECRET))
    home.registry.update_access("a1", {"clearance": Zone.PUBLIC}, home.security.signed)

    admin.set_clearance("a1", Zone.PUBLIC)
    admin.set_clearance("a1", Zone.PUBLIC)

    [entry] = audited(home, AuditEvent.REVOKED, "a1")
    assert (entry.details["previous"], entry.details["resumed"]) == ("secret", True)
    assert home.registry.pending("a1") is None


def test_a_discard_whose_reply_is_lost_counts_what_it_deleted(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay
) -> None:
    """Deleting a departure's queues (one transaction) loses its reply: the departure is gone,
    so the call counts it, and the audit entry says one departure went, not none."""
    home.register(AgentInfo(agent_id="leaving", clearance=Zone.INTERNAL))
    home.bus.publish(ingest_topic(Zone.INTERNAL, "leaving"), "leaving", [("c" * 32, b"w")])
    home.deregister("leaving")
    relay.hold_reply_to = (b"HDEL", 0.6)

    assert admin.discard_queued("leaving") == 1

    [entry] = audited(home, AuditEvent.QUEUED_DISCARDED)
    assert entry.details["departures"] == 1
    assert home.registry.departures.of("leaving") == []


def test_a_new_key_whose_reply_is_lost_is_audited_in_the_same_call(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The agent registered from another directory (another key): the step that ends the old
    key's registration loses its reply; the entry shows the new key, so the call audits the
    old key's end and the new registration."""
    home.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))
    relay.hold_reply_to = (script_sha(redis_server, "depart"), 0.6)
    info, _ = admin.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))

    assert home.get_agent("a1").public_key == info.public_key
    [ended] = audited(home, AuditEvent.DEREGISTERED, "a1")
    assert ended.details["reason"] == "new_key"
    assert len(audited(home, AuditEvent.REGISTERED, "a1")) == 2
    assert home.registry.pending("a1") is None


def test_a_new_key_held_up_on_its_way_is_audited_by_the_retry(
    home: SharedMemoryPool, admin: SharedMemoryPool, relay: Relay, redis_server: EmbeddedRedis
) -> None:
    """The step is held up and runs after the caller was told PoolUnavailable: registering
    again looks like an update, and audits the new key, ``resumed``, once."""
    home.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))
    relay.hold_request_with = (script_sha(redis_server, "depart"), 0.6)
    with pytest.raises(PoolUnavailable):
        admin.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))
    old_key = home.get_agent("a1").public_key
    assert wait_for(lambda: home.get_agent("a1").public_key != old_key)

    admin.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))
    admin.register(AgentInfo(agent_id="a1", clearance=Zone.INTERNAL))

    [ended] = audited(home, AuditEvent.DEREGISTERED, "a1")
    assert (ended.details["reason"], ended.details["resumed"]) == ("new_key", True)
    assert len(audited(home, AuditEvent.REGISTERED, "a1")) == 2
    assert home.registry.pending("a1") is None
