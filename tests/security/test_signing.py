"""Ed25519 signing keys and registry entry signatures: round trips, every kind of bad signature
verifying as False without raising, key files (mode, atomic creation, no overwrite, races), and
admin signatures that break when any field of the entry changes."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidIdentifier, InvalidInput
from hivemem.security.signing import (
    REGISTRY_DOMAIN,
    AdminSigner,
    SigningKey,
    entry_bytes,
    is_public_key,
    verify_entry,
    verify_signature,
)

DATA = b'{"v":1,"message_id":"00","zone":"internal"}' + bytes(range(256)) * 8  # ~2 KB


def _flip(text: str, index: int) -> str:
    """``text`` (base64) with one bit of its decoded byte ``index`` flipped, re-encoded."""
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def test_a_signature_verifies_with_the_signers_public_key(key: SigningKey) -> None:
    """sign then verify_signature: True; keys and signatures are base64 of 32 and 64 bytes."""
    signature = key.sign(DATA)
    assert verify_signature(key.public_key, signature, DATA)
    assert len(base64.b64decode(key.public_key)) == 32
    assert len(base64.b64decode(signature)) == 64


def test_a_flipped_byte_in_data_or_signature_fails(key: SigningKey) -> None:
    """One bit changed anywhere, in the data or in the signature: False."""
    signature = key.sign(DATA)
    for index in (0, len(DATA) // 2, len(DATA) - 1):
        tampered = bytearray(DATA)
        tampered[index] ^= 0x01
        assert not verify_signature(key.public_key, signature, bytes(tampered))
    for index in (0, 31, 32, 63):
        assert not verify_signature(key.public_key, _flip(signature, index), DATA)
    assert not verify_signature(key.public_key, signature, DATA + b" ")


def test_another_keys_signature_fails(key: SigningKey) -> None:
    """A valid signature by another key does not verify under this key."""
    other = SigningKey.generate()
    assert not verify_signature(key.public_key, other.sign(DATA), DATA)
    assert not verify_signature(other.public_key, key.sign(DATA), DATA)


def test_a_small_order_key_verifies_nothing_and_is_no_public_key(key: SigningKey) -> None:
    """The identity point as the key and (R = identity, S = 0) as the signature satisfy the
    verification equation for any data; OpenSSL accepts it, this check does not, and such a
    key is not a public key (a registry entry cannot carry it)."""
    identity = b"\x01" + bytes(31)
    forged_key = base64.b64encode(identity).decode()
    trivial = base64.b64encode(identity + bytes(32)).decode()
    opened = Ed25519PublicKey.from_public_bytes(identity)
    opened.verify(base64.b64decode(trivial), DATA)  # OpenSSL: no exception, it "verifies"
    assert not verify_signature(forged_key, trivial, DATA)
    assert not is_public_key(forged_key)
    with pytest.raises(InvalidInput):
        entry_bytes("mallory", Zone.PUBLIC, forged_key)
    assert is_public_key(key.public_key)


def _non_canonical(text: str) -> str:
    """Base64 that decodes to the same bytes as ``text`` but with non-zero padding bits."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stem, pad = text.rstrip("="), "=" * (len(text) - len(text.rstrip("=")))
    last = alphabet[alphabet.index(stem[-1]) | 1]
    return stem[:-1] + last + pad


@pytest.mark.parametrize(
    "mangle",
    [
        lambda _s: None,
        lambda _s: "",
        lambda _s: "not base64 at all!!",
        lambda s: s[:-4],  # too short
        lambda s: s + "AAAA",  # too long
        lambda s: "é" * len(s),  # non-ASCII
        lambda s: "*" * len(s),  # right length, not base64
        lambda s: s.replace("=", "A"),  # padding replaced
        _non_canonical,
        lambda _s: base64.urlsafe_b64encode(b"\xff" * 64).decode(),  # the other alphabet
    ],
)
def test_a_malformed_signature_or_key_is_false_and_never_raises(
    key: SigningKey, mangle: Callable[[str], Any]
) -> None:
    """Garbage, wrong lengths, non-ASCII, non-canonical base64, None, as the signature or as
    the public key: False, no exception."""
    signature = key.sign(DATA)
    assert not verify_signature(key.public_key, mangle(signature), DATA)
    assert not verify_signature(mangle(key.public_key), signature, DATA)


