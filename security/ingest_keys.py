"""The workers' ingest keys: the X25519 key pairs agents seal their ingest queues to
(:mod:`hivemem.security.ingest_seal`). One is current; an operator's rotation makes a new one
current and keeps the old ones, for the messages still queued under them, until each is retired.
:class:`IngestKeys` is the service behind :class:`~hivemem.security.keyring.ZoneKeyring`'s
methods for them.

Redis layout, under ``<ns>:keys:``:

- ``ingest``, a string: the current key's private half, wrapped by the master key (wrap context
  kind ``ingest``, the key's id); ``ingest:public``, its public half in clear (base64), which is
  all a sealer reads; ``ingest:id``, its id. With no ``ingest:id``, the id is ``ingest``: the
  key made before keys could be rotated.
- ``ingest:old``, a hash: ``key:<id>`` → the wrapped private half of a key rotated away from,
  ``replaced:<id>`` → when it stopped being current (ISO 8601, UTC), and, once it is retired,
  ``retired:<id>`` → ``{"created_at", "retired_at"}`` with its ``key:`` field deleted.

The first key is made with ``SET NX`` (the loser of a race uses the winner's). A rotation or a
retirement runs under WATCH: two rotations at once both land, one after the other, and no key is
lost between them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis
import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hivemem.pool.adapters.redis_errors import redis_errors
from hivemem.pool.errors import InvalidIdentifier, InvalidInput, KeyUnavailable, SealBroken
from hivemem.security.key_store import KEY_BYTES, KeyStore, now_iso, parse_entry, stored_bytes

log = structlog.get_logger(__name__)

#: The id of the ingest key made before keys could be rotated (its wrap context names it).
FIRST_INGEST_ID = "ingest"
#: What :class:`~hivemem.pool.errors.KeyUnavailable` and audit entries name as the keys' zone.
INGEST_KEYS = "workers-ingest"
_ID_PATTERN = re.compile(rf"{FIRST_INGEST_ID}|[0-9a-f]{{12}}")


def check_ingest_id(value: object) -> str:
    """``value`` if it is a well-formed ingest key id, else InvalidIdentifier."""
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"ingest key id must be {FIRST_INGEST_ID!r} or 12 hex digits: {shown!r}",
            field="key_id",
        )
    return value


def _public_key(raw: bytes) -> bytes:
    """The 32 raw bytes of a public key stored as base64; SealBroken for anything else."""
    try:
        public = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        public = b""
    if len(public) != KEY_BYTES:
        raise SealBroken("the stored public ingest key is malformed")
    return public


def public_of(secret: bytes) -> bytes:
    """The X25519 public key (32 bytes) of the private key ``secret``."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


@dataclass(frozen=True)
class IngestKeyInfo:
    """What :meth:`IngestKeys.listing` tells about one ingest key (never its material).
    ``replaced_at``: when it stopped being current (None while it is)."""

    key_id: str
    created_at: datetime
    current: bool
    retired: bool
    replaced_at: datetime | None = None


