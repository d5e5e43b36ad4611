"""The adversarial suite: each attack is tried, rejected, audited, and leaks nothing.

Two pools (simulated processes) on one real Redis: ``alice`` (CONFIDENTIAL, shares categories)
and ``bob`` (INTERNAL). The attacker writes straight to Redis with the pool's own connection
(worse than any agent's credentials allow), so what stops each attack is the receiver's checks
or the broker's ACLs, not the client library. Every attempt is counted in
:data:`tests.security.conftest.ATTEMPTS`, printed at the end of the run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from hivemem.agents.agent import Agent
from hivemem.pool.adapters.redis_bus import inbox_topic, zone_topic
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import decode_envelope, make_envelope
from hivemem.pool.errors import ClearanceDenied, InvalidInput, InvalidMessage
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.pool_security import PoolSecurity
from hivemem.security.signing import SigningKey
from tests.security.conftest import ATTEMPTS, rejections
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]
VECTOR = [0.05] * 384


@pytest.fixture
def scene(make_pool: Pools) -> tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent]:
    """alice (CONFIDENTIAL) in one pool, bob (INTERNAL) in another, both connected."""
    alice_pool = make_pool("p1")
    alice = alice_pool.register_agent(
        "alice", clearance=Zone.CONFIDENTIAL, share_levels=[Level.CATEGORY]
    )
    bob_pool = make_pool("p2")
    bob = bob_pool.register_agent("bob", clearance=Zone.INTERNAL)
    assert alice.wait_connected()
    assert bob.wait_connected()
    return alice_pool, alice, bob_pool, bob


def security(pool: SharedMemoryPool) -> PoolSecurity:
    assert pool.security is not None
    return pool.security


def record(content: str, zone: Zone = Zone.INTERNAL) -> MemoryRecord:
    return MemoryRecord(content=content, scope=Scope(user_id="u1"), level=Level.CATEGORY, zone=zone)


def inject(pool: SharedMemoryPool, topic: str, body: bytes, declared: str = "alice") -> None:
    """Append ``body`` to a topic and publish it, as an attacker with write access would."""
    pool.bus.publish(topic, declared, [(uuid.uuid4().hex, body)])


def held_by(agent: Agent) -> set[str]:
    found = agent.memory.list_memories(user_id="u1", limit=10_000, include_superseded=True)
    return {r.content for r in found}


def settle(alice: Agent, bob: Agent, marker: str) -> None:
    """A genuine message after the attack: once bob holds it, he has judged what came before."""
    alice.memory.add(marker, user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
    assert wait_for(lambda: marker in held_by(bob))


#: A version-2 message's parts: clear header, nonce, ciphertext, signature.
Parts = tuple[dict[str, object], bytes, bytes, bytes]


def parts(frame: bytes) -> Parts:
    """A version-2 message taken apart: clear header, nonce, ciphertext, signature."""
    head, _, rest = frame.partition(b"\n")
    header: dict[str, object] = json.loads(head)
    return header, rest[:12], rest[12:-64], rest[-64:]


def framed(header: dict[str, object], nonce: bytes, body: bytes, signature: bytes) -> bytes:
    """The message of these parts (the header as compact JSON, as a sender writes it)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((head, b"\n", nonce, body, signature))


def no_plaintext(directory: Path, secret: str) -> bool:
    """No file under ``directory`` holds ``secret`` (UTF-8) anywhere in its bytes."""
    needle = secret.encode()
    return not any(needle in path.read_bytes() for path in directory.rglob("*") if path.is_file())


