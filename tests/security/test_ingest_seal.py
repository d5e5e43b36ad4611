"""Ingest messages sealed to the workers, on a real Redis: what opens them, what does not, and
the workers' key as the keyring keeps it."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.errors import InvalidMessage, MessageRejected, PoolUnavailable, SealBroken
from hivemem.pool.redis_server import free_port
from hivemem.security.ingest_seal import MAGIC, IngestOpener, IngestSealer
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring

FRAME = b'{"v":2,"message_id":"00"}\n' + bytes(range(200))


@pytest.fixture
def keyring(client: redis.Redis) -> ZoneKeyring:
    return ZoneKeyring(client, LocalKeyProvider(bytes(range(32))), namespace="t")


def test_only_the_workers_key_opens_what_agents_seal(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """Two agents' sealers (each its own ephemeral key) both reach the workers; the bytes hold
    nothing of the frame; an opener under another master key's workers' key cannot open
    them."""
    first, second = IngestSealer(keyring), IngestSealer(keyring)
    sealed = [first.seal(FRAME), first.seal(FRAME), second.seal(FRAME)]
    assert all(s.startswith(MAGIC) for s in sealed)
    assert len(set(sealed)) == 3  # fresh nonces, and another sender key
    assert all(FRAME[:20] not in s and FRAME[-40:] not in s for s in sealed)
    opener = IngestOpener(keyring)
    assert [opener.open(s) for s in sealed] == [FRAME] * 3
    elsewhere = ZoneKeyring(client, LocalKeyProvider(bytes(32)), namespace="other")
    with pytest.raises(MessageRejected) as refused:
        IngestOpener(elsewhere).open(sealed[0])
    assert refused.value.reason == "tampered"


@pytest.mark.parametrize("where", [0, 4, 20, 36, 40, 60, -1])
def test_a_changed_byte_does_not_open(keyring: ZoneKeyring, where: int) -> None:
    """Magic, sender key, nonce, ciphertext, tag: any byte changed is refused as tampered (or,
    for the magic, the bytes are not an ingest wrap and go to the frame checks as they are)."""
    sealed = bytearray(IngestSealer(keyring).seal(FRAME))
    sealed[where] ^= 0x01
    opener = IngestOpener(keyring)
    if where == 0:
        assert opener.open(bytes(sealed)) == bytes(sealed)  # then Frame.parse refuses it
        return
    with pytest.raises(MessageRejected) as refused:
        opener.open(bytes(sealed))
    assert refused.value.reason == "tampered"


def test_malformed_wraps_are_refused(keyring: ZoneKeyring) -> None:
    """Too short to hold a wrap: InvalidMessage; a sender key that is a low-order point (the
    agreed secret would be all zeros): tampered."""
    opener = IngestOpener(keyring)
    with pytest.raises(InvalidMessage, match="too short"):
        opener.open(MAGIC + bytes(40))
    with pytest.raises(MessageRejected) as refused:
        opener.open(MAGIC + bytes(32) + bytes(12) + bytes(64))
    assert refused.value.reason == "tampered"


def test_a_frame_queued_before_sealing_passes_unchanged(keyring: ZoneKeyring) -> None:
    """Messages an older version queued (no wrap) still reach the frame checks: nothing
    acknowledged before an upgrade is lost."""
    assert IngestOpener(keyring).open(FRAME) == FRAME


def test_the_workers_key_is_made_once_and_kept_wrapped(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """Keyrings agree on one key; Redis holds it only wrapped (the public half derives from
    nothing stored in clear); an entry moved from another slot does not unwrap."""
    other = ZoneKeyring(client, LocalKeyProvider(bytes(range(32))), namespace="t")
    assert keyring.ingest.current() == other.ingest.current()
    stored = json.loads(client.get("t:keys:ingest"))
    assert set(stored) == {"provider_id", "wrapped", "created_at"}
    assert keyring.ingest.ring()["ingest"].hex() not in json.dumps(stored)
    moved = ZoneKeyring(client, LocalKeyProvider(bytes(range(32))), namespace="t2")
    moved.vector_key("public")
    client.set("t2:keys:ingest", client.get("t2:keys:vector:public"))
    with pytest.raises(SealBroken):
        moved.ingest.ring()


def test_a_sealer_without_redis_says_so(keyring: ZoneKeyring) -> None:
    """Before the workers' key was read, a sealer with Redis away raises PoolUnavailable (the
    sender keeps the message and retries)."""
    down = ZoneKeyring(
        redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)),
        LocalKeyProvider(bytes(32)),
        namespace="t",
    )
    with pytest.raises(PoolUnavailable):
        IngestSealer(down).seal(FRAME)


def test_sealing_needs_only_the_public_half(keyring: ZoneKeyring, client: redis.Redis) -> None:
    """Once the pair exists, a sealer reads only its public half, kept in clear beside the
    wrapped private one: a keyring that cannot unwrap the private half (another master key)
    still seals, and the workers open what it sealed."""
    key_id, public = keyring.ingest.current()  # the pair is made
    stored = client.get("t:keys:ingest:public")
    assert stored is not None
    assert (key_id, base64.b64decode(stored)) == ("ingest", public)
    outsider = ZoneKeyring(client, LocalKeyProvider(bytes(32)), namespace="t")
    with pytest.raises(SealBroken):
        outsider.ingest.ring()
    assert IngestOpener(keyring).open(IngestSealer(outsider).seal(FRAME)) == FRAME


def test_a_replaced_public_half_stops_the_workers(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """A public half replaced in Redis (every agent would seal to a key nobody holds) makes
    the workers refuse to open anything (SealBroken: their drain fails and is retried) rather
    than reject each message as tampered and move past it."""
    sealed = IngestSealer(keyring).seal(FRAME)
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    client.set("t:keys:ingest:public", base64.b64encode(other))
    fresh = ZoneKeyring(client, LocalKeyProvider(bytes(range(32))), namespace="t")
    with pytest.raises(SealBroken, match="public ingest key"):
        IngestOpener(fresh).open(sealed)
