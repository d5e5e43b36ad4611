"""Sealed, signed pool messages: envelope version 2.

On the wire a version-2 message is one frame of bytes::

    <header: compact JSON of a SealedHeader> "\n" <nonce: 12> <ciphertext> <signature: 64>

The header holds the routing facts in clear (message id, sender, zone, sent_at, ``to``,
``subject``, ``compartments``), the id of the data key and the ciphertext's length; the body is
the version-1 envelope sealed with AES-256-GCM under the zone's data key and the subject's
secret; the signature is the sender's Ed25519 signature of the SHA-256 digest of everything
before it (under a domain tag). Compact JSON holds no raw newline, so the first one ends the
header; the stated length lets the frame be cut out of any byte stream.

The header bytes, exactly as sent, are the seal's associated data, so a header moved onto
another body does not open; the signature covers header, nonce and ciphertext, so nothing can be
changed without the sender's key. Nothing is base64-encoded or serialised twice: a receiver
checks the bytes it got. :class:`SecureCodec` decodes in the order that costs an attacker most
and us least: parse the header, check the sender, the signature, the age and the zone (a
:class:`~hivemem.security.message_check.MessageCheck`), that the decoder holds the message's
compartments, and only then open the body and check that what is inside matches the header.
Every refusal is a ``MessageRejected`` with its reason; bytes that are no frame at all are an
``InvalidMessage``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, Field

from hivemem.pool.base import Model
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import MAX_MESSAGE_BYTES, Envelope, decode_envelope
from hivemem.pool.errors import (
    InvalidInput,
    InvalidMessage,
    KeyUnavailable,
    MessageRejected,
    MessageTooLarge,
    PoolUnavailable,
    SealBroken,
)
from hivemem.pool.ids import AGENT_ID_PATTERN, SCOPE_ID_PATTERN
from hivemem.pool.records import Compartments, utc_now
from hivemem.security.data_keys import KEY_ID_PATTERN
from hivemem.security.message_check import MessageCheck, SenderFacts
from hivemem.security.sealing import NONCE_BYTES, TAG_BYTES, Sealed, Sealer
from hivemem.security.signing import SIGNATURE_BYTES, SigningKey

#: The signed message is this tag, then the SHA-256 digest of the frame before the signature.
_SIGNED_DOMAIN = b"hivemem/message/v2|"
#: A header is a few hundred bytes; a frame whose first newline comes later is malformed.
_MAX_HEADER_BYTES = 4096
#: The id rules of :func:`~hivemem.pool.ids.check_agent_id`, ``check_scope_id`` and the keyring's
#: key ids as anchored patterns, for pydantic-core to check.
_AGENT_ID = f"^{AGENT_ID_PATTERN.pattern}$"
_SCOPE_ID = f"^{SCOPE_ID_PATTERN.pattern}$"
_KEY_ID = f"^{KEY_ID_PATTERN.pattern}$"


class SealedHeader(Model):
    """The clear header of a version-2 message (see the module docstring). Every field is
    checked inside pydantic-core, without a Python call: a receiver parses one header per
    message before anything else."""

    error = InvalidMessage

    v: Literal[2] = 2
    message_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    sender: str = Field(pattern=_AGENT_ID)
    zone: Zone
    #: Aware (the sender writes UTC); not converted, since only differences are taken.
    sent_at: AwareDatetime
    to: str | None = Field(default=None, pattern=_AGENT_ID)
    subject: str | None = Field(default=None, pattern=_SCOPE_ID)
    #: The envelope's compartments (None when it has none: such headers read as before).
    compartments: Compartments | None = None
    key_id: str = Field(pattern=_KEY_ID)
    #: The ciphertext's length in bytes (its tag included).
    size: int = Field(ge=TAG_BYTES, le=MAX_MESSAGE_BYTES)


@dataclass(frozen=True, slots=True)
class Frame:
    """A version-2 message taken apart: its header (parsed, and as sent), the sealed body and
    the signature."""

    header: SealedHeader
    header_bytes: bytes
    sealed: Sealed
    signature: bytes

    @classmethod
    def parse(cls, data: bytes) -> Frame:
        """Raises InvalidMessage for bytes that are not a version-2 frame, MessageRejected
        (``unsigned``) for a version-1 message."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"message of {len(data)} bytes is too large")
        if data.startswith(b'{"v":1,'):
            raise MessageRejected("unsigned", "a version-1 (plain) message")
        end = data.find(b"\n", 0, _MAX_HEADER_BYTES)
        if end < 0:
            raise InvalidMessage("malformed message: no header line")
        header_bytes = data[:end]
        try:
            header = SealedHeader.model_validate_json(header_bytes)
        except InvalidInput as error:  # a field's own check (zone, compartments) raises its kind
            raise InvalidMessage(f"malformed header: {str(error)[:200]}") from None
        body = end + 1 + NONCE_BYTES
        if len(data) != body + header.size + SIGNATURE_BYTES:
            raise InvalidMessage(f"message {header.message_id}: length differs from its header")
        sealed = Sealed(header.key_id, data[end + 1 : body], data[body:-SIGNATURE_BYTES])
        return cls(header, header_bytes, sealed, data[-SIGNATURE_BYTES:])


