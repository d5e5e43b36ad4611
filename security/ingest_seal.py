"""What agents queue for the workers, sealed to the workers alone.

Every record and tombstone an agent writes also goes to its own ingest queue in the record's
zone (``<ns>:ingest:<zone>:agent:<id>:stream``), whatever its level or compartments: the workers
store them all. No other agent's Redis user may read that queue, but every agent of the zone
holds the zone's key, so a message sealed only as on a zone topic (:mod:`hivemem.security.wire`)
would show levels the writer keeps to itself and compartments others do not hold to whoever got
its bytes (a process with administrator credentials, a Redis dump; and, before each agent had
its own queue, every agent of the zone). The sender therefore wraps each ingest message once
more, to a key only the workers open::

    b"HMI1" <ephemeral public key: 32> <nonce: 12> <AES-256-GCM ciphertext of the frame>

The workers' ingest keys are X25519 key pairs (:mod:`hivemem.security.ingest_keys`): their
private halves kept in Redis wrapped by the master key, the current one's public half in clear
beside it, which is all a sealer reads. An :class:`IngestSealer` (one per agent) makes an
ephemeral X25519 key once, agrees a secret with the workers' current public key, and derives its
AES key with HKDF-SHA256 (info: the tag, then both public keys); the head (magic, the workers'
key id, its public key) is the associated data. So each message costs one AES-GCM pass, and only
a holder of that workers' private key (an :class:`IngestOpener`) opens it. Inside is the usual
version-2 frame, signed by its sender and checked as before.

Which workers' key a message is sealed to is in its head, so that the workers pick it, and a
retirement counts the messages still queued under an old key without opening them. A message
to a later key than the first names it::

    b"HMI2" <id length: 1> <the workers' key id> <ephemeral public key: 32> <nonce: 12> <...>

while one to the first key (id ``ingest``, made before keys rotated) keeps the form above,
which earlier versions wrote and still open.

A sealer reads the current key again once what it read is ``ttl_s`` old (the keyring's: 1 s),
so a rotation reaches every agent within that time, and a retirement waits longer than that
(:mod:`hivemem.security.ingest_rotation`). An opener reads the keys again once what it holds is
``ttl_s`` old (a retired key goes), and for a message naming a key it does not hold (once per
such id until then), and once per ``ttl_s`` for a message that does not open under the key it
names (that key may have been made anew: Redis lost its data). It keeps the keys it agreed with
senders by the workers' key's public half, not its id.

What this does not change: whoever holds the master key (every pool process, as for zone keys)
can unwrap the workers' keys.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hivemem.pool.envelope import (
    INGEST_SEAL_MAGIC,
    INGEST_SEAL_MAGIC_WITH_ID,
    Envelope,
    EnvelopeCodec,
)
from hivemem.pool.errors import InvalidIdentifier, InvalidMessage, MessageRejected
from hivemem.security.ingest_keys import FIRST_INGEST_ID, check_ingest_id
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.sealing import NONCE_BYTES, TAG_BYTES

MAGIC = INGEST_SEAL_MAGIC
MAGIC_WITH_ID = INGEST_SEAL_MAGIC_WITH_ID
_PUBLIC_BYTES = 32
_KDF_INFO = b"hivemem/ingest/v1|"
#: Senders' derived keys an opener keeps at most (one per agent process and workers' key, least
#: recent go first).
_OPENER_CACHE = 4096


def _derived(shared: bytes, sender_public: bytes, workers_public: bytes) -> AESGCM:
    kdf = HKDF(hashes.SHA256(), 32, salt=None, info=_KDF_INFO + sender_public + workers_public)
    return AESGCM(kdf.derive(shared))


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def _magic(key_id: str) -> bytes:
    """How a message sealed to the workers' key ``key_id`` begins, up to the sender's key."""
    if key_id == FIRST_INGEST_ID:
        return MAGIC
    return MAGIC_WITH_ID + bytes([len(key_id)]) + key_id.encode()


def _head(data: bytes) -> tuple[str, int] | None:
    """The workers' key id a wrap names and where its sender's key starts; None for bytes that
    are no wrap (a frame queued before wraps existed). Raises InvalidMessage for a head that
    cannot be one."""
    if data.startswith(MAGIC):
        return FIRST_INGEST_ID, len(MAGIC)
    if not data.startswith(MAGIC_WITH_ID):
        return None
    start = len(MAGIC_WITH_ID) + 1
    length = data[start - 1] if len(data) >= start else 0
    try:
        key_id = check_ingest_id(data[start : start + length].decode("ascii"))
    except (UnicodeDecodeError, InvalidIdentifier):
        raise InvalidMessage("malformed ingest message: no workers' key id") from None
    return key_id, start + length


def sealed_to(data: bytes) -> str | None:
    """The id of the workers' key a queued message is sealed to, read from its clear head (None:
    no wrap, or a head that cannot be one). Nothing is opened."""
    try:
        found = _head(data)
    except InvalidMessage:
        return None
    return None if found is None else found[0]


@dataclass(frozen=True)
class _Target:
    """The workers' key a sealer seals to, as read at ``checked_at`` (monotonic)."""

    head: bytes
    public: bytes
    aead: AESGCM
    checked_at: float


