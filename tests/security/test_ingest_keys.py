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
from pydantic import ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.adapters.redis_bus import RedisBus, ingest_topic
from hivemem.pool.adapters.redis_registry import AgentRegistry
from hivemem.pool.agent_info import AgentInfo
from hivemem.pool.enums import Zone
from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    KeyUnavailable,
    MessageRejected,
    PoolUnavailable,
    SealBroken,
)
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.pool.settings import SecuritySettings
from hivemem.security.in_flight import ingest_queued_under
from hivemem.security.ingest_keys import FIRST_INGEST_ID, public_of
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
    wrapped = client.get("t:keys:ingest")
    assert wrapped is not None

    held_elsewhere = keyring_of(client).ingest
    assert FIRST_INGEST_ID in held_elsewhere.ring()
    assert keyring.ingest.retire(FIRST_INGEST_ID)
    time.sleep(0.25)
    with pytest.raises(MessageRejected) as refused:
        opener.open(sealed[0])
    assert refused.value.reason == "unknown_key"
    assert [opener.open(s) for s in sealed[1:]] == [FRAME] * 2
    assert FIRST_INGEST_ID not in held_elsewhere.ring()  # another process's keyring
    assert FIRST_INGEST_ID not in {key_id for key_id, _ in held_elsewhere._unwrapped}
    everything = b"".join(
        client.dump(key) or b"" for key in client.scan_iter(match="t:keys:ingest*")
    )
    assert wrapped not in everything
    assert client.mget("t:keys:ingest", "t:keys:ingest:public") == [b"retired", b"retired"]
    assert base64.b64decode(wrapped.split(b'"wrapped": "')[1].split(b'"')[0]) not in everything
    listed = {info.key_id: info for info in keyring.ingest.listing()}
    assert listed[FIRST_INGEST_ID].retired
    assert not listed[FIRST_INGEST_ID].current
    assert [info.current for info in keyring.ingest.listing()] == [False, False, True]
    assert keyring.ingest.retire(FIRST_INGEST_ID) is False


def test_concurrent_rotations_lose_no_key(client: redis.Redis) -> None:
    """Six keyrings (threads, one connection pool) rotate at once: every rotation lands, one
    after the other, each key rotated away from is kept, and exactly one is current."""
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


def test_a_rotation_leaves_the_first_key_where_older_versions_read_it(
    client: redis.Redis,
) -> None:
    """Versions before rotation read the first key alone (``ingest``, ``ingest:public``): a
    rotation leaves both as they were, so such an agent, even one started after the rotation,
    seals to the first key, which the workers still open."""
    keyring = keyring_of(client)
    first_public = keyring.ingest.current()[1]
    before = client.mget("t:keys:ingest", "t:keys:ingest:public")
    keyring.ingest.rotate()
    assert client.mget("t:keys:ingest", "t:keys:ingest:public") == before
    assert base64.b64decode(before[1]) == first_public
    assert keyring.ingest.current()[1] != first_public
    ring = keyring.ingest.ring()
    assert public_of(ring[FIRST_INGEST_ID]) == first_public


def test_an_opener_reads_the_keys_again_for_a_key_it_does_not_hold_once(
    client: redis.Redis,
) -> None:
    """An opener whose keys are far from ``ttl_s`` old reads them again for a message naming
    a key it does not hold (made by a rotation since): it opens; a message naming a key that
    exists nowhere is refused, and more of them cost no further read until the next one."""
    opener = IngestOpener(keyring_of(client, ttl_s=3600.0))
    sealer = IngestSealer(keyring_of(client, ttl_s=0.0))
    assert opener.open(sealer.seal(FRAME)) == FRAME
    keyring_of(client).ingest.rotate()
    later = sealer.seal(FRAME)
    assert sealed_to(later) != FIRST_INGEST_ID
    reads = []
    ingest = opener._keyring.ingest
    ring = ingest.ring
    ingest.ring = lambda: reads.append(1) or ring()  # type: ignore[method-assign]
    assert opener.open(later) == FRAME
    nowhere = later.replace(sealed_to(later).encode(), b"0" * 12, 1)  # type: ignore[union-attr]
    for _ in range(5):
        with pytest.raises(MessageRejected) as refused:
            opener.open(nowhere)
        assert refused.value.reason == "unknown_key"
    assert len(reads) == 2  # one for the rotated key, one for the key nowhere


