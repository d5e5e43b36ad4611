"""The master key: LocalKeyProvider's wrapping, its key files, and which key key_provider()
picks from the settings."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from hivemem.pool.errors import InvalidInput, SealBroken
from hivemem.pool.settings import HivememSettings, SecuritySettings
from hivemem.security.key_provider import KeyProvider, LocalKeyProvider, key_provider

MASTER = bytes(range(32))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_wrap_round_trip_and_provider_is_a_key_provider() -> None:
    """What wrap gives, unwrap returns, under the same context; it satisfies the protocol."""
    provider = LocalKeyProvider(MASTER)
    wrapped = provider.wrap(b"k" * 32, context=b"ctx")
    assert isinstance(provider, KeyProvider)
    assert b"k" * 32 not in wrapped
    assert provider.unwrap(wrapped, context=b"ctx") == b"k" * 32
    assert provider.wrap(b"k" * 32, context=b"ctx") != wrapped  # fresh nonce each time


@pytest.mark.parametrize(
    ("provider", "context", "mangle"),
    [
        (LocalKeyProvider(MASTER), b"other", lambda w: w),
        (LocalKeyProvider(bytes(32)), b"ctx", lambda w: w),
        (LocalKeyProvider(MASTER), b"ctx", lambda w: w[:-1] + bytes([w[-1] ^ 1])),
        (LocalKeyProvider(MASTER), b"ctx", lambda w: w[:20]),
    ],
    ids=["wrong-context", "wrong-master", "flipped-bit", "truncated"],
)
def test_unwrap_refuses_what_does_not_authenticate(
    provider: LocalKeyProvider, context: bytes, mangle: object
) -> None:
    """A wrong context, another master key, an altered or truncated wrap: SealBroken."""
    wrapped = LocalKeyProvider(MASTER).wrap(b"k" * 32, context=b"ctx")
    assert callable(mangle)
    with pytest.raises(SealBroken):
        provider.unwrap(mangle(wrapped), context=context)


def test_provider_id_names_the_key_without_revealing_it() -> None:
    """provider_id is ``local:`` and 8 hex digits, equal for equal keys, never the key."""
    provider = LocalKeyProvider(MASTER)
    pid = provider.provider_id
    assert pid.startswith("local:")
    assert len(pid) == 14
    int(pid[6:], 16)
    assert pid == LocalKeyProvider(MASTER).provider_id != LocalKeyProvider(bytes(32)).provider_id
    assert MASTER.hex() not in pid + repr(provider)
    assert base64.b64encode(MASTER).decode() not in pid + repr(provider)


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"x" * 31).decode(), "QUJD="])
def test_bad_base64_or_length_is_invalid_input(text: str) -> None:
    """Malformed base64 or a key that is not 32 bytes: InvalidInput on master_key."""
    with pytest.raises(InvalidInput) as caught:
        LocalKeyProvider.from_base64(text)
    assert caught.value.field == "master_key"


def test_constructor_refuses_short_keys() -> None:
    """Raw keys must be 32 bytes."""
    with pytest.raises(InvalidInput):
        LocalKeyProvider(b"short")


def test_create_file_writes_0600_in_0700_and_never_overwrites(tmp_path: Path) -> None:
    """A created key file is owner-only in an owner-only directory, reads back as the same
    key, and a second create refuses to overwrite it."""
    path = tmp_path / "keys" / "master.key"
    created = LocalKeyProvider.create_file(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    loaded = LocalKeyProvider.from_file(path)
    assert loaded.provider_id == created.provider_id
    assert loaded.unwrap(created.wrap(b"k" * 32, context=b"c"), context=b"c") == b"k" * 32
    before = path.read_bytes()
    with pytest.raises(InvalidInput):
        LocalKeyProvider.create_file(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary left


def test_from_file_strips_whitespace_and_refuses_missing_or_bad_files(tmp_path: Path) -> None:
    """Whitespace around the base64 is fine; a missing file or bad content: InvalidInput."""
    good = tmp_path / "good.key"
    good.write_text("\n  " + base64.b64encode(MASTER).decode() + "  \n")
    good.chmod(0o600)
    assert LocalKeyProvider.from_file(good).provider_id == LocalKeyProvider(MASTER).provider_id
    bad = tmp_path / "bad.key"
    bad.write_text("nope")
    for path in (tmp_path / "missing.key", bad):
        with pytest.raises(InvalidInput) as caught:
            LocalKeyProvider.from_file(path)
        assert caught.value.field == "master_key_file"


def test_from_file_warns_when_others_can_read_it(tmp_path: Path) -> None:
    """A key file readable by group or others logs master_key_file_readable (without the key)."""
    path = tmp_path / "open.key"
    path.write_text(base64.b64encode(MASTER).decode())
    path.chmod(0o644)
    with capture_logs() as logs:
        LocalKeyProvider.from_file(path)
    assert [entry["event"] for entry in logs] == ["master_key_file_readable"]
    assert base64.b64encode(MASTER).decode() not in repr(logs)
    path.chmod(0o600)
    with capture_logs() as logs:
        LocalKeyProvider.from_file(path)
    assert logs == []


def test_key_provider_precedence(tmp_path: Path) -> None:
    """master_key wins over master_key_file, which wins over <data_dir>/keys/master.key."""
    file_key = os.urandom(32)
    key_file = tmp_path / "given.key"
    key_file.write_text(base64.b64encode(file_key).decode())
    key_file.chmod(0o600)
    both = HivememSettings(
        data_dir=tmp_path / "data",
        security=SecuritySettings(
            master_key=SecretStr(base64.b64encode(MASTER).decode()), master_key_file=key_file
        ),
    )
    assert key_provider(both).provider_id == LocalKeyProvider(MASTER).provider_id
    file_only = HivememSettings(
        data_dir=tmp_path / "data", security=SecuritySettings(master_key_file=key_file)
    )
    assert key_provider(file_only).provider_id == LocalKeyProvider(file_key).provider_id
    assert not (tmp_path / "data").exists()  # neither made the default file


def test_key_provider_refuses_a_missing_configured_file(tmp_path: Path) -> None:
    """A configured master_key_file must exist: it is never created in its place."""
    settings = HivememSettings(
        data_dir=tmp_path, security=SecuritySettings(master_key_file=tmp_path / "none.key")
    )
    with pytest.raises(InvalidInput):
        key_provider(settings)
    assert not (tmp_path / "none.key").exists()


def test_key_provider_default_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    """Without a configured key, <data_dir>/keys/master.key is created (0600) and reused."""
    settings = HivememSettings(data_dir=tmp_path)
    first = key_provider(settings)
    path = tmp_path / "keys" / "master.key"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert key_provider(settings).provider_id == first.provider_id


def test_racing_first_uses_end_with_one_key(tmp_path: Path) -> None:
    """Many threads creating the default key at once all end with the same master key."""
    settings = HivememSettings(data_dir=tmp_path)
    barrier = threading.Barrier(12)
    ids: list[str] = []

    def first_use() -> None:
        barrier.wait()
        ids.append(key_provider(settings).provider_id)

    threads = [threading.Thread(target=first_use) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 12
    assert len(set(ids)) == 1
    assert ids[0] == LocalKeyProvider.from_file(tmp_path / "keys" / "master.key").provider_id