class IngestKeys:
    """The workers' ingest keys of one namespace. Thread-safe."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._key = f"{store.prefix}ingest"
        self._public = f"{self._key}:public"
        self._id = f"{self._key}:id"
        self._old = f"{self._key}:old"
        self._lock = threading.Lock()
        self._unwrapped: dict[tuple[str, bytes], bytes] = {}  # (id, wrapped) -> secret

    def current(self) -> tuple[str, bytes]:
        """The current key's id and public half, read from Redis (one round trip once the
        first key exists; the first to ask makes it). Raises PoolUnavailable when Redis is
        down, SealBroken for a malformed stored public key."""
        public, key_id = self._current()
        if public is None:
            self._first()
            public, key_id = self._current()
        return self._id_of(key_id), _public_key(stored_bytes(public or b""))

    def ring(self) -> dict[str, bytes]:
        """Every key not retired, current first: id → private half (32 bytes). Raises
        PoolUnavailable, and SealBroken when a key does not unwrap or the stored public half
        is not the current key's (agents would seal to a key nobody holds)."""
        self.current()  # the first key exists
        with redis_errors():
            pipe = self._store.client.pipeline(transaction=True)
            pipe.mget(self._key, self._public, self._id)
            pipe.hgetall(self._old)
            (wrapped, public, key_id), old = pipe.execute()
        current_id = self._id_of(key_id)
        ring = {current_id: self._unwrap(current_id, stored_bytes(wrapped or b""))}
        if public_of(ring[current_id]) != _public_key(stored_bytes(public or b"")):
            raise SealBroken("the stored public ingest key is not the workers' key's")
        for name, value in cast("dict[bytes | str, bytes | str]", old).items():
            kind, _, other = stored_bytes(name).decode().partition(":")
            if kind == "key":
                ring[other] = self._unwrap(other, stored_bytes(value))
        return ring

    def rotate(self) -> tuple[str, str]:
        """Make a new current key; the previous one stays (``ingest:old``) until retired.
        Returns (new id, previous id)."""
        self.current()  # the first key exists
        new_id, secret, raw = self._store.new_entry("ingest", "", None)
        public = base64.b64encode(public_of(secret))
        previous = ""

        def rotate_in(pipe: redis.client.Pipeline) -> None:
            nonlocal previous
            wrapped, key_id = cast("list[bytes | str | None]", pipe.mget(self._key, self._id))
            previous = self._id_of(key_id)
            pipe.multi()
            pipe.hset(self._old, mapping={
                f"key:{previous}": stored_bytes(wrapped or b""), f"replaced:{previous}": now_iso()
            })  # fmt: skip
            pipe.mset({self._key: raw, self._public: public, self._id: new_id})

        with redis_errors():
            self._store.client.transaction(rotate_in, self._key, self._id)
        log.info("ingest_key_rotated", key_id=new_id, previous=previous)
        return new_id, previous

    def replaced_at(self, key_id: str) -> datetime | None:
        """When ``key_id`` stopped being current (None: it is current). Raises KeyUnavailable
        for an unknown or retired key."""
        key_id = check_ingest_id(key_id)
        with redis_errors():
            pipe = self._store.client.pipeline(transaction=True)
            pipe.get(self._id)
            pipe.hmget(self._old, [f"key:{key_id}", f"replaced:{key_id}"])
            current, (wrapped, replaced) = pipe.execute()
        if self._id_of(current) == key_id:
            return None
        if wrapped is None or replaced is None:
            raise KeyUnavailable(INGEST_KEYS, key_id, "unknown or retired")
        return datetime.fromisoformat(stored_bytes(replaced).decode())

    def retire(self, key_id: str) -> bool:
        """Delete the wrapped material of an old key: what is sealed to it opens nowhere any
        more. False (nothing changes) for a key already retired. Raises InvalidInput for the
        current key, KeyUnavailable for an unknown one, InvalidIdentifier for a malformed id."""
        key_id = check_ingest_id(key_id)
        done = False

        def retire_in(pipe: redis.client.Pipeline) -> None:
            nonlocal done
            current = cast("bytes | str | None", pipe.get(self._id))
            fields = [f"key:{key_id}", f"retired:{key_id}"]
            wrapped, retired = cast("list[bytes | str | None]", pipe.hmget(self._old, fields))
            if self._id_of(current) == key_id:
                raise InvalidInput(f"ingest key {key_id} is the current one", field="key_id")
            if wrapped is None:
                if retired is not None:
                    return
                raise KeyUnavailable(INGEST_KEYS, key_id, "unknown")
            info = {
                "created_at": parse_entry(stored_bytes(wrapped))["created_at"],
                "retired_at": now_iso(),
            }
            pipe.multi()
            pipe.hdel(self._old, f"key:{key_id}", f"replaced:{key_id}")
            pipe.hset(self._old, f"retired:{key_id}", json.dumps(info))
            done = True

        with redis_errors():
            self._store.client.transaction(retire_in, self._id, self._old)
        with self._lock:
            self._unwrapped = {k: v for k, v in self._unwrapped.items() if k[0] != key_id}
        if done:
            log.info("ingest_key_retired", key_id=key_id)
        return done

    def listing(self) -> list[IngestKeyInfo]:
        """Every ingest key, retired ones included, oldest first."""
        self.current()
        with redis_errors():
            pipe = self._store.client.pipeline(transaction=True)
            pipe.mget(self._key, self._id)
            pipe.hgetall(self._old)
            (wrapped, key_id), old = pipe.execute()
        fields = {
            stored_bytes(k).decode(): stored_bytes(v)
            for k, v in cast("dict[bytes | str, bytes | str]", old).items()
        }
        made = parse_entry(stored_bytes(wrapped or b""))["created_at"]
        infos = [IngestKeyInfo(self._id_of(key_id), datetime.fromisoformat(made), True, False)]
        for name, value in fields.items():
            kind, _, other = name.partition(":")
            if kind == "key":
                replaced = fields.get(f"replaced:{other}")
                infos.append(IngestKeyInfo(
                    other, datetime.fromisoformat(parse_entry(value)["created_at"]), False, False,
                    None if replaced is None else datetime.fromisoformat(replaced.decode()),
                ))  # fmt: skip
            elif kind == "retired":
                made = json.loads(value)["created_at"]
                infos.append(IngestKeyInfo(other, datetime.fromisoformat(made), False, True))
        return sorted(infos, key=lambda info: info.created_at)

    def _current(self) -> tuple[bytes | str | None, bytes | str | None]:
        """The stored public half and id of the current key."""
        with redis_errors():
            public, key_id = cast(
                "list[bytes | str | None]", self._store.client.mget(self._public, self._id)
            )
        return public, key_id

    def _first(self) -> None:
        """Make the first key (and its public half) unless another process did."""
        _, _, raw = self._store.new_entry("ingest", "", FIRST_INGEST_ID)
        with redis_errors():
            if self._store.client.set(self._key, raw, nx=True):
                log.info("key_material_created", key=self._key)
            pipe = self._store.client.pipeline(transaction=True)
            pipe.mget(self._key, self._id)
            ((wrapped, key_id),) = pipe.execute()
            made = self._unwrap(self._id_of(key_id), stored_bytes(wrapped or b""))
            # Every process that finds the public half missing writes the same one (a rotation
            # meanwhile wrote its own already).
            self._store.client.set(self._public, base64.b64encode(public_of(made)), nx=True)

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The private half in the stored entry ``wrapped`` of key ``key_id`` (kept)."""
        with self._lock:
            known = self._unwrapped.get((key_id, wrapped))
        if known is not None:
            return known
        context = self._store.context("ingest", "", check_ingest_id(key_id))
        secret = self._store.unwrap(wrapped, context)
        with self._lock:
            self._unwrapped[key_id, wrapped] = secret
        return secret

    @staticmethod
    def _id_of(raw: bytes | str | None) -> str:
        """The current key's id as stored (None: the first key's)."""
        if raw is None:
            return FIRST_INGEST_ID
        try:
            return check_ingest_id(stored_bytes(raw).decode())
        except (UnicodeDecodeError, InvalidIdentifier):
            raise SealBroken("the stored ingest key id is malformed") from None
