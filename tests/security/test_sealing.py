"""Sealer on a real Redis: round trips, what a seal is bound to, rotation and re-sealing,
crypto-shredding (an earlier secret's values included), version-1 values, clearance, batches,
and the text form of Sealed."""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
import time

import pytest
import redis
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidInput, KeyUnavailable, PoolUnavailable, SealBroken
from hivemem.security.key_provider import LocalKeyProvider
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.sealing import Sealed, Sealer

MASTER = bytes(range(32))
RECORD = b"record-0001"


@pytest.fixture
def keyring(client: redis.Redis) -> ZoneKeyring:
    return ZoneKeyring(client, LocalKeyProvider(MASTER), namespace="t")


@pytest.fixture
def sealer(keyring: ZoneKeyring) -> Sealer:
    return Sealer(keyring)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def dead_client() -> redis.Redis:
    """A real client of a port nobody listens on: any command it sends fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize("zone", list(Zone))
@pytest.mark.parametrize("subject", [None, "user-7"])
def test_round_trip_in_every_zone(sealer: Sealer, zone: Zone, subject: str | None) -> None:
    """What is sealed in a zone opens again in it, with or without a subject."""
    plaintext = f"the {zone} note".encode()
    sealed = sealer.seal(zone, plaintext, context=RECORD, subject=subject)
    assert plaintext not in sealed.ciphertext
    assert len(sealed.nonce) == 12
    assert sealer.open(zone, sealed, context=RECORD, subject=subject) == plaintext
    assert sealer.open(zone, Sealed.from_text(sealed.to_text()), context=RECORD, subject=subject)
    assert sealer.seal(zone, b"", subject=subject).ciphertext  # empty content: just the tag


def test_tampering_breaks_the_seal(sealer: Sealer, keyring: ZoneKeyring) -> None:
    """A flipped bit in ciphertext or nonce, or another key id, context or subject: SealBroken."""
    keyring.subject_secret("user-2")
    sealed = sealer.seal(Zone.SECRET, b"salary: 100", context=RECORD, subject="user-1")
    other_key = keyring.rotate(Zone.SECRET).key_id
    cases = [
        (dataclasses.replace(sealed, ciphertext=flip(sealed.ciphertext, 0)), RECORD, "user-1"),
        (dataclasses.replace(sealed, ciphertext=flip(sealed.ciphertext, -1)), RECORD, "user-1"),
        (dataclasses.replace(sealed, nonce=flip(sealed.nonce, 5)), RECORD, "user-1"),
        (dataclasses.replace(sealed, key_id=other_key), RECORD, "user-1"),
        (sealed, b"record-0002", "user-1"),
        (sealed, RECORD, "user-2"),
        (sealed, RECORD, None),
    ]
    for changed, context, subject in cases:
        with pytest.raises(SealBroken):
            sealer.open(Zone.SECRET, changed, context=context, subject=subject)
    assert sealer.open(Zone.SECRET, sealed, context=RECORD, subject="user-1") == b"salary: 100"


def test_another_zone_does_not_open(
    sealer: Sealer, keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """Opened as another zone, a seal finds no such key (KeyUnavailable); with that zone's slot
    holding a copy of the key, the key does not unwrap there (SealBroken)."""
    sealed = sealer.seal(Zone.CONFIDENTIAL, b"plan", context=RECORD)
    keyring.active(Zone.INTERNAL)
    with pytest.raises(KeyUnavailable):
        sealer.open(Zone.INTERNAL, sealed, context=RECORD)
    entry = client.hget("t:keys:zone:confidential", f"dek:{sealed.key_id}")
    client.hset("t:keys:zone:internal", f"dek:{sealed.key_id}", entry)
    with pytest.raises(SealBroken):
        sealer.open(Zone.INTERNAL, sealed, context=RECORD)


def test_rotation_reseal_and_retire(sealer: Sealer, keyring: ZoneKeyring) -> None:
    """After rotation old seals open and new ones use the new key; reseal moves a value to it
    (and leaves one already there untouched); after retire, only the re-sealed one opens."""
    old = sealer.seal(Zone.INTERNAL, b"v1 text", context=RECORD, subject="u1")
    new_key = keyring.rotate(Zone.INTERNAL)
    assert sealer.open(Zone.INTERNAL, old, context=RECORD, subject="u1") == b"v1 text"
    fresh = sealer.seal(Zone.INTERNAL, b"v2 text", context=RECORD)
    assert fresh.key_id == new_key.key_id != old.key_id
    moved = sealer.reseal(Zone.INTERNAL, old, context=RECORD, subject="u1")
    assert moved.key_id == new_key.key_id
    assert sealer.reseal(Zone.INTERNAL, moved, context=RECORD, subject="u1") is moved
    keyring.retire(Zone.INTERNAL, old.key_id)
    with pytest.raises(KeyUnavailable):
        sealer.open(Zone.INTERNAL, old, context=RECORD, subject="u1")
    assert sealer.open(Zone.INTERNAL, moved, context=RECORD, subject="u1") == b"v1 text"


def test_shred_forgets_a_subject(sealer: Sealer, keyring: ZoneKeyring) -> None:
    """After shred, the subject's content raises KeyUnavailable (subject forgotten), others'
    still opens, and the next seal for it makes a new secret that works; the old content still
    reads as forgotten then (it raised SealBroken once a new secret existed)."""
    mine = sealer.seal(Zone.SECRET, b"my diary", context=RECORD, subject="alice")
    theirs = sealer.seal(Zone.SECRET, b"their diary", context=RECORD, subject="bob")
    before = keyring.subject_secret("alice")
    assert keyring.shred("alice")
    with pytest.raises(KeyUnavailable, match="subject forgotten"):
        sealer.open(Zone.SECRET, mine, context=RECORD, subject="alice")
    assert keyring.subject_secret("alice", create=False) is None  # open never re-creates it
    assert sealer.open(Zone.SECRET, theirs, context=RECORD, subject="bob") == b"their diary"
    again = sealer.seal(Zone.SECRET, b"new diary", context=RECORD, subject="alice")
    assert keyring.subject_secret("alice") not in {None, before}
    assert sealer.open(Zone.SECRET, again, context=RECORD, subject="alice") == b"new diary"
    with pytest.raises(KeyUnavailable, match="subject forgotten"):
        sealer.open(Zone.SECRET, mine, context=RECORD, subject="alice")
    with pytest.raises(KeyUnavailable, match="subject forgotten"):  # in a batch, and as text
        sealer.open_many(
            Zone.SECRET,
            [(again, RECORD, "alice"), (Sealed.from_text(mine.to_text()), RECORD, "alice")],
        )


def test_a_stamped_value_altered_in_any_byte_still_raises_seal_broken(
    sealer: Sealer, keyring: ZoneKeyring
) -> None:
    """A value of an earlier secret reads as forgotten only when authentic: a flipped bit in
    the stamp (its secret id or MAC), nonce or ciphertext, or another context or subject raises
    SealBroken, before the shred, in between (no secret: the stamp is checked with the zone's
    key alone, first) and once a new secret exists; stripped of its stamp it does not open as
    version 1 either, and reads as forgotten in between (no stamp to check). An altered value
    of a forgotten subject read as forgotten before: one with store access could hide a record
    as forgotten without a tamper alarm."""
    keyring.subject_secret("user-2")
    sealed = sealer.seal(Zone.SECRET, b"salary: 100", context=RECORD, subject="user-1")
    assert sealed.stamp is not None
    altered = [
        (dataclasses.replace(sealed, stamp=flip(sealed.stamp, 0)), RECORD, "user-1"),
        (dataclasses.replace(sealed, stamp=flip(sealed.stamp, 7)), RECORD, "user-1"),
        (dataclasses.replace(sealed, stamp=flip(sealed.stamp, 8)), RECORD, "user-1"),
        (dataclasses.replace(sealed, stamp=flip(sealed.stamp, 23)), RECORD, "user-1"),
        (dataclasses.replace(sealed, nonce=flip(sealed.nonce, 0)), RECORD, "user-1"),
        (dataclasses.replace(sealed, ciphertext=flip(sealed.ciphertext, 3)), RECORD, "user-1"),
        (sealed, b"record-0002", "user-1"),
        (sealed, RECORD, "user-2"),
        (sealed, RECORD, None),
    ]
    for stage in ("live", "shredded", "new secret"):
        if stage == "shredded":
            keyring.shred("user-1")
        elif stage == "new secret":
            sealer.seal(Zone.SECRET, b"salary: 120", context=RECORD, subject="user-1")
        stripped = dataclasses.replace(sealed, stamp=None)
        for changed, context, subject in [*altered, (stripped, RECORD, "user-1")]:
            forgotten = stage == "shredded" and subject == "user-1" and changed.stamp is None
            with pytest.raises(KeyUnavailable if forgotten else SealBroken):
                sealer.open(Zone.SECRET, changed, context=context, subject=subject)
    with pytest.raises(KeyUnavailable, match="subject forgotten"):
        sealer.open(Zone.SECRET, sealed, context=RECORD, subject="user-1")


def test_version_1_values_open_as_before(sealer: Sealer, keyring: ZoneKeyring) -> None:
    """A value sealed as hivemem sealed a subject's content before stamps (v1 text, made here
    by hand: HKDF of the zone key salted with the subject's secret, the v1 associated data)
    opens as it always did, and stamp=False still seals in that form."""
    dek = keyring.active(Zone.INTERNAL)
    secret = keyring.subject_secret("u1")
    assert secret is not None
    info = f"hivemem/content|internal|{dek.key_id}".encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=secret, info=info).derive(dek.secret)
    nonce = bytes(range(12))
    aad = f"hivemem/v1|internal|{dek.key_id}|u1|".encode() + RECORD
    text = f"v1.{dek.key_id}.{b64(nonce)}.{b64(AESGCM(key).encrypt(nonce, b'old note', aad))}"
    old = Sealed.from_text(text)
    assert old.stamp is None
    assert old.to_text() == text
    assert sealer.open(Zone.INTERNAL, old, context=RECORD, subject="u1") == b"old note"
    plain = sealer.seal(Zone.INTERNAL, b"frame", context=RECORD, subject="u1", stamp=False)
    assert plain.stamp is None
    assert plain.to_text().startswith("v1.")
    assert sealer.open(Zone.INTERNAL, plain, context=RECORD, subject="u1") == b"frame"
    assert sealer.reseal(Zone.INTERNAL, old, context=RECORD, subject="u1") is old
    keyring.rotate(Zone.INTERNAL)
    moved = sealer.reseal(Zone.INTERNAL, old, context=RECORD, subject="u1")
    assert moved.stamp is None  # a re-seal keeps the version
    assert sealer.open(Zone.INTERNAL, moved, context=RECORD, subject="u1") == b"old note"


def test_shred_elsewhere_reaches_this_process_within_the_ttl(client: redis.Redis) -> None:
    """A subject shredded through another keyring stops opening here once the TTL passed."""
    provider = LocalKeyProvider(MASTER)
    here = Sealer(ZoneKeyring(client, provider, namespace="t", active_ttl_s=0.05))
    there = ZoneKeyring(client, provider, namespace="t")
    sealed = here.seal(Zone.INTERNAL, b"note", subject="carol")
    assert here.open(Zone.INTERNAL, sealed, subject="carol") == b"note"
    there.shred("carol")
    time.sleep(0.06)
    with pytest.raises(KeyUnavailable):
        here.open(Zone.INTERNAL, sealed, subject="carol")


def test_clearance_is_checked_before_any_redis_call() -> None:
    """An INTERNAL sealer on an unreachable Redis refuses SECRET with KeyUnavailable (above
    clearance) for every method, while INTERNAL does reach for Redis (PoolUnavailable)."""
    sealer = Sealer(
        ZoneKeyring(dead_client(), LocalKeyProvider(MASTER), namespace="t"), clearance=Zone.INTERNAL
    )
    sealed = Sealed("0123456789ab", bytes(12), bytes(16))
    calls = [
        lambda: sealer.seal(Zone.SECRET, b"x"),
        lambda: sealer.open(Zone.SECRET, sealed),
        lambda: sealer.seal_many(Zone.CONFIDENTIAL, [(b"x", b"", None)]),
        lambda: sealer.open_many(Zone.SECRET, [(sealed, b"", None)]),
        lambda: sealer.reseal(Zone.SECRET, sealed),
    ]
    for call in calls:
        with pytest.raises(KeyUnavailable, match="above clearance"):
            call()
    with pytest.raises(PoolUnavailable):
        sealer.seal(Zone.INTERNAL, b"x")


def test_batches_match_single_calls(sealer: Sealer) -> None:
    """seal_many/open_many keep order, bind each item's context and subject, and fail whole."""
    items = [
        (f"item {i}".encode(), f"rec-{i}".encode(), f"u{i % 3}" if i % 4 else None)
        for i in range(20)
    ]
    sealed = sealer.seal_many(Zone.CONFIDENTIAL, items)
    assert len({s.nonce for s in sealed}) == 20
    opened = sealer.open_many(
        Zone.CONFIDENTIAL, [(s, c, u) for s, (_, c, u) in zip(sealed, items, strict=True)]
    )
    assert opened == [p for p, _, _ in items]
    assert sealer.open(Zone.CONFIDENTIAL, sealed[5], context=b"rec-5", subject="u2") == b"item 5"
    swapped = [(sealed[1], items[2][1], items[1][2]), (sealed[0], items[0][1], items[0][2])]
    with pytest.raises(SealBroken):
        sealer.open_many(Zone.CONFIDENTIAL, swapped)
    assert sealer.seal_many(Zone.CONFIDENTIAL, []) == []


