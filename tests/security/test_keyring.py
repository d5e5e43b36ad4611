"""ZoneKeyring on a real Redis: creation races, rotation, retirement, vector keys, subject
secrets, the Redis layout and what never reaches Redis or the logs."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from hivemem.pool.enums import Zone
from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    KeyUnavailable,
    PoolUnavailable,
    SealBroken,
)
from hivemem.pool.redis_server import EmbeddedRedis
from hivemem.security.data_keys import DataKey
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring

MASTER = bytes(range(32))


@pytest.fixture
def provider() -> LocalKeyProvider:
    return LocalKeyProvider(MASTER)


@pytest.fixture
def keyring(client: redis.Redis, provider: LocalKeyProvider) -> ZoneKeyring:
    return ZoneKeyring(client, provider, namespace="t")


def race(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``n`` threads released together; their results, in index order."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def stored_values(client: redis.Redis) -> list[bytes]:
    """Every key name and value in Redis, read by type (GET / HGETALL), without DUMP."""
    values: list[bytes] = []
    for name in client.scan_iter(count=100):
        values.append(name)
        kind = client.type(name)
        if kind == b"string":
            values.append(client.get(name))
        elif kind == b"hash":
            for field, value in client.hgetall(name).items():
                values += [field, value]
        else:
            pytest.fail(f"unexpected Redis type {kind!r} at {name!r}")
    return values


def test_active_is_created_once_and_hides_its_secret(keyring: ZoneKeyring) -> None:
    """The first active() makes a 32-byte key; later calls return it; repr shows no secret."""
    key = keyring.active(Zone.INTERNAL)
    assert len(key.secret) == 32
    assert len(key.key_id) == 12
    assert keyring.active("internal") == key
    assert keyring.get(Zone.INTERNAL, key.key_id) == key
    assert key.secret.hex() not in repr(key)
    assert "secret" not in repr(key)
    assert keyring.active(Zone.SECRET).key_id != key.key_id


def test_racing_keyrings_agree_on_the_first_key(
    redis_server: EmbeddedRedis, provider: LocalKeyProvider
) -> None:
    """Sixteen keyrings (own clients) racing on a zone's first use all get one key."""

    def first(_: int) -> object:
        client = redis.Redis.from_url(redis_server.url)
        return ZoneKeyring(client, provider, namespace="t").active(Zone.CONFIDENTIAL)

    keys = race(16, first)
    assert len({(k.key_id, k.secret) for k in keys if isinstance(k, DataKey)}) == 1
    check = ZoneKeyring(redis.Redis.from_url(redis_server.url), provider, namespace="t")
    assert len(check.keys(Zone.CONFIDENTIAL)) == 1


def test_rotate_keeps_old_keys_readable(keyring: ZoneKeyring) -> None:
    """After rotate the new key is active, the old one still opens, keys() lists both."""
    old = keyring.active(Zone.SECRET)
    new = keyring.rotate(Zone.SECRET)
    assert new.key_id != old.key_id
    assert keyring.active(Zone.SECRET) == new
    assert keyring.get(Zone.SECRET, old.key_id) == old
    infos = keyring.keys(Zone.SECRET)
    assert [i.key_id for i in infos] == [old.key_id, new.key_id]
    assert [i.active for i in infos] == [False, True]
    assert not any(i.retired for i in infos)
    assert infos[0].created_at <= infos[1].created_at


def test_rotation_elsewhere_is_seen_within_the_ttl(
    client: redis.Redis, provider: LocalKeyProvider
) -> None:
    """A rotation made by another keyring is used here once active_ttl_s has passed."""
    here = ZoneKeyring(client, provider, namespace="t", active_ttl_s=0.05)
    there = ZoneKeyring(client, provider, namespace="t")
    first = here.active(Zone.PUBLIC)
    rotated = there.rotate(Zone.PUBLIC)
    time.sleep(0.06)
    assert here.active(Zone.PUBLIC) == rotated != first


def test_retire_deletes_the_wrapped_material(keyring: ZoneKeyring, client: redis.Redis) -> None:
    """A retired key no longer opens, its dek field is gone from Redis, keys() flags it."""
    old = keyring.active(Zone.INTERNAL)
    keyring.rotate(Zone.INTERNAL)
    keyring.retire(Zone.INTERNAL, old.key_id)
    with pytest.raises(KeyUnavailable):
        keyring.get(Zone.INTERNAL, old.key_id)
    fields = client.hgetall("t:keys:zone:internal")
    assert f"dek:{old.key_id}".encode() not in fields
    assert json.loads(fields[f"retired:{old.key_id}".encode()]).keys() == {
        "created_at",
        "retired_at",
    }
    infos = {i.key_id: i for i in keyring.keys(Zone.INTERNAL)}
    assert infos[old.key_id].retired
    assert not infos[old.key_id].active
    keyring.retire(Zone.INTERNAL, old.key_id)  # again: nothing to do, no error


