"""The version-2 frame as docs/security.md describes it, checked byte by byte on real messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
import redis
import structlog

from hivemem.agents.agent import Agent
from hivemem.agents.embedding import FastEmbedder
from hivemem.pool.enums import Level, Zone
from hivemem.pool.envelope import make_envelope
from hivemem.pool.errors import InvalidMessage, KeyUnavailable, MessageRejected, SealBroken
from hivemem.pool.records import MemoryRecord, Scope
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import HivememSettings
from hivemem.pool.shared import SharedMemoryPool
from hivemem.security.ingest_seal import IngestOpener
from hivemem.security.sealing import NONCE_BYTES, Sealed, Sealer
from hivemem.security.signing import verify_signature
from hivemem.security.wire import Frame
from tests.pool.test_shared import received
from tests.waiting import wait_for

Pools = Callable[..., SharedMemoryPool]


@pytest.fixture
def pool(make_pool: Pools) -> SharedMemoryPool:
    return make_pool("p1")


@pytest.fixture
def alice(pool: SharedMemoryPool) -> Agent:
    return pool.register_agent("alice", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY])


def message(alice: Agent, content: str) -> bytes:
    """alice's frame of one INTERNAL record of user u1."""
    record = MemoryRecord(
        content=content, scope=Scope(user_id="u1"), level=Level.CATEGORY, zone=Zone.INTERNAL
    )
    envelope = make_envelope(sender="alice", zone=Zone.INTERNAL, records=[record])
    return alice.identity.codec.encode(envelope)


def refused(alice: Agent, data: bytes) -> bool:
    """Whether both the frame parser and alice's receiving codec call ``data`` no message."""
    for parse in (Frame.parse, alice.identity.codec.decode):
        try:
            parse(data)
        except InvalidMessage:
            continue
        return False
    return True


def test_a_frame_is_header_line_nonce_ciphertext_and_signature(
    pool: SharedMemoryPool, alice: Agent
) -> None:
    frame = message(alice, "the layout")
    head, newline, rest = frame.partition(b"\n")
    header = json.loads(head)
    assert newline == b"\n"
    assert list(header)[:2] == ["v", "message_id"]  # a plain process knows it by its start
    assert header["v"] == 2
    assert header["sender"] == "alice"
    assert header["subject"] == "u1"
    assert len(rest) == NONCE_BYTES + header["size"] + 64
    assert b"the layout" not in frame
    signed = b"hivemem/message/v2|" + hashlib.sha256(frame[:-64]).digest()
    public_key = alice.identity.info.public_key
    assert public_key is not None
    assert verify_signature(public_key, frame[-64:], signed)
    assert not verify_signature(public_key, frame[-64:], frame[:-64])
    sealed = Sealed(header["key_id"], rest[:NONCE_BYTES], rest[NONCE_BYTES:-64])
    assert pool.security is not None
    opened = Sealer(pool.security.keyring).open(Zone.INTERNAL, sealed, context=head, subject="u1")
    assert json.loads(opened)["records"][0]["content"] == "the layout"


def test_parse_gives_the_parts_as_sent(alice: Agent) -> None:
    frame = message(alice, "parts")
    parsed = Frame.parse(frame)
    assert parsed.header_bytes == frame.partition(b"\n")[0]
    assert parsed.header.zone == Zone.INTERNAL
    assert parsed.signature == frame[-64:]
    assert len(parsed.sealed.nonce) == NONCE_BYTES
    assert len(parsed.sealed.ciphertext) == parsed.header.size


def test_what_is_no_frame_is_an_invalid_message(alice: Agent) -> None:
    frame = message(alice, "shapes")
    head, _, rest = frame.partition(b"\n")
    header = json.loads(head)
    bad = {
        "no header line": frame.replace(b"\n", b" ", 1),
        "a byte short": frame[:-1],
        "a byte over": frame + b"\0",
        "header line too long": b" " * 5000 + frame,
        "size above the frame": json.dumps({**header, "size": 10**6}).encode() + b"\n" + rest,
        "size below a tag": json.dumps({**header, "size": 3}).encode() + b"\n" + rest,
        "unknown version": json.dumps({**header, "v": 3}).encode() + b"\n" + rest,
        "not JSON": b"\xff\xfe\n" + rest,
    }
    fields = {
        "sender not an agent id": {"sender": "alice:admin"},
        "to not an agent id": {"to": "bob@x"},
        "subject not a scope id": {"subject": "u1 *"},
        "message id not hex": {"message_id": "Z" * 32},
        "sent_at without a time zone": {"sent_at": "2026-11-22T05:12:32"},
        "unknown zone": {"zone": "everyone"},
        "unknown field": {"note": "hi"},
    }
    bad |= {name: json.dumps({**header, **f}).encode() + b"\n" + rest for name, f in fields.items()}
    assert [name for name, data in bad.items() if not refused(alice, data)] == []