def test_bad_arguments_raise_invalid_input(sealer: Sealer) -> None:
    """Text instead of bytes, an unknown zone, or a misshapen Sealed: InvalidInput."""
    with pytest.raises(InvalidInput):
        sealer.seal(Zone.PUBLIC, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        sealer.seal("top", b"x")
    with pytest.raises(InvalidInput):
        sealer.open(Zone.PUBLIC, Sealed("0123456789ab", b"short", bytes(16)))


def test_concurrent_sealing_is_safe(sealer: Sealer) -> None:
    """Threads sealing and opening at once (one sealer, one keyring) all round-trip."""
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                text, subject = f"{n}-{i}".encode(), f"user-{i % 5}"
                sealed = sealer.seal(Zone.INTERNAL, text, context=text, subject=subject)
                assert sealer.open(Zone.INTERNAL, sealed, context=text, subject=subject) == text
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_redis_holds_neither_keys_nor_content(
    sealer: Sealer, keyring: ZoneKeyring, client: redis.Redis
) -> None:
    """After sealing, no Redis key or value (read by type: GET, HGETALL) holds the plaintext or
    any key (DEK, subject or vector key) raw, in hex or in base64."""
    plaintext = b"PLAINTEXT-MARKER-7f3a the launch code is 0000"
    for zone in Zone:
        sealer.seal(zone, plaintext, context=RECORD, subject="dave")
    secrets = [keyring.active(zone).secret for zone in Zone]
    secrets += [keyring.vector_key(zone) for zone in Zone]
    secrets.append(keyring.subject_secret("dave") or b"")
    stored: list[bytes] = []
    for name in client.scan_iter(count=100):
        stored.append(name)
        kind = client.type(name)
        if kind == b"string":
            stored.append(client.get(name))
        elif kind == b"hash":
            stored += [part for pair in client.hgetall(name).items() for part in pair]
        else:
            pytest.fail(f"unexpected Redis type {kind!r}")
    blob = b"\n".join(stored)
    assert plaintext not in blob
    assert b"PLAINTEXT-MARKER" not in blob
    for secret in secrets:
        assert secret not in blob
        assert secret.hex().encode() not in blob
        assert base64.b64encode(secret) not in blob


def test_text_form_round_trips(sealer: Sealer) -> None:
    """to_text is ``v1.<key id>.<nonce>.<ciphertext>`` without a subject and
    ``v2.<key id>.<stamp>.<nonce>.<ciphertext>`` with one; from_text reads both back exactly."""
    plain = sealer.seal(Zone.PUBLIC, b"hello", context=RECORD)
    stamped = sealer.seal(Zone.PUBLIC, b"hello", context=RECORD, subject="u1")
    for sealed, version, dots in ((plain, "v1", 3), (stamped, "v2", 4)):
        text = sealed.to_text()
        assert text.startswith(f"{version}.{sealed.key_id}.")
        assert text.count(".") == dots
        assert "=" not in text
        assert "+" not in text
        assert "/" not in text
        assert Sealed.from_text(text) == sealed
    assert plain.stamp is None
    assert stamped.stamp is not None
    assert len(stamped.stamp) == 24


GOOD = "v1.0123456789ab.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA"
STAMP = "A" * 32
GOOD_2 = f"v2.0123456789ab.{STAMP}.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1",
        "garbage",
        GOOD.replace("v1", "v2", 1),
        GOOD + ".extra",
        GOOD.replace("0123456789ab", "0123456789AB"),
        GOOD.replace("0123456789ab", "0123:56789ab"),
        "v1.0123456789ab.AAAA.AAAAAAAAAAAAAAAAAAAAAA",  # nonce too short
        "v1.0123456789ab.AAAAAAAAAAAAAAAA.AAAA",  # ciphertext shorter than a tag
        "v1.0123456789ab.AAAAAAAAAAAAAAA!.AAAAAAAAAAAAAAAAAAAAAA",  # not base64url
        "v1.0123456789ab.AAAAAAAAAAAAAAAA=.AAAAAAAAAAAAAAAAAAAAAA",  # padded
        "v1.0123456789ab.AAAAAAAAAAAAAAAB.AAAAAAAAAAAAAAAAAAAAAB",  # non-canonical last char
        "v1.0123456789ab.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA\n",
        "v1.0123456789ab.ÄAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        None,
        b"v1.0123456789ab.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        GOOD_2.replace("v2", "v1", 1),
        GOOD_2.replace("v2", "v3", 1),
        GOOD_2.replace(f"{STAMP}.", ""),
        GOOD_2.replace(STAMP, STAMP[:-2]),  # stamp too short
        GOOD_2.replace(STAMP, STAMP + "AA"),  # too long
        GOOD_2.replace(STAMP, STAMP[:-1] + "!"),
        GOOD_2.replace(STAMP, ""),
    ],
)
def test_from_text_refuses_garbage(text: object) -> None:
    """Anything but a well-formed v1 or v2 text raises InvalidInput, never something else."""
    assert Sealed.from_text(GOOD).key_id == "0123456789ab"
    assert Sealed.from_text(GOOD_2).stamp == bytes(24)
    with pytest.raises(InvalidInput):
        Sealed.from_text(text)  # type: ignore[arg-type]


@given(st.text(max_size=120))
def test_from_text_never_crashes(text: str) -> None:
    """For any string, from_text returns a Sealed that prints back to it, or InvalidInput."""
    try:
        sealed = Sealed.from_text(text)
    except InvalidInput:
        return
    assert sealed.to_text() == text


def test_a_value_moved_to_a_user_without_a_secret_raises_seal_broken(
    sealer: Sealer, keyring: ZoneKeyring
) -> None:
    """A stamped value whose subject is changed (a record's user id, stored in clear) to one
    that never had a secret raises SealBroken: it read as 'subject forgotten', which reads skip."""
    sealed = sealer.seal(Zone.SECRET, b"salary: 100", context=RECORD, subject="user-1")
    assert keyring.subject_secret("nobody-yet", create=False) is None
    with pytest.raises(SealBroken):
        sealer.open(Zone.SECRET, sealed, context=RECORD, subject="nobody-yet")