def test_retire_refuses_the_active_unknown_and_malformed_keys(keyring: ZoneKeyring) -> None:
    """The active key: InvalidInput; an unknown id: KeyUnavailable; garbage: InvalidIdentifier.
    The active key still opens afterwards."""
    active = keyring.active(Zone.SECRET)
    with pytest.raises(InvalidInput):
        keyring.retire(Zone.SECRET, active.key_id)
    with pytest.raises(KeyUnavailable):
        keyring.retire(Zone.SECRET, "0123456789ab")
    with pytest.raises(InvalidIdentifier):
        keyring.retire(Zone.SECRET, "*")
    with pytest.raises(InvalidIdentifier):
        keyring.get(Zone.SECRET, "abc:def")
    assert keyring.get(Zone.SECRET, active.key_id) == active


def test_retirement_elsewhere_reaches_cached_keys_within_the_ttl(
    client: redis.Redis, provider: LocalKeyProvider
) -> None:
    """A key this keyring cached stops opening once another keyring retired it and the TTL
    has passed."""
    here = ZoneKeyring(client, provider, namespace="t", active_ttl_s=0.05)
    there = ZoneKeyring(client, provider, namespace="t")
    old = here.active(Zone.INTERNAL)
    there.rotate(Zone.INTERNAL)
    there.retire(Zone.INTERNAL, old.key_id)
    time.sleep(0.06)
    with pytest.raises(KeyUnavailable):
        here.get(Zone.INTERNAL, old.key_id)


def test_another_master_key_cannot_unwrap(client: redis.Redis, keyring: ZoneKeyring) -> None:
    """Keys wrapped under one master key raise SealBroken under another."""
    key = keyring.active(Zone.SECRET)
    other = ZoneKeyring(client, LocalKeyProvider(bytes(32)), namespace="t")
    with pytest.raises(SealBroken):
        other.get(Zone.SECRET, key.key_id)
    keyring.subject_secret("user-1")
    with pytest.raises(SealBroken):
        other.subject_secret("user-1")


