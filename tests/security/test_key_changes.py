"""Key rotations and ingest-key retirements whose reply is lost, or whose request runs after its
caller gave up, on a real Redis behind a real TCP relay: each ends audited exactly once, by the
same call or by the retry, and a retry makes no second key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
import structlog

import hivemem.security as security_package
from hivemem.pool.enums import Zone
from hivemem.pool.errors import INGEST_QUEUE, PoolUnavailable
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security import AuditEntry, AuditEvent, AuditLog
from hivemem.security.ingest_keys import FIRST_INGEST_ID, INGEST_KEYS
from hivemem.security.ingest_rotation import IngestRotation
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.key_rotation import KeyRotation
from hivemem.security.keyring import ZoneKeyring
from tests.relay import Relay
from tests.waiting import wait_for

MASTER = bytes(range(32))
NOTES = "t:keys:unaudited"
#: What the request that rotates a key carries (the new key's wrapped entry), and the one that
#: retires an ingest key (its retired record).
ROTATION, RETIREMENT = b'"provider_id"', b'"retired_at"'


@pytest.fixture
def slow(redis_server: EmbeddedRedis, relay: Relay, client: redis.Redis) -> redis.Redis:
    """A client whose connection goes through ``relay`` and waits 0.3 s for a reply. The
    security scripts are loaded in Redis, so that a script's first call is the one relayed."""
    for script in (Path(security_package.__file__).parent / "lua").glob("*.lua"):
        client.script_load(script.read_text())
    return redis.Redis.from_url(relay.url(redis_server), socket_timeout=0.3)


@pytest.fixture
def keyring(slow: redis.Redis) -> ZoneKeyring:
    return ZoneKeyring(slow, LocalKeyProvider(MASTER), namespace="t")


@pytest.fixture
def audit(slow: redis.Redis) -> AuditLog:
    return AuditLog(slow, namespace="t")


@pytest.fixture
def zone_keys(keyring: ZoneKeyring, slow: redis.Redis, audit: AuditLog) -> KeyRotation:
    return KeyRotation(keyring, slow, namespace="t", audit=audit)


@pytest.fixture
def ingest_keys(keyring: ZoneKeyring, audit: AuditLog) -> IngestRotation:
    """The ingest rotation, no grace, one message queued to every key (a retirement is
    forced)."""
    return IngestRotation(keyring, audit=audit, queued=lambda _key_id: 1, grace_s=0.0)


def audited(client: redis.Redis, kind: AuditEvent) -> list[AuditEntry]:
    """The audit entries of ``kind``, read directly."""
    return [e for e in AuditLog(client, namespace="t").entries() if e.kind == kind]


def zone_state(client: redis.Redis) -> tuple[str, list[str]]:
    """The internal zone's active key and all its keys, read directly."""
    fields = {k.decode(): v.decode() for k, v in client.hgetall("t:keys:zone:internal").items()}
    return fields["active"], sorted(k.split(":")[1] for k in fields if k.startswith("dek:"))


def test_a_zone_key_rotation_whose_reply_is_lost_is_audited_by_the_same_call(
    zone_keys: KeyRotation, relay: Relay, client: redis.Redis
) -> None:
    """The script ran, its reply came too late: the rotation finds its key in Redis and goes
    on as if the reply had come (one new key, one ``key_rotated``, no note left)."""
    old = zone_keys.keyring.active(Zone.INTERNAL).key_id
    relay.hold_reply_to = (ROTATION, 0.6)
    with structlog.testing.capture_logs() as logs:
        new = zone_keys.rotate(Zone.INTERNAL, actor="admin")

    assert zone_state(client) == (new.key_id, sorted([old, new.key_id]))
    [entry] = audited(client, AuditEvent.KEY_ROTATED)
    assert (entry.subject, entry.zone, entry.details) == (new.key_id, "internal", {"previous": old})
    assert "data_key_rotation_reply_lost" in [e["event"] for e in logs]
    assert not client.exists(NOTES)


