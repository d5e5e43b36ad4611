"""Per-zone data keys (DEKs), per-zone vector keys and per-subject secrets, kept in Redis wrapped
by the master key of a :class:`~hivemem.security.key_provider.KeyProvider`.

Redis layout, every key under ``<namespace>:keys:``:

- ``<ns>:keys:zone:<zone>``, a hash: ``active`` → the id of the key new content is sealed with;
  ``dek:<key_id>`` → a wrapped DEK; ``retired:<key_id>`` → ``{"created_at", "retired_at"}`` of
  a retired DEK, whose ``dek:`` field was deleted.
- ``<ns>:keys:vector:<zone>``, a string: the zone's wrapped vector key.
- ``<ns>:keys:ingest``, a string: the workers' wrapped ingest key, and ``<ns>:keys:ingest:public``
  its public half in clear (base64), to which agents seal what they queue for the workers.
- ``<ns>:keys:subjects``, a hash: subject (a user id, checked like every scope id: no
  whitespace, no ``|``, the AAD separator) → its wrapped secret.

A wrapped entry is JSON ``{"provider_id", "wrapped" (base64), "created_at" (ISO 8601, UTC)}``.
Its wrap context is ``hivemem/key|<ns>|<kind>|<zone>|<key id>`` (kind ``dek``, ``vector``,
``ingest`` or ``subject``; a subject's zone is empty and its key id is the subject; the ingest
key's zone is empty), so an entry copied to another slot does not unwrap (SealBroken). Only
wrapped material reaches Redis; no key is logged.

Creation is atomic across processes: the first DEK of a zone under WATCH/MULTI, vector keys with
``SET NX``, subject secrets with ``HSETNX``; the loser of a race uses the winner's key.

Caching: unwrapped keys are kept in this process. The active key id, and every cached DEK or
subject secret, is checked against Redis again once it is older than ``active_ttl_s``: a
rotation, retirement or shred made by another process takes effect here within that time (in
this process, at once). A retired DEK's and a shredded subject's wrapped material is deleted,
so no process can unwrap it again; copies in Redis persistence files (AOF, RDB) last until those
are rewritten. Redis errors raise PoolUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import redis
import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hivemem.pool.adapters.redis_errors import REDIS_DOWN, redis_errors, unavailable
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    KeyUnavailable,
    SealBroken,
)
from hivemem.pool.ids import check_scope_id
from hivemem.security.audit import check_namespace
from hivemem.security.key_provider import KeyProvider

log = structlog.get_logger(__name__)

#: Key ids: 12 lower-case hex characters (48 random bits per zone).
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
#: Bytes of every key this keyring makes.
KEY_BYTES = 32
#: Unwrapped DEKs and subject secrets kept per keyring at most (least recently used go first).
_CACHE_SIZE = 10_000
#: The key id bound into the wrap of each secret made once (vector keys, the ingest key).
_FIXED_ID = {"vector": "vector", "ingest": "ingest"}
#: How long (seconds) a keyring uses the active key id it read before asking Redis again, by
#: default: a rotation reaches every process within it.
ACTIVE_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class DataKey:
    """A zone's data key; ``secret`` (32 bytes) never shows in its repr."""

    zone: Zone
    key_id: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What :meth:`ZoneKeyring.keys` tells about one data key (never its material)."""

    zone: Zone
    key_id: str
    created_at: datetime
    active: bool
    retired: bool


@dataclass(slots=True)
class _Cached:
    raw: bytes  # the stored entry: tells a re-created key from the one unwrapped
    secret: bytes
    checked_at: float  # time.monotonic() of the last check against Redis


def check_key_id(value: object) -> str:
    """Return ``value`` if it is a well-formed key id, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not KEY_ID_PATTERN.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"key id must match {KEY_ID_PATTERN.pattern}: {shown!r}", field="key_id"
        )
    return value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    """A stored field as text; SealBroken for bytes hivemem never writes (not UTF-8)."""
    try:
        return _bytes(value).decode()
    except UnicodeDecodeError:
        raise SealBroken("a stored key entry is malformed") from None


