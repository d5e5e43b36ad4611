"""Audit entries: what one records, its canonical encoding and its hash. No I/O.

An entry's ``hash`` is the SHA-256 of the canonical JSON (sorted keys, no whitespace, ASCII) of
every other field, ``prev`` included: the hash of the entry before it, all zeros for the first.
That makes the entries a chain, which :mod:`hivemem.security.audit_chain` verifies.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, TypeAlias

from hivemem.pool.errors import InvalidInput

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

#: ``prev`` of the first entry, and the hash of an empty log's head.
GENESIS = "0" * 64
#: Version of the entry format, inside the hashed content (``v``).
FORMAT_VERSION = 1
#: Longest ``actor`` and ``subject``, and longest ``zone``, in characters.
MAX_ID_CHARS = 256
MAX_ZONE_CHARS = 64
#: Longest ``details``, as canonical JSON characters.
MAX_DETAILS_CHARS = 4096
#: Deepest ``details``: containers (lists, dicts) nested below ``details`` itself.
MAX_DETAILS_DEPTH = 32

_HASH = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset(
    {"v", "seq", "ts", "kind", "actor", "subject", "zone", "details", "prev", "hash"}
)


class AuditEvent(StrEnum):
    """What an audit entry records."""

    REGISTERED = "registered"
    DEREGISTERED = "deregistered"
    CLEARANCE_CHANGED = "clearance_changed"
    GRANTED = "granted"
    REVOKED = "revoked"
    DENIED_READ = "denied_read"
    REJECTED_MESSAGE = "rejected_message"
    KEY_ROTATED = "key_rotated"
    KEY_RETIRED = "key_retired"
    FORGOTTEN = "forgotten"
    #: What a deregistered agent had queued for the workers, deleted unstored.
    QUEUED_DISCARDED = "queued_discarded"


class Anchor(NamedTuple):
    """A position of the chain: an entry's seq and hash (``(0, GENESIS)``: the empty log)."""

    seq: int
    hash: str