def test_a_zone_key_rotation_that_lands_after_its_error_is_audited_by_the_retry(
    zone_keys: KeyRotation, relay: Relay, client: redis.Redis
) -> None:
    """The request was held up: the caller is told PoolUnavailable, then the script runs after
    all, unaudited. The retry audits it (``resumed``), then makes a key of its own (who asks
    for a rotation gets a key no one had): both rotations audited, in order."""
    old = zone_keys.keyring.active(Zone.INTERNAL).key_id
    relay.hold_request_with = (ROTATION, 0.6)
    with pytest.raises(PoolUnavailable):
        zone_keys.rotate(Zone.INTERNAL, actor="admin")
    assert wait_for(lambda: zone_state(client)[0] != old)  # the held script ran
    landed = zone_state(client)[0]
    assert audited(client, AuditEvent.KEY_ROTATED) == []

    again = zone_keys.rotate(Zone.INTERNAL, actor="admin")

    assert again.key_id not in (old, landed)
    assert zone_state(client) == (again.key_id, sorted([old, landed, again.key_id]))
    assert [(e.subject, e.details) for e in audited(client, AuditEvent.KEY_ROTATED)] == [
        (landed, {"previous": old, "resumed": True}),
        (again.key_id, {"previous": landed}),
    ]
    assert not client.exists(NOTES)


def test_a_zone_key_rotation_held_until_after_its_retry_changes_nothing(
    zone_keys: KeyRotation, relay: Relay, client: redis.Redis
) -> None:
    """The retry comes before the held request runs: the retry makes the new key, and the held
    script, finding another key active than the one its caller read, makes none."""
    old = zone_keys.keyring.active(Zone.INTERNAL).key_id
    relay.hold_request_with = (ROTATION, 1.0)
    with pytest.raises(PoolUnavailable):
        zone_keys.rotate(Zone.INTERNAL, actor="admin")
    again = zone_keys.rotate(Zone.INTERNAL, actor="admin")
    time.sleep(1.0)  # the held request has reached Redis and run

    assert zone_state(client) == (again.key_id, sorted([old, again.key_id]))
    [entry] = audited(client, AuditEvent.KEY_ROTATED)
    assert (entry.subject, entry.details) == (again.key_id, {"previous": old})
    assert not client.exists(NOTES)


def current_ingest(client: redis.Redis) -> str:
    """The current ingest key's id, read directly."""
    return (client.hget("t:keys:ingest:ring", "current") or FIRST_INGEST_ID.encode()).decode()


def test_an_ingest_key_rotation_whose_reply_is_lost_is_audited_by_the_same_call(
    ingest_keys: IngestRotation, relay: Relay, client: redis.Redis
) -> None:
    """As for a zone's data key: the new key is found in Redis, and audited once."""
    ingest_keys.listing()  # the first key
    relay.hold_reply_to = (ROTATION, 0.6)
    with structlog.testing.capture_logs() as logs:
        new = ingest_keys.rotate(actor="admin")

    assert new.current
    assert current_ingest(client) == new.key_id
    assert [i.key_id for i in ingest_keys.listing()] == [FIRST_INGEST_ID, new.key_id]
    [entry] = audited(client, AuditEvent.KEY_ROTATED)
    assert (entry.subject, entry.zone, entry.details) == (
        new.key_id, INGEST_KEYS, {"previous": FIRST_INGEST_ID}
    )  # fmt: skip
    assert "ingest_key_rotation_reply_lost" in [e["event"] for e in logs]
    assert not client.exists(NOTES)


def test_an_ingest_key_rotation_that_lands_after_its_error_is_audited_by_the_retry(
    ingest_keys: IngestRotation, relay: Relay, client: redis.Redis
) -> None:
    """The held rotation lands after PoolUnavailable; the retry audits it (``resumed``), then
    makes a key of its own: both rotations audited, in order."""
    ingest_keys.listing()
    relay.hold_request_with = (ROTATION, 0.6)
    with pytest.raises(PoolUnavailable):
        ingest_keys.rotate(actor="admin")
    assert wait_for(lambda: current_ingest(client) != FIRST_INGEST_ID)
    landed = current_ingest(client)
    assert audited(client, AuditEvent.KEY_ROTATED) == []

    again = ingest_keys.rotate(actor="admin")

    assert again.current
    assert current_ingest(client) == again.key_id != landed
    assert [i.key_id for i in ingest_keys.listing()] == [FIRST_INGEST_ID, landed, again.key_id]
    assert [(e.subject, e.details) for e in audited(client, AuditEvent.KEY_ROTATED)] == [
        (landed, {"previous": FIRST_INGEST_ID, "resumed": True}),
        (again.key_id, {"previous": landed}),
    ]
    assert not client.exists(NOTES)