def _public_key(raw: bytes) -> bytes:
    """The 32 raw bytes of a public key stored as base64; SealBroken for anything else."""
    try:
        public = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        public = b""
    if len(public) != KEY_BYTES:
        raise SealBroken("the stored public ingest key is malformed")
    return public


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ZoneKeyring:
    """The keys of one pool namespace. Thread-safe; share one per process."""

    def __init__(
        self,
        client: redis.Redis,
        provider: KeyProvider,
        *,
        namespace: str,
        active_ttl_s: float = ACTIVE_TTL_S,
    ) -> None:
        """``active_ttl_s``: how long (seconds) the active key id and cached keys are used
        without asking Redis again. Raises InvalidIdentifier for a bad namespace."""
        self._ns = check_namespace(namespace)
        if not active_ttl_s >= 0:
            raise InvalidInput("active_ttl_s must be at least 0", field="active_ttl_s")
        self._client = client
        self._provider = provider
        self._ttl_s = active_ttl_s
        self._prefix = f"{self._ns}:keys:"
        self._subjects_key = f"{self._prefix}subjects"
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, ...], _Cached] = OrderedDict()
        self._forgotten = 0  # bumped by every _forget: a fetch older than it is not cached
        self._active: dict[Zone, tuple[str, float]] = {}
        self._fixed: dict[str, bytes] = {}  # Redis key -> secret made once

    # -- data keys ---------------------------------------------------------------------------

    def active(self, zone: Zone | str, *, fresh: bool = False) -> DataKey:
        """The key new content of ``zone`` is sealed with; the first call for a zone creates it
        (racing keyrings on one Redis get the same one). The id is cached for ``active_ttl_s``:
        a rotation made by another process is used here within that time. While Redis cannot
        be reached, keys and secrets this process already holds keep serving (so an agent
        keeps writing locally); anything it never fetched raises PoolUnavailable. ``fresh``:
        ask Redis whatever the cache holds."""
        zone = checked_zone(zone)
        with self._lock:
            cached = self._active.get(zone)
        if not fresh and cached is not None and time.monotonic() - cached[1] < self._ttl_s:
            try:
                return self.get(zone, cached[0])
            except KeyUnavailable:  # rotated and retired elsewhere since: ask Redis
                pass
        try:
            current = cast("bytes | str | None", self._client.hget(self._zone_key(zone), "active"))
        except REDIS_DOWN as error:
            if cached is not None:  # Redis is down: keep the key we were using
                return self.get(zone, cached[0])
            raise unavailable(error) from None
        key = self.get(zone, _text(current)) if current else self._create_first(zone)
        with self._lock:
            self._active[zone] = (key.key_id, time.monotonic())
        return key

    def get(self, zone: Zone | str, key_id: str) -> DataKey:
        """The data key ``key_id`` of ``zone``. Raises InvalidIdentifier for a malformed id,
        KeyUnavailable for an unknown or retired one, SealBroken if it does not unwrap."""
        zone = checked_zone(zone)
        key_id = check_key_id(key_id)
        secret = self._secret(("dek", zone, key_id), self._zone_key(zone), f"dek:{key_id}")
        if secret is None:
            raise KeyUnavailable(zone, key_id, "unknown or retired")
        return DataKey(zone, key_id, secret)

    def rotate(self, zone: Zone | str) -> DataKey:
        """Make a new active key for ``zone`` and return it; older keys stay readable."""
        zone = checked_zone(zone)
        key_id, secret, raw = self._new_entry("dek", zone)
        with redis_errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._zone_key(zone), mapping={f"dek:{key_id}": raw, "active": key_id})
            pipe.execute()
        self._remember(("dek", zone, key_id), raw.encode(), secret)
        with self._lock:
            self._active[zone] = (key_id, time.monotonic())
        log.info("data_key_rotated", zone=str(zone), key_id=key_id)
        return DataKey(zone, key_id, secret)

    def retire(self, zone: Zone | str, key_id: str) -> None:
        """Delete the wrapped material of ``key_id``: nothing sealed under it opens any more
        (re-seal first). Retiring a retired key does nothing. Raises InvalidInput for the
        active key, KeyUnavailable for an unknown one, InvalidIdentifier for a malformed id."""
        zone = checked_zone(zone)
        key_id = check_key_id(key_id)
        zone_key = self._zone_key(zone)
        done = False

        def retire_in(pipe: redis.client.Pipeline) -> None:
            nonlocal done
            active, entry, retired = cast(
                "list[bytes | str | None]",
                pipe.hmget(zone_key, ["active", f"dek:{key_id}", f"retired:{key_id}"]),
            )
            if active is not None and _bytes(active).decode() == key_id:
                raise InvalidInput(f"key {key_id} is the active key of {zone}", field="key_id")
            if entry is None:
                if retired is not None:
                    return
                raise KeyUnavailable(zone, key_id, "unknown")
            info = {"created_at": self._parse(_bytes(entry))["created_at"], "retired_at": _now()}
            pipe.multi()
            pipe.hdel(zone_key, f"dek:{key_id}")
            pipe.hset(zone_key, f"retired:{key_id}", json.dumps(info))
            done = True

        with redis_errors():
            self._client.transaction(retire_in, zone_key)
        self._forget(("dek", zone, key_id))
        if done:
            log.info("data_key_retired", zone=str(zone), key_id=key_id)

    def keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        zone = checked_zone(zone)
        with redis_errors():
            fields = cast(
                "dict[bytes | str, bytes | str]", self._client.hgetall(self._zone_key(zone))
            )
        plain = {_text(k): _bytes(v) for k, v in fields.items()}
        active = _text(plain.get("active", b""))
        infos = []
        for name, value in plain.items():
            kind, _, key_id = name.partition(":")
            if kind in {"dek", "retired"}:
                created = self._parse(value)["created_at"]
                infos.append(
                    KeyInfo(
                        zone,
                        key_id,
                        datetime.fromisoformat(created),
                        key_id == active,
                        kind == "retired",
                    )
                )
        return sorted(infos, key=lambda info: (info.created_at, info.key_id))

    def vector_key(self, zone: Zone | str) -> bytes:
        """The 32-byte vector key of ``zone``, made once (atomically) and never rotated:
        rotating it would change every derived vector, i.e. need a re-index of the zone."""
        zone = checked_zone(zone)
        return self._made_once("vector", str(zone), f"{self._prefix}vector:{zone}")

    def ingest_secret(self) -> bytes:
        """The 32-byte secret of the workers' ingest key (an X25519 private key: see
        :mod:`hivemem.security.ingest_seal`), made once (atomically) and never rotated."""
        return self._made_once("ingest", "", f"{self._prefix}ingest")

    def ingest_public(self) -> bytes:
        """The public half of the workers' ingest key (32 bytes), kept in clear beside it
        (``<ns>:keys:ingest:public``), so that a sealer never unwraps the private half once
        the pair exists. The first keyring to ask makes both. Raises SealBroken for a stored
        value that is not 32 bytes of base64."""

        def made() -> bytes:
            private = X25519PrivateKey.from_private_bytes(self.ingest_secret())
            return base64.b64encode(private.public_key().public_bytes_raw())

        return self._stored_once(f"{self._prefix}ingest:public", made, _public_key)

    def _made_once(self, kind: str, zone: str, name: str) -> bytes:
        """The secret of ``kind`` stored (wrapped) at ``name``, made once, never rotated."""
        context = self._context(kind, zone, _FIXED_ID[kind])

        def made() -> bytes:
            return self._new_entry(kind, zone, _FIXED_ID[kind])[2].encode()

        return self._stored_once(name, made, lambda raw: self._unwrap(raw, context))

    def _stored_once(
        self, name: str, made: Callable[[], bytes], read: Callable[[bytes], bytes]
    ) -> bytes:
        """What ``read`` makes of the value at ``name``: the first keyring to ask stores
        ``made()`` there with ``SET NX`` (the loser of a race reads the winner's); then kept in
        this process."""
        with self._lock:
            known = self._fixed.get(name)
        if known is not None:
            return known
        with redis_errors():
            raw = cast("bytes | str | None", self._client.get(name))
            if raw is None:
                if self._client.set(name, made(), nx=True):
                    log.info("key_material_created", key=name)
                raw = cast("bytes | str | None", self._client.get(name))
        value = read(_bytes(raw or b""))
        with self._lock:
            self._fixed[name] = value
        return value

    # -- subjects ----------------------------------------------------------------------------

    def subject_secret(self, subject: str, *, create: bool = True) -> bytes | None:
        """The 32-byte secret of ``subject`` (a user id), made atomically on first use; None
        when it does not exist and ``create`` is false. Raises InvalidIdentifier for a bad
        subject."""
        subject = check_scope_id(subject, field="subject")
        secret = self._secret(("subject", subject), self._subjects_key, subject)
        if secret is not None or not create:
            return secret
        _, new_secret, raw = self._new_entry("subject", "", subject)
        with redis_errors():
            created = self._client.hsetnx(self._subjects_key, subject, raw)
        if created:
            self._remember(("subject", subject), raw.encode(), new_secret)
            log.info("subject_secret_created", subject=subject)
            return new_secret
        self._forget(("subject", subject))  # lost a race: read the winner's
        return self._secret(("subject", subject), self._subjects_key, subject)

    def shred(self, subject: str) -> bool:
        """Delete the secret of ``subject``: what was sealed for it opens nowhere any more.
        True if it existed. Raises InvalidIdentifier for a bad subject."""
        subject = check_scope_id(subject, field="subject")
        with redis_errors():
            existed = bool(self._client.hdel(self._subjects_key, subject))
        self._forget(("subject", subject))
        log.info("subject_shredded", subject=subject, existed=existed)
        return existed

    # -- internals ---------------------------------------------------------------------------

    def _zone_key(self, zone: Zone) -> str:
        return f"{self._prefix}zone:{zone}"

    def _context(self, kind: str, zone: str, key_id: str) -> bytes:
        return f"hivemem/key|{self._ns}|{kind}|{zone}|{key_id}".encode()

    def _new_entry(self, kind: str, zone: str, key_id: str | None = None) -> tuple[str, bytes, str]:
        """A fresh (key id, secret, wrapped entry JSON) of ``kind``."""
        key_id = key_id or os.urandom(6).hex()
        secret = os.urandom(KEY_BYTES)
        wrapped = self._provider.wrap(secret, context=self._context(kind, zone, key_id))
        entry = {
            "provider_id": self._provider.provider_id,
            "wrapped": base64.b64encode(wrapped).decode("ascii"),
            "created_at": _now(),
        }
        return key_id, secret, json.dumps(entry)

    def _create_first(self, zone: Zone) -> DataKey:
        """The first key of ``zone``, or the one a racing keyring made first."""
        zone_key = self._zone_key(zone)
        key_id, secret, raw = self._new_entry("dek", zone)
        winner = key_id

        def create_in(pipe: redis.client.Pipeline) -> None:
            nonlocal winner
            current = cast("bytes | str | None", pipe.hget(zone_key, "active"))
            if current:
                winner = _text(current)
                return
            winner = key_id
            pipe.multi()
            pipe.hset(zone_key, mapping={f"dek:{key_id}": raw, "active": key_id})

        with redis_errors():
            self._client.transaction(create_in, zone_key)
        if winner != key_id:
            return self.get(zone, winner)
        self._remember(("dek", zone, key_id), raw.encode(), secret)
        log.info("data_key_created", zone=str(zone), key_id=key_id)
        return DataKey(zone, key_id, secret)

    def _secret(self, slot: tuple[str, ...], name: str, hash_field: str) -> bytes | None:
        """The unwrapped secret stored in ``name``/``hash_field`` (cache ``slot``), or None."""
        with self._lock:
            cached = self._cache.get(slot)
            if cached is not None:
                self._cache.move_to_end(slot)
            generation = self._forgotten
        if cached is not None and time.monotonic() - cached.checked_at < self._ttl_s:
            return cached.secret
        try:
            raw = cast("bytes | str | None", self._client.hget(name, hash_field))
        except REDIS_DOWN as error:
            if cached is not None:
                return cached.secret  # Redis is down: keep sealing with what we know
            raise unavailable(error) from None
        if raw is None:
            self._forget(slot)
            return None
        raw = _bytes(raw)
        if cached is not None and cached.raw == raw:
            secret = cached.secret
        else:
            kind, zone, key_id = ("subject", "", slot[1]) if slot[0] == "subject" else slot
            secret = self._unwrap(raw, self._context(kind, zone, key_id))
        self._remember(slot, raw, secret, generation)
        return secret

    def _remember(
        self, slot: tuple[str, ...], raw: bytes, secret: bytes, generation: int | None = None
    ) -> None:
        """Cache ``secret``, unless a forget happened since ``generation`` (the fetch may
        predate a retire or shred made by this process)."""
        with self._lock:
            if generation is not None and generation != self._forgotten:
                return
            self._cache[slot] = _Cached(raw, secret, time.monotonic())
            self._cache.move_to_end(slot)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _forget(self, slot: tuple[str, ...]) -> None:
        with self._lock:
            self._cache.pop(slot, None)
            self._forgotten += 1

    def _parse(self, raw: bytes) -> dict[str, str]:
        """A stored entry as a dict of strings; SealBroken for anything hivemem never writes."""
        try:
            entry = json.loads(raw)
            created_at = entry.get("created_at") if isinstance(entry, dict) else None
            if isinstance(created_at, str):
                datetime.fromisoformat(created_at)
                return cast("dict[str, str]", entry)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
            pass
        raise SealBroken("a stored key entry is malformed")

    def _unwrap(self, raw: bytes, context: bytes) -> bytes:
        entry = self._parse(raw)
        try:
            wrapped = base64.b64decode(entry.get("wrapped", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise SealBroken("a stored key entry is malformed") from None
        try:
            secret = self._provider.unwrap(wrapped, context=context)
        except SealBroken:
            if entry.get("provider_id") != self._provider.provider_id:
                raise SealBroken(
                    f"key wrapped by {entry.get('provider_id')!r} does not unwrap with "
                    f"{self._provider.provider_id!r}"
                ) from None
            raise
        if len(secret) != KEY_BYTES:
            raise SealBroken("an unwrapped key has the wrong length")
        return secret