def test_forged_and_unsigned_messages_are_rejected_and_audited(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """Messages claiming to be alice's but not signed by her key, or not signed at all."""
    alice_pool, alice, bob_pool, bob = scene
    info = alice_pool.get_agent("alice")
    forgers = {
        "random key": security(alice_pool).agent_codec(info, SigningKey.generate()),
        "another agent's key": security(alice_pool).agent_codec(info, bob_pool_key(bob_pool)),
    }
    contents = []
    for name, forger in forgers.items():
        content = f"forged with {name}"
        envelope = make_envelope(
            sender="alice", zone=Zone.INTERNAL, records=[record(content)], dense=[VECTOR]
        )
        inject(alice_pool, zone_topic(Zone.INTERNAL), forger.encode(envelope))
        contents.append(content)
    genuine = alice.identity.codec.encode(
        make_envelope(
            sender="alice", zone=Zone.INTERNAL, records=[record("unsigned copy")], dense=[VECTOR]
        )
    )
    # Its signature zeroed: a frame always carries one, so it is there, and false.
    inject(alice_pool, zone_topic(Zone.INTERNAL), genuine[:-64] + bytes(64))
    plain = make_envelope(
        sender="alice", zone=Zone.INTERNAL, records=[record("plain v1")], dense=[VECTOR]
    )
    inject(alice_pool, zone_topic(Zone.INTERNAL), plain.encode())
    contents += ["unsigned copy", "plain v1"]
    ATTEMPTS["forged or unsigned sender"] += 4
    settle(alice, bob, "after the forgeries")
    assert not set(contents) & held_by(bob)
    assert sorted(rejections(bob_pool, "bob")) == ["forged", "forged", "forged", "unsigned"]


def bob_pool_key(pool: SharedMemoryPool) -> SigningKey:
    return SigningKey.load(pool.agent_dir("bob") / "signing.key")


def test_tampered_messages_are_rejected(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """A genuine message with its ciphertext, nonce, signature or clear header altered."""
    alice_pool, alice, bob_pool, bob = scene

    def genuine(content: str) -> bytes:
        envelope = make_envelope(
            sender="alice", zone=Zone.INTERNAL, records=[record(content)], dense=[VECTOR]
        )
        return alice.identity.codec.encode(envelope)

    def flipped(raw: bytes) -> bytes:
        changed = bytearray(raw)
        changed[len(changed) // 2] ^= 0x01
        return bytes(changed)

    changes: list[Callable[[Parts], Parts]] = [
        lambda p: (p[0], p[1], flipped(p[2]), p[3]),  # the ciphertext
        lambda p: (p[0], flipped(p[1]), p[2], p[3]),  # the nonce
        lambda p: (p[0], p[1], p[2], flipped(p[3])),  # the signature
        lambda p: ({**p[0], "subject": "u2"}, *p[1:]),
        lambda p: ({**p[0], "zone": "public"}, *p[1:]),
    ]
    for number, change in enumerate(changes):
        header, nonce, body, signature = change(parts(genuine(f"tampered {number}")))
        topic = zone_topic(Zone(str(header["zone"])))
        inject(alice_pool, topic, framed(header, nonce, body, signature))
    ATTEMPTS["tampered message"] += len(changes)
    settle(alice, bob, "after the tampering")
    assert not {f"tampered {n}" for n in range(len(changes))} & held_by(bob)
    reasons = rejections(bob_pool, "bob")
    assert len(reasons) == len(changes)
    assert set(reasons) <= {"forged", "tampered"}


def test_replayed_and_stale_messages_are_rejected(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """alice's own message appended again (a replay), and one dated an hour ago (stale)."""
    alice_pool, alice, bob_pool, bob = scene
    first = alice.memory.add("said once", user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
    assert wait_for(lambda: "said once" in held_by(bob))
    bob.memory.delete(first.id)  # a replay would bring it back
    stream = alice_pool.bus.read(zone_topic(Zone.INTERNAL), 0, limit=100).deliveries
    for _ in range(3):
        inject(alice_pool, zone_topic(Zone.INTERNAL), stream[-1].data)
    old = make_envelope(
        sender="alice", zone=Zone.INTERNAL, records=[record("said long ago")], dense=[VECTOR]
    )
    old = old.model_copy(update={"sent_at": old.sent_at - timedelta(hours=1)})
    inject(alice_pool, zone_topic(Zone.INTERNAL), alice.identity.codec.encode(old))
    ATTEMPTS["replayed or stale message"] += 4
    settle(alice, bob, "after the replays")
    assert "said once" not in held_by(bob)
    assert "said long ago" not in held_by(bob)
    assert rejections(bob_pool, "bob") == ["replayed", "replayed", "replayed", "stale"]


def test_a_revoked_senders_key_is_refused(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """After alice is deregistered, a message signed with her (stolen) key is refused."""
    alice_pool, _alice, bob_pool, bob = scene
    info = alice_pool.get_agent("alice")
    stolen = SigningKey.load(alice_pool.agent_dir("alice") / "signing.key")
    alice_pool.deregister("alice")
    time.sleep(security(bob_pool).options.registry_cache_s + 0.2)
    codec = security(alice_pool).agent_codec(info, stolen)
    envelope = make_envelope(
        sender="alice", zone=Zone.INTERNAL, records=[record("from the grave")], dense=[VECTOR]
    )
    inject(alice_pool, zone_topic(Zone.INTERNAL), codec.encode(envelope))
    ATTEMPTS["revoked sender"] += 1
    assert wait_for(lambda: rejections(bob_pool, "bob") == ["revoked"])
    assert "from the grave" not in held_by(bob)


def test_a_message_above_its_senders_clearance_is_refused(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """A PUBLIC agent's correctly signed INTERNAL message (sealed by an insider who holds the
    zone key) is refused: nobody may write above their clearance."""
    alice_pool, alice, bob_pool, bob = scene
    pete, _ = alice_pool.register(AgentInfo(agent_id="pete", clearance=Zone.PUBLIC))
    pete_key = SigningKey.load(alice_pool.agent_dir("pete") / "signing.key")
    # An insider holding the master key seals as if pete were cleared for every zone.
    insider = security(alice_pool).agent_codec(
        AgentInfo(agent_id="pete", clearance=Zone.SECRET), pete_key
    )
    envelope = make_envelope(
        sender="pete", zone=Zone.INTERNAL, records=[record("written up")], dense=[VECTOR]
    )
    inject(alice_pool, zone_topic(Zone.INTERNAL), insider.encode(envelope), declared=pete.agent_id)
    ATTEMPTS["over-clearance sender"] += 1
    settle(alice, bob, "after the write-up")
    assert "written up" not in held_by(bob)
    assert rejections(bob_pool, "bob") == ["over_clearance"]


def test_nothing_above_clearance_reaches_search_or_disk(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent], redis_server: EmbeddedRedis
) -> None:
    """bob (INTERNAL) never finds, holds or can be handed alice's CONFIDENTIAL record; its
    plaintext is in no Redis value and in no file of either agent."""
    alice_pool, alice, bob_pool, bob = scene
    secret = "the merger closes on friday at nine"
    shared = alice.memory.add(secret, user_id="u1", level=Level.CATEGORY, zone=Zone.CONFIDENTIAL)
    settle(alice, bob, "after the confidential write")
    assert alice.flush()
    searches = ["merger", "friday at nine", secret]
    for query in searches:
        hits = bob.memory.search(query, user_id="u1")
        assert all(h.record.zone <= Zone.INTERNAL and h.record.id != shared.id for h in hits)
    with pytest.raises(ClearanceDenied):
        alice_pool.share_knowledge("alice", "bob", shared.id)
    ATTEMPTS["read above clearance"] += len(searches) + 1
    assert secret not in held_by(bob)
    denied = [e for e in alice_pool.audit.entries() if e.kind == AuditEvent.DENIED_READ]
    assert [(e.actor, e.subject) for e in denied] == [("alice", "bob")]
    raw = redis.Redis.from_url(redis_server.url)
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [raw.get(key) or b""]
        elif kind == b"hash":
            values = list(raw.hgetall(key).values())
        elif kind == b"stream":
            values = [v for _, fields in raw.xrange(key) for v in fields.values()]
        assert not any(secret.encode() in v for v in values), key
    assert no_plaintext(bob_pool.agent_dir("bob"), secret)
    assert no_plaintext(alice_pool.agent_dir("alice"), secret)


def test_agent_credentials_cannot_reach_higher_zones(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent], redis_server: EmbeddedRedis
) -> None:
    """Connected as an INTERNAL agent's Redis user: every read or subscription of a higher zone,
    another agent's inbox or the keyring fails with NOPERM, and the broker logs each."""
    _alice_pool, _alice, bob_pool, _bob = scene
    acl = security(bob_pool).acl
    assert acl is not None
    eve, _ = bob_pool.register(AgentInfo(agent_id="eve", clearance=Zone.INTERNAL))
    credentials = acl.provision(eve.agent_id, eve.clearance)
    client = redis.Redis.from_url(credentials.url(redis_server.url))
    attempts: list[Callable[[], object]] = [
        lambda: client.xrange("hivemem:zone:confidential:stream"),
        lambda: client.xrange("hivemem:zone:secret:stream"),
        lambda: client.get("hivemem:zone:confidential:seq"),
        lambda: client.xrange(f"hivemem:{inbox_topic('alice')}:stream"),
        lambda: client.hgetall("hivemem:keys:zone:confidential"),
        lambda: client.hgetall("hivemem:registry:agents"),
        lambda: client.keys("*"),
    ]
    for attempt in attempts:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    for channel in ["hivemem:zone:confidential", "hivemem:zone:secret", "hivemem:agent:bob:inbox"]:
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        with pytest.raises(redis.exceptions.NoPermissionError):
            pubsub.get_message(timeout=1.0)
        pubsub.close()
    ATTEMPTS["direct Redis with agent credentials"] += len(attempts) + 3
    assert client.xrange("hivemem:zone:internal:stream") is not None  # its own zone: allowed
    broker_log = redis.Redis.from_url(redis_server.url).acl_log(count=100)
    assert sum(1 for e in broker_log if e["username"] == credentials.username) >= len(attempts)


INJECTIONS = ["a b", "a*", "a\nb", "../../etc", "a:b", "x" * 200, "{}", '"; DROP', "é", ""]


def test_injection_strings_in_ids_are_refused_before_any_write(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent], redis_server: EmbeddedRedis
) -> None:
    """Every id that reaches a Redis key or a Qdrant filter, given an injection string: a typed
    error, and Redis holds exactly the same keys afterwards."""
    alice_pool, alice, _bob_pool, _bob = scene
    raw = redis.Redis.from_url(redis_server.url)
    assert alice.flush()
    before = sorted(raw.scan_iter(count=1000))
    calls: list[Callable[[str], object]] = [
        alice_pool.register_agent,
        alice_pool.attach,
        alice_pool.get_agent,
        lambda v: alice_pool.set_clearance(v, Zone.PUBLIC),
        lambda v: alice_pool.share_knowledge("alice", v, str(uuid.uuid4())),
        lambda v: alice.memory.add("x", user_id=v),
        lambda v: alice.memory.add("x", user_id="u1", session_id=v),
        lambda v: alice.memory.search("x", user_id=v),
        lambda v: alice.memory.list_memories(user_id="u1", agent_id=v),
        alice.memory.get,
    ]
    refused = 0
    for call in calls:
        for value in INJECTIONS:
            if value == "a:b" and call in calls[5:9]:
                continue  # ':' is allowed in scope ids (not in agent ids)
            with pytest.raises(InvalidInput):
                call(value)
            refused += 1
    ATTEMPTS["injection string in an id"] += refused
    assert sorted(raw.scan_iter(count=1000)) == before


def test_oversized_and_malformed_envelopes_are_skipped(
    scene: tuple[SharedMemoryPool, Agent, SharedMemoryPool, Agent],
) -> None:
    """Garbage, wrong shapes, huge fields and an oversized message: skipped (or refused before
    decoding), and the receiver goes on applying what follows."""
    alice_pool, alice, _bob_pool, bob = scene
    header, nonce, sealed, signature = parts(
        alice.identity.codec.encode(
            make_envelope(
                sender="alice", zone=Zone.INTERNAL, records=[record("shape")], dense=[VECTOR]
            )
        )
    )
    whole = framed(header, nonce, sealed, signature)
    bodies = [
        b"",
        b"{",
        b"[]",
        b'{"v": 2}',
        b'{"v": 2}\n',
        whole.replace(b"\n", b" ", 1),  # no header line
        whole[:-1],  # one byte short of the length its header states
        whole + b"\0",
        framed({**header, "size": 4_000_000}, nonce, sealed, signature),
        framed({**header, "size": -1}, nonce, sealed, signature),
        framed({**header, "sender": "x" * 5000}, nonce, sealed, signature),
        framed({**header, "v": 3}, nonce, sealed, signature),
        # Fields whose own checks raise (before, these escaped and stopped the receiver).
        framed({**header, "sender": "alice:admin"}, nonce, sealed, signature),
        framed({**header, "subject": "u1 *"}, nonce, sealed, signature),
        framed({**header, "zone": "everyone"}, nonce, sealed, signature),
        framed({**header, "compartments": ["no-such"]}, nonce, sealed, signature),
        framed({**header, "key_id": "not a key id"}, nonce, sealed, signature),
        b"\xff\xfe" * 1000,
        framed(header, nonce, b"A" * 4_000_000, signature),
    ]
    for body in bodies:
        inject(alice_pool, zone_topic(Zone.INTERNAL), body)
    ATTEMPTS["malformed or oversized envelope"] += len(bodies) + 1
    oversized = b"{" + b" " * (64 * 1024 * 1024) + b"}"
    with pytest.raises(InvalidMessage, match="too large"):
        bob.identity.codec.decode(oversized)
    with pytest.raises(InvalidMessage, match="too large"):
        decode_envelope(oversized)
    settle(alice, bob, "after the garbage")
    assert "shape" not in held_by(bob)
