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

The workers' ingest key is an X25519 key pair; its private half is made once per pool namespace
and kept in Redis wrapped by the master key (:meth:`ZoneKeyring.ingest_secret`), its public half
in clear beside it (:meth:`ZoneKeyring.ingest_public`): a sealer reads only that. An
:class:`IngestSealer` (one per agent) makes an ephemeral X25519 key once, agrees a secret with
the workers' public key, and derives its AES key with HKDF-SHA256 (info: the tag, then both
public keys); the magic and its public key are the associated data. So each message costs one
AES-GCM pass, and only a holder of the workers' private key (an :class:`IngestOpener`) opens it.
Inside is the usual version-2 frame, signed by its sender and checked as before.

What this does not change: whoever holds the master key (every pool process, as for zone keys)
can unwrap the workers' key, which is never rotated (docs/security.md, "Known gaps").
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hivemem.pool.envelope import INGEST_SEAL_MAGIC, Envelope, EnvelopeCodec
from hivemem.pool.errors import InvalidMessage, MessageRejected, SealBroken
from hivemem.security.keyring import ZoneKeyring
from hivemem.security.sealing import NONCE_BYTES, TAG_BYTES

MAGIC = INGEST_SEAL_MAGIC
_PUBLIC_BYTES = 32
_HEAD = len(MAGIC) + _PUBLIC_BYTES
_KDF_INFO = b"hivemem/ingest/v1|"
#: Senders' derived keys an opener keeps at most (one per agent process, least recent go first).
_OPENER_CACHE = 4096


def _derived(shared: bytes, sender_public: bytes, workers_public: bytes) -> AESGCM:
    kdf = HKDF(hashes.SHA256(), 32, salt=None, info=_KDF_INFO + sender_public + workers_public)
    return AESGCM(kdf.derive(shared))


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def workers_public_key(keyring: ZoneKeyring) -> X25519PublicKey:
    """The public half of the workers' ingest key, as stored beside it (made on first use,
    by whoever asks first). Raises PoolUnavailable when Redis is down and SealBroken for a
    malformed stored key."""
    return X25519PublicKey.from_public_bytes(keyring.ingest_public())


class IngestSealer:
    """Seals ingest messages to the workers (one per agent; thread-safe)."""

    def __init__(self, keyring: ZoneKeyring) -> None:
        self._keyring = keyring
        self._own = X25519PrivateKey.generate()
        self._aead: AESGCM | None = None
        self._lock = threading.Lock()

    def seal(self, frame: bytes) -> bytes:
        """``frame`` (a signed version-2 message) wrapped for the workers. Raises
        PoolUnavailable when the workers' key cannot be read yet (Redis down): the caller keeps
        the message and tries again."""
        aead = self._aead or self._agree()
        nonce = os.urandom(NONCE_BYTES)
        head = MAGIC + _raw(self._own.public_key())
        return b"".join((head, nonce, aead.encrypt(nonce, frame, head)))

    def _agree(self) -> AESGCM:
        workers = workers_public_key(self._keyring)
        with self._lock:
            if self._aead is None:
                own = _raw(self._own.public_key())
                self._aead = _derived(self._own.exchange(workers), own, _raw(workers))
            return self._aead


class IngestOpener:
    """Opens what agents sealed with an :class:`IngestSealer` (the workers; thread-safe)."""

    def __init__(self, keyring: ZoneKeyring) -> None:
        self._keyring = keyring
        self._private: X25519PrivateKey | None = None
        self._senders: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, data: bytes) -> bytes:
        """The frame inside. Bytes without the magic are returned as they are: a message
        queued before ingest sealing existed (its frame is still signed and checked). Raises
        InvalidMessage for a wrap too short to hold anything, MessageRejected (``tampered``)
        for one that does not open."""
        if not data.startswith(MAGIC):
            return data
        if len(data) < _HEAD + NONCE_BYTES + TAG_BYTES:
            raise InvalidMessage("malformed ingest message: too short")
        head, nonce = data[:_HEAD], data[_HEAD : _HEAD + NONCE_BYTES]
        try:
            return self._aead(head[len(MAGIC) :]).decrypt(nonce, data[_HEAD + NONCE_BYTES :], head)
        except (InvalidTag, ValueError):  # ValueError: not a point X25519 agrees with
            raise MessageRejected("tampered", "an ingest message does not open") from None

    def _aead(self, sender_public: bytes) -> AESGCM:
        with self._lock:
            known = self._senders.get(sender_public)
            if known is not None:
                self._senders.move_to_end(sender_public)
                return known
        private = self._private or self._load()
        shared = private.exchange(X25519PublicKey.from_public_bytes(sender_public))
        aead = _derived(shared, sender_public, _raw(private.public_key()))
        with self._lock:
            self._senders[sender_public] = aead
            while len(self._senders) > _OPENER_CACHE:
                self._senders.popitem(last=False)
        return aead

    def _load(self) -> X25519PrivateKey:
        """The workers' private key, checked against the public half agents seal to: a
        public half replaced in Redis would have every agent seal to a key nobody holds."""
        private = X25519PrivateKey.from_private_bytes(self._keyring.ingest_secret())
        if private.public_key().public_bytes_raw() != self._keyring.ingest_public():
            raise SealBroken("the stored public ingest key is not the workers' key's")
        self._private = private
        return private


class IngestCodec:
    """The workers' codec for their ingest queues: opens the wrap, then decodes the frame with
    ``inner``; encodes (what the workers publish) with ``inner`` unchanged."""

    def __init__(self, inner: EnvelopeCodec, opener: IngestOpener) -> None:
        self._inner = inner
        self._opener = opener

    def encode(self, envelope: Envelope) -> bytes:
        return self._inner.encode(envelope)

    def decode(self, data: bytes, *, live: bool = False) -> Envelope:
        return self._inner.decode(self._opener.open(data), live=live)