class IngestSealer:
    """Seals ingest messages to the workers' current key (one per agent; thread-safe)."""

    def __init__(self, keyring: ZoneKeyring) -> None:
        self._keyring = keyring
        self._own = X25519PrivateKey.generate()
        self._target: _Target | None = None

    def seal(self, frame: bytes) -> bytes:
        """``frame`` (a signed version-2 message) wrapped for the workers. Raises
        PoolUnavailable when the workers' current key cannot be read (Redis down, and what
        was read is older than the keyring's ``ttl_s``): the caller keeps the message and tries
        again."""
        target = self._target
        if target is None or time.monotonic() - target.checked_at >= self._keyring.ttl_s:
            target = self._current(target)
        nonce = os.urandom(NONCE_BYTES)
        return b"".join((target.head, nonce, target.aead.encrypt(nonce, frame, target.head)))

    def _current(self, known: _Target | None) -> _Target:
        """The workers' current key, read again (the agreed key kept while it is the same)."""
        checked_at = time.monotonic()
        key_id, workers = self._keyring.ingest.current()
        own = _raw(self._own.public_key())
        if known is not None and known.public == workers:
            aead = known.aead
        else:
            shared = self._own.exchange(X25519PublicKey.from_public_bytes(workers))
            aead = _derived(shared, own, workers)
        target = _Target(_magic(key_id) + own, workers, aead, checked_at)
        self._target = target  # one attribute, replaced whole: other threads see old or new
        return target


