"""The workers' ingest keys rotated and retired, on a real Redis: sealers move to a new key
within their keyring's ttl, openers open what was sealed to any key not retired, a retired
key's material is gone, concurrent rotations lose no key, and a head naming another key does
not open (the pool's retirement rules: tests/workers/test_ingest_rotation.py)."""

from __future__ import annotations

import base64
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    KeyUnavailable,
    MessageRejected,
    PoolUnavailable,
)
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security.ingest_keys import FIRST_INGEST_ID
from hivemem.security.ingest_seal import (
    MAGIC,
    MAGIC_WITH_ID,
    IngestOpener,
    IngestSealer,
    sealed_to,
)
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring

MASTER = bytes(range(32))
FRAME = b'{"v":2,"message_id":"00"}\n' + bytes(range(200))


def keyring_of(client: redis.Redis, ttl_s: float = 0.2) -> ZoneKeyring:
    return ZoneKeyring(client, LocalKeyProvider(MASTER), namespace="t", active_ttl_s=ttl_s)


def test_a_sealer_moves_to_a_rotated_key_within_its_ttl(client: redis.Redis) -> None:
    """A rotation made by another process reaches a sealer once what it read is ``ttl_s`` old:
    before, it still seals to the first key (the form earlier versions open); after, to the
    new one, its id in the head. An opener that loaded the keys before the rotation opens
    both."""
    sealer, opener = IngestSealer(keyring_of(client)), IngestOpener(keyring_of(client))
    first = sealer.seal(FRAME)
    assert first.startswith(MAGIC)
    assert opener.open(first) == FRAME  # the opener now holds the first key alone
    new_id, previous = keyring_of(client).ingest.rotate()
    assert previous == FIRST_INGEST_ID
    assert sealed_to(sealer.seal(FRAME)) == FIRST_INGEST_ID  # read less than ttl_s ago
    time.sleep(0.25)
    second = sealer.seal(FRAME)
    assert second.startswith(MAGIC_WITH_ID)
    assert sealed_to(second) == new_id
    assert [opener.open(first), opener.open(second)] == [FRAME, FRAME]


def test_a_retired_key_opens_nowhere_and_its_material_is_gone(client: redis.Redis) -> None:
    """After two rotations and the first key's retirement, what was sealed to it is refused
    (``unknown_key``), once an opener's keys are ``ttl_s`` old; the rest opens; Redis keeps
    the retired key's dates, not its wrapped material; retiring it again changes nothing."""
    keyring = keyring_of(client)
    sealer, opener = IngestSealer(keyring), IngestOpener(keyring)
    sealed = [sealer.seal(FRAME)]
    for _ in range(2):
        keyring.ingest.rotate()
        time.sleep(0.25)
        sealed.append(sealer.seal(FRAME))
    assert [opener.open(s) for s in sealed] == [FRAME] * 3
    wrapped = client.hget("t:keys:ingest:old", f"key:{FIRST_INGEST_ID}")
    assert wrapped is not None

    assert keyring.ingest.retire(FIRST_INGEST_ID)
    time.sleep(0.25)
    with pytest.raises(MessageRejected) as refused:
        opener.open(sealed[0])
    assert refused.value.reason == "unknown_key"
    assert [opener.open(s) for s in sealed[1:]] == [FRAME] * 2
    everything = b"".join(
        client.dump(key) or b"" for key in client.scan_iter(match="t:keys:ingest*")
    )
    assert wrapped not in everything
    assert base64.b64decode(wrapped.split(b'"wrapped": "')[1].split(b'"')[0]) not in everything
    listed = {info.key_id: info for info in keyring.ingest.listing()}
    assert listed[FIRST_INGEST_ID].retired
    assert not listed[FIRST_INGEST_ID].current
    assert [info.current for info in keyring.ingest.listing()] == [False, False, True]
    assert keyring.ingest.retire(FIRST_INGEST_ID) is False


def test_concurrent_rotations_lose_no_key(client: redis.Redis) -> None:
    """Six processes' keyrings rotate at once: every rotation lands, one after the other,
    each key rotated away from is kept, and exactly one is current."""
    start = threading.Barrier(6)
    made: list[str] = []

    def rotate() -> None:
        keyring = keyring_of(client)
        start.wait()
        made.append(keyring.ingest.rotate()[0])

    keyring_of(client).ingest.current()  # the first key
    threads = [threading.Thread(target=rotate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = keyring_of(client).ingest.listing()
    assert {info.key_id for info in listed} == {FIRST_INGEST_ID, *made}
    assert sum(info.current for info in listed) == 1
    assert all(info.replaced_at is not None for info in listed if not info.current)
    assert set(keyring_of(client).ingest.ring()) == {FIRST_INGEST_ID, *made}


def test_a_head_naming_another_key_does_not_open(client: redis.Redis) -> None:
    """The workers' key id is bound into the wrap: changed to another key the workers hold, it
    does not open (``tampered``); to a key nobody has, it is refused as ``unknown_key``; a
    head whose id is malformed is no message."""
    keyring = keyring_of(client)
    sealer = IngestSealer(keyring)
    keyring.ingest.rotate()
    time.sleep(0.25)
    new_id = keyring.ingest.current()[0]
    sealed = sealer.seal(FRAME)
    opener = IngestOpener(keyring)
    assert opener.open(sealed) == FRAME
    to_first = MAGIC + sealed[len(MAGIC_WITH_ID) + 1 + len(new_id) :]
    with pytest.raises(MessageRejected) as refused:
        opener.open(to_first)
    assert refused.value.reason == "tampered"
    with pytest.raises(MessageRejected) as unknown:
        opener.open(sealed.replace(new_id.encode(), b"0" * 12, 1))
    assert unknown.value.reason == "unknown_key"
    with pytest.raises(InvalidMessage, match="workers' key id"):
        opener.open(sealed.replace(new_id.encode(), b"../../etc/pa", 1))
    assert sealed_to(sealed.replace(new_id.encode(), b"../../etc/pa", 1)) is None


def test_a_sealer_does_not_seal_to_a_key_it_cannot_check(redis_server: EmbeddedRedis) -> None:
    """Once what a sealer read is ``ttl_s`` old and Redis cannot be reached, it raises
    PoolUnavailable (the sender keeps the message and retries) rather than seal to a key that
    may have been replaced and retired meanwhile."""
    client = redis.Redis.from_url(
        redis_server.url,
        socket_connect_timeout=0.3,
        socket_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )
    sealer = IngestSealer(keyring_of(client))
    assert sealed_to(sealer.seal(FRAME)) == FIRST_INGEST_ID
    redis_server.stop()
    try:
        time.sleep(0.25)
        with pytest.raises(PoolUnavailable):
            sealer.seal(FRAME)
    finally:
        redis_server.start()


def test_bad_ingest_key_requests_change_nothing(client: redis.Redis) -> None:
    """Retiring the current key, an unknown or malformed one raises a typed error; the keys
    are as before."""
    keyring = keyring_of(client)
    keyring.ingest.rotate()
    before = keyring.ingest.listing()
    current = keyring.ingest.current()[0]
    with pytest.raises(InvalidInput, match="current"):
        keyring.ingest.retire(current)
    with pytest.raises(KeyUnavailable):
        keyring.ingest.retire("0123456789ab")
    with pytest.raises(InvalidIdentifier):
        keyring.ingest.retire("ingest\n")
    with pytest.raises(KeyUnavailable):
        keyring.ingest.replaced_at("0123456789ab")
    assert keyring.ingest.listing() == before
