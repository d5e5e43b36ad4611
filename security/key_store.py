"""Where a :class:`~hivemem.security.keyring.ZoneKeyring` keeps its keys: wrapped in Redis, and
unwrapped in this process once used.

A wrapped entry is JSON ``{"provider_id", "wrapped" (base64), "created_at" (ISO 8601, UTC)}``.
Its wrap context is ``hivemem/key|<ns>|<kind>|<zone>|<key id>`` (kind ``dek``, ``vector``,
``ingest`` or ``subject``; a subject's zone is empty and its key id is the subject; the ingest
key's zone is empty), so an entry copied to another slot does not unwrap (SealBroken). Only
wrapped material reaches Redis; no key is logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import redis

from hivemem.pool.adapters.redis_errors import REDIS_DOWN, unavailable
from hivemem.pool.errors import PoolUnavailable, SealBroken
from hivemem.security.key_provider import KeyProvider

#: Bytes of every key a keyring makes.
KEY_BYTES = 32
#: Unwrapped DEKs and subject secrets kept per keyring at most (least recently used go first).
_CACHE_SIZE = 10_000


@dataclass(slots=True)
class _Cached:
    raw: bytes  # the stored entry: tells a re-created key from the one unwrapped
    secret: bytes
    checked_at: float  # time.monotonic() of the last check against Redis


def stored_bytes(value: bytes | str) -> bytes:
    """A value Redis returned, as bytes, whether or not the client decodes responses."""
    return value.encode() if isinstance(value, str) else value


def stored_text(value: bytes | str) -> str:
    """A stored field as text; SealBroken for bytes hivemem never writes (not UTF-8)."""
    try:
        return stored_bytes(value).decode()
    except UnicodeDecodeError:
        raise SealBroken("a stored key entry is malformed") from None


def now_iso() -> str:
    """The current time (UTC, ISO 8601), as entries record it."""
    return datetime.now(UTC).isoformat()


def parse_entry(raw: bytes) -> dict[str, str]:
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


#: How long (seconds) Redis is taken as down after a fetch failed (see KeyStore._down_until).
_DOWN_S = 0.5


class KeyStore:
    """The wrapped keys of one namespace in Redis, and the secrets this process unwrapped from
    them. Thread-safe; the services of one keyring share it.

    ``client`` is the keyring's one connection: every service reaches Redis through it.
    ``prefix`` (``<ns>:keys:``) starts every Redis key. ``ttl_s``: how long (seconds) a cached
    secret is used without asking Redis again."""

    def __init__(
        self, client: redis.Redis, provider: KeyProvider, *, namespace: str, ttl_s: float
    ) -> None:
        """``namespace`` is already checked."""
        self.client = client
        self.prefix = f"{namespace}:keys:"
        self.ttl_s = ttl_s
        self._ns = namespace
        self._provider = provider
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, ...], _Cached] = OrderedDict()
        self._forgotten = 0  # bumped by every forget: a fetch older than it is not cached
        self._dropped = 0  # forgets that dropped a secret held here (shreds, retirements)
        #: Until when (monotonic) Redis is taken as down after a failed fetch: cached secrets
        #: are served and missing ones raise without asking it again (one timeout, not one per
        #: secret, while Redis's host does not answer).
        self._down_until = 0.0

    def context(self, kind: str, zone: str, key_id: str) -> bytes:
        """The wrap context of the slot ``kind``/``zone``/``key_id``."""
        return f"hivemem/key|{self._ns}|{kind}|{zone}|{key_id}".encode()

    def new_entry(
        self, kind: str, zone: str, key_id: str | None = None, *, secret: bytes | None = None
    ) -> tuple[str, bytes, str]:
        """A fresh (key id, secret, wrapped entry JSON) of ``kind`` (``secret``: that one
        wrapped, else a random one)."""
        key_id = key_id or os.urandom(6).hex()
        secret = secret if secret is not None else os.urandom(KEY_BYTES)
        wrapped = self._provider.wrap(secret, context=self.context(kind, zone, key_id))
        entry = {
            "provider_id": self._provider.provider_id,
            "wrapped": base64.b64encode(wrapped).decode("ascii"),
            "created_at": now_iso(),
        }
        return key_id, secret, json.dumps(entry)

    def secret(self, slot: tuple[str, ...], name: str, hash_field: str) -> bytes | None:
        """The unwrapped secret stored in ``name``/``hash_field`` (cache ``slot``), or None.
        A slot is ``(kind, zone, key id)``, or ``("subject", subject)``: it names the wrap
        context too. A cached secret is used for ``ttl_s``, then checked against Redis again;
        while Redis cannot be reached it keeps serving, and a secret never fetched raises
        PoolUnavailable. After a failed fetch, Redis is not asked again for ``_DOWN_S``."""
        with self._lock:
            cached = self._cache.get(slot)
            if cached is not None:
                self._cache.move_to_end(slot)
            generation = self._forgotten
        now = time.monotonic()
        if cached is not None and now - cached.checked_at < self.ttl_s:
            return cached.secret
        if self.down():
            if cached is not None:
                return cached.secret
            raise PoolUnavailable("Redis could not be reached a moment ago")
        try:
            raw = cast("bytes | str | None", self.client.hget(name, hash_field))
        except REDIS_DOWN as error:
            self.went_down()
            if cached is not None:
                return cached.secret  # Redis is down: keep sealing with what we know
            raise unavailable(error) from None
        if raw is None:
            self.forget(slot)
            return None
        raw = stored_bytes(raw)
        if cached is not None and cached.raw == raw:
            secret = cached.secret
        else:
            kind, zone, key_id = ("subject", "", slot[1]) if slot[0] == "subject" else slot
            secret = self.unwrap(raw, self.context(kind, zone, key_id))
        self.remember(slot, raw, secret, generation)
        return secret

    def down(self) -> bool:
        """Whether a fetch failed less than ``_DOWN_S`` ago: Redis is not asked again yet."""
        return time.monotonic() < self._down_until

    def went_down(self) -> None:
        """A fetch failed: do not ask Redis again for ``_DOWN_S``."""
        self._down_until = time.monotonic() + _DOWN_S

    @property
    def generation(self) -> int:
        """How many secrets held here this process has dropped (shreds, retirements, a
        secret found gone): what was derived from them before a change of it may be stale."""
        with self._lock:
            return self._dropped

    def remember(
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

    def forget(self, slot: tuple[str, ...]) -> None:
        """Drop the cached secret of ``slot``; a fetch begun before is not cached either."""
        with self._lock:
            if self._cache.pop(slot, None) is not None:
                self._dropped += 1
            self._forgotten += 1

    def unwrap(self, raw: bytes, context: bytes) -> bytes:
        """The secret in the stored entry ``raw``, wrapped under ``context``. Raises SealBroken
        for a malformed entry, one that does not unwrap here (another slot's, another master
        key's) or a secret of the wrong length."""
        entry = parse_entry(raw)
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