#: Refusals that depend on the sender's registry entry, which may have changed since it was
#: cached: the message is judged once more against a fresh one.
_ENTRY_REASONS = frozenset({"forged", "revoked", "over_clearance"})


def _sent_at(head: bytes) -> datetime | None:
    """The ``sent_at`` of a frame's header line, found without parsing the line (None: not
    found or not a time)."""
    start = head.find(b'"sent_at":"')
    if start < 0:
        return None
    start += len(b'"sent_at":"')
    try:
        return datetime.fromisoformat(head[start : head.index(b'"', start)].decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _signed(frame: bytes | memoryview) -> bytes:
    """What the signature of a frame whose bytes before the signature are ``frame`` signs."""
    return _SIGNED_DOMAIN + hashlib.sha256(frame).digest()


class SecureCodec:
    """Seals and signs what this side sends; checks and opens what it receives.

    ``signer`` is the sending agent's key (None: a receive-only codec); ``sealer`` is limited to
    the clearance of whoever decodes; ``senders`` looks up a sender in the registry (None when it
    is not registered), and ``refresh`` looks it up again, past any cache, for a message its
    entry refused (``forged``, ``revoked``, ``over_clearance``: the key or clearance may have
    changed within the cache's time). ``check_age`` off skips the age check entirely (durable
    queues, whose entries are consumed once by position and may wait for hours).
    ``compartments``: those the decoder holds; a message carrying another is refused
    (``outside_compartments``) before its body is opened (None: it holds every one, as the
    workers do)."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        signer: SigningKey | None,
        sender_id: str | None,
        check: MessageCheck,
        senders: Callable[[str], SenderFacts | None],
        refresh: Callable[[str], SenderFacts | None] | None = None,
        check_age: bool = True,
        clock: Callable[[], datetime] = utc_now,
        compartments: Sequence[str] | None = None,
    ) -> None:
        self._sealer = sealer
        self._signer = signer
        self._sender_id = sender_id
        self._check = check
        self._senders = senders
        self._refresh = refresh
        self._check_age = check_age
        self._clock = clock
        #: The compartments whoever decodes holds (None: every one, the workers).
        self._held = None if compartments is None else tuple(compartments)

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope sealed and signed. Raises InvalidInput when this codec cannot send (no
        key) or the envelope names another sender; KeyUnavailable above the sealer's clearance;
        MessageTooLarge for an envelope too large for one message."""
        if self._signer is None or envelope.sender != self._sender_id:
            raise InvalidMessage(f"this codec cannot send as {envelope.sender}")
        try:
            frame = self._sealed(envelope)
        except PoolUnavailable:
            if envelope.subject is None:
                raise
            # The user's secret cannot be had (Redis away, first write for that user here):
            # seal under the zone key alone rather than fail the write.
            frame = self._sealed(envelope.model_copy(update={"subject": None}))
        return frame + self._signer.sign_raw(_signed(frame))

    def _sealed(self, envelope: Envelope) -> bytes:
        """The frame of ``envelope`` up to its signature: clear header, nonce, ciphertext.
        MessageTooLarge when it would not fit in a message."""
        plain = envelope.encode()
        if len(plain) + TAG_BYTES > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(len(plain) + TAG_BYTES, MAX_MESSAGE_BYTES)
        key_id = self._sealer.active_key_id(envelope.zone)
        clear = SealedHeader(
            message_id=envelope.message_id,
            sender=envelope.sender,
            zone=envelope.zone,
            sent_at=envelope.sent_at,
            to=envelope.to,
            subject=envelope.subject,
            compartments=envelope.compartments or None,
            key_id=key_id,
            size=len(plain) + TAG_BYTES,
        )
        header = clear.model_dump_json(exclude_none=True).encode()
        # Version 1: a frame has no room for a stamp (a message of an earlier secret of its
        # subject is refused as tampered, not as unknown_key; docs/security.md, Known gaps).
        sealed = self._sealer.seal(
            envelope.zone,
            plain,
            context=header,
            subject=envelope.subject,
            key_id=key_id,
            stamp=False,
        )
        return b"".join((header, b"\n", sealed.nonce, sealed.ciphertext))

    def _checked(
        self, frame: Frame, signed: bytes, sender: SenderFacts | None, now: datetime | None
    ) -> None:
        """:meth:`MessageCheck.check` of ``frame`` (``signed``: what its signature signs), from
        ``sender`` as the registry has it, its age judged as of ``now`` (None: not judged)."""
        wire = frame.header
        self._check.check(
            sender=sender,
            zone=wire.zone,
            compartments=wire.compartments or (),
            message_id=wire.message_id,
            sent_at=wire.sent_at,
            signed_bytes=signed,
            signature=frame.signature,
            now=now if now is not None and self._check_age else wire.sent_at,
        )

    def refreshed(self, data: bytes) -> bytes:
        """``data``, a message this codec sent, as it should go now. Sealed again:

        - under its user's secret when it was sealed under the zone key alone (:meth:`encode`
          does so while Redis is away at a user's first write): otherwise a forget, which
          shreds that secret, would leave it readable to every holder of the zone key;
        - stamped with a new ``sent_at`` (same message id) when it is older than half the age
          window: it waited in the outbox (Redis away, the process down) and live receivers
          would refuse it as stale, a replay.

        Unchanged when it needs neither (a message carrying tombstones only keeps no subject:
        tombstones stay readable after a forget on purpose) or cannot be read any more (its
        key retired). Raises PoolUnavailable while the user's secret cannot be had: the
        caller keeps the message and tries again."""
        end = data.find(b"\n", 0, _MAX_HEADER_BYTES)
        if self._signer is None or end < 0:
            return data
        head = data[:end]
        now = self._clock()
        sent_at = _sent_at(head)
        aged = sent_at is None or (now - sent_at).total_seconds() > self._check.max_age_s / 2
        if not aged and b',"subject":' in head:
            return data
        try:
            frame = Frame.parse(data)
            wire = frame.header
            if wire.sender != self._sender_id:
                return data
            plain = self._sealer.open(
                wire.zone, frame.sealed, context=frame.header_bytes, subject=wire.subject
            )
            envelope = decode_envelope(plain)
        except (InvalidInput, MessageRejected, SealBroken, KeyUnavailable):
            return data  # a forgotten user's (its secret shredded): it may go stale
        changes: dict[str, object] = {"sent_at": now} if aged else {}
        users = {r.scope.user_id for r in envelope.records}
        if wire.subject is None and len(users) == 1 and not envelope.tombstones:
            changes["subject"] = users.pop()
        if not changes:
            return data
        sealed = self._sealed(envelope.model_copy(update=changes))
        return sealed + self._signer.sign_raw(_signed(sealed))

    def decode(
        self, data: bytes, *, live: bool = False, appended_at: datetime | None = None
    ) -> Envelope:
        """The envelope inside a version-2 message. Raises InvalidMessage for what is not one,
        MessageRejected (with its reason) for what fails a check. Its age (``stale``) is judged
        against now for a ``live`` delivery, against ``appended_at`` for one read from a stream
        (when Redis appended it: a message appended on time is no replay, however late it is
        read), and not at all without either (the workers' ingest queues, entries written
        without their time)."""
        frame = Frame.parse(data)
        wire = frame.header
        now = self._clock() if live else appended_at
        signed = _signed(memoryview(data)[:-SIGNATURE_BYTES])
        sender = self._senders(wire.sender)
        try:
            self._checked(frame, signed, sender, now)
        except MessageRejected as error:
            if self._refresh is None or error.reason not in _ENTRY_REASONS:
                raise
            fresh = self._refresh(wire.sender)
            if fresh == sender:
                raise
            self._checked(frame, signed, fresh, now)
        if self._held is not None and missing(self._held, wire.compartments or ()):
            raise MessageRejected(
                "outside_compartments",
                f"message {wire.message_id}: a compartment this receiver does not hold",
            )
        try:
            plain = self._sealer.open(
                wire.zone, frame.sealed, context=frame.header_bytes, subject=wire.subject
            )
        except SealBroken:
            raise MessageRejected("tampered", f"message {wire.message_id} does not open") from None
        except KeyUnavailable as error:
            raise MessageRejected("unknown_key", str(error)) from None
        except BaseException:
            # No verdict on the message (Redis away while its key was fetched): it is read
            # again later, and must not then be refused as a replay.
            self._check.release(wire.sender, wire.message_id)
            raise
        envelope = decode_envelope(plain)
        inner = (envelope.message_id, envelope.sender, envelope.zone, envelope.to)
        if inner != (wire.message_id, wire.sender, wire.zone, wire.to) or (
            envelope.subject != wire.subject or envelope.compartments != (wire.compartments or [])
        ):
            raise MessageRejected("tampered", f"message {wire.message_id}: header and body differ")
        return envelope
