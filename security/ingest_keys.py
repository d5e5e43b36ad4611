"""The workers' ingest keys: the X25519 key pairs agents seal their ingest queues to
(:mod:`hivemem.security.ingest_seal`). One is current; an operator's rotation makes a new one
current and keeps the old ones, for the messages still queued under them, until each is retired.
:class:`IngestKeys` is the service behind :attr:`~hivemem.security.keyring.ZoneKeyring.ingest`.

Redis layout, under ``<ns>:keys:``:

- ``ingest``, a string: the first key's private half, wrapped by the master key (wrap context
  kind ``ingest``, id ``ingest``), and ``ingest:public``, its public half in clear (base64).
  Versions before rotation read these alone, so a rotation never rewrites them; once the first
  key is retired both hold ``retired``, which no version takes for a key (nor makes one anew).
- ``ingest:ring``, a hash: ``current`` → the current key's id and ``current_public`` → its public
  half (both absent while the first key is current); ``key:<id>`` → the wrapped private half of
  a later key, ``public:<id>`` its public half; ``replaced:<id>`` → when a key stopped being
  current (Redis's clock, ISO 8601, UTC); ``retired:<id>`` → ``{"created_at", "retired_at"}``
  once it is retired (its material deleted).

The first key is made with ``SET NX`` (the loser of a race uses the winner's). A rotation and a
retirement are each one script (``lua/rotate_ingest_key.lua``, ``lua/retire_ingest_key.lua``)
that lands only if what it changes is still as the caller read it: two rotations at once both
land, one after the other, and no key is lost between them. Each notes itself until it is
audited (:mod:`hivemem.security.key_changes`). Stored values hivemem never writes raise
SealBroken.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hivemem.pool.adapters.redis_errors import REDIS_DOWN, ran_anyway, redis_errors
from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    KeyRotationConflict,
    KeyUnavailable,
    SealBroken,
)
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.key_changes import ROTATE_ATTEMPTS, KeyChange, KeyChanges
from hivemem.security.key_store import KEY_BYTES, KeyStore, parse_entry, stored_bytes

log = structlog.get_logger(__name__)

#: The id of the namespace's first ingest key (made before keys could be rotated).
FIRST_INGEST_ID = "ingest"
#: What :class:`~hivemem.pool.errors.KeyUnavailable` and audit entries name as the keys' zone.
INGEST_KEYS = "workers-ingest"
#: What the first key's two strings hold once it is retired.
_RETIRED = b"retired"
_ID_PATTERN = re.compile(rf"{FIRST_INGEST_ID}|[0-9a-f]{{12}}")
_ROTATE = (Path(__file__).parent / "lua" / "rotate_ingest_key.lua").read_text()
_RETIRE = (Path(__file__).parent / "lua" / "retire_ingest_key.lua").read_text()


def check_ingest_id(value: object) -> str:
    """``value`` if it is a well-formed ingest key id, else InvalidIdentifier."""
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"ingest key id must be {FIRST_INGEST_ID!r} or 12 hex digits: {shown!r}",
            field="key_id",
        )
    return value


def public_of(secret: bytes) -> bytes:
    """The X25519 public key (32 bytes) of the private key ``secret``."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def _malformed() -> SealBroken:
    return SealBroken("a stored ingest key entry is malformed")


def _public_key(raw: bytes | str | None) -> bytes:
    """The 32 raw bytes of a public key stored as base64; SealBroken for anything else."""
    try:
        public = base64.b64decode(stored_bytes(raw or b""), validate=True)
    except (binascii.Error, ValueError):
        public = b""
    if len(public) != KEY_BYTES:
        raise SealBroken("the stored public ingest key is malformed")
    return public


def _stored_id(raw: bytes | str) -> str:
    try:
        return check_ingest_id(stored_bytes(raw).decode())
    except (UnicodeDecodeError, InvalidIdentifier):
        raise _malformed() from None