def test_an_ingest_key_retirement_whose_reply_is_lost_is_audited_by_the_same_call(
    ingest_keys: IngestRotation, relay: Relay, client: redis.Redis
) -> None:
    """The retirement ran, its reply came too late: the call finds the key retired and audits
    it once, with what was behind it."""
    ingest_keys.rotate(actor="admin")
    relay.hold_reply_to = (RETIREMENT, 0.6)
    with structlog.testing.capture_logs() as logs:
        behind = ingest_keys.retire(FIRST_INGEST_ID, actor="admin", force=True)

    assert behind == [INGEST_QUEUE]
    assert client.get("t:keys:ingest") == b"retired"
    [entry] = audited(client, AuditEvent.KEY_RETIRED)
    assert (entry.subject, entry.zone, entry.details) == (
        FIRST_INGEST_ID, INGEST_KEYS, {"forced": True, "behind": [INGEST_QUEUE]}
    )  # fmt: skip
    assert ingest_keys.retire(FIRST_INGEST_ID, actor="admin") == []  # retired: nothing more
    assert len(audited(client, AuditEvent.KEY_RETIRED)) == 1
    assert "ingest_key_retirement_reply_lost" in [e["event"] for e in logs]
    assert not client.exists(NOTES)


def test_an_ingest_key_retirement_that_lands_after_its_error_is_audited_by_the_retry(
    ingest_keys: IngestRotation, relay: Relay, client: redis.Redis
) -> None:
    """The retirement's request is held up, and Redis answers nothing else either until the
    caller gave up (PoolUnavailable); then the retirement lands. The retry finds the key
    retired and audits that retirement (``resumed``), returning what was behind it then."""
    ingest_keys.rotate(actor="admin")
    relay.hold_requests_from = (RETIREMENT, 0.6)  # Redis answers nothing more for a while
    with pytest.raises(PoolUnavailable):
        ingest_keys.retire(FIRST_INGEST_ID, actor="admin", force=True)
    relay.hold_requests = 0.0
    assert wait_for(lambda: client.get("t:keys:ingest") == b"retired")
    assert audited(client, AuditEvent.KEY_RETIRED) == []

    assert ingest_keys.retire(FIRST_INGEST_ID, actor="admin") == [INGEST_QUEUE]

    [entry] = audited(client, AuditEvent.KEY_RETIRED)
    assert (entry.subject, entry.details) == (
        FIRST_INGEST_ID, {"forced": True, "behind": [INGEST_QUEUE], "resumed": True}
    )  # fmt: skip
    assert not client.exists(NOTES)


def test_rotations_at_once_are_each_audited_once(
    client: redis.Redis, redis_server: EmbeddedRedis
) -> None:
    """Four threads, each with its own connection, rotate one zone's key 15 times at once:
    every rotation made is audited exactly once. A rotation used to audit the notes of the
    others still running too (as ``resumed``), so some were audited twice."""
    made: list[str] = []

    def rotate() -> None:
        own = redis.Redis.from_url(redis_server.url)
        rotation = KeyRotation(
            ZoneKeyring(own, LocalKeyProvider(MASTER), namespace="t"), own, namespace="t",
            audit=AuditLog(own, namespace="t"),
        )  # fmt: skip
        made.extend(rotation.rotate(Zone.INTERNAL, actor="op").key_id for _ in range(15))
        own.close()

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audited = [
        e.subject for e in AuditLog(client, namespace="t").entries() if e.kind == "key_rotated"
    ]
    assert len(made) == 60
    assert sorted(audited) == sorted(made)
    assert client.hlen(NOTES) == 0
