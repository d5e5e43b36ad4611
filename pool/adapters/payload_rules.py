"""What both Qdrant adapters (Edge and qdrant-client) share besides the payload layout of
:mod:`hivemem.pool.adapters.edge_codec`: the second check of filter keys and match values, and the
vector shape check of an upsert. Engine-neutral: plain values only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from hivemem.pool.adapters.edge_codec import (
    FIELD_KEYS,
    INDEXED_FIELDS,
    METADATA_PREFIX,
)
from hivemem.pool.errors import InvalidFilter, InvalidInput
from hivemem.pool.filters import SCOPE_FIELDS, Cond, Expr, conditions
from hivemem.pool.ids import METADATA_KEY_PATTERN, check_scope_id
from hivemem.pool.ports import Vector
from hivemem.pool.records import INT64, MemoryRecord

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


#: Below this size every integer is a float exactly, so a range ``[v, v]`` (the engines compare
#: ranges as floats) finds the stored numbers equal to ``v``, integers and floats alike; from it
#: on, integers that differ can be one float, and :func:`big_number` tells them apart.
EXACT_FLOAT = 2**53


def contains_by_value(key: str, value: object) -> bool:
    """Whether ``contains value`` on payload ``key`` compares numbers by value (as ``eq``
    does, so that 3 finds 3.0 and True finds 1): an integer on metadata."""
    return isinstance(value, int) and key.startswith(METADATA_PREFIX)


@dataclass(frozen=True, slots=True)
class BigNumber:
    """How to find the stored numbers equal (as Python compares) to a number at or beyond
    :data:`EXACT_FLOAT`: an exact match of the integer ``exact`` (None: no 64-bit integer
    equals it), or a range ``[as_float, as_float]`` (None: no float equals it) that is not met
    by one of the integers in ``near``, which are that float too but differ from the number.

    Left out: a list holding both a float equal to the number and an integer of ``near``
    (the range and the exclusion each read the whole list, not one element)."""

    exact: int | None
    as_float: float | None
    near: tuple[int, ...]


#: How many integers the numbers of one filter may exclude in all (each number beyond
#: :data:`EXACT_FLOAT` that is a float excludes up to 1,024 near 2**63): what bounds the cost
#: of translating, sending and running one filter.
MAX_NEAR = 4096


@functools.lru_cache(maxsize=1024)
def big_number(value: int | float) -> BigNumber | None:
    """How to match ``value`` exactly, or None below :data:`EXACT_FLOAT` (a range does)."""
    if abs(value) < EXACT_FLOAT:
        return None
    whole = int(value)  # a float this large is integral
    exact = whole if whole in INT64 else None
    as_float = float(whole)
    if as_float != whole:  # not a float: only the integer itself equals it
        return BigNumber(exact, None, ())
    # The integers that round to as_float lie within half a float step of it.
    step = int(math.ulp(as_float))
    near = tuple(
        n
        for n in range(max(whole - step, INT64.start), min(whole + step + 1, INT64.stop))
        if n != whole and float(n) == as_float
    )
    return BigNumber(exact, as_float, near)


def check_big_numbers(where: Expr) -> None:
    """Raise InvalidFilter when the numbers of ``where`` need more than :data:`MAX_NEAR`
    integers excluded in all (:func:`big_number`); the translators call it first."""
    total = 0
    for cond in conditions(where):
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        for value in values:
            if isinstance(value, int | float) and not isinstance(value, bool):
                big = big_number(value)
                total += 0 if big is None else len(big.near)
    if total > MAX_NEAR:
        raise InvalidFilter(
            f"the filter's numbers beyond 2**53 are too many to compare exactly ({total} "
            f"integers to tell apart, at most {MAX_NEAR}): use fewer, or smaller ones",
            field="where.value",
        )


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