def test_non_bytes_data_or_a_non_string_key_is_false(key: SigningKey) -> None:
    """verify_signature never raises, even for arguments of the wrong type."""
    signature = key.sign(DATA)
    assert not verify_signature(key.public_key, signature, DATA.decode("latin-1"))  # type: ignore[arg-type]
    assert not verify_signature(None, signature, DATA)  # type: ignore[arg-type]
    assert not verify_signature(key.public_key, 42, DATA)  # type: ignore[arg-type]


def test_from_private_bytes_rebuilds_the_same_key(key: SigningKey, tmp_path: Path) -> None:
    """The same 32 raw bytes give the same key (Ed25519 signatures are deterministic); other
    lengths and types raise InvalidInput."""
    key.save(tmp_path / "k")
    raw = base64.b64decode((tmp_path / "k").read_text())
    again = SigningKey.from_private_bytes(raw)
    assert again.public_key == key.public_key
    assert again.sign(DATA) == key.sign(DATA)
    for bad in (raw[:31], raw + b"\0", b"", raw.hex()):
        with pytest.raises(InvalidInput):
            SigningKey.from_private_bytes(bad)  # type: ignore[arg-type]


def test_the_repr_shows_no_private_key(key: SigningKey, tmp_path: Path) -> None:
    """repr names the public key only: neither the private key's base64 nor its bytes."""
    key.save(tmp_path / "k")
    private = (tmp_path / "k").read_text().strip()
    for shown in (repr(key), str(key), repr(AdminSigner(key))):
        assert key.public_key in shown
        assert private not in shown
        assert repr(base64.b64decode(private)) not in shown


def test_save_and_load_round_trip_with_private_modes(key: SigningKey, tmp_path: Path) -> None:
    """save writes one base64 line, mode 0600, in a new directory of mode 0700; load returns
    the same key; no temporary file is left behind."""
    path = tmp_path / "keys" / "agent.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().splitlines()) == 1
    assert os.listdir(path.parent) == ["agent.key"]
    loaded = SigningKey.load(path)
    assert loaded.public_key == key.public_key
    assert verify_signature(key.public_key, loaded.sign(DATA), DATA)


def test_save_refuses_to_overwrite_another_key(key: SigningKey, tmp_path: Path) -> None:
    """Saving the same key again changes nothing; another key, or over a malformed file, raises
    InvalidInput and leaves the file as it was."""
    path = tmp_path / "agent.key"
    key.save(path)
    before = path.read_bytes()
    key.save(path)
    with pytest.raises(InvalidInput, match="another signing key"):
        SigningKey.generate().save(path)
    assert path.read_bytes() == before
    junk = tmp_path / "junk.key"
    junk.write_text("junk\n")
    with pytest.raises(InvalidInput):
        key.save(junk)
    assert junk.read_text() == "junk\n"


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key\n", base64.b64encode(b"\1" * 31) + b"\n", b"\xff\xfe" * 30, b"A" * 300],
)
def test_load_rejects_a_malformed_file(tmp_path: Path, content: bytes) -> None:
    """Empty, garbage, a 31-byte key, binary, oversized: InvalidInput."""
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match="does not hold a signing key"):
        SigningKey.load(path)


def test_load_rejects_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    """A missing path and a directory raise InvalidInput (field ``path``)."""
    with pytest.raises(InvalidInput, match="no signing key file") as missing:
        SigningKey.load(tmp_path / "nope")
    assert missing.value.field == "path"
    with pytest.raises(InvalidInput, match="cannot read"):
        SigningKey.load(tmp_path)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    """The first call creates the file, later calls return the same key."""
    path = tmp_path / "sub" / "admin.key"
    first = SigningKey.load_or_create(path)
    assert path.exists()
    assert SigningKey.load_or_create(path).public_key == first.public_key
    assert SigningKey.load(path).public_key == first.public_key


def test_load_or_create_racing_threads_agree_on_one_key(tmp_path: Path) -> None:
    """Sixteen threads released together: all return the one key that is in the file."""
    path = tmp_path / "race" / "admin.key"
    barrier = threading.Barrier(16)
    keys: list[str] = []

    def create() -> None:
        barrier.wait()
        keys.append(SigningKey.load_or_create(path).public_key)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 16
    assert set(keys) == {SigningKey.load(path).public_key}
    assert os.listdir(path.parent) == ["admin.key"]


