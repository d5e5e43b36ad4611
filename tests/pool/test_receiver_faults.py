"""What a registered agent can write with its own Redis user or signing key, and what Redis can
refuse, must not stop another agent's receiving thread or lose a message it was sent.

Each attack runs in a secure pool (ACL users on): alice's connection is her own ACL user, which
may write her zones' topic keys. After it, a genuine message must still reach bob.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.agents.agent import Agent
from hivemem.pool.adapters.redis_bus import zone_topic
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.redis_server import free_port
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.redis_acl import username_of
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]
TOPIC = zone_topic(Zone.INTERNAL)
VECTOR = [0.05] * 384


def received(agent: Agent) -> set[str]:
    found = [
        r
        for user in ("u1", "u2")
        for r in agent.memory.list_memories(user_id=user, limit=1000)
        if r.received_from is not None
    ]
    return {r.content for r in found}


def send(alice: Agent, content: str) -> None:
    alice.memory.add(content, user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)


def scene(
    make_pool: Pools, **fields: object
) -> tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent]:
    """alice and bob in two pools; one genuine message has passed (epoch, cursor, u1's keys)."""
    alice_pool = make_pool("p1", **fields)
    alice = alice_pool.register_agent(
        "alice", clearance=Zone.CONFIDENTIAL, share_levels=[Level.CATEGORY]
    )
    bob_pool = make_pool("p2", **fields)
    bob = bob_pool.register_agent("bob", clearance=Zone.INTERNAL)
    assert alice.wait_connected()
    assert bob.wait_connected()
    send(alice, "genuine 0")
    assert wait_for(lambda: "genuine 0" in received(bob))
    return alice_pool, alice, bob_pool, bob


def key(pool: SharedMemoryPool, part: str) -> str:
    return f"{pool.bus.namespace}:{TOPIC}:{part}"


def record(content: str, **update: object) -> MemoryRecord:
    plain = MemoryRecord(
        content=content, scope=Scope(user_id="u1"), level=Level.CATEGORY, zone=Zone.INTERNAL
    )
    return plain.model_copy(update=update)  # not validated again: what a hostile sender writes


def signed(alice: Agent, **envelope_update: object) -> bytes:
    envelope = make_envelope(
        sender="alice", zone=Zone.INTERNAL, records=[record("hostile")], dense=[VECTOR]
    )
    return alice.identity.codec.encode(envelope.model_copy(update=envelope_update))


def poke(client: redis.Redis, pool: SharedMemoryPool) -> None:
    """A live message of another epoch: every receiver of the topic reads its stream."""
    client.publish(pool.bus.channel(TOPIC), b"zz 1 alice x")


def far_date(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    """A record dated year 1 at +01:00: no UTC time (OverflowError when converted)."""
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    body = signed(alice, records=[record("hostile", valid_from=early)])
    pool.bus.publish(TOPIC, "alice", [(uuid.uuid4().hex, body)])


def bad_vector(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    pool.bus.publish(TOPIC, "alice", [(uuid.uuid4().hex, signed(alice, dense=["abc"]))])


def huge_live_seq(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.publish(pool.bus.channel(TOPIC), b"e " + b"1" * 5000 + b" alice x")


def entry_without_body(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.xadd(key(pool, "stream"), {"s": "alice", "x": "y"}, id="1000-0")
    own.set(key(pool, "seq"), 1000)  # the pool's script numbers the next message after it
    poke(own, pool)


def epoch_not_utf8(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.set(key(pool, "epoch"), b"\xff")
    poke(own, pool)


def seq_not_a_number(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.set(key(pool, "seq"), "abc")
    poke(own, pool)


def stream_of_another_type(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.set(key(pool, "stream"), "x")
    poke(own, pool)


def entry_id_beyond_64_bits(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    own.xadd(key(pool, "stream"), {"d": "junk", "s": "alice"}, id=f"{2**64 - 1}-0")
    poke(own, pool)


def epoch_with_a_space(pool: SharedMemoryPool, alice: Agent, own: redis.Redis) -> None:
    """Live messages would read as no message (the space separates their fields)."""
    own.set(key(pool, "epoch"), "a b")


def ids_beyond_the_counter_trimmed_away(
    pool: SharedMemoryPool, alice: Agent, own: redis.Redis
) -> None:
    """An empty stream whose last id is far beyond the counter: the script's XADD would fail."""
    own.xadd(
        key(pool, "stream"),
        {"d": "junk", "s": "alice"},
        id="999999999-0",
        maxlen=0,
        approximate=False,
    )
    poke(own, pool)


ATTACKS = [
    ids_beyond_the_counter_trimmed_away,
    epoch_with_a_space,
    far_date,
    bad_vector,
    huge_live_seq,
    entry_without_body,
    epoch_not_utf8,
    seq_not_a_number,
    stream_of_another_type,
    entry_id_beyond_64_bits,
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_what_an_agent_writes_does_not_stop_another_agents_receiver(
    make_pool: Pools, attack: Callable[[SharedMemoryPool, Agent, redis.Redis], None]
) -> None:
    alice_pool, alice, _bob_pool, bob = scene(make_pool)
    own = alice._bus.client  # alice's own ACL user, as an insider would use it
    assert own is not alice_pool.bus.client
    attack(alice_pool, alice, own)
    time.sleep(0.3)  # bob has judged the attack
    # Where the attack damaged the topic's keys, the pool's script starts a new epoch.
    send(alice, "genuine after")
    assert wait_for(lambda: "genuine after" in received(bob))
    assert "hostile" not in received(bob)


@pytest.mark.parametrize("valid", [False, True], ids=["junk", "own_valid_message"])
def test_a_live_message_with_a_forged_number_hides_no_genuine_message(
    make_pool: Pools, valid: bool
) -> None:
    """alice's own Redis user PUBLISHes, bypassing the pool's script, a message numbered as the
    topic's next one: junk (refused), or a valid message of her own (applied). The genuine
    message the script then gives that number must still be applied."""
    alice_pool, alice, _bob_pool, bob = scene(make_pool)
    own = alice._bus.client
    epoch = own.get(key(alice_pool, "epoch"))
    after = int(own.get(key(alice_pool, "seq"))) + 1
    body = signed(alice, message_id=uuid.uuid4().hex) if valid else b"junk"
    with structlog.testing.capture_logs() as logs:
        own.publish(alice_pool.bus.channel(TOPIC), b"%s %d alice %s" % (epoch, after, body))
        time.sleep(0.3)  # bob has judged it
        send(alice, "genuine after")
        assert wait_for(lambda: "genuine after" in received(bob))
    assert int(own.get(key(alice_pool, "seq"))) == after  # the genuine message got that number
    assert ("hostile" in received(bob)) is valid
    assert not [e for e in logs if e["event"] == "pool_message_rejected"]
    skipped = [e for e in logs if e["event"] == "pool_message_skipped" and e.get("seq") == after]
    assert len(skipped) == (0 if valid else 1)  # junk: no frame


def test_redis_out_of_memory_stops_neither_receiver_nor_sender(make_pool: Pools) -> None:
    """At maxmemory (noeviction) Redis refuses the heartbeat's write and the sender's: logged,
    and once Redis has room again what was written meanwhile arrives."""
    alice_pool, alice, _bob_pool, bob = scene(make_pool, heartbeat_interval_s=0.2)
    admin = alice_pool.bus.client
    policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    with structlog.testing.capture_logs() as logs:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            assert wait_for(lambda: any(e["event"] == "pool_heartbeat_failed" for e in logs))
            send(alice, "during the squeeze")  # refused by Redis: stays in alice's outbox
            assert wait_for(lambda: any(e["event"] == "pool_send_failed" for e in logs))
        finally:
            admin.config_set("maxmemory", "0")
            admin.config_set("maxmemory-policy", policy)
    send(alice, "after the squeeze")
    assert wait_for(lambda: {"during the squeeze", "after the squeeze"} <= received(bob))


def test_a_batch_cut_by_a_key_fetch_loses_no_message(make_pool: Pools) -> None:
    """A catch-up batch [m1 (u1, keys known), m2 (u2, secret never fetched)] while bob's keyring
    cannot reach Redis: m1 is kept and the cursor moves past it; m2 is read again and applied
    once the keyring can reach Redis. Neither is refused as a replay."""
    alice_pool, alice, bob_pool, bob = scene(make_pool)
    codec = alice.identity.codec

    def frame(content: str, user: str) -> bytes:
        one = MemoryRecord(
            content=content, scope=Scope(user_id=user), level=Level.CATEGORY, zone=Zone.INTERNAL
        )
        envelope = make_envelope(sender="alice", zone=Zone.INTERNAL, records=[one], dense=[VECTOR])
        return codec.encode(envelope)

    assert bob_pool.security is not None
    keyring = bob_pool.security.keyring
    reachable = keyring._store.client  # cut the keyring's own connection only
    keyring._store.client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with structlog.testing.capture_logs() as logs:
        # Appended to the stream only (one script call, as a batched send), then a poke.
        bus = alice_pool.bus
        stream_keys = [key(alice_pool, "stream"), key(alice_pool, "seq"), key(alice_pool, "epoch")]
        args = ["", bus.maxlen, uuid.uuid4().hex, key(alice_pool, "msg:"), 3600, "alice"]
        args += [uuid.uuid4().hex, frame("batched m1", "u1"), uuid.uuid4().hex]
        args += [frame("batched m2", "u2")]
        bus._publish(keys=stream_keys, args=args)  # append without publishing
        poke(bus.client, alice_pool)
        assert wait_for(lambda: any(e["event"] == "pool_receive_disconnected" for e in logs))
        keyring._store.client = reachable
        assert wait_for(lambda: {"batched m1", "batched m2"} <= received(bob))
    assert not [e for e in logs if e["event"] == "pool_message_rejected"]


def test_a_clearance_change_while_the_registry_is_unreachable_is_followed_later(
    make_pool: Pools,
) -> None:
    """bob's clearance is lowered (the broker then denies his INTERNAL channel) while his
    process cannot read the registry: he backs off, and once it can, receives as now cleared."""
    alice_pool, alice, bob_pool, bob = scene(make_pool)
    registry = bob_pool.registry
    reachable = registry.client  # the registry's own connection only: nothing listens there
    registry.client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with structlog.testing.capture_logs() as logs:
        alice_pool.set_clearance("bob", Zone.PUBLIC)
        # Once for the connection the broker closed, then for each reload that failed.
        lost = lambda: sum(e["event"] == "pool_receive_disconnected" for e in logs)  # noqa: E731
        assert wait_for(lambda: lost() >= 3)
    registry.client = reachable
    alice.memory.add("public news", user_id="u1", level=Level.CATEGORY, zone=Zone.PUBLIC)
    send(alice, "internal news")
    assert wait_for(lambda: "public news" in received(bob))
    assert "internal news" not in received(bob)


def test_a_lost_acl_user_restored_late_stops_neither_thread(make_pool: Pools) -> None:
    """Redis lost bob's ACL user (as a restart without an ACL file does) while his pool's admin
    connection is down: his receiver and sender cannot restore it and back off; once the admin
    connection is back, the user is restored and bob receives and sends again."""
    alice = make_pool("p1").register_agent(
        "alice", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY]
    )
    bob_pool = make_pool("p2")
    bob = bob_pool.register_agent("bob", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY])
    assert alice.wait_connected()
    assert bob.wait_connected()
    assert bob_pool.security is not None
    acl = bob_pool.security.acl
    assert acl is not None
    admin = acl.admin
    acl.admin = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))  # nothing listens
    with structlog.testing.capture_logs() as logs:
        admin.acl_deluser(username_of(bob_pool.settings.pool.namespace, "bob"))  # and his links
        bob.memory.add("from bob", user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
        events = lambda: {e["event"] for e in logs}  # noqa: E731
        assert wait_for(lambda: {"pool_receive_unauthorized", "pool_send_unauthorized"} <= events())
    acl.admin = admin
    send(alice, "to bob, after")
    assert wait_for(lambda: "to bob, after" in received(bob))
    assert wait_for(lambda: "from bob" in received(alice))