def _stamp(raw: object) -> datetime:
    """A stored time: ISO 8601 with its offset, or seconds since the epoch (the rotation
    script's, from Redis's clock); SealBroken for anything else."""
    try:
        text = stored_bytes(raw).decode() if isinstance(raw, bytes | str) else ""
        if re.fullmatch(r"\d{1,12}\.\d{6}", text):
            return datetime.fromtimestamp(float(text), UTC)
        stamp = datetime.fromisoformat(text)
    except (UnicodeDecodeError, ValueError, OverflowError):
        raise _malformed() from None
    if stamp.tzinfo is None:
        raise _malformed()
    return stamp


def _ring_fields(raw: dict[Any, Any]) -> dict[str, bytes]:
    """The ring hash as field → value; SealBroken for a field that is not text."""
    try:
        return {stored_bytes(k).decode(): stored_bytes(v) for k, v in raw.items()}
    except UnicodeDecodeError:
        raise _malformed() from None


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

    def __init__(self, store: KeyStore, changes: KeyChanges) -> None:
        """``changes``: where rotations and retirements are noted until they are audited."""
        self._store = store
        self._changes = changes
        self._rotate = store.client.register_script(_ROTATE)
        self._retire = store.client.register_script(_RETIRE)
        self._first = f"{store.prefix}ingest"
        self._first_public = f"{self._first}:public"
        self._ring = f"{self._first}:ring"
        self._lock = threading.Lock()
        self._unwrapped: dict[tuple[str, bytes], bytes] = {}  # (id, wrapped) -> secret

    def current(self) -> tuple[str, bytes]:
        """The current key's id and public half, read from Redis (one round trip once the
        first key exists; the first to ask makes it). Raises PoolUnavailable when Redis is
        down, SealBroken for a malformed stored key."""
        return self._snapshot(whole=False)[2]

    def ring(self) -> dict[str, bytes]:
        """Every key not retired: id → private half (32 bytes). Raises PoolUnavailable, and
        SealBroken when a key does not unwrap, a stored value is malformed, or the public half
        agents seal to is not the current key's (they would seal to a key nobody holds)."""
        fields, first, (current_id, current_public) = self._snapshot()
        ring = {}
        if first is not None:
            ring[FIRST_INGEST_ID] = self._unwrap(FIRST_INGEST_ID, first)
        for name, value in fields.items():
            kind, _, key_id = name.partition(":")
            if kind == "key":
                ring[_stored_id(key_id)] = self._unwrap(_stored_id(key_id), value)
        if current_id not in ring or public_of(ring[current_id]) != current_public:
            raise SealBroken("the stored public ingest key is not the workers' key's")
        with self._lock:  # keys retired elsewhere leave this process's memory too
            self._unwrapped = {k: v for k, v in self._unwrapped.items() if k[0] in ring}
        return ring

    def _snapshot(
        self, *, whole: bool = True
    ) -> tuple[dict[str, bytes], bytes | None, tuple[str, bytes]]:
        """The ring's fields (``whole`` false: only which key is current), the first key's
        wrapped entry (None once retired) and the current key's id and public half, read
        together (one round trip once the first key exists; the first to ask makes it)."""
        current = ["current", "current_public"]
        for _ in range(2):
            with redis_errors():
                pipe = self._store.client.pipeline(transaction=True)
                pipe.hgetall(self._ring) if whole else pipe.hmget(self._ring, current)
                pipe.mget(self._first, self._first_public)
                raw, (first, first_public) = pipe.execute()
            if not whole:
                raw = {k: v for k, v in zip(current, raw, strict=True) if v is not None}
            fields = _ring_fields(raw)
            wrapped = None if first is None or stored_bytes(first) == _RETIRED else first
            wrapped = None if wrapped is None else stored_bytes(wrapped)
            if "current" in fields:
                now = (_stored_id(fields["current"]), _public_key(fields.get("current_public")))
                return fields, wrapped, now
            if first_public is not None:
                return fields, wrapped, (FIRST_INGEST_ID, _public_key(first_public))
            self._make_first()
        raise SealBroken("the workers' first ingest key could not be made")

    def rotate(self) -> tuple[str, str]:
        """Make a new current key; the previous one stays until retired. Returns (new id,
        previous id). One script reads Redis's clock and writes the ring: the replacement's
        stamp is the moment it takes effect, however long this process takes. The rotation is
        noted until it is audited (:mod:`hivemem.security.key_changes`; details:
        ``previous``). A reply lost on the way is no failure when Redis holds the new key.
        Raises PoolUnavailable when Redis cannot say whether it was made (a request held up on
        its way may still make it: its note then tells), KeyRotationConflict when other
        rotations kept landing first."""
        new_id, secret, raw = self._store.new_entry("ingest", "", None)
        public = base64.b64encode(public_of(secret))
        for _ in range(ROTATE_ATTEMPTS):
            previous = self.current()[0]  # the first key exists
            if self._rotated(new_id, raw, public, previous):
                log.info("ingest_key_rotated", key_id=new_id, previous=previous)
                return new_id, previous
        raise KeyRotationConflict(INGEST_KEYS, ROTATE_ATTEMPTS)

    def _rotated(self, new_id: str, raw: str, public: bytes, previous: str) -> bool:
        """Whether ``lua/rotate_ingest_key.lua`` made ``new_id`` current in place of
        ``previous`` (False: another rotation came first)."""
        change = KeyChange(AuditEvent.KEY_ROTATED, INGEST_KEYS, new_id, {"previous": previous})
        try:
            done = self._rotate(
                keys=[self._ring, self._changes.key],
                args=[new_id, raw, public, previous, change.name, change.note],
            )
        except REDIS_DOWN as error:  # the reply lost: Redis says whether the key was made
            return ran_anyway(
                error, lambda: self._holds(new_id), "ingest_key_rotation_reply_lost",
                key_id=new_id,
            )  # fmt: skip
        return bool(int(cast("int", done)))

    def _holds(self, key_id: str, *, retired_only: bool = False) -> bool:
        """Whether the ring holds ``key_id`` (``retired_only``: as a retired key)."""
        names = [f"retired:{key_id}"] + ([] if retired_only else [f"key:{key_id}"])
        found = cast("list[bytes | None]", self._store.client.hmget(self._ring, names))
        return any(value is not None for value in found)

    def replaced_at(self, key_id: str) -> datetime | None:
        """When ``key_id`` stopped being current (None: it is current). Raises KeyUnavailable
        for an unknown or retired key, InvalidIdentifier for a malformed id."""
        key_id = check_ingest_id(key_id)
        for info in self.listing():
            if info.key_id == key_id and not info.retired:
                return info.replaced_at
        raise KeyUnavailable(INGEST_KEYS, key_id, "unknown or retired")

    def now(self) -> datetime:
        """Redis's clock (UTC): what ``replaced_at`` is stamped with."""
        with redis_errors():
            return _redis_time(self._store.client.time())

    def retire(self, key_id: str, *, details: Mapping[str, object] | None = None) -> bool:
        """Delete the wrapped material of an old key: what is sealed to it opens nowhere any
        more. The retirement is noted until it is audited
        (:mod:`hivemem.security.key_changes`), with ``details`` for its audit entry. False
        (nothing changes) for a key already retired. A reply lost on the way is no failure
        when Redis shows the key retired. Raises InvalidInput for the current key,
        KeyUnavailable for an unknown one, InvalidIdentifier for a malformed id,
        PoolUnavailable when Redis cannot say whether it was retired (a request held up on its
        way may still retire it: its note then tells)."""
        key_id = check_ingest_id(key_id)
        change = KeyChange(AuditEvent.KEY_RETIRED, INGEST_KEYS, key_id, dict(details or {}))
        done = False
        for _ in range(2):  # an old key's entry changes only when it is retired: read again
            wrapped, now = self._retirable(key_id)
            if wrapped is None or (done := self._retired_now(change, wrapped, now)):
                break
        else:
            raise SealBroken("an ingest key's stored entry changed while it was being retired")
        with self._lock:
            self._unwrapped = {k: v for k, v in self._unwrapped.items() if k[0] != key_id}
        if done:
            log.info("ingest_key_retired", key_id=key_id)
        return done

    def _retired_now(self, change: KeyChange, wrapped: bytes, now: str) -> bool:
        """Whether ``lua/retire_ingest_key.lua`` retired ``change.key_id``, whose entry was
        ``wrapped`` at ``now`` (False: the entry is not that one any more)."""
        info = {"created_at": parse_entry(wrapped)["created_at"], "retired_at": now}
        try:
            done = self._retire(
                keys=[self._ring, self._first, self._first_public, self._changes.key],
                args=[change.key_id, wrapped, json.dumps(info), change.name, change.note],
            )
        except REDIS_DOWN as error:  # the reply lost: Redis says whether it was retired
            return ran_anyway(
                error, lambda: self._holds(change.key_id, retired_only=True),
                "ingest_key_retirement_reply_lost", key_id=change.key_id,
            )  # fmt: skip
        return bool(int(cast("int", done)))

    def _retirable(self, key_id: str) -> tuple[bytes | None, str]:
        """The stored entry of the old key ``key_id`` (None: retired) and Redis's clock as a
        stamp, read together. Raises InvalidInput for the current key, KeyUnavailable for an
        unknown one."""
        names = ["current", f"key:{key_id}", f"retired:{key_id}"]
        with redis_errors():
            pipe = self._store.client.pipeline(transaction=False)
            pipe.hmget(self._ring, names)
            pipe.get(self._first)
            pipe.time()
            (current, wrapped, retired), first, clock = pipe.execute()
        if key_id == FIRST_INGEST_ID:
            wrapped = None if first is None or stored_bytes(first) == _RETIRED else first
        if (FIRST_INGEST_ID if current is None else _stored_id(current)) == key_id:
            raise InvalidInput(f"ingest key {key_id} is the current one", field="key_id")
        if wrapped is None and retired is None:
            raise KeyUnavailable(INGEST_KEYS, key_id, "unknown")
        return (None if wrapped is None else stored_bytes(wrapped)), _redis_time(clock).isoformat()

    def listing(self) -> list[IngestKeyInfo]:
        """Every ingest key, retired ones included, oldest first. Raises SealBroken for a
        malformed stored entry."""
        fields, first, (current_id, _) = self._snapshot()
        made = {
            _stored_id(name.partition(":")[2]): parse_entry(value)["created_at"]
            for name, value in fields.items()
            if name.startswith("key:")
        }
        if first is not None:
            made[FIRST_INGEST_ID] = parse_entry(first)["created_at"]
        infos = []
        for key_id, created in made.items():
            replaced = fields.get(f"replaced:{key_id}")
            infos.append(IngestKeyInfo(
                key_id, _stamp(created), key_id == current_id, False,
                None if replaced is None else _stamp(replaced),
            ))  # fmt: skip
        for name, value in fields.items():
            if name.startswith("retired:"):
                try:
                    created = json.loads(value)["created_at"]
                except (ValueError, KeyError, TypeError):
                    raise _malformed() from None
                key_id = _stored_id(name.partition(":")[2])
                infos.append(IngestKeyInfo(key_id, _stamp(created), False, True))
        return sorted(infos, key=lambda info: info.created_at)

    def _make_first(self) -> None:
        """Make the first key (and its public half) unless another process did."""
        _, _, raw = self._store.new_entry("ingest", "", FIRST_INGEST_ID)
        with redis_errors():
            if self._store.client.set(self._first, raw, nx=True):
                log.info("key_material_created", key=self._first)
            wrapped = cast("bytes | str | None", self._store.client.get(self._first))
            if wrapped is None or stored_bytes(wrapped) == _RETIRED:
                return  # retired meanwhile: a rotation made another current
            made = self._unwrap(FIRST_INGEST_ID, stored_bytes(wrapped))
            # Every process that finds the public half missing writes the same one.
            self._store.client.set(self._first_public, base64.b64encode(public_of(made)), nx=True)

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The private half in the stored entry ``wrapped`` of key ``key_id`` (kept)."""
        with self._lock:
            known = self._unwrapped.get((key_id, wrapped))
        if known is not None:
            return known
        secret = self._store.unwrap(wrapped, self._store.context("ingest", "", key_id))
        with self._lock:
            self._unwrapped[key_id, wrapped] = secret
        return secret


def _redis_time(reply: Any) -> datetime:
    seconds, micros = reply
    return datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, UTC)