class IngestOpener:
    """Opens what agents sealed with an :class:`IngestSealer` (the workers; thread-safe)."""

    def __init__(self, keyring: ZoneKeyring) -> None:
        self._keyring = keyring
        #: id -> (private key, its public half), as read at ``_loaded_at`` (monotonic).
        self._keys: dict[str, tuple[X25519PrivateKey, bytes]] = {}
        self._loaded_at = -math.inf
        #: Ids named by messages and found in no load since: not read again before the next.
        self._unknown: set[str] = set()
        #: When a message that did not open last had the keys read again (monotonic).
        self._tampered_at = -math.inf
        #: (workers' public key, sender's public key) -> the key they agreed.
        self._senders: OrderedDict[tuple[bytes, bytes], AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, data: bytes) -> bytes:
        """The frame inside. Bytes without the magic are returned as they are: a message
        queued before ingest sealing existed (its frame is still signed and checked). Raises
        InvalidMessage for a wrap too short to hold anything, MessageRejected (``tampered``)
        for one that does not open, (``unknown_key``) for one sealed to a workers' key that is
        retired or unknown."""
        found = _head(data)
        if found is None:
            return data
        key_id, at = found
        body = at + _PUBLIC_BYTES + NONCE_BYTES
        if len(data) < body + TAG_BYTES:
            raise InvalidMessage("malformed ingest message: too short")
        head, nonce = data[: at + _PUBLIC_BYTES], data[at + _PUBLIC_BYTES : body]
        held = self._private(key_id)
        sealed = (head[at:], nonce, data[body:], head)
        opened = self._opened(held, *sealed)
        if opened is None:
            # The key may have been made anew under its id (Redis lost its data): read the
            # keys again, at most once per ttl_s for this reason, and try it if it changed.
            again = self._reloaded(key_id)
            if again is not None and again[1] != held[1]:
                opened = self._opened(again, *sealed)
        if opened is None:
            raise MessageRejected("tampered", "an ingest message does not open")
        return opened

    def _opened(
        self,
        held: tuple[X25519PrivateKey, bytes],
        sender_public: bytes,
        nonce: bytes,
        ciphertext: bytes,
        head: bytes,
    ) -> bytes | None:
        """The frame, or None when it does not open under the workers' key ``held``."""
        try:
            return self._aead(*held, sender_public).decrypt(nonce, ciphertext, head)
        except (InvalidTag, ValueError):  # ValueError: not a point X25519 agrees with
            return None

    def _reloaded(self, key_id: str) -> tuple[X25519PrivateKey, bytes] | None:
        """``key_id`` as the keys read again now, unless a message that did not open had them
        read again less than ``ttl_s`` ago (None then, and when it is gone)."""
        now = time.monotonic()
        with self._lock:
            if now - self._tampered_at < self._keyring.ttl_s:
                return None
            self._tampered_at = now
        return self._load().get(key_id)

    def _private(self, key_id: str) -> tuple[X25519PrivateKey, bytes]:
        """The workers' key ``key_id`` and its public half: the keys are read again once what
        is held is ``ttl_s`` old, and for an id not held (once per id until then).
        MessageRejected (``unknown_key``) when it is not there either."""
        with self._lock:
            keys, unknown = self._keys, key_id in self._unknown
        stale = time.monotonic() - self._loaded_at >= self._keyring.ttl_s
        if stale or (key_id not in keys and not unknown):
            keys = self._load()
        found = keys.get(key_id)
        if found is None:
            with self._lock:
                self._unknown.add(key_id)
            raise MessageRejected(
                "unknown_key", f"an ingest message sealed to workers' key {key_id}, not held"
            )
        return found

    def _aead(self, private: X25519PrivateKey, public: bytes, sender_public: bytes) -> AESGCM:
        with self._lock:
            known = self._senders.get((public, sender_public))
            if known is not None:
                self._senders.move_to_end((public, sender_public))
                return known
        shared = private.exchange(X25519PublicKey.from_public_bytes(sender_public))
        aead = _derived(shared, sender_public, public)
        with self._lock:
            self._senders[public, sender_public] = aead
            while len(self._senders) > _OPENER_CACHE:
                self._senders.popitem(last=False)
        return aead

    def _load(self) -> dict[str, tuple[X25519PrivateKey, bytes]]:
        """Every workers' key not retired, read again (IngestKeys.ring checks the current one
        against the public half agents seal to). What is no longer there is dropped."""
        loaded_at = time.monotonic()
        keys = {}
        for key_id, secret in self._keyring.ingest.ring().items():
            private = X25519PrivateKey.from_private_bytes(secret)
            keys[key_id] = (private, _raw(private.public_key()))
        publics = {public for _, public in keys.values()}
        with self._lock:
            self._keys, self._loaded_at, self._unknown = keys, loaded_at, set()
            self._senders = OrderedDict((k, v) for k, v in self._senders.items() if k[0] in publics)
        return keys


class IngestCodec:
    """The workers' codec for their ingest queues: opens the wrap, then decodes the frame with
    ``inner``; encodes (what the workers publish) with ``inner`` unchanged."""

    def __init__(self, inner: EnvelopeCodec, opener: IngestOpener) -> None:
        self._inner = inner
        self._opener = opener

    def encode(self, envelope: Envelope) -> bytes:
        return self._inner.encode(envelope)

    def decode(
        self, data: bytes, *, live: bool = False, appended_at: datetime | None = None
    ) -> Envelope:
        return self._inner.decode(self._opener.open(data), live=live, appended_at=appended_at)