def test_entry_bytes_are_canonical_json_with_the_domain_tag(key: SigningKey) -> None:
    """Sorted keys, no whitespace, the domain tag; null for no public key."""
    data = entry_bytes("support-1", Zone.INTERNAL, key.public_key)
    assert (
        data
        == (
            '{"agent_id":"support-1","clearance":"internal","domain":"hivemem/registry/v1",'
            f'"public_key":"{key.public_key}"}}'
        ).encode()
    )
    assert json.loads(entry_bytes("a", Zone.PUBLIC, None)) == {
        "agent_id": "a",
        "clearance": "public",
        "domain": REGISTRY_DOMAIN,
        "public_key": None,
    }
    assert entry_bytes("a", "secret", None) == entry_bytes("a", Zone.SECRET, None)  # type: ignore[arg-type]


def test_entry_bytes_reject_a_malformed_entry(key: SigningKey) -> None:
    """A bad agent id, an unknown clearance, a malformed public key: InvalidInput."""
    with pytest.raises(InvalidIdentifier):
        entry_bytes("bad id:with@seps", Zone.PUBLIC, None)
    with pytest.raises(InvalidInput, match="zone"):
        entry_bytes("a", "top-secret", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="public_key"):
        entry_bytes("a", Zone.PUBLIC, key.public_key[:-4])


def test_an_admin_entry_signature_fails_when_any_field_changes(key: SigningKey) -> None:
    """Valid as signed; any other agent id, clearance or public key (or none), another admin, a
    missing signature: False."""
    admin = AdminSigner(SigningKey.generate())
    signature = admin.sign_entry("support", Zone.INTERNAL, key.public_key)
    assert admin.verify_entry("support", Zone.INTERNAL, key.public_key, signature)
    assert verify_entry(admin.public_key, "support", Zone.INTERNAL, key.public_key, signature)
    other_key = SigningKey.generate().public_key
    assert not admin.verify_entry("support", Zone.SECRET, key.public_key, signature)
    assert not admin.verify_entry("support", Zone.PUBLIC, key.public_key, signature)
    assert not admin.verify_entry("support", Zone.INTERNAL, other_key, signature)
    assert not admin.verify_entry("support", Zone.INTERNAL, None, signature)
    assert not admin.verify_entry("support2", Zone.INTERNAL, key.public_key, signature)
    assert not admin.verify_entry("support", Zone.INTERNAL, key.public_key, None)
    other_admin = AdminSigner(SigningKey.generate())
    assert not other_admin.verify_entry("support", Zone.INTERNAL, key.public_key, signature)


def test_verify_entry_is_false_for_a_malformed_entry_or_key() -> None:
    """Malformed agent id, clearance, public key or admin key: False, no exception."""
    admin = AdminSigner(SigningKey.generate())
    signature = admin.sign_entry("a", Zone.PUBLIC, None)
    assert verify_entry(admin.public_key, "a", Zone.PUBLIC, None, signature)
    assert not verify_entry(admin.public_key, "a b", Zone.PUBLIC, None, signature)
    assert not verify_entry(admin.public_key, "a", "nope", None, signature)  # type: ignore[arg-type]
    assert not verify_entry(admin.public_key, "a", Zone.PUBLIC, "x", signature)
    assert not verify_entry("not a key", "a", Zone.PUBLIC, None, signature)


def test_an_agent_signature_is_not_an_admin_entry_signature(key: SigningKey) -> None:
    """An agent signing its own entry bytes gets nothing the admin key verifies."""
    admin = AdminSigner(SigningKey.generate())
    forged = key.sign(entry_bytes("support", Zone.SECRET, key.public_key))
    assert not admin.verify_entry("support", Zone.SECRET, key.public_key, forged)


def test_admin_signer_from_file_keeps_its_key(tmp_path: Path) -> None:
    """from_file creates the admin key once; a second process's from_file verifies the first's
    signatures."""
    path = tmp_path / "admin" / "admin.key"
    first = AdminSigner.from_file(path)
    signature = first.sign_entry("a", Zone.CONFIDENTIAL, None)
    second = AdminSigner.from_file(path)
    assert second.public_key == first.public_key
    assert second.verify_entry("a", Zone.CONFIDENTIAL, None, signature)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
