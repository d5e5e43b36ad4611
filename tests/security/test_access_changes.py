"""Without Redis ACLs (``security.redis_acl=False``) an agent running in another process follows
its registry entry: a lowered clearance, a revoked compartment or a deregistration stops what
it no longer may receive, from the first message sent after the change returned (the pool
announces it), or at its next heartbeat when the announcement was missed; a raised clearance
opens the newly allowed zone. Each pool stands for one process; the admin's is another."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.agents.agent import Agent
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.errors import CompartmentDenied, PolicyDenied
from hivemem.pool.records import MemoryRecord
from hivemem.pool.redis_server import free_port
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.redis_acl import username_of
from tests.security.conftest import received
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]
COMPARTMENTS = ("apollo", "hr")
#: Long enough that a test passing within it did not need a heartbeat.
SLOW_BEAT_S = 60.0


def scene(
    make_pool: Pools, *, clearance: Zone = Zone.SECRET, acl: bool = False, beat_s: float = 0.2
) -> tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent]:
    """alice (SECRET, every compartment) in the admin's pool; bob (``clearance``, apollo) in
    his own, beating every ``beat_s``; one record has reached bob."""
    admin = make_pool("admin", acl=acl, compartments=COMPARTMENTS)
    alice = admin.register_agent(
        "alice", clearance=Zone.SECRET, compartments=COMPARTMENTS, share_levels=[Level.EPISODE]
    )
    home = make_pool("home", acl=acl, compartments=COMPARTMENTS, heartbeat_interval_s=beat_s)
    bob = home.register_agent("bob", clearance=clearance, compartments=["apollo"])
    assert alice.wait_connected()
    assert bob.wait_connected()
    alice.memory.add("before", user_id="u1", zone=Zone.PUBLIC)
    assert wait_for(lambda: "before" in received(bob))
    return admin, alice, home, bob


def test_a_lowered_clearance_stops_new_records_above_it_at_once(make_pool: Pools) -> None:
    """Once ``set_clearance`` returned, a SECRET record sent never reaches bob, now PUBLIC,
    though no heartbeat came; a PUBLIC one sent after it does (so the first had its chance)."""
    admin, alice, _, bob = scene(make_pool, beat_s=SLOW_BEAT_S)
    with structlog.testing.capture_logs() as logs:
        admin.set_clearance("bob", Zone.PUBLIC)
        alice.memory.add("vault code", user_id="u1", zone=Zone.SECRET)
        alice.memory.add("public news", user_id="u1", zone=Zone.PUBLIC)
        assert wait_for(lambda: "public news" in received(bob))
    assert "vault code" not in received(bob)
    assert bob.identity.info.clearance == Zone.PUBLIC
    changed = [e for e in logs if e["event"] == "pool_receive_clearance_changed"]
    assert [e["clearance"] for e in changed] == ["public"]


def test_a_revoked_compartment_stops_its_records_at_once(make_pool: Pools) -> None:
    """Once ``set_compartments`` took apollo from bob, apollo records stop reaching him while
    records without compartments still do."""
    admin, alice, _, bob = scene(make_pool, beat_s=SLOW_BEAT_S)
    alice.memory.add("apollo before", user_id="u1", zone=Zone.SECRET, compartments=["apollo"])
    assert wait_for(lambda: "apollo before" in received(bob))
    admin.set_compartments("bob", [])
    alice.memory.add("apollo after", user_id="u1", zone=Zone.SECRET, compartments=["apollo"])
    alice.memory.add("plain after", user_id="u1", zone=Zone.SECRET)
    assert wait_for(lambda: "plain after" in received(bob))
    time.sleep(0.3)  # anything wrongly sent would have arrived by now
    assert "apollo after" not in received(bob)
    assert bob.identity.info.compartments == []


@pytest.mark.parametrize("acl", [False, True], ids=["no-acl", "acl"])
def test_a_lowered_agent_may_no_longer_write_what_it_lost(make_pool: Pools, acl: bool) -> None:
    """Once bob followed his lowered entry, his own writes above it are refused as well (the
    zone's write floor: PolicyDenied; a compartment lost: CompartmentDenied), nothing stored:
    before, the write gate kept the entry bob attached with, and other agents refused his
    messages only once their cache of his entry expired."""
    admin, _, _, bob = scene(make_pool, acl=acl)
    bob.memory.add("apollo plan", user_id="u1", zone=Zone.SECRET, compartments=["apollo"])
    admin.set_clearance("bob", Zone.INTERNAL)
    admin.set_compartments("bob", [])
    assert wait_for(lambda: bob.identity.info.compartments == [])
    assert bob.identity.info.clearance == Zone.INTERNAL
    before = bob.memory.stats().total
    with pytest.raises(PolicyDenied, match="clearance internal"):
        bob.memory.add("vault code", user_id="u1", zone=Zone.SECRET)
    with pytest.raises(CompartmentDenied):
        bob.memory.add("apollo moves", user_id="u1", zone=Zone.INTERNAL, compartments=["apollo"])
    assert bob.memory.stats().total == before
    assert bob.memory.add("internal note", user_id="u1", zone=Zone.INTERNAL).zone == Zone.INTERNAL


def test_a_change_whose_announcement_was_missed_is_followed_at_the_next_heartbeat(
    make_pool: Pools,
) -> None:
    """An entry changed without the pool's announcement (straight in the registry, signed):
    bob reads it at his next heartbeat and from then on receives as now cleared."""
    admin, alice, _, bob = scene(make_pool, beat_s=0.2)
    assert admin.security is not None
    with structlog.testing.capture_logs() as logs:
        admin.registry.update_access("bob", {"clearance": Zone.PUBLIC}, admin.security.signed)
        changed = lambda: any(e["event"] == "pool_receive_clearance_changed" for e in logs)  # noqa: E731
        assert wait_for(changed, timeout_s=3.0)
    assert wait_for(bob.wait_connected)
    alice.memory.add("vault code", user_id="u1", zone=Zone.SECRET)
    alice.memory.add("public news", user_id="u1", zone=Zone.PUBLIC)
    assert wait_for(lambda: "public news" in received(bob))
    assert "vault code" not in received(bob)


def test_an_entry_without_the_admins_signature_is_not_taken_on(make_pool: Pools) -> None:
    """Someone with the pool's credentials raises bob's clearance in the registry without the
    admin's key: bob logs it and stays as cleared (a record above it does not reach him)."""
    admin, alice, _, bob = scene(make_pool, clearance=Zone.INTERNAL, beat_s=0.2)
    forged = admin.get_agent("bob").model_copy(update={"clearance": Zone.SECRET})
    with structlog.testing.capture_logs() as logs:
        admin.registry.client.hset(
            f"{admin.bus.namespace}:registry:agents", "bob", forged.model_dump_json()
        )
        unsigned = lambda: any(e["event"] == "pool_registry_entry_unsigned" for e in logs)  # noqa: E731
        assert wait_for(unsigned, timeout_s=3.0)
    alice.memory.add("secret plan", user_id="u1", zone=Zone.SECRET)
    alice.memory.add("internal memo", user_id="u1", zone=Zone.INTERNAL)
    assert wait_for(lambda: "internal memo" in received(bob))
    assert "secret plan" not in received(bob)
    assert bob.identity.info.clearance == Zone.INTERNAL


def test_a_deregistered_agent_stops_receiving_and_says_so_once(make_pool: Pools) -> None:
    """Deregistered in the admin's process, bob's receiver stops: nothing sent after reaches
    him, he beats no more, and over many heartbeat intervals it is logged once."""
    admin, alice, home, bob = scene(make_pool, beat_s=0.1)
    with structlog.testing.capture_logs() as logs:
        admin.deregister("bob")
        alice.memory.add("vault code", user_id="u1", zone=Zone.SECRET)
        alice.memory.add("public news", user_id="u1", zone=Zone.PUBLIC)
        assert alice.flush()
        time.sleep(1.0)  # ten heartbeat intervals
    gone = [e for e in logs if e["event"] == "pool_receive_deregistered"]
    assert len(gone) == 1
    assert received(bob) == {"before"}
    assert not bob.wait_connected(timeout_s=0.1)
    assert not home.is_alive("bob")


def test_a_record_sent_after_the_change_is_refused_by_a_catch_up_that_reads_it(
    make_pool: Pools,
) -> None:
    """bob's receiver is busy (a slow listener) while a SECRET message, the change and a second
    SECRET message happen: the first live message of the SECRET topic then makes it catch up
    the stream, which holds the second already, while the notice still waits behind them on
    pub/sub. The catch-up reads the entry after the stream, so neither reaches bob."""
    admin, alice, _, bob = scene(make_pool, beat_s=SLOW_BEAT_S)
    release, busy = threading.Event(), threading.Event()

    def slow(records: list[MemoryRecord]) -> None:
        if any(r.content == "hold" for r in records):
            busy.set()
            release.wait(30)

    bob.on_receive(slow)
    alice.memory.add("hold", user_id="u1", zone=Zone.PUBLIC)
    assert busy.wait(10)
    alice.memory.add("secret before", user_id="u1", zone=Zone.SECRET)
    admin.set_clearance("bob", Zone.PUBLIC)
    alice.memory.add("vault code", user_id="u1", zone=Zone.SECRET)
    assert alice.flush()
    release.set()
    alice.memory.add("public news", user_id="u1", zone=Zone.PUBLIC)
    assert wait_for(lambda: "public news" in received(bob))
    time.sleep(0.3)  # anything wrongly applied would be here by now
    assert "vault code" not in received(bob)
    assert bob.identity.info.clearance == Zone.PUBLIC


def test_a_stale_process_stays_out_when_its_id_is_registered_again_with_another_key(
    make_pool: Pools,
) -> None:
    """bob deregistered, an agent of the same id registers from another data directory (another
    key): bob's old process, which holds the old key, does not take the new entry for its own,
    and receives nothing meant for the new agent."""
    admin, alice, _, bob = scene(make_pool, beat_s=0.1)
    with structlog.testing.capture_logs() as logs:
        admin.deregister("bob")
        assert wait_for(lambda: any(e["event"] == "pool_receive_deregistered" for e in logs))
        newcomer = make_pool("other", acl=False, compartments=COMPARTMENTS).register_agent(
            "bob", clearance=Zone.SECRET
        )
        assert newcomer.identity.info.public_key != bob.identity.info.public_key
        assert newcomer.wait_connected()
        alice.memory.add("for the new bob", user_id="u1", zone=Zone.SECRET)
        assert wait_for(lambda: "for the new bob" in received(newcomer))
        time.sleep(0.5)  # five heartbeat intervals of the old process
    assert received(bob) == {"before"}
    assert not any(e["event"] == "pool_receive_registered_again" for e in logs)


@pytest.mark.parametrize("acl", [False, True], ids=["no-acl", "acl"])
def test_a_granted_compartment_opens_its_topics(make_pool: Pools, acl: bool) -> None:
    """Given hr as well, bob catches up on the hr record sent before and receives those sent
    after, with Redis ACLs or without."""
    admin, alice, _, bob = scene(make_pool, acl=acl, beat_s=SLOW_BEAT_S)
    alice.memory.add("hr before", user_id="u1", zone=Zone.SECRET, compartments=["hr"])
    assert alice.flush()
    admin.set_compartments("bob", ["apollo", "hr"])
    alice.memory.add("hr after", user_id="u1", zone=Zone.SECRET, compartments=["hr"])
    assert wait_for(lambda: {"hr before", "hr after"} <= received(bob))
    assert bob.identity.info.compartments == ["apollo", "hr"]


@pytest.mark.parametrize("acl", [False, True], ids=["no-acl", "acl"])
def test_a_raised_clearance_applies_at_the_next_attach_and_loses_nothing(
    make_pool: Pools, acl: bool
) -> None:
    """Raised from INTERNAL to SECRET, a running bob stays INTERNAL (his local store seals to
    the zones he attached with: logged); attached again, he catches up on the SECRET records
    sent meanwhile, with Redis ACLs or without."""
    admin, alice, home, bob = scene(make_pool, clearance=Zone.INTERNAL, acl=acl, beat_s=0.2)
    alice.memory.add("secret before", user_id="u1", zone=Zone.SECRET)
    assert alice.flush()
    with structlog.testing.capture_logs() as logs:
        admin.set_clearance("bob", Zone.SECRET)
        alice.memory.add("secret after", user_id="u1", zone=Zone.SECRET)
        alice.memory.add("internal after", user_id="u1", zone=Zone.INTERNAL)
        assert wait_for(lambda: "internal after" in received(bob))
        deferred = lambda: any(e["event"] == "pool_clearance_raise_deferred" for e in logs)  # noqa: E731
        assert wait_for(deferred, timeout_s=3.0)
    assert not {"secret before", "secret after"} & received(bob)
    assert bob.identity.info.clearance == Zone.INTERNAL
    home.close()
    again = make_pool("home", acl=acl, compartments=COMPARTMENTS).register_agent(
        "bob", clearance=Zone.SECRET, compartments=["apollo"]
    )
    assert wait_for(lambda: {"secret before", "secret after"} <= received(again))


def test_a_registry_out_of_reach_stops_the_receiver_until_it_is_back(make_pool: Pools) -> None:
    """bob's process cannot read the registry: his receiver backs off and reconnects (it does
    not stop, nor receive without knowing its clearance); once it can, he receives again."""
    _, alice, home, bob = scene(make_pool, beat_s=0.2)
    reachable = home.registry.client  # the registry's own connection only; nothing listens:
    home.registry.client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with structlog.testing.capture_logs() as logs:
        lost = lambda: sum(e["event"] == "pool_receive_disconnected" for e in logs)  # noqa: E731
        assert wait_for(lambda: lost() >= 2, timeout_s=5.0)
    home.registry.client = reachable
    alice.memory.add("after", user_id="u1", zone=Zone.PUBLIC)
    assert wait_for(lambda: "after" in received(bob))


def test_a_process_whose_agent_was_registered_again_elsewhere_lets_its_login_go(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """The same agent id registered from another data directory gets a new key and Redis
    password: the first process, refused at login, does not put its own password back (the
    two restored theirs in turn, about twice a second, and the first one's writes never
    went), so the second one's sends keep going."""
    first = make_pool("p1").register_agent("twin", share_levels=[Level.CATEGORY])
    assert first.wait_connected()
    second = make_pool("p2").register_agent("twin", share_levels=[Level.CATEGORY])
    observer = make_pool("p3").register_agent("observer")
    assert second.wait_connected()
    assert observer.wait_connected()
    with structlog.testing.capture_logs() as logs:
        for n in range(5):
            second.memory.add(f"twin note {n}", user_id="u1", level=Level.CATEGORY)
            time.sleep(0.3)
        assert second.flush(10.0)
    assert not [e for e in logs if e["event"] == "pool_agent_user_restored"]
    assert wait_for(lambda: len(observer.memory.list_memories(user_id="u1")) == 5)


def test_a_clearance_change_after_redis_lost_the_acl_users_is_made_and_audited(
    make_pool: Callable[..., SharedMemoryPool],
) -> None:
    """A Redis restarted without its ACL users (they live in its memory): a grant or a
    revocation changes the registry and is audited, and the user is made afresh at the
    agent's next attach. It raised AgentNotFound after the registry had changed (the CLI said
    'no agent' and exited 2), and nothing was audited."""
    pool = make_pool("p1")
    pool.register(AgentInfo(agent_id="support", clearance=Zone.CONFIDENTIAL))
    assert pool.security is not None
    assert pool.security.acl is not None
    pool.registry.client.execute_command("ACL", "DELUSER", username_of("hivemem", "support"))
    assert pool.set_clearance("support", Zone.PUBLIC).clearance is Zone.PUBLIC
    revoked = [e for e in pool.audit.entries() if e.kind == "revoked" and e.subject == "support"]
    assert [e.zone for e in revoked] == ["public"]
    agent = pool.attach("support")
    assert agent.wait_connected()
    assert pool.security.acl.exists("support")
