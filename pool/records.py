"""The memory record and its parts, as immutable pydantic models.

A record's identity, content, vectors, scope, level, zone and validity start never change once
written: an update is a *supersession* (a new record pointing at the old one) and a deletion is a
*tombstone* (:class:`Tombstone`). What does change is bookkeeping kept beside the content: access
count and last access, tier, importance, the supersession and consolidation back-links.
Models never do I/O.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hivemem.pool.base import Model
from hivemem.pool.compartments import checked_compartments
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidContent, InvalidInput
from hivemem.pool.ids import (
    check_label,
    check_metadata_key,
    check_record_id,
    check_scope_id,
    new_record_id,
)

#: Sparse term ids are unsigned 32-bit integers.
_SPARSE_INDEX_LIMIT = 2**32
#: Hard ceiling on content length, whatever the settings say (characters).
MAX_CONTENT_CHARS_HARD = 100_000
#: Metadata values: JSON scalars, or flat lists of them.
MetadataValue = str | int | float | bool | None | list[str | int | float | bool]
#: The text a record's metadata holds at most: its keys and string values, list elements
#: included (characters; as much as the content's hard ceiling). With the bounds below and
#: MAX_SOURCES, a record an agent writes always fits in a sync message
#: (``pool.message_max_bytes``, at least 4 MiB).
MAX_METADATA_CHARS = 100_000
#: Elements of one metadata list at most.
MAX_METADATA_LIST = 1_000
#: Sources a record an agent writes names at most (about 400 KB of ids). The workers' records
#: are not bound by it: a user's domain profile names every category of the user.
MAX_SOURCES = 10_000


def utc_now() -> datetime:
    """Now, timezone-aware in UTC (the only kind of datetime a record holds)."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC. ValueError for an
    aware one that has no UTC time."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. year 1 at +01:00: no such UTC time
        raise ValueError("a datetime outside the range of UTC times") from None


