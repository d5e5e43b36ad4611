"""What both Qdrant adapters (Edge and qdrant-client) share besides the payload layout of
:mod:`hivemem.pool.adapters.edge_codec`: the second check of filter keys and match values, and the
vector shape check of an upsert. Engine-neutral: plain values only.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from hivemem.pool.adapters.edge_codec import (
    FIELD_KEYS,
    INDEXED_FIELDS,
    METADATA_PREFIX,
)
from hivemem.pool.errors import InvalidFilter, InvalidInput
from hivemem.pool.filters import SCOPE_FIELDS, Cond
from hivemem.pool.ids import METADATA_KEY_PATTERN, check_scope_id
from hivemem.pool.ports import Vector
from hivemem.pool.records import MemoryRecord

MatchScalar = str | int | bool


def checked_values(cond: Cond) -> None:
    """Scope ids reach the engine as match values: check them again here."""
    if cond.field in SCOPE_FIELDS:
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        for value in values:
            if value is not None:
                check_scope_id(value, field="where.value")


def payload_key(field: str) -> str:
    """The payload key of a filter field, checked against the closed set of keys (metadata keys
    against their pattern) before it becomes a payload path; raises InvalidFilter."""
    key = FIELD_KEYS.get(field, field)
    if key in INDEXED_FIELDS:
        return key
    if key.startswith(METADATA_PREFIX) and METADATA_KEY_PATTERN.fullmatch(
        key.removeprefix(METADATA_PREFIX)
    ):
        return key
    raise InvalidFilter(f"field {field[:80]!r} cannot be filtered", field="where.field")


#: Integers below this size, and every stored number that rounds to one of them as a float, are
#: told apart by a range (which compares as floats): below it a number is found by value,
#: from it on matched exactly.
EXACT_FLOAT = 2**53


def contains_by_value(key: str, value: object) -> bool:
    """Whether ``contains value`` on payload ``key`` compares numbers by value (a range, so
    that 3 finds 3.0): an integer on metadata, below :data:`EXACT_FLOAT`."""
    return isinstance(value, int) and key.startswith(METADATA_PREFIX) and abs(value) < EXACT_FLOAT


def plain(value: object) -> MatchScalar:
    """A value to match exactly, as stored (enums by value, booleans as integers)."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, bool):
        return int(value)  # booleans are stored as integers (see edge_codec)
    if isinstance(value, str | int):
        return value
    raise InvalidFilter(f"cannot match a {type(value).__name__} exactly", field="where.value")


def text(value: str) -> str:
    """A string as stored (an enum member by its value)."""
    return value.value if isinstance(value, StrEnum) else value


def check_vector_shapes(records: Sequence[MemoryRecord], dense: Vector | None, dim: int) -> None:
    """Raises InvalidInput unless ``dense`` has one ``dim``-wide row per record and every
    record's own vector (if any) is ``dim``-d."""
    if dense is not None and dense.shape != (len(records), dim):
        raise InvalidInput(f"dense must have shape ({len(records)}, {dim})", field="dense")
    for record in records:
        if record.vector is not None and len(record.vector) != dim:
            raise InvalidInput(
                f"record {record.id} has a {len(record.vector)}-d vector; the store is {dim}-d",
                field="vector",
            )