def test_a_plain_message_is_refused_as_unsigned() -> None:
    plain = make_envelope(sender="alice", zone=Zone.INTERNAL).encode()
    with pytest.raises(MessageRejected) as refused:
        Frame.parse(plain)
    assert refused.value.reason == "unsigned"


def test_a_message_sealed_while_redis_was_away_goes_under_its_users_secret(
    make_pool: Pools, redis_server: EmbeddedRedis
) -> None:
    """A user's first write while Redis is away is sealed under the zone key alone (the write
    must not fail). By the time it can be sent, Redis is back: the sender seals it again under
    the user's secret, on the zone topic and in the ingest queue, so the forget's shred covers
    it. Before, it stayed readable to every holder of the zone key."""
    pool = make_pool("p1")
    writer = pool.register_agent("writer", clearance=Zone.INTERNAL, share_levels=[Level.EPISODE])
    assert writer.wait_connected()
    redis_server.stop()
    writer.memory.add("the vault code is 7731", user_id="newcomer", zone=Zone.INTERNAL)
    assert writer.pending == 2  # the zone topic and the ingest queue
    redis_server.start()
    assert writer.flush(timeout_s=30.0)
    assert pool.security is not None
    raw = redis.Redis.from_url(redis_server.url)
    topic = [f[b"d"] for _, f in raw.xrange("hivemem:zone:internal:stream")]
    ingest = pool.security.workers_ingest_codec(pool.security.workers_codec())
    queued = [f[b"d"] for _, f in raw.xrange("hivemem:ingest:internal:agent:writer:stream")]
    opener = IngestOpener(pool.security.keyring)
    frames = [Frame.parse(data) for data in [*topic, *(opener.open(q) for q in queued)]]
    assert [f.header.subject for f in frames] == ["newcomer", "newcomer"]
    assert ingest.decode(queued[0]).records[0].content == "the vault code is 7731"
    pool.security.keyring.shred("newcomer")
    zone_key_holder = Sealer(pool.security.keyring, clearance=Zone.SECRET)
    for frame in frames:
        with pytest.raises(KeyUnavailable, match="subject forgotten"):
            zone_key_holder.open(
                Zone.INTERNAL, frame.sealed, context=frame.header_bytes, subject="newcomer"
            )
        with pytest.raises(SealBroken):  # nor without the subject: it was sealed with it
            zone_key_holder.open(Zone.INTERNAL, frame.sealed, context=frame.header_bytes)


def test_a_message_that_waited_in_the_outbox_is_stamped_again_when_sent(
    pool_settings: Callable[..., HivememSettings], embedder: FastEmbedder
) -> None:
    """Live receivers refuse a message older than ``max_message_age_s`` (a replay). One that
    waited in the writer's outbox longer than half that (here: 2 s, with the writer sending
    every 3 s; elsewhere Redis away, or the process down) is stamped and signed again as it
    goes, under the same message id: the live peer takes it. Before, it was refused as stale
    and lost to every peer that was online."""
    pools = []
    for name in ("writer", "reader"):
        settings = pool_settings(name)
        security = settings.security.model_copy(update={"max_message_age_s": 2.0})
        pools.append(
            SharedMemoryPool.connect(
                settings.model_copy(update={"security": security}), embedder=embedder
            )
        )
    try:
        writer = pools[0].register_agent(
            "writer", clearance=Zone.INTERNAL, share_levels=[Level.CATEGORY], sync_interval=3.0
        )
        reader = pools[1].register_agent("reader", clearance=Zone.INTERNAL)
        assert reader.wait_connected()
        writer.memory.add("on time", user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
        assert writer.flush()  # sent at once; the reader follows the topic live from here
        assert wait_for(lambda: "on time" in received(reader))
        with structlog.testing.capture_logs() as logs:
            writer.memory.add("sent late", user_id="u1", level=Level.CATEGORY, zone=Zone.INTERNAL)
            # No flush: it would send at once. The writer sends after its interval.
            got = wait_for(lambda: "sent late" in received(reader), timeout_s=10.0)
        assert got
        assert "pool_message_rejected" not in [e["event"] for e in logs]
    finally:
        for pool in pools:
            pool.close()