def test_a_first_key_made_again_after_redis_lost_its_data_opens(client: redis.Redis) -> None:
    """Redis lost its data: a new first key (the same id) is made; a running opener whose keys
    are far from ``ttl_s`` old opens at once what a sealer seals to it (a message that does not
    open under the key it holds has it read the keys again), its cache of agreed keys following
    the key's material, not its id."""
    sealer = IngestSealer(keyring_of(client, ttl_s=0.0))
    opener = IngestOpener(keyring_of(client, ttl_s=3600.0))
    assert opener.open(sealer.seal(FRAME)) == FRAME
    client.flushdb()
    again = sealer.seal(FRAME)
    assert sealed_to(again) == FIRST_INGEST_ID
    assert opener.open(again) == FRAME
    assert opener.open(sealer.seal(FRAME)) == FRAME


@pytest.mark.parametrize(
    ("field", "value", "keys_too"),
    [
        ("key:not-an-id", b"{}", True),
        (b"key:\xff", b"{}", True),
        ("current", b"../x", True),
        ("replaced:ingest", b"yesterday", False),
        ("retired:0123456789ab", b"{}", False),
        ("retired:0123456789ab", b"not json", False),
    ],
)
def test_malformed_stored_keys_raise_seal_broken(
    client: redis.Redis, field: str | bytes, value: bytes, *, keys_too: bool
) -> None:
    """A stored entry hivemem never writes makes the listing raise SealBroken, and, when it is
    a key's (or the current id), loading the keys too: a typed failure, not a verdict on the
    message, and the count of a data key's queued writes raises rather than count nothing."""
    keyring = keyring_of(client)
    keyring.ingest.rotate()
    sealed = IngestSealer(keyring_of(client)).seal(FRAME)
    client.hset("t:keys:ingest:ring", field, value)
    with pytest.raises(SealBroken):
        keyring.ingest.listing()
    opener = IngestOpener(keyring_of(client))
    if not keys_too:
        assert opener.open(sealed) == FRAME
        return
    with pytest.raises(SealBroken):
        opener.open(sealed)
    bus = RedisBus(client, namespace="t", maxlen=100)
    registry = AgentRegistry(client, namespace="t", heartbeat_ttl_s=10.0)
    registry.register(AgentInfo(agent_id="writer", clearance=Zone.SECRET))
    bus.publish(ingest_topic(Zone.INTERNAL, "writer"), "writer", [("m1", sealed)])
    with pytest.raises(SealBroken):
        ingest_queued_under(bus, registry, opener, Zone.INTERNAL, "0123456789ab")


def test_the_grace_cannot_be_shorter_than_agents_take_to_read_a_rotation() -> None:
    """``ingest_retire_grace_s`` below 5 s (agents read a new key within 1 s) is refused when
    the settings load."""
    with pytest.raises(ValidationError):
        SecuritySettings(ingest_retire_grace_s=0.5)
    assert SecuritySettings(ingest_retire_grace_s=5).ingest_retire_grace_s == 5


def test_two_retirements_at_once_retire_once(client: redis.Redis) -> None:
    """Two processes retire the same old key at once: one retires it (True), the other finds
    it retired (False), whichever order their transactions take."""
    keyring_of(client).ingest.rotate()
    for _ in range(10):
        keyring_of(client).ingest.rotate()
        old = next(
            i.key_id for i in keyring_of(client).ingest.listing() if not i.current and not i.retired
        )
        assert sorted(retired_at_once(client, old)) == [False, True]


def retired_at_once(client: redis.Redis, key_id: str) -> list[bool]:
    """What two keyrings' retirements of ``key_id``, started together, returned."""
    start = threading.Barrier(2)
    done: list[bool] = []

    def retire() -> None:
        keyring = keyring_of(client)
        start.wait()
        done.append(keyring.ingest.retire(key_id))

    threads = [threading.Thread(target=retire) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done


def test_a_replacement_is_stamped_when_it_takes_effect(client: redis.Redis) -> None:
    """The previous key's replacement carries Redis's clock at the rotation (the script that
    makes it current stamps it), and stamps without an offset are refused as malformed."""
    keyring = keyring_of(client)
    before = keyring.ingest.now()
    keyring.ingest.rotate()
    after = keyring.ingest.now()
    replaced = keyring.ingest.replaced_at(FIRST_INGEST_ID)
    assert replaced is not None
    assert before <= replaced <= after
    client.hset("t:keys:ingest:ring", "replaced:ingest", "2020-01-01T00:00:00")
    with pytest.raises(SealBroken):
        keyring.ingest.replaced_at(FIRST_INGEST_ID)