def check_text(value: str, *, field: str, error: type[InvalidInput] = InvalidContent) -> str:
    """``value`` if it is Unicode text that UTF-8 can hold, else ``error``: a lone surrogate
    (``"\ud800"``, which Python strings may carry) can be neither stored, embedded nor sent."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise error(
                f"{field} holds a lone surrogate: not valid Unicode text", field=field
            ) from None
    return value


def _record_id(value: str) -> str:
    return check_record_id(value)


def _content(value: str) -> str:
    check_text(value, field="content")
    if not value.strip():
        raise InvalidContent("content must not be empty or blank", field="content")
    if len(value) > MAX_CONTENT_CHARS_HARD:
        raise InvalidContent(
            f"content has {len(value)} characters, more than {MAX_CONTENT_CHARS_HARD}",
            field="content",
        )
    return value


def _number(value: object) -> object:
    """A number stays as given (lax: numpy's floats pass); text and bools are refused rather
    than read as numbers (``"0.5"``, ``True``)."""
    if isinstance(value, str | bytes | bytearray | bool):
        raise ValueError("must be a number")  # noqa: TRY004 (pydantic wants ValueError)
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _labels(value: list[str], info: ValidationInfo) -> list[str]:
    if not value:
        return value
    return [check_label(v, field=info.field_name or "labels") for v in value]


#: What a 64-bit signed integer holds (metadata numbers are stored as such).
INT64 = range(-(2**63), 2**63)


def _metadata_scalar(key: str, item: object) -> None:
    if isinstance(item, str):
        check_text(item, field=f"metadata.{key}")
    if isinstance(item, float) and not math.isfinite(item):
        raise ValueError(f"metadata.{key} must be finite")
    if isinstance(item, int) and not isinstance(item, bool) and item not in INT64:
        raise ValueError(f"metadata.{key} must fit in 64 bits")


def _metadata(value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    """``value`` if every key and value is valid and it stays within :data:`MAX_METADATA_CHARS`
    and :data:`MAX_METADATA_LIST`; else InvalidInput naming ``metadata.<key>`` (the key that
    went over)."""
    chars = 0
    for key, item in value.items():
        check_metadata_key(key)
        elements = item if isinstance(item, list) else [item]
        if len(elements) > MAX_METADATA_LIST:
            raise InvalidInput(
                f"metadata.{key} holds {len(elements)} elements, more than {MAX_METADATA_LIST}",
                field=f"metadata.{key}",
            )
        chars += len(key)
        for element in elements:
            _metadata_scalar(key, element)
            if isinstance(element, str):
                chars += len(element)
        if chars > MAX_METADATA_CHARS:
            raise InvalidInput(
                f"metadata.{key}: the metadata holds more than {MAX_METADATA_CHARS} characters "
                "of text (keys and string values)",
                field=f"metadata.{key}",
            )
    return value


def _vector(value: list[float] | None) -> list[float] | None:
    if value is not None and any(not math.isfinite(v) for v in value):
        raise ValueError("vector values must be finite")
    return value


def _compartments(value: list[str]) -> list[str]:
    return list(checked_compartments(value)) if value else value


# Field types shared by records and the inputs they are built from (hivemem.agents.inputs).
RecordId = Annotated[str, AfterValidator(_record_id)]
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
Content = Annotated[str, Strict(), AfterValidator(_content)]
Importance = Annotated[
    float, BeforeValidator(_number), Field(ge=0.0, le=1.0), AfterValidator(_finite)
]
Labels = Annotated[list[str], Field(max_length=64), AfterValidator(_labels)]
Metadata = Annotated[dict[str, MetadataValue], Field(max_length=64), AfterValidator(_metadata)]
#: Compartments (:mod:`hivemem.pool.compartments`): configured names, kept in configured order.
Compartments = Annotated[list[str], Field(max_length=64), AfterValidator(_compartments)]


class Scope(Model):
    """Who a memory belongs to. ``user_id`` is a hard partition; the other ids narrow it.

    A record with ``session_id=None`` is user-level: visible from every session of that user;
    likewise for ``agent_id`` and ``run_id`` (see :mod:`hivemem.agents.scoping`).
    """

    user_id: str
    session_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None

    @field_validator("user_id", "session_id", "agent_id", "run_id", mode="before")
    @classmethod
    def _check_ids(cls, value: object, info: Any) -> str | None:  # before: bytes are no id
        if value is None:
            return None
        return check_scope_id(value, field=f"scope.{info.field_name}")


class SparseVector(Model):
    """A sparse vector: strictly increasing term ids and their weights (same length)."""

    indices: list[int]
    values: list[float]

    @model_validator(mode="after")
    def _check_shape(self) -> SparseVector:
        if len(self.indices) != len(self.values):
            raise ValueError("sparse indices and values differ in length")
        if not self.indices:
            return self
        # Built-ins over the whole list: this runs for every record a receiver decodes.
        if not all(map(math.isfinite, self.values)):
            raise ValueError("sparse values must be finite")
        if self.indices[0] < 0 or self.indices[-1] >= _SPARSE_INDEX_LIMIT:
            raise ValueError("sparse term ids must be in [0, 2**32)")
        if not all(map(operator.lt, self.indices, itertools.islice(self.indices, 1, None))):
            raise ValueError("sparse term ids must be strictly increasing")
        return self


class MemoryRecord(Model):
    """One memory. See the module docstring for what may change after writing.

    Scores, vectors and timestamps: ``vector`` is unit-length (cosine), ``importance`` is in
    [0, 1], every datetime is timezone-aware UTC.
    """

    id: RecordId = Field(default_factory=new_record_id)
    content: Content
    vector: Annotated[list[float] | None, AfterValidator(_vector)] = None
    sparse: SparseVector | None = None

    level: Level = Level.EPISODE
    scope: Scope
    tier: Tier = Tier.WORKING
    category: Category = Category.FACT
    zone: Zone = Zone.PUBLIC
    #: Need-to-know tags: a reader must hold every one of them as well as the zone's clearance.
    compartments: Compartments = Field(default_factory=list)
    importance: Importance = 0.5
    access_count: int = Field(default=0, ge=0)
    last_accessed_at: UtcDatetime | None = None

    tags: Labels = Field(default_factory=list)
    entities: Labels = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)

    #: Provenance: the records this one was consolidated from, and those it was consolidated into.
    sources: list[RecordId] = Field(default_factory=list)
    consolidated_into: list[RecordId] = Field(default_factory=list)
    #: The memory added just before this one in the same session (conversation adjacency; search
    #: uses it to let neighbouring turns lend each other relevance). None outside sessions.
    follows: RecordId | None = None
    #: The agent this copy came from when the pool delivered it (a sync or a direct hand-over);
    #: None on the writer's own records. Set by the receiver, never sent.
    received_from: str | None = None

    #: Bi-temporal validity: when the fact held, and when the system knew it.
    valid_from: UtcDatetime = Field(default_factory=utc_now)
    valid_until: UtcDatetime | None = None
    recorded_at: UtcDatetime = Field(default_factory=utc_now)
    superseded_at: UtcDatetime | None = None
    supersedes: RecordId | None = None
    superseded_by: RecordId | None = None

    @field_validator("received_from")
    @classmethod
    def _check_sender(cls, value: str | None) -> str | None:
        return None if value is None else check_scope_id(value, field="received_from")

    @model_validator(mode="after")
    def _check_validity(self) -> MemoryRecord:
        if self.valid_until is not None and self.valid_until < self.valid_from:
            raise InvalidInput("valid_until precedes valid_from", field="valid_until")
        for name in ("follows", "supersedes", "superseded_by"):
            if getattr(self, name) == self.id:
                raise InvalidInput(f"a record cannot name itself in {name}", field=name)
        for name in ("sources", "consolidated_into"):
            if self.id in getattr(self, name):
                raise InvalidInput(f"a record cannot name itself in {name}", field=name)
        return self

    @property
    def is_current(self) -> bool:
        """True when no later version supersedes this record."""
        return self.superseded_at is None


class Tombstone(Model):
    """What remains of a deleted record: identity and scope, no content and no vectors.

    Kept so that a deletion replicates like any other write and a late copy of the record is
    never resurrected.
    """

    id: RecordId
    scope: Scope
    level: Level
    zone: Zone
    compartments: Compartments = Field(default_factory=list)
    deleted_at: UtcDatetime = Field(default_factory=utc_now)

    @classmethod
    def of(cls, record: MemoryRecord, deleted_at: datetime | None = None) -> Tombstone:
        """The tombstone of ``record``, deleted at ``deleted_at`` (default: now)."""
        when = {} if deleted_at is None else {"deleted_at": deleted_at}
        return cls(
            id=record.id,
            scope=record.scope,
            level=record.level,
            zone=record.zone,
            compartments=record.compartments,
            **when,
        )


def acts_on(item: MemoryRecord | Tombstone, stored: MemoryRecord) -> bool:
    """Whether ``item`` may act on ``stored``: a tombstone delete it, a new version supersede
    it. They must belong to the same user, zone and compartments. A message names records by
    id only, and any agent that may write a zone may send one: without this, a version or a
    tombstone of one user (or without a compartment) could end another user's record (or one
    the sender has no need-to-know for)."""
    return (
        item.scope.user_id == stored.scope.user_id
        and item.zone == stored.zone
        and list(item.compartments) == list(stored.compartments)
    )


def split_tombstones(
    tombstones: Sequence[Tombstone], stored: Mapping[str, MemoryRecord]
) -> tuple[list[Tombstone], list[Tombstone]]:
    """``tombstones`` split into those that may delete what they name and the others: a
    tombstone of a record not in ``stored`` (id → the record held) may (it keeps a late copy
    out), one of a stored record only as :func:`acts_on` allows."""
    kept: list[Tombstone] = []
    refused: list[Tombstone] = []
    for tombstone in tombstones:
        target = stored.get(tombstone.id)
        (kept if target is None or acts_on(tombstone, target) else refused).append(tombstone)
    return kept, refused
