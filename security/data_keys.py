"""Each zone's data keys (DEKs): the active one seals new content, older ones still open what
they sealed until they are retired. :class:`DataKeys` is the service behind the data-key
methods of :class:`~hivemem.security.keyring.ZoneKeyring`.

They live in ``<ns>:keys:zone:<zone>``, a hash: ``active`` → the id of the key new content is
sealed with; ``dek:<key_id>`` → a wrapped DEK; ``retired:<key_id>`` → ``{"created_at",
"retired_at"}`` of a retired DEK, whose ``dek:`` field was deleted. A zone's first DEK is made
under WATCH/MULTI: racing keyrings all use the winner's. A rotation is one script
(``lua/rotate_data_key.lua``) that lands only if the active key is still the one read, and notes
itself until it is audited (:mod:`hivemem.security.key_changes`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import redis
import structlog

from hivemem.pool.adapters.redis_errors import REDIS_DOWN, ran_anyway, redis_errors, unavailable
from hivemem.pool.enums import Zone, checked_zone
from hivemem.pool.errors import (
    InvalidIdentifier,
    InvalidInput,
    KeyRotationConflict,
    KeyUnavailable,
)
from hivemem.security.audit_entry import AuditEvent
from hivemem.security.key_changes import ROTATE_ATTEMPTS, KeyChange, KeyChanges
from hivemem.security.key_store import KeyStore, now_iso, parse_entry, stored_bytes, stored_text

log = structlog.get_logger(__name__)

#: Key ids: 12 lower-case hex characters (48 random bits per zone).
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
_ROTATE = (Path(__file__).parent / "lua" / "rotate_data_key.lua").read_text()


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


def check_key_id(value: object) -> str:
    """Return ``value`` if it is a well-formed key id, or raise InvalidIdentifier."""
    if not isinstance(value, str) or not KEY_ID_PATTERN.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise InvalidIdentifier(
            f"key id must match {KEY_ID_PATTERN.pattern}: {shown!r}", field="key_id"
        )
    return value


class DataKeys:
    """The data keys of one namespace's zones. Thread-safe."""

    def __init__(self, store: KeyStore, changes: KeyChanges) -> None:
        """``changes``: where rotations are noted until they are audited."""
        self._store = store
        self._changes = changes
        self._rotate = store.client.register_script(_ROTATE)
        self._lock = threading.Lock()
        self._active: dict[Zone, tuple[str, float]] = {}

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
        if not fresh and cached is not None and time.monotonic() - cached[1] < self._store.ttl_s:
            try:
                return self.get(zone, cached[0])
            except KeyUnavailable:  # rotated and retired elsewhere since: ask Redis
                pass
        if cached is not None and self._store.down():  # a fetch just failed: keep this key
            return self.get(zone, cached[0])
        try:
            current = cast(
                "bytes | str | None", self._store.client.hget(self._zone_key(zone), "active")
            )
        except REDIS_DOWN as error:
            self._store.went_down()
            if cached is not None:  # Redis is down: keep the key we were using
                return self.get(zone, cached[0])
            raise unavailable(error) from None
        key = self.get(zone, stored_text(current)) if current else self._create_first(zone)
        with self._lock:
            self._active[zone] = (key.key_id, time.monotonic())
        return key

    def get(self, zone: Zone | str, key_id: str) -> DataKey:
        """The data key ``key_id`` of ``zone``. Raises InvalidIdentifier for a malformed id,
        KeyUnavailable for an unknown or retired one, SealBroken if it does not unwrap."""
        zone = checked_zone(zone)
        key_id = check_key_id(key_id)
        secret = self._store.secret(("dek", zone, key_id), self._zone_key(zone), f"dek:{key_id}")
        if secret is None:
            raise KeyUnavailable(zone, key_id, "unknown or retired")
        return DataKey(zone, key_id, secret)

    def rotate(self, zone: Zone | str) -> DataKey:
        """Make a new active key for ``zone`` and return it; older keys stay readable. The
        rotation is noted until it is audited (:mod:`hivemem.security.key_changes`; details:
        ``previous``, the key it replaced). Rotations at once all land, one after the other. A
        reply lost on the way is no failure when Redis holds the new key. Raises
        PoolUnavailable when Redis cannot say whether it was made (a request held up on its
        way may still make it: its note then tells), KeyRotationConflict when other rotations
        kept landing first."""
        zone = checked_zone(zone)
        key_id, secret, raw = self._store.new_entry("dek", zone)
        for _ in range(ROTATE_ATTEMPTS):
            if self._rotated(zone, key_id, raw):
                break
        else:
            raise KeyRotationConflict(zone.value, ROTATE_ATTEMPTS)
        self._store.remember(("dek", zone, key_id), raw.encode(), secret)
        with self._lock:
            self._active[zone] = (key_id, time.monotonic())
        log.info("data_key_rotated", zone=str(zone), key_id=key_id)
        return DataKey(zone, key_id, secret)

    def _rotated(self, zone: Zone, key_id: str, raw: str) -> bool:
        """Whether ``lua/rotate_data_key.lua`` made ``key_id`` (entry ``raw``) the active key
        of ``zone``, replacing the one read just before (False: another rotation came first)."""
        zone_key = self._zone_key(zone)
        with redis_errors():
            found = cast("bytes | str | None", self._store.client.hget(zone_key, "active"))
        previous = stored_text(found) if found else ""
        details: dict[str, object] = {"previous": previous or None}
        change = KeyChange(AuditEvent.KEY_ROTATED, zone.value, key_id, details)
        try:
            done = self._rotate(
                keys=[zone_key, self._changes.key],
                args=[key_id, raw, previous, change.name, change.note],
            )
        except REDIS_DOWN as error:  # the reply lost: Redis says whether the key was made
            return ran_anyway(
                error, lambda: self._holds(zone, key_id), "data_key_rotation_reply_lost",
                zone=zone.value, key_id=key_id,
            )  # fmt: skip
        return bool(int(cast("int", done)))

    def _holds(self, zone: Zone, key_id: str) -> bool:
        """Whether ``zone`` has (or had) the key ``key_id``."""
        names = [f"dek:{key_id}", f"retired:{key_id}"]
        found = cast("list[bytes | None]", self._store.client.hmget(self._zone_key(zone), names))
        return any(value is not None for value in found)

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
            if active is not None and stored_bytes(active).decode() == key_id:
                raise InvalidInput(f"key {key_id} is the active key of {zone}", field="key_id")
            if entry is None:
                if retired is not None:
                    return
                raise KeyUnavailable(zone, key_id, "unknown")
            info = {
                "created_at": parse_entry(stored_bytes(entry))["created_at"],
                "retired_at": now_iso(),
            }
            pipe.multi()
            pipe.hdel(zone_key, f"dek:{key_id}")
            pipe.hset(zone_key, f"retired:{key_id}", json.dumps(info))
            done = True

        with redis_errors():
            self._store.client.transaction(retire_in, zone_key)
        self._store.forget(("dek", zone, key_id))
        if done:
            log.info("data_key_retired", zone=str(zone), key_id=key_id)

    def keys(self, zone: Zone | str) -> list[KeyInfo]:
        """Every data key of ``zone``, retired ones included, oldest first."""
        zone = checked_zone(zone)
        with redis_errors():
            fields = cast(
                "dict[bytes | str, bytes | str]", self._store.client.hgetall(self._zone_key(zone))
            )
        plain = {stored_text(k): stored_bytes(v) for k, v in fields.items()}
        active = stored_text(plain.get("active", b""))
        infos = []
        for name, value in plain.items():
            kind, _, key_id = name.partition(":")
            if kind in {"dek", "retired"}:
                created = parse_entry(value)["created_at"]
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

    def _zone_key(self, zone: Zone) -> str:
        return f"{self._store.prefix}zone:{zone}"

    def _create_first(self, zone: Zone) -> DataKey:
        """The first key of ``zone``, or the one a racing keyring made first."""
        zone_key = self._zone_key(zone)
        key_id, secret, raw = self._store.new_entry("dek", zone)
        winner = key_id

        def create_in(pipe: redis.client.Pipeline) -> None:
            nonlocal winner
            current = cast("bytes | str | None", pipe.hget(zone_key, "active"))
            if current:
                winner = stored_text(current)
                return
            winner = key_id
            pipe.multi()
            pipe.hset(zone_key, mapping={f"dek:{key_id}": raw, "active": key_id})

        with redis_errors():
            self._store.client.transaction(create_in, zone_key)
        if winner != key_id:
            return self.get(zone, winner)
        self._store.remember(("dek", zone, key_id), raw.encode(), secret)
        log.info("data_key_created", zone=str(zone), key_id=key_id)
        return DataKey(zone, key_id, secret)
