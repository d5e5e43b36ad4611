"""The sync message: an envelope around records and tombstones of one zone.

On the wire an envelope is UTF-8 JSON. Records travel with their vectors, so a receiver never
re-embeds: the dense vector as base64 of little-endian float32 (``dense``, parallel to
``records``; 2 KB per 384-d vector instead of ~8 KB of JSON floats), the sparse terms inside the
record. Local bookkeeping (access counts, supersession back-links, ``received_from``) is cleared
before sending: each receiver derives its own.

``subject`` names the one user every item belongs to (senders group envelopes by zone and user),
so that the security layer can seal an envelope under that user's key: forgetting the user then
makes every copy of the message unreadable. How an envelope becomes bytes is an
:class:`EnvelopeCodec`: :class:`PlainCodec` here (version 1, JSON), or the security layer's
sealed and signed version 2 (:mod:`hivemem.security.wire`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal, Protocol, TypeVar

import numpy as np
from pydantic import Field, model_validator

from hivemem.pool.base import Model
from hivemem.pool.enums import Zone
from hivemem.pool.errors import HivememError, InvalidMessage, MessageTooLarge, SecurityMismatch
from hivemem.pool.ids import check_agent_id, check_scope_id
from hivemem.pool.records import Compartments, MemoryRecord, Tombstone, UtcDatetime, utc_now

T = TypeVar("T")
#: A dense vector as it is handed to the envelope: a float32 row, a list, or none.
Row = Sequence[float] | np.ndarray | None
#: The largest pool message a receiver decodes (bytes); anything longer is refused unread.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: What a sender keeps free below MAX_MESSAGE_BYTES around an encoded message (bytes): a sealed
#: message's wrap to the workers, and the subject its header and body gain when it is sealed
#: again after waiting in the outbox (:meth:`hivemem.security.wire.SecureCodec.refreshed`).
SEND_ROOM_BYTES = 64 * 1024


def _new_message_id() -> str:
    return uuid.uuid4().hex


class Envelope(Model):
    """One sync message. ``zone`` is the zone of every record and tombstone inside it;
    ``to`` names the receiving agent of a direct hand-over (None: the zone's subscribers)."""

    error = InvalidMessage

    v: Literal[1] = 1
    message_id: str = Field(default_factory=_new_message_id, pattern=r"^[0-9a-f]{32}$")
    sender: str
    zone: Zone
    sent_at: UtcDatetime = Field(default_factory=utc_now)
    to: str | None = None
    records: list[MemoryRecord] = Field(default_factory=list)
    dense: list[str | None] = Field(default_factory=list)
    tombstones: list[Tombstone] = Field(default_factory=list)
    #: The user every record and tombstone belongs to, when they share one.
    subject: str | None = None
    #: The compartments of every record and tombstone inside (senders group envelopes by them).
    compartments: Compartments = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Envelope:
        check_agent_id(self.sender, field="sender")
        if self.to is not None:
            check_agent_id(self.to, field="to")
        if len(self.dense) != len(self.records):
            raise InvalidMessage("dense must hold one entry per record")
        zones = {r.zone for r in self.records} | {t.zone for t in self.tombstones}
        if zones - {self.zone}:
            raise InvalidMessage(f"an item of another zone in a {self.zone} envelope")
        marks = {tuple(r.compartments) for r in self.records} | {
            tuple(t.compartments) for t in self.tombstones
        }
        if marks - {tuple(self.compartments)}:
            raise InvalidMessage("an item of other compartments than the envelope's")
        if self.subject is not None:
            check_scope_id(self.subject, field="subject")
            users = {r.scope.user_id for r in self.records} | {
                t.scope.user_id for t in self.tombstones
            }
            if users - {self.subject}:
                raise InvalidMessage("an item of another user in a single-subject envelope")
        return self

    def vectors(self) -> list[np.ndarray | None]:
        """The dense vectors of ``records``, decoded (float32 rows). Raises InvalidMessage for
        an entry that is not the base64 of float32 values, or holds one that is not finite
        (stored, it would fail every later computation on it: consolidation, search)."""
        try:
            rows = [
                None
                if text is None
                else np.frombuffer(base64.b64decode(text, validate=True), "<f4")
                for text in self.dense
            ]
        except ValueError:  # binascii.Error is one too
            raise InvalidMessage("dense holds an entry that is no float32 vector") from None
        if any(row is not None and not np.isfinite(row).all() for row in rows):
            raise InvalidMessage("dense holds a vector that is not finite")
        return rows

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


#: How a message sealed to the workers begins (:mod:`hivemem.security.ingest_seal`): to their
#: first ingest key, or to a later one, whose id follows.
INGEST_SEAL_MAGIC = b"HMI1"
INGEST_SEAL_MAGIC_WITH_ID = b"HMI2"


class EnvelopeCodec(Protocol):
    """How envelopes travel as bytes. ``live`` says the message came straight from pub/sub
    (its age is checked against now); ``appended_at``, for one read from a stream, when Redis
    appended it (its age is checked against that; None: not checked). ``encode`` raises
    MessageTooLarge rather than make a message longer than MAX_MESSAGE_BYTES."""

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(
        self, data: bytes, *, live: bool = False, appended_at: datetime | None = None
    ) -> Envelope: ...


class PlainCodec:
    """Version-1 envelopes: JSON, neither sealed nor signed (security off)."""

    def encode(self, envelope: Envelope) -> bytes:
        body = envelope.encode()
        if len(body) > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(len(body), MAX_MESSAGE_BYTES)
        return body

    def decode(
        self, data: bytes, *, live: bool = False, appended_at: datetime | None = None
    ) -> Envelope:
        """Raises InvalidMessage, or SecurityMismatch for a sealed message (version 2, or sealed
        to the workers)."""
        del live, appended_at  # nothing depends on them without signatures
        if data.startswith((b'{"v":2,', INGEST_SEAL_MAGIC, INGEST_SEAL_MAGIC_WITH_ID)):
            raise SecurityMismatch(
                "a sealed, signed message reached a process with security off: every process "
                "of the pool needs the same HIVEMEM_SECURITY__ENABLED"
            )
        return decode_envelope(data)


def outgoing(record: MemoryRecord) -> MemoryRecord:
    """``record`` as it is sent: without its vector (sent beside it) and local bookkeeping."""
    return record.model_copy(
        update={
            "vector": None,
            "access_count": 0,
            "last_accessed_at": None,
            "superseded_at": None,
            "superseded_by": None,
            "consolidated_into": [],
            "received_from": None,
        }
    )


def encode_dense(row: Row) -> str | None:
    if row is None:
        return None
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()


def make_envelope(
    *,
    sender: str,
    zone: Zone,
    records: Sequence[MemoryRecord] = (),
    dense: Sequence[Row] | None = None,
    tombstones: Sequence[Tombstone] = (),
    to: str | None = None,
) -> Envelope:
    """An envelope for ``records`` (vectors from ``dense`` rows, else from the records); its
    ``subject`` is the user of every item when they share one and records are among them.
    Every item must carry the same compartments (InvalidMessage otherwise)."""
    rows = dense if dense is not None else [r.vector for r in records]
    # Tombstones alone carry no content: no subject, so they stay readable after the user's
    # key is shredded (a late receiver can still delete its copies).
    users = {r.scope.user_id for r in records} | {t.scope.user_id for t in tombstones}
    if not records:
        users = set()
    return Envelope(
        sender=sender,
        zone=zone,
        to=to,
        subject=users.pop() if len(users) == 1 else None,
        records=[outgoing(r) for r in records],
        dense=[encode_dense(row) for row in rows],
        tombstones=list(tombstones),
        compartments=_compartments_of(records, tombstones),
    )


def fitted(
    items: Sequence[T],
    envelope_of: Callable[[list[T]], Envelope],
    codec: EnvelopeCodec,
    max_bytes: int,
) -> list[tuple[Envelope, bytes]]:
    """``items`` as envelopes (``envelope_of(part)``) that ``codec`` encodes in at most
    ``max_bytes`` each, in order, with their bytes: what every sender of the pool sends (the
    agents' and the workers'; ``pool.message_max_bytes``). One that comes out larger (a batch of
    large records; the common small message costs only the comparison) is cut into as many
    parts as its size asks, plus one, each fitted in turn. Raises MessageTooLarge (with the
    item's id) for an item that fits in no message alone."""
    envelope = envelope_of(list(items))
    try:
        body = codec.encode(envelope)
    except MessageTooLarge as error:
        size = error.size_bytes
    else:
        if len(body) <= max_bytes:
            return [(envelope, body)]
        size = len(body)
    if len(items) == 1:
        ids = [r.id for r in envelope.records] + [t.id for t in envelope.tombstones]
        raise MessageTooLarge(size, max_bytes, ids)
    parts = min(len(items), size // max_bytes + 2)
    step = -(-len(items) // parts)
    found: list[tuple[Envelope, bytes]] = []
    for start in range(0, len(items), step):
        found.extend(fitted(items[start : start + step], envelope_of, codec, max_bytes))
    return found


def _compartments_of(records: Sequence[MemoryRecord], tombstones: Sequence[Tombstone]) -> list[str]:
    """The compartments of the first item that carries any (the envelope checks the rest)."""
    marks = [r.compartments for r in records] + [t.compartments for t in tombstones]
    return next((list(mark) for mark in marks if mark), [])


def decode_envelope(data: bytes | str) -> Envelope:
    """Parse a wire message; raises InvalidMessage for anything but a valid version-1 envelope."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(data)} bytes is too large")
    try:
        return Envelope.model_validate_json(data)
    except InvalidMessage:
        raise
    except HivememError as error:
        raise InvalidMessage(f"malformed envelope: {error}") from None
    except ValueError as error:
        raise InvalidMessage(f"malformed envelope: {str(error)[:200]}") from None
