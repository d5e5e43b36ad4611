"""Sealed, signed pool messages: envelope version 2.

On the wire a version-2 message is compact JSON of a :class:`SealedEnvelope`: the routing facts in
clear (message id, sender, zone, sent_at, ``to``, ``subject``, ``compartments``), the version-1
envelope sealed with AES-256-GCM under the zone's data key and the subject's secret (``key_id``,
``nonce``, ``body``), and the sender's Ed25519 ``signature`` over all of it.

The clear header is bound into the seal as associated data, so a header moved onto another body
does not open; the signature covers header and ciphertext, so nothing can be changed without the
sender's key. :class:`SecureCodec` decodes in the order that costs an attacker most and us
least: parse the header, check the sender, the signature, the age and the zone (a
:class:`~hivemem.security.message_check.MessageCheck`), that the decoder holds the message's
compartments, and only then open the body and check
that what is inside matches the header. Every refusal is a ``MessageRejected`` with its reason.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from hivemem.pool.base import Model
from hivemem.pool.compartments import missing
from hivemem.pool.enums import Zone
from hivemem.pool.envelope import MAX_MESSAGE_BYTES, Envelope, decode_envelope
from hivemem.pool.errors import (
    InvalidMessage,
    KeyUnavailable,
    MessageRejected,
    PoolUnavailable,
    SealBroken,
)
from hivemem.pool.ids import check_agent_id, check_scope_id
from hivemem.pool.records import Compartments, UtcDatetime, utc_now
from hivemem.security.message_check import MessageCheck, SenderFacts
from hivemem.security.sealing import Sealed, Sealer
from hivemem.security.signing import SigningKey

#: Fields of the header bound into the seal (everything the sender states in clear).
_HEADER = {"v", "message_id", "sender", "zone", "sent_at", "to", "subject", "compartments"}


class SealedEnvelope(Model):
    """A version-2 message as it travels (see the module docstring)."""

    error = InvalidMessage

    v: Literal[2] = 2
    message_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    sender: str = Field(max_length=64)
    zone: Zone
    sent_at: UtcDatetime
    to: str | None = Field(default=None, max_length=64)
    subject: str | None = Field(default=None, max_length=128)
    #: The envelope's compartments (None when it has none: such headers read as before).
    compartments: Compartments | None = None
    key_id: str = Field(max_length=64)
    nonce: str = Field(max_length=64)
    body: str
    signature: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _check_ids(self) -> SealedEnvelope:
        check_agent_id(self.sender, field="sender")
        if self.to is not None:
            check_agent_id(self.to, field="to")
        if self.subject is not None:
            check_scope_id(self.subject, field="subject")
        return self

    def header_bytes(self) -> bytes:
        """What the seal binds: the clear routing facts."""
        return self.model_dump_json(include=_HEADER, exclude_none=True).encode()

    def signing_bytes(self) -> bytes:
        """What the signature covers: everything but the signature."""
        return self.model_dump_json(exclude={"signature"}, exclude_none=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MessageRejected("tampered", f"{field} is not base64") from None


class SecureCodec:
    """Seals and signs what this side sends; checks and opens what it receives.

    ``signer`` is the sending agent's key (None: a receive-only codec); ``sealer`` is limited to
    the clearance of whoever decodes; ``senders`` looks up a sender in the registry (None when it
    is not registered). ``check_age`` off skips the age check entirely (durable queues, whose
    entries are consumed once by position and may wait for hours). ``compartments``: those the
    decoder holds; a message carrying another is refused (``outside_compartments``) before its
    body is opened (None: it holds every one, as the workers do)."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        signer: SigningKey | None,
        sender_id: str | None,
        check: MessageCheck,
        senders: Callable[[str], SenderFacts | None],
        check_age: bool = True,
        clock: Callable[[], datetime] = utc_now,
        compartments: Sequence[str] | None = None,
    ) -> None:
        self._sealer = sealer
        self._signer = signer
        self._sender_id = sender_id
        self._check = check
        self._senders = senders
        self._check_age = check_age
        self._clock = clock
        #: The compartments whoever decodes holds (None: every one, the workers).
        self._held = None if compartments is None else tuple(compartments)

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope sealed and signed. Raises InvalidInput when this codec cannot send (no
        key) or the envelope names another sender; KeyUnavailable above the sealer's clearance."""
        if self._signer is None or envelope.sender != self._sender_id:
            raise InvalidMessage(f"this codec cannot send as {envelope.sender}")
        try:
            header, sealed = self._sealed(envelope)
        except PoolUnavailable:
            if envelope.subject is None:
                raise
            # The user's secret cannot be had (Redis away, first write for that user here):
            # seal under the zone key alone rather than fail the write.
            header, sealed = self._sealed(envelope.model_copy(update={"subject": None}))
        wire = header.model_copy(
            update={
                "key_id": sealed.key_id,
                "nonce": _b64(sealed.nonce),
                "body": _b64(sealed.ciphertext),
            }
        )
        signature = self._signer.sign(wire.signing_bytes())
        return (
            wire.model_copy(update={"signature": signature})
            .model_dump_json(exclude_none=True)
            .encode()
        )

    def _sealed(self, envelope: Envelope) -> tuple[SealedEnvelope, Sealed]:
        """The clear header of ``envelope`` and its body sealed under that header."""
        header = SealedEnvelope(
            message_id=envelope.message_id,
            sender=envelope.sender,
            zone=envelope.zone,
            sent_at=envelope.sent_at,
            to=envelope.to,
            subject=envelope.subject,
            compartments=envelope.compartments or None,
            key_id="-",
            nonce="-",
            body="",
        )
        sealed = self._sealer.seal(
            envelope.zone,
            envelope.encode(),
            context=header.header_bytes(),
            subject=envelope.subject,
        )
        return header, sealed

    def decode(self, data: bytes, *, live: bool = False) -> Envelope:
        """The envelope inside a version-2 message. Raises InvalidMessage for what is not one,
        MessageRejected (with its reason) for what fails a check; stale applies to ``live``
        deliveries only: a message read from a stream later was checked for age when it was
        appended live, and re-applying it is idempotent."""
        wire = self._header(data)
        now = self._clock()
        self._check.check(
            sender=self._senders(wire.sender),
            zone=wire.zone,
            compartments=wire.compartments or (),
            message_id=wire.message_id,
            sent_at=wire.sent_at,
            signed_bytes=wire.signing_bytes(),
            signature=wire.signature,
            # Off the live path the age is not the question: judge it as of its sending.
            now=now if live and self._check_age else wire.sent_at,
        )
        if self._held is not None and missing(self._held, wire.compartments or ()):
            raise MessageRejected(
                "outside_compartments",
                f"message {wire.message_id}: a compartment this receiver does not hold",
            )
        sealed = Sealed(wire.key_id, _unb64(wire.nonce, "nonce"), _unb64(wire.body, "body"))
        try:
            plain = self._sealer.open(
                wire.zone, sealed, context=wire.header_bytes(), subject=wire.subject
            )
        except SealBroken:
            raise MessageRejected("tampered", f"message {wire.message_id} does not open") from None
        except KeyUnavailable as error:
            raise MessageRejected("unknown_key", str(error)) from None
        envelope = decode_envelope(plain)
        inner = (envelope.message_id, envelope.sender, envelope.zone, envelope.to)
        if inner != (wire.message_id, wire.sender, wire.zone, wire.to) or (
            envelope.subject != wire.subject or envelope.compartments != (wire.compartments or [])
        ):
            raise MessageRejected("tampered", f"message {wire.message_id}: header and body differ")
        return envelope

    @staticmethod
    def _header(data: bytes) -> SealedEnvelope:
        if len(data) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"message of {len(data)} bytes is too large")
        if data.startswith(b'{"v":1,'):
            raise MessageRejected("unsigned", "a version-1 (plain) message")
        try:
            return SealedEnvelope.model_validate_json(data)
        except InvalidMessage as error:
            raise InvalidMessage(f"malformed envelope: {str(error)[:200]}") from None
