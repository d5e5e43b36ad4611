"""What a caller gives to add a memory: :class:`MemoryInput` (everything but id and vectors)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Self

import numpy as np
from pydantic import Field, model_validator

from hivemem.pool.base import Model
from hivemem.pool.enums import Category, Level, Tier, Zone
from hivemem.pool.errors import InvalidInput
from hivemem.pool.records import (
    MAX_SOURCES,
    Compartments,
    Content,
    Importance,
    Labels,
    MemoryRecord,
    Metadata,
    RecordId,
    Scope,
    UtcDatetime,
    as_utc,
)


class MemoryInput(Model):
    """One memory to add, validated with the same field rules as MemoryRecord. ``scope`` may be
    left out when the call gives a common scope; ``tier`` left out means "decided by importance"
    (see :mod:`hivemem.agents.tiers`); ``valid_from`` left out means "now"."""

    content: Content
    scope: Scope | None = None
    level: Level = Level.EPISODE
    category: Category = Category.FACT
    tier: Tier | None = None
    zone: Zone = Zone.PUBLIC
    compartments: Compartments = Field(default_factory=list)
    importance: Importance = 0.5
    tags: Labels = Field(default_factory=list)
    entities: Labels = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    sources: list[RecordId] = Field(default_factory=list, max_length=MAX_SOURCES)
    valid_from: UtcDatetime | None = None
    valid_until: UtcDatetime | None = None

    @model_validator(mode="after")
    def _check_validity(self) -> Self:
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise InvalidInput("valid_until precedes valid_from", field="valid_until")
        return self


def as_input(item: MemoryInput | dict[str, Any] | str) -> MemoryInput:
    """Accept an item of a batch as a MemoryInput, a dict of its fields, or bare content."""
    if isinstance(item, MemoryInput):
        return item
    if isinstance(item, str):
        return MemoryInput(content=item)
    return MemoryInput.model_validate(item)


def items_of(value: object, kind: type | tuple[type, ...], *, field: str) -> list[Any]:
    """``value``'s items as a list, each an instance of ``kind``: a list, tuple, generator or
    other iterable, but not a string (it would be taken character by character), bytes, a
    mapping or None; else InvalidInput."""
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise InvalidInput(f"{field} must be a list, not {type(value).__name__}", field=field)
    items = list(value)
    for item in items:
        if not isinstance(item, kind):
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise InvalidInput(
                f"{field} must hold {wanted} items, not a {type(item).__name__}", field=field
            )
    return items


def record_id_of(record: object, *, field: str = "record") -> str:
    """The id of ``record``, a MemoryRecord or an id; InvalidInput for anything else."""
    if isinstance(record, MemoryRecord):
        return record.id
    if isinstance(record, str):
        return record
    raise InvalidInput(
        f"{field} is a memory record or its id, not {type(record).__name__}", field=field
    )


def check_count(value: object, *, field: str, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``, else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{field} must be an integer in {low}..{high}", field=field)
    return value


def check_flag(value: object, *, field: str) -> bool:
    """``value`` if it is a bool, else InvalidInput (a text such as ``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be True or False", field=field)
    return value


def check_seconds(value: object, *, field: str) -> float:
    """``value`` if it is a finite number of seconds from 0 (not a bool), else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise InvalidInput(
            f"{field} must be a number of seconds from 0: {value!r:.40}", field=field
        )
    return float(value)


def check_time(value: object, *, field: str) -> datetime | None:
    """``value`` (None, or a datetime: naive ones are taken as UTC) in UTC, else InvalidInput."""
    if value is not None and not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime", field=field)
    try:
        return as_utc(value)
    except ValueError as error:
        raise InvalidInput(f"{field}: {error}", field=field) from None


def check_rows(
    records: list[Any], rows: list[Any] | tuple[Any, ...], *, dim: int, field: str
) -> None:
    """InvalidInput unless every record's dense vector (its row in ``rows`` when that is not
    None, else its own ``vector``) has ``dim`` values and, for a row, is finite floats: a row
    that is not would be stored and fail every later search and consolidation on it."""
    for position, (record, row) in enumerate(zip(records, rows, strict=True)):
        if row is None:
            if record.vector is not None and len(record.vector) != dim:
                raise InvalidInput(f"item {position}: the vector needs {dim} values", field=field)
            continue
        array = np.asarray(row)
        if array.shape != (dim,) or array.dtype.kind != "f" or not np.isfinite(array).all():
            raise InvalidInput(f"item {position}: a dense row is {dim} finite floats", field=field)