def test_a_wrapped_key_copied_to_another_slot_does_not_unwrap(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """The wrap context binds zone and key id: a DEK copied into another zone, or under
    another id, raises SealBroken."""
    key = keyring.active(Zone.SECRET)
    entry = client.hget("t:keys:zone:secret", f"dek:{key.key_id}")
    client.hset("t:keys:zone:public", f"dek:{key.key_id}", entry)
    client.hset("t:keys:zone:secret", "dek:0123456789ab", entry)
    with pytest.raises(SealBroken):
        keyring.get(Zone.PUBLIC, key.key_id)
    with pytest.raises(SealBroken):
        keyring.get(Zone.SECRET, "0123456789ab")


def test_entries_hivemem_never_writes_raise_seal_broken(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """A stored entry nested too deep to parse, or an active id or field name that is not
    UTF-8, raises SealBroken (it was RecursionError or UnicodeDecodeError)."""
    client.hset("t:keys:zone:public", "dek:0123456789ab", "[" * 100_000)
    with pytest.raises(SealBroken):
        keyring.get(Zone.PUBLIC, "0123456789ab")
    with pytest.raises(SealBroken):
        keyring.keys(Zone.PUBLIC)
    client.hset("t:keys:zone:secret", "active", b"\xff\xfe")
    with pytest.raises(SealBroken):
        keyring.active(Zone.SECRET, fresh=True)
    with pytest.raises(SealBroken):
        keyring.keys(Zone.SECRET)


def test_vector_key_is_per_zone_stable_and_not_rotated(
    redis_server: EmbeddedRedis, provider: LocalKeyProvider
) -> None:
    """Racing keyrings get one vector key per zone; rotating the DEK leaves it unchanged."""

    def first(_: int) -> object:
        client = redis.Redis.from_url(redis_server.url)
        return ZoneKeyring(client, provider, namespace="t").vector_key(Zone.INTERNAL)

    keys = race(8, first)
    assert len(set(keys)) == 1
    keyring = ZoneKeyring(redis.Redis.from_url(redis_server.url), provider, namespace="t")
    keyring.rotate(Zone.INTERNAL)
    assert keyring.vector_key(Zone.INTERNAL) == keys[0]
    assert keyring.vector_key(Zone.PUBLIC) != keys[0]
    assert len(keyring.vector_key(Zone.PUBLIC)) == 32


def test_subject_secrets_are_made_once_and_shredded(
    keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """A subject's secret is made on first use and stable; shred deletes it from Redis and the
    cache (True once, then False); the next use with create makes a new one."""
    assert keyring.subject_secret("user-1", create=False) is None
    secret = keyring.subject_secret("user-1")
    assert secret is not None
    assert len(secret) == 32
    assert keyring.subject_secret("user-1") == secret
    assert keyring.subject_secret("user-2") != secret
    assert keyring.shred("user-1") is True
    assert not client.hexists("t:keys:subjects", "user-1")
    assert keyring.subject_secret("user-1", create=False) is None
    assert keyring.shred("user-1") is False
    assert keyring.subject_secret("user-1") not in {None, secret}


def test_racing_subject_creation_gives_one_secret(
    redis_server: EmbeddedRedis, provider: LocalKeyProvider
) -> None:
    """Keyrings racing on a subject's first use all get the same secret."""

    def first(_: int) -> object:
        client = redis.Redis.from_url(redis_server.url)
        return ZoneKeyring(client, provider, namespace="t").subject_secret("alice@example.com")

    assert len(set(race(8, first))) == 1


@pytest.mark.parametrize(
    "subject", ["", "has space", "new\nline", "tab\t", "x" * 129, "a|b", "é", None, 42]
)
def test_bad_subjects_are_refused(keyring: ZoneKeyring, subject: object) -> None:
    """Empty, whitespace, overlong, ``|``, non-ASCII or non-str subjects: InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        keyring.subject_secret(subject)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        keyring.shred(subject)  # type: ignore[arg-type]


def test_bad_namespace_and_zone_are_refused(
    client: redis.Redis, provider: LocalKeyProvider
) -> None:
    """A namespace that could break key patterns, or an unknown zone: typed errors."""
    with pytest.raises(InvalidIdentifier):
        ZoneKeyring(client, provider, namespace="a:*")
    with pytest.raises(InvalidInput):
        ZoneKeyring(client, provider, namespace="t").active("top-secret")


def test_layout_is_under_the_namespace_and_holds_no_plaintext_key(
    keyring: ZoneKeyring, client: redis.Redis, provider: LocalKeyProvider
) -> None:
    """Every key lives under ``t:keys:``; no stored value holds a key in raw, hex or base64
    form; wrapped entries carry provider_id, wrapped and created_at."""
    secrets = [keyring.active(zone).secret for zone in Zone]
    old = keyring.active(Zone.SECRET)
    secrets.append(keyring.rotate(Zone.SECRET).secret)
    secrets += [keyring.vector_key(zone) for zone in Zone]
    secrets += [keyring.subject_secret(f"user-{i}") or b"" for i in range(3)]
    assert keyring.get(Zone.SECRET, old.key_id).secret in secrets
    names = list(client.scan_iter())
    assert names
    assert all(name.startswith(b"t:keys:") for name in names)
    blob = b"\n".join(stored_values(client))
    for secret in secrets:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in blob
    entry = json.loads(client.get("t:keys:vector:public"))
    assert entry.keys() == {"provider_id", "wrapped", "created_at"}
    assert entry["provider_id"] == provider.provider_id


def test_logs_never_hold_key_material(keyring: ZoneKeyring) -> None:
    """Creating, rotating, retiring and shredding log events with ids, never secrets."""
    with capture_logs() as logs:
        first = keyring.active(Zone.INTERNAL)
        second = keyring.rotate(Zone.INTERNAL)
        keyring.retire(Zone.INTERNAL, first.key_id)
        subject = keyring.subject_secret("user-9") or b""
        keyring.shred("user-9")
    events = [entry["event"] for entry in logs]
    assert events == [
        "data_key_created",
        "data_key_rotated",
        "data_key_retired",
        "subject_secret_created",
        "subject_shredded",
    ]
    text = repr(logs)
    for secret in (first.secret, second.secret, subject):
        assert secret.hex() not in text
        assert repr(secret) not in text


def test_unreachable_redis_raises_pool_unavailable(provider: LocalKeyProvider) -> None:
    """With no Redis to talk to, the keyring raises PoolUnavailable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(PoolUnavailable):
        ZoneKeyring(client, provider, namespace="t").active(Zone.PUBLIC)