def canonical_json(value: object) -> str:
    """The one encoding that is hashed and stored: sorted keys, no whitespace, ASCII only.
    Raises TypeError or ValueError for what JSON cannot hold exactly (NaN, infinities)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(fields: Mapping[str, object]) -> str:
    """SHA-256 (hex) of the canonical JSON of every field but ``hash``."""
    content = {key: value for key, value in fields.items() if key != "hash"}
    return hashlib.sha256(canonical_json(content).encode("ascii")).hexdigest()


def _plain(value: object, path: str, depth: int = 0) -> JsonValue:
    """``value`` as plain JSON data (tuples become lists), or InvalidInput naming the path
    (for a container nested more than MAX_DETAILS_DEPTH levels deep too: a cycle included)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple | dict) and depth > MAX_DETAILS_DEPTH:
        raise InvalidInput(f"details nest deeper than {MAX_DETAILS_DEPTH} levels", field="details")
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{path}.{key}", depth + 1) for key, item in value.items()}
    raise InvalidInput(f"{path} is not plain JSON data: {type(value).__name__}", field=path)


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise InvalidInput(f"{field} must be a string of 1 to {limit} characters", field=field)
    return value


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry: ``seq`` (1, 2, …), ``ts`` (UTC), what happened (``kind``), who did it
    (``actor``), to whom (``subject``), the zone concerned if any, ``details`` (plain facts such
    as ids, counts, reasons: never memory content), and the chain links ``prev`` and ``hash``."""

    seq: int
    ts: datetime
    kind: AuditEvent
    actor: str
    subject: str
    zone: str | None
    details: dict[str, JsonValue]
    prev: str
    hash: str

    @classmethod
    def create(
        cls,
        head: Anchor,
        kind: AuditEvent | str,
        *,
        ts: datetime,
        actor: str,
        subject: str,
        zone: str | None,
        details: Mapping[str, object],
    ) -> AuditEntry:
        """The entry that follows ``head``, hashed. Raises InvalidInput for an unknown kind, a
        naive ``ts``, an empty or overlong actor, subject or zone, or details that are not plain
        JSON data (str keys; None, bool, int, finite float, str, lists, dicts) of at most
        MAX_DETAILS_CHARS characters, nested at most MAX_DETAILS_DEPTH levels."""
        try:
            kind = AuditEvent(kind)
        except ValueError:
            raise InvalidInput(
                f"unknown audit event kind: {str(kind)[:80]!r}", field="kind"
            ) from None
        if ts.tzinfo is None:
            raise InvalidInput("ts must be timezone-aware", field="ts")
        plain = _plain(dict(details), "details")
        if len(canonical_json(plain)) > MAX_DETAILS_CHARS:
            raise InvalidInput(f"details exceed {MAX_DETAILS_CHARS} characters", field="details")
        fields: dict[str, JsonValue] = {
            "v": FORMAT_VERSION,
            "seq": head.seq + 1,
            "ts": ts.astimezone(UTC).isoformat(timespec="microseconds"),
            "kind": kind.value,
            "actor": _text(actor, "actor", MAX_ID_CHARS),
            "subject": _text(subject, "subject", MAX_ID_CHARS),
            "zone": None if zone is None else str(_text(zone, "zone", MAX_ZONE_CHARS)),
            "details": plain,
            "prev": head.hash,
        }
        fields["hash"] = entry_hash(fields)
        return cls.from_record(fields)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> AuditEntry:
        """Parse a stored record (hash not checked: see :func:`verify`); raises InvalidInput
        when it is not a well-formed entry of this format."""
        if set(record) != _FIELDS or record["v"] != FORMAT_VERSION:
            raise InvalidInput("not an audit entry of format version 1", field="entry")
        seq, ts, details, zone = record["seq"], record["ts"], record["details"], record["zone"]
        prev, hash_ = record["prev"], record["hash"]
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1):
            raise InvalidInput("seq must be a positive integer", field="seq")
        if not (isinstance(prev, str) and _HASH.fullmatch(prev)):
            raise InvalidInput("prev must be 64 lower-case hex digits", field="prev")
        if not (isinstance(hash_, str) and _HASH.fullmatch(hash_)):
            raise InvalidInput("hash must be 64 lower-case hex digits", field="hash")
        if not isinstance(details, dict):
            raise InvalidInput("details must be an object", field="details")
        try:
            when = datetime.fromisoformat(_text(ts, "ts", 64))
            kind = AuditEvent(_text(record["kind"], "kind", 64))
        except ValueError:
            raise InvalidInput("ts or kind is not valid", field="entry") from None
        if when.tzinfo is None:
            raise InvalidInput("ts must be timezone-aware", field="ts")
        return cls(
            seq=seq,
            ts=when,
            kind=kind,
            actor=_text(record["actor"], "actor", MAX_ID_CHARS),
            subject=_text(record["subject"], "subject", MAX_ID_CHARS),
            zone=None if zone is None else _text(zone, "zone", MAX_ZONE_CHARS),
            details=details,
            prev=prev,
            hash=hash_,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditEntry:
        """Parse one stored line; raises InvalidInput when it is not a well-formed entry."""
        record = load_record(text)
        if record is None:
            raise InvalidInput("not a JSON object", field="entry")
        return cls.from_record(record)

    def record(self) -> dict[str, JsonValue]:
        """The stored fields (``ts`` as ISO 8601 text), ``hash`` included."""
        return {
            "v": FORMAT_VERSION,
            "seq": self.seq,
            "ts": self.ts.astimezone(UTC).isoformat(timespec="microseconds"),
            "kind": self.kind.value,
            "actor": self.actor,
            "subject": self.subject,
            "zone": self.zone,
            "details": self.details,
            "prev": self.prev,
            "hash": self.hash,
        }

    def to_json(self) -> str:
        """The stored line: canonical JSON of :meth:`record`."""
        return canonical_json(self.record())

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.seq, self.hash)


def load_record(item: str | bytes) -> dict[str, Any] | None:
    """The JSON object in ``item``, or None when it is not one (not JSON, not UTF-8, or nested
    too deep for the parser: RecursionError)."""
    try:
        record = json.loads(item)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def is_canonical(item: str | bytes, record: Mapping[str, object]) -> bool:
    """True when ``item``, the stored text ``record`` was parsed from, is exactly the canonical
    JSON of ``record``: no duplicate key, whitespace, key order or number spelling that a
    reader other than :func:`load_record` could take differently. Raises ValueError or
    RecursionError when ``record`` cannot be encoded (see :func:`canonical_json`)."""
    canonical = canonical_json(record)
    if isinstance(item, bytes):
        return item == canonical.encode("ascii")
    return item == canonical


def check_anchor(anchor: Anchor | tuple[int, str]) -> Anchor:
    """``anchor`` as an Anchor; raises InvalidInput unless seq >= 0 and hash is 64 hex digits,
    and a seq of 0 (the empty log) comes with the 64 zeros of the chain's start: any other
    hash there names no position of any log, and nothing would ever be compared with it."""
    seq, hash_ = anchor
    if not (
        isinstance(seq, int) and seq >= 0 and isinstance(hash_, str) and _HASH.fullmatch(hash_)
    ):
        raise InvalidInput("an anchor is (seq >= 0, 64 lower-case hex digits)", field="anchor")
    if seq == 0 and hash_ != GENESIS:
        raise InvalidInput("the anchor of seq 0 (the empty log) is 64 zeros", field="anchor")
    return Anchor(seq, hash_)
